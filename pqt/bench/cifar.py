"""Bench section ``cifar``: Quantum-Train at the size of the CIFAR-10 CNN (285,226 weights).

Two generators, as the issue sizes them: photonic (12 modes / 6 photons x 12 modes / 5 photons =
924 x 792 patterns, MPS at chi = 10) and gate-based (19 qubits, 19 blocks, the QT paper's CIFAR-10
mapping model 20-40, 40-200, 200-40, 40-1 with its qt scaling). For each: one objective evaluation
of the circuit-parameter optimiser (the circuits with 10,000 shots, the generator, the CNN loss on
1,000 images), one Adam step on the mapper (batch 128), for the gate-based one also a joint step
(statevector forward and backward too), and the peak memory of each. No CIFAR-10 is available
offline: the images are synthetic (seeded noise), which changes no timing. The reference paths are
the straightforward ones: Perceval for the photonic distributions, the per-weight MPS and the
layer-by-layer MLP, the plain NCHW CNN.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pqt.bench.timing import median_ms

PHOTONIC = ((12, 6), (12, 5))
CHI = 10
QUBITS, BLOCKS, WIDTHS = 19, 19, (40, 200, 40)
IMAGES, BATCH, SHOTS = 1000, 128, 10_000
SLICE = 16  # the per-weight references run on 1/SLICE of the weights


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_mb(fn: Callable[[], Any]) -> tuple[float, str]:
    """Peak resident memory (MB) of this process while ``fn`` runs, and how it was measured.

    Linux: the high-water mark is reset first (/proc/self/clear_refs), so the figure is this call's
    peak. Elsewhere the process's lifetime peak is all there is, said as such.
    """
    status = Path("/proc/self/status")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        fn()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process lifetime peak (ru_maxrss)"
    fn()
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024, "peak RSS during the call (VmHWM after reset)"
    return float("nan"), "unavailable"


def _images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def run(repeats: int) -> dict[str, Any]:
    from backends.local import SLOSBackend
    from pqt.bench.qubit import reference_state
    from pqt.circuits.photonic import PhotonicQNN, perceval_distribution
    from pqt.circuits.qubit import QubitQNN
    from pqt.generator import QuantumTrainGenerator
    from pqt.mappers import MLPMapper, MPSMapper
    from pqt.targets import create_target, functional_forward, n_parameters
    from pqt.targets.paper_cnn_fast import FixedBatchLoss, plain_loss, training_forward

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    few = max(2, repeats // 5)  # the slow references and the seconds-long steps
    target = create_target("cifar-cnn", (3, 32, 32))
    m = n_parameters(target)
    images, labels = _images(IMAGES)
    x, y = images[:BATCH], labels[:BATCH]
    loss = FixedBatchLoss(target, images, labels)
    r: dict[str, Any] = {"weights": m, "images": f"{IMAGES} synthetic 3x32x32", "batch": BATCH, "shots": SHOTS,
                         "channels_last": loss.channels_last}

    photonic = [PhotonicQNN(*shape) for shape in PHOTONIC]
    qubit = QubitQNN(QUBITS, BLOCKS)
    generators = {
        "photonic": QuantumTrainGenerator(photonic, MPSMapper(m, CHI, init_std=0.05)),
        "qubit": QuantumTrainGenerator([qubit], MLPMapper(m, WIDTHS), scaling="qt"),
    }
    r["photonic_shape"] = {"qnns": [list(s) for s in PHOTONIC], "patterns": [q.n_outcomes for q in photonic],
                           "bond_dim": CHI, "mapper_parameters": generators["photonic"].n_mapper_parameters,
                           "phases": generators["photonic"].n_circuit_parameters}
    r["qubit_shape"] = {"qubits": QUBITS, "blocks": BLOCKS, "widths": list(WIDTHS),
                        "mapper_parameters": generators["qubit"].n_mapper_parameters,
                        "angles": generators["qubit"].n_circuit_parameters}
    backend = SLOSBackend(shots=SHOTS, seed=0)
    r["rss_before_mb"] = _rss_mb()  # what the process holds before the measured calls (torch, Perceval, images)

    with torch.inference_mode():
        r["cnn_loss_ms"] = median_ms(lambda: loss(torch.zeros(m)), few)
        r["cnn_loss_reference_ms"] = median_ms(lambda: plain_loss(target, torch.zeros(m), images, labels), few, 1)

    for name, gen in generators.items():
        params = gen.initial_parameters(rng)
        exact = [c.exact_distribution(p) for c, p in zip(gen.circuits, params, strict=True)]
        values = gen.values(exact)
        r[f"{name}_circuits_ms"] = median_ms(
            lambda g=gen, p=params: [c.exact_distribution(q) for c, q in zip(g.circuits, p, strict=True)], repeats)
        with torch.inference_mode():
            r[f"{name}_mapper_ms"] = median_ms(lambda g=gen, v=values: g(v), repeats)
            # The per-weight references cost seconds (the MPS ~20 s at chi = 10): timed once on a 1/16 slice
            # of the weights and scaled (their cost is linear in the weights), checked on that slice.
            n = m // SLICE
            r[f"{name}_mapper_reference_ms"] = SLICE * median_ms(
                lambda g=gen, v=values, k=n: g.mapper.reference_forward(v, k), 1, 0)
            fast, ref = gen.mapper(values)[:n], gen.mapper.reference_forward(values, n)
            r[f"{name}_mapper_max_rel_diff"] = float((fast - ref).abs().max() / ref.abs().max())

        def evaluation(g: QuantumTrainGenerator = gen, p: list[np.ndarray] = params) -> float:
            dists = [e.probs for e in backend.evaluate(g.circuits, p)]
            with torch.inference_mode():
                return loss(g.generate(dists))

        r[f"{name}_eval_ms"] = median_ms(evaluation, few)
        r[f"{name}_eval_peak_mb"], how = peak_mb(evaluation)
        adam = torch.optim.Adam(gen.mapper.parameters(), lr=1e-3)

        def adam_step(g: QuantumTrainGenerator = gen, v: torch.Tensor = values, opt: Any = adam,
                      reference: bool = False) -> None:
            opt.zero_grad(set_to_none=True)
            raw = g.mapper.reference_forward(v) if reference else g.mapper(v)  # reference: layer by layer
            weights = raw - raw.mean()
            logits = functional_forward(target, weights, x) if reference else training_forward(target, weights, x)
            F.cross_entropy(logits, y).backward()
            opt.step()

        r[f"{name}_adam_ms"] = median_ms(adam_step, few)
        r[f"{name}_adam_peak_mb"], _ = peak_mb(adam_step)
        if name == "qubit":  # the per-weight MPS would take minutes; its forward alone is timed above
            r[f"{name}_adam_reference_ms"] = median_ms(lambda s=adam_step: s(reference=True), 1, 0)
    r["peak_memory"] = how

    # The photonic reference: Perceval's Processor + Sampler for the 12-mode, 6-photon QNN.
    q6, p6 = photonic[0], photonic[0].random_parameters(rng)
    r["photonic6_ms"] = median_ms(lambda: q6.exact_distribution(p6), repeats * 5)
    r["photonic6_reference_ms"] = median_ms(lambda: perceval_distribution(q6, p6), few, 1)
    r["photonic6_max_abs_diff"] = float(np.abs(q6.exact_distribution(p6) - perceval_distribution(q6, p6)).max())
    q5, p5 = photonic[1], photonic[1].random_parameters(rng)
    r["photonic5_reference_ms"] = median_ms(lambda: perceval_distribution(q5, p5), few, 1)

    # The gate-based paper's protocol trains the angles too: statevector forward + backward in the step.
    angles = torch.tensor(qubit.random_parameters(rng), requires_grad=True)
    gen = generators["qubit"]
    joint = torch.optim.Adam([*gen.mapper.parameters(), angles], lr=1e-3)

    def joint_step() -> None:
        joint.zero_grad(set_to_none=True)
        weights = gen.generate([qubit.torch_distribution(angles)])
        F.cross_entropy(training_forward(target, weights, x), y).backward()
        joint.step()

    r["qubit_joint_adam_ms"] = median_ms(joint_step, few)
    r["qubit_joint_adam_peak_mb"], _ = peak_mb(joint_step)
    theta = torch.from_numpy(qubit.random_parameters(rng))

    def statevector_fb() -> None:
        leaf = theta.clone().requires_grad_(True)
        qubit.torch_distribution(leaf).sum().backward()

    r["qubit_statevector_ms"] = median_ms(lambda: qubit.exact_distribution(theta.numpy()), few)
    r["qubit_statevector_fb_ms"] = median_ms(statevector_fb, few)
    with torch.no_grad():
        r["qubit_statevector_reference_ms"] = median_ms(lambda: reference_state(theta, QUBITS, BLOCKS), 1, 0)
        reference = reference_state(theta, QUBITS, BLOCKS).numpy() ** 2
    # The straightforward evaluation, as the sum of its parts' medians (circuits by the reference paths,
    # the per-weight mapper, the plain NCHW loss); the shot draw is common to both and left out.
    r["photonic_eval_reference_ms"] = (r["photonic6_reference_ms"] + r["photonic5_reference_ms"]
                                       + r["photonic_mapper_reference_ms"] + r["cnn_loss_reference_ms"])
    r["qubit_eval_reference_ms"] = (r["qubit_statevector_reference_ms"] + r["qubit_mapper_reference_ms"]
                                    + r["cnn_loss_reference_ms"])
    r["qubit_statevector_max_abs_diff"] = float(np.abs(qubit.exact_distribution(theta.numpy()) - reference).max())
    return r


def table(r: dict[str, Any]) -> None:
    print(f"CIFAR-10-size targets: {r['weights']:,} weights, {r['images']} images, Adam batch {r['batch']}, "
          f"{r['shots']:,} shots per circuit evaluation")
    ps, qs = r["photonic_shape"], r["qubit_shape"]
    print(f"  photonic: {ps['qnns']} -> {ps['patterns']} patterns, MPS chi={ps['bond_dim']} "
          f"({ps['mapper_parameters']:,} + {ps['phases']} phases)")
    print(f"  gate-based: {qs['qubits']} qubits x {qs['blocks']} blocks, MLP {qs['widths']} "
          f"({qs['mapper_parameters']:,} + {qs['angles']} angles)")
    print(f"{'':58} {'ours':>9} {'reference':>10} {'speed-up':>9}")
    rows = [("photonic distribution, 12 modes / 6 photons (Perceval)", "photonic6_ms", "photonic6_reference_ms"),
            ("CNN loss on the 1,000 images (channels-last vs NCHW)", "cnn_loss_ms", "cnn_loss_reference_ms"),
            ("MPS mapper, 285,226 weights, chi=10 (per weight)", "photonic_mapper_ms", "photonic_mapper_reference_ms"),
            ("MLP mapper 40-200-40 (layer by layer)", "qubit_mapper_ms", "qubit_mapper_reference_ms"),
            ("photonic objective evaluation (shots, MPS, CNN loss)", "photonic_eval_ms", "photonic_eval_reference_ms"),
            ("gate-based objective evaluation (shots, MLP, CNN loss)", "qubit_eval_ms", "qubit_eval_reference_ms"),
            ("19-qubit statevector, forward (one op per qubit)", "qubit_statevector_ms",
             "qubit_statevector_reference_ms"),
            ("gate-based Adam step on the mapper (batch 128)", "qubit_adam_ms", "qubit_adam_reference_ms")]
    for label, ours, ref in rows:
        print(f"{label:58} {r[ours]:>7.1f}ms {r[ref]:>8.1f}ms {r[ref] / r[ours]:>8.1f}x")
    for label, key in (("photonic circuits (both, exact)", "photonic_circuits_ms"),
                       ("photonic Adam step (batch 128)", "photonic_adam_ms"),
                       ("19-qubit statevector, forward+backward", "qubit_statevector_fb_ms"),
                       ("gate-based joint Adam step (statevector too)", "qubit_joint_adam_ms")):
        print(f"{label:58} {r[key]:>7.1f}ms")
    print(f"peak memory ({r['peak_memory']}; the process holds {r['rss_before_mb']:.0f} MB before):")
    print(f"  photonic evaluation {r['photonic_eval_peak_mb']:.0f} MB, Adam "
          f"{r['photonic_adam_peak_mb']:.0f} MB; gate-based evaluation {r['qubit_eval_peak_mb']:.0f} MB, Adam "
          f"{r['qubit_adam_peak_mb']:.0f} MB, joint {r['qubit_joint_adam_peak_mb']:.0f} MB")
    print(f"max |ours - Perceval| = {r['photonic6_max_abs_diff']:.1e}; max |statevector - one-op-per-qubit| = "
          f"{r['qubit_statevector_max_abs_diff']:.1e}; mapper rel. diff (float32) MPS "
          f"{r['photonic_mapper_max_rel_diff']:.1e}, MLP {r['qubit_mapper_max_rel_diff']:.1e}")
