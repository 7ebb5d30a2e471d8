"""Bench section ``photonic-qt``: the photonic QT pipeline's fast paths against the straightforward ones.

The reference paths are what a direct implementation does: Perceval ``Processor`` + ``Sampler.probs``
per distribution, the MPS contracted once per weight, and the CNN's plain functional forward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from pqt.bench.timing import median_ms

if TYPE_CHECKING:  # imported inside the functions, so that Perceval loads only when a section runs
    from pqt.circuits.photonic import PhotonicQNN
    from pqt.generator import QuantumTrainGenerator

BENCH_CHI = 10
BENCH_IMAGES = 1000
BENCH_SHOTS = 10_000


def _bench_images() -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first 1,000 partial-MNIST training images when the data is there, else random pixels."""
    from pqt.data import load_dataset

    try:
        train, _ = load_dataset("partial-mnist", None, download=False)
        return train.images[:BENCH_IMAGES], train.labels[:BENCH_IMAGES], "partial-mnist"
    except Exception:  # the benchmark must run anywhere; say what it used
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (BENCH_IMAGES, 1, 28, 28), generator=g).float() / 255
        return images, torch.randint(0, 10, (BENCH_IMAGES,), generator=g), "random pixels"


def bench_pipeline() -> tuple[list[PhotonicQNN], list[np.ndarray], torch.nn.Module, QuantumTrainGenerator]:
    """The paper's pipeline at the bench's size: both QNNs, seeded random phases, the CNN and a generator
    whose MPS has non-trivial weights (shared by this section and ``threads``, so both time the same work)."""
    from pqt.circuits.photonic import PhotonicQNN
    from pqt.generator import QuantumTrainGenerator
    from pqt.mappers import MPSMapper
    from pqt.targets import PaperCNN, n_parameters

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    qnns = [PhotonicQNN(9, 4), PhotonicQNN(8, 4)]
    phases = [q.random_parameters(rng) for q in qnns]
    target = PaperCNN()
    generator = QuantumTrainGenerator(qnns, MPSMapper(n_parameters(target), BENCH_CHI, init_std=0.05))
    return qnns, phases, target, generator


def run(repeats: int) -> dict[str, Any]:
    from backends.local import SLOSBackend
    from pqt.circuits.photonic import perceval_distribution, sample_frequencies
    from pqt.distributions.combine import combine_distributions
    from pqt.targets import functional_forward, n_parameters
    from pqt.targets.paper_cnn_fast import FixedBatchLoss, plain_loss

    qnns, phases, target, generator = bench_pipeline()
    m = n_parameters(target)
    rng = np.random.default_rng(1)  # the shot sampling's draws

    def reference_weights(values: torch.Tensor) -> torch.Tensor:
        raw = generator.mapper.reference_forward(values)
        return raw - raw.mean()

    images, labels, source = _bench_images()
    backend = SLOSBackend(shots=BENCH_SHOTS, seed=0)
    fixed_loss = FixedBatchLoss(target, images, labels)
    r: dict[str, Any] = {"images": source, "bond_dim": BENCH_CHI, "shots": BENCH_SHOTS}

    qnn9, ph9 = qnns[0], phases[0]
    r["photonic_ms"] = median_ms(lambda: qnn9.exact_distribution(ph9), repeats * 10)
    r["photonic_reference_ms"] = median_ms(lambda: perceval_distribution(qnn9, ph9), repeats)
    r["photonic_max_abs_diff"] = float(np.abs(qnn9.exact_distribution(ph9) - perceval_distribution(qnn9, ph9)).max())
    exact = [q.exact_distribution(p) for q, p in zip(qnns, phases, strict=True)]
    r["sampling_ms"] = median_ms(lambda: [sample_frequencies(p, BENCH_SHOTS, rng) for p in exact], repeats * 10)

    def ours() -> float:
        dists = [e.probs for e in backend.evaluate(qnns, phases)]
        with torch.inference_mode():
            return fixed_loss(generator(combine_distributions(dists, m)))

    def reference() -> float:
        dists = [sample_frequencies(perceval_distribution(q, p), BENCH_SHOTS, rng)
                 for q, p in zip(qnns, phases, strict=True)]
        with torch.no_grad():
            weights = reference_weights(combine_distributions(dists, m))
        return plain_loss(target, weights, images, labels)

    with torch.no_grad():
        weights = generator(combine_distributions(exact, m))
    r["eval_ms"] = median_ms(ours, repeats)
    r["eval_reference_ms"] = median_ms(reference, repeats)
    r["mps_ms"] = median_ms(lambda: generator(combine_distributions(exact, m)), repeats)
    r["mps_reference_ms"] = median_ms(lambda: reference_weights(combine_distributions(exact, m)),
                                       repeats)
    r["cnn_loss_ms"] = median_ms(lambda: fixed_loss(weights), repeats)
    with torch.inference_mode():
        r["cnn_floor_ms"] = median_ms(lambda: functional_forward(target, weights, images), repeats)
    reference_loss = plain_loss(target, weights, images, labels)
    r["loss_relative_diff"] = abs(fixed_loss(weights) - reference_loss) / abs(reference_loss)

    adam = torch.optim.Adam(generator.parameters(), lr=1e-3)
    combined = combine_distributions(exact, m)
    x, y = images[:128], labels[:128]

    def adam_step() -> None:
        adam.zero_grad(set_to_none=True)
        F.cross_entropy(functional_forward(target, generator(combined), x), y).backward()
        adam.step()

    r["adam_step_ms"] = median_ms(adam_step, repeats)
    r["photonic_speedup"] = r["photonic_reference_ms"] / r["photonic_ms"]
    r["eval_speedup"] = r["eval_reference_ms"] / r["eval_ms"]
    r["eval_over_cnn_floor"] = r["eval_ms"] / r["cnn_floor_ms"]
    return r


def table(r: dict[str, Any]) -> None:
    print(f"photonic QT (images: {r['images']})")
    rows = [
        ("photonic distribution (9 modes, 4 photons, exact)", "photonic_ms", "photonic_reference_ms"),
        ("MPS, 6,690 weights, chi=10", "mps_ms", "mps_reference_ms"),
        ("COBYLA evaluation (2 QNNs x 10k shots + MPS + CNN loss)", "eval_ms", "eval_reference_ms"),
    ]
    print(f"{'':58} {'ours':>9} {'reference':>10} {'speed-up':>9}")
    for label, ours, ref in rows:
        print(f"{label:58} {r[ours]:>7.3f}ms {r[ref]:>8.3f}ms {r[ref] / r[ours]:>8.1f}x")
    print(f"{'shot sampling, both QNNs, 10k shots each':58} {r['sampling_ms']:>7.3f}ms")
    print(f"{'CNN loss on the fixed 1,000-image batch':58} {r['cnn_loss_ms']:>7.3f}ms")
    print(f"{'CNN plain forward alone (the floor to beat)':58} {r['cnn_floor_ms']:>7.3f}ms")
    print(f"{'Adam step (batch 128, chi=10)':58} {r['adam_step_ms']:>7.3f}ms")
    print(f"whole evaluation / plain CNN forward: {r['eval_over_cnn_floor']:.2f}; "
          f"max |ours - Perceval| = {r['photonic_max_abs_diff']:.1e}")
