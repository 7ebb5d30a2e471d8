"""The peers' side of the bench comparisons, runnable in another venv: ``python -m pqt.bench.peer_drivers NAME IN OUT``.

Each driver takes a spec (circuit shape, parameters, weights, repeats, threads), builds the peer's
model of the very circuit pqt builds, and times it against ours in the same process, the two
alternated call by call (medians after a warm-up), so that the ratio holds even while the
machine's load changes. It returns the timings and both sides' outputs, which the calling section
compares. Only numpy, torch, Perceval, the peer and pqt's circuits are imported here, so the module
runs in a venv whose torch differs from pqt's (our torch path then runs on that torch).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def save(path: Path, data: dict[str, Any]) -> None:
    np.savez(path, **{k: np.asarray(v) for k, v in data.items()})


def load(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as f:
        return {k: (f[k].item() if f[k].ndim == 0 else f[k]) for k in f.files}


def _paired_ms(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median ms of each function, called in turn within every repeat (warm-up: TorchScript and caches).

    Returns wall-clock medians under the functions' names and CPU-time medians under ``NAME_cpu``: with
    one thread the CPU time is what the call costs whatever else runs on the machine.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            cpu[key].append((time.process_time() - start_cpu) * 1e3)
            wall[key].append((time.perf_counter() - start) * 1e3)
    return {**{k: statistics.median(v) for k, v in wall.items()},
            **{f"{k}_cpu": statistics.median(v) for k, v in cpu.items()}}


def merlin(spec: dict[str, Any]) -> dict[str, Any]:
    """MerLin's QuantumLayer on pqt's GenericInterferometer: exact distribution, with gradient, batched."""
    import merlin as ml
    import torch

    from pqt.circuits.photonic import PhotonicQNN

    torch.set_num_threads(int(spec["threads"]))
    qnn = PhotonicQNN(int(spec["modes"]), int(spec["photons"]))
    strategy = ml.MeasurementStrategy.probs(ml.ComputationSpace.UNBUNCHED)
    occupation = list(qnn.input_state)
    # One setting: the phases are the layer's trainable parameter; a batch: they are its input.
    single = ml.QuantumLayer(circuit=qnn.circuit, input_state=occupation, trainable_parameters=["phi"],
                             measurement_strategy=strategy, dtype=torch.float64)
    batched = ml.QuantumLayer(circuit=qnn.circuit, input_state=occupation, input_parameters=["phi"],
                              measurement_strategy=strategy, dtype=torch.float64)
    keys = [tuple(int(n) for n in k) for k in single.output_keys]
    with torch.no_grad():
        single.phi.copy_(torch.as_tensor(spec["phases"]))
    weights = torch.as_tensor(spec["weights"])
    settings = torch.as_tensor(spec["batch"]).clone().requires_grad_(True)
    repeats = int(spec["repeats"])

    def forward_backward() -> None:
        single.zero_grad(set_to_none=True)
        (single()[0] * weights).sum().backward()

    def batch_forward_backward() -> None:
        settings.grad = None
        (batched(settings) * weights).sum().backward()

    leaf = torch.as_tensor(spec["phases"]).clone().requires_grad_(True)
    ours_settings = settings.detach().clone().requires_grad_(True)

    def ours_forward_backward() -> None:
        leaf.grad = None
        (qnn.torch_distribution(leaf) * weights).sum().backward()

    def ours_batch_forward_backward() -> None:
        ours_settings.grad = None
        (qnn.torch_distribution(ours_settings) * weights).sum().backward()

    phases = np.asarray(spec["phases"])
    out: dict[str, Any] = {"version": getattr(ml, "__version__", "?"), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "outcome_order_matches": keys == qnn.outcomes}
    with torch.no_grad():
        pairs = {"forward": {"ours": lambda: qnn.exact_distribution(phases), "peer": lambda: single()},
                 "batch_forward": {"ours": lambda: qnn.torch_distribution(ours_settings),
                                   "peer": lambda: batched(settings)}}
        for name, fns in pairs.items():
            for who, ms in _paired_ms(fns, repeats).items():
                out[f"{who.replace('_cpu', '')}_{name}_{'cpu_' if who.endswith('_cpu') else ''}ms"] = ms
        out["probs"] = single()[0].numpy()
        out["batch_probs"] = batched(settings).numpy()
    for name, fns in {"forward_backward": {"ours": ours_forward_backward, "peer": forward_backward},
                      "batch_forward_backward": {"ours": ours_batch_forward_backward,
                                                 "peer": batch_forward_backward}}.items():
        for who, ms in _paired_ms(fns, repeats).items():
            out[f"{who.replace('_cpu', '')}_{name}_{'cpu_' if who.endswith('_cpu') else ''}ms"] = ms
    forward_backward()
    batch_forward_backward()
    out["grad"] = single.phi.grad.numpy()
    out["batch_grad"] = settings.grad.numpy()
    return out


def pennylane(spec: dict[str, Any]) -> dict[str, Any]:
    """PennyLane on the gate-based QNN: default.qubit (torch, backprop) and lightning.qubit (adjoint).

    Forward: the 2^N probabilities. Forward+backward: the gradient of sum_q <Z_q> (adjoint
    differentiation supports expectation values only, not probabilities), the same function of the
    probabilities on our side.
    """
    import pennylane as qml
    import torch

    from pqt.circuits.qubit import QubitQNN

    torch.set_num_threads(int(spec["threads"]))
    z = torch.as_tensor(spec["z_weights"])
    n, repeats = int(spec["qubits"]), int(spec["repeats"])
    out: dict[str, Any] = {"version": qml.__version__, "torch": torch.__version__, "threads": torch.get_num_threads()}

    def circuit(theta: Any, blocks: int, measure: Callable[[], Any]) -> Any:
        th = theta.reshape(blocks, n)
        for k in range(blocks):
            for q in range(n):
                qml.RY(th[k, q], wires=q)
            for q in range(n if n > 1 else 0):
                qml.CNOT(wires=[q, (q + 1) % n])
        return measure()

    def probs() -> Any:
        return qml.probs(wires=range(n))

    def z_sum() -> Any:
        return qml.expval(qml.sum(*[qml.Z(q) for q in range(n)]))

    devices = {"default": ("default.qubit", "backprop"), "lightning": ("lightning.qubit", "adjoint")}
    for blocks in (int(b) for b in spec["blocks"]):
        theta = torch.as_tensor(spec[f"theta_{blocks}"])
        qnn = QubitQNN(n, blocks)
        ours_leaf = theta.clone().requires_grad_(True)

        def ours_forward_backward(c: QubitQNN = qnn, p: Any = ours_leaf) -> None:
            p.grad = None
            (c.torch_distribution(p) * z).sum().backward()

        for name, (device_name, diff) in devices.items():
            if name not in spec["devices"]:
                continue
            try:
                device = qml.device(device_name, wires=n)
            except Exception as e:  # lightning is a separate package
                out[f"{name}_note"] = f"{device_name} unavailable: {type(e).__name__}: {e}"
                continue
            forward = qml.QNode(lambda t, b=blocks: circuit(t, b, probs), device, interface="torch", diff_method=None)
            loss = qml.QNode(lambda t, b=blocks: circuit(t, b, z_sum), device, interface="torch", diff_method=diff)
            leaf = theta.clone().requires_grad_(True)

            def forward_backward(f: Any = loss, p: Any = leaf) -> None:
                p.grad = None
                f(p).backward()

            with torch.no_grad():
                times = _paired_ms({"ours": lambda c=qnn, t=theta: c.exact_distribution(t.numpy()),
                                    "peer": lambda f=forward, t=theta: f(t)}, repeats, warmup=1)
                out[f"{name}_L{blocks}_probs"] = forward(theta).numpy()
            for who, ms in times.items():
                kind = "forward_cpu" if who.endswith("_cpu") else "forward"
                out[f"{who.replace('_cpu', '')}_{name}_L{blocks}_{kind}_ms"] = ms
            times = _paired_ms({"ours": ours_forward_backward, "peer": forward_backward}, repeats, warmup=1)
            for who, ms in times.items():
                kind = "forward_backward_cpu" if who.endswith("_cpu") else "forward_backward"
                out[f"{who.replace('_cpu', '')}_{name}_L{blocks}_{kind}_ms"] = ms
            forward_backward()
            out[f"{name}_L{blocks}_grad"] = leaf.grad.numpy()
        ours_forward_backward()
        out[f"ours_L{blocks}_probs"] = qnn.exact_distribution(theta.numpy())
        out[f"ours_L{blocks}_grad"] = ours_leaf.grad.numpy()
    return out


def merlin_noisy(spec: dict[str, Any]) -> dict[str, Any]:
    """MerLin's noisy SLOS (a QuantumLayer on a Perceval Experiment with a NoiseModel and threshold
    detectors) against pqt's fast noisy path, both paper QNNs, one noise setting per ``knob_<i>``.

    Returns per setting each side's median time for one exact evaluation of both QNNs and MerLin's
    probabilities of the N-click patterns (per source pulse, in ``qnn.outcomes`` order).
    """
    import merlin as ml
    import perceval as pcvl
    import torch

    from backends import create_backend
    from pqt.circuits.photonic import PhotonicQNN

    torch.set_num_threads(int(spec["threads"]))
    qnns = [PhotonicQNN(int(m), int(n)) for m, n in zip(spec["modes"], spec["photons"], strict=True)]
    phases = [np.asarray(spec[f"phases_{i}"]) for i in range(len(qnns))]
    out: dict[str, Any] = {"version": getattr(ml, "__version__", "?"), "torch": torch.__version__,
                           "threads": torch.get_num_threads()}
    for k, label in enumerate(spec["labels"]):
        noise = {str(name): float(value) for name, value in zip(spec[f"names_{k}"], spec[f"values_{k}"], strict=True)}
        layers = []
        for qnn, ph in zip(qnns, phases, strict=True):
            experiment = pcvl.Experiment(qnn.circuit)
            for mode in range(qnn.modes):
                experiment.add(mode, pcvl.Detector.threshold())
            experiment.noise = pcvl.NoiseModel(**noise)
            experiment.with_input(qnn.input_state)
            layer = ml.QuantumLayer(experiment=experiment, trainable_parameters=["phi"],
                                    measurement_strategy=ml.MeasurementStrategy.probs(ml.ComputationSpace.FOCK),
                                    dtype=torch.float64)
            with torch.no_grad():
                layer.phi.copy_(torch.as_tensor(ph))
            layers.append(layer)
        backend = create_backend("noisy", None, options={**noise, "noise_simulation": "fast"})

        def peer(layers: list[Any] = layers) -> list[Any]:
            return [layer() for layer in layers]

        with torch.no_grad():
            times = _paired_ms({"ours": lambda b=backend: b.evaluate(qnns, phases), "peer": peer},
                               int(spec["repeats"]), warmup=1)
            for qnn, layer, result in zip(qnns, layers, peer(), strict=True):
                probs = dict(zip((tuple(int(n) for n in key) for key in layer.output_keys),
                                 result.reshape(-1).numpy(), strict=True))
                out[f"{k}_{qnn.modes}_{qnn.photons}_patterns"] = np.array([probs.get(o, 0.0) for o in qnn.outcomes])
        for who, ms in times.items():
            out[f"{k}_{who.replace('_cpu', '')}_{'cpu_' if who.endswith('_cpu') else ''}ms"] = ms
        out[f"{k}_label"] = str(label)
    return out


DRIVERS = {"merlin": merlin, "merlin_noisy": merlin_noisy, "pennylane": pennylane}


def main(argv: list[str]) -> None:
    name, spec_path, out_path = argv
    save(Path(out_path), DRIVERS[name](load(Path(spec_path))))


if __name__ == "__main__":
    main(sys.argv[1:])
