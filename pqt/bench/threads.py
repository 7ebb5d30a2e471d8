"""Bench section ``threads``: each training stage with 1 and 2 torch threads, OpenMP spinning or passive, loaded or not.

The thread count and OpenMP's wait policy are fixed when the OpenMP runtime starts, so every setting
runs in a fresh process (``python -m pqt.bench.threads WORKER``) with the paper pipeline at chi = 10:
one Adam step (batch 128), one COBYLA objective evaluation (both QNNs with 10,000 shots, the MPS,
the CNN loss on 1,000 images) and one end-of-round evaluation (the generated CNN on 7,000 images:
the round's train and test accuracy). "Loaded" adds one busy process per core for the duration, as
other jobs on a shared machine do. The machine's load average before each measurement is recorded:
on a shared machine "quiet" only means "without the extra load".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from pqt.bench.timing import median_ms

STAGES = ("adam_step", "cobyla_evaluation", "round_evaluation")
POLICIES = ("active", "passive")  # OMP_WAIT_POLICY; libgomp's default spins (active) for a while


def worker(repeats: int) -> dict[str, float]:
    """Time the three stages in this process (its threads and wait policy set by the caller's environment)."""
    import torch
    import torch.nn.functional as F

    from backends.local import SLOSBackend
    from pqt.bench.photonic_qt import BENCH_SHOTS, _bench_images, bench_pipeline
    from pqt.targets import functional_forward, loss_and_accuracy
    from pqt.targets.paper_cnn_fast import FixedBatchLoss, training_forward

    qnns, phases, target, generator = bench_pipeline()
    images, labels, _ = _bench_images()
    backend = SLOSBackend(shots=BENCH_SHOTS, seed=0)
    loss = FixedBatchLoss(target, images, labels)
    values = generator.values([q.exact_distribution(p) for q, p in zip(qnns, phases, strict=True)])
    adam = torch.optim.Adam(generator.parameters(), lr=1e-3)
    x, y = images[:128], labels[:128]
    every = images.repeat(7, 1, 1, 1)
    every_labels = labels.repeat(7)

    def adam_step() -> None:
        adam.zero_grad(set_to_none=True)
        F.cross_entropy(training_forward(target, generator(values), x), y).backward()
        adam.step()

    def cobyla_evaluation() -> float:
        dists = [e.probs for e in backend.evaluate(qnns, phases)]
        with torch.inference_mode():
            return loss(generator.generate(dists))

    def round_evaluation() -> None:
        with torch.no_grad():
            weights = generator(values)
        loss_and_accuracy(lambda b: functional_forward(target, weights, b), every, every_labels)

    return {"adam_step": median_ms(adam_step, repeats), "cobyla_evaluation": median_ms(cobyla_evaluation, repeats),
            "round_evaluation": median_ms(round_evaluation, max(3, repeats // 3)),
            "torch_threads": torch.get_num_threads()}


def _busy() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run(repeats: int) -> dict[str, Any]:
    from pqt.bench.peers import REPO

    cores = os.cpu_count() or 1
    settings = sorted({1, cores})
    r: dict[str, Any] = {"cores": cores, "threads_compared": settings, "policies": list(POLICIES), "runs": []}
    for loaded in (False, True):
        busy = [_busy() for _ in range(cores)] if loaded else []
        try:
            time.sleep(0.5 if loaded else 0)
            for threads in settings:
                for policy in POLICIES:
                    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": policy.upper(),
                           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
                    load = os.getloadavg()[0]
                    done = subprocess.run([sys.executable, "-m", "pqt.bench.threads", "worker", str(repeats)],
                                          env=env, capture_output=True, text=True, timeout=900, check=False)
                    if done.returncode != 0:
                        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                        return {**r, "skipped": f"thread worker failed: {tail[0]}"}
                    times = json.loads(done.stdout.strip().splitlines()[-1])
                    r["runs"].append({"loaded": loaded, "threads": threads, "policy": policy,
                                      "load_average_before": load, **times})
        finally:
            for p in busy:
                p.kill()
                p.wait()
    r["best"] = {}
    for loaded in (False, True):
        for stage in STAGES:
            runs = [x for x in r["runs"] if x["loaded"] == loaded]
            best = min(runs, key=lambda x: x[stage])
            r["best"][f"{'loaded' if loaded else 'quiet'}_{stage}"] = f"{best['threads']} thread(s), {best['policy']}"
    return r


def table(r: dict[str, Any]) -> None:
    if "skipped" in r:
        print(f"threads: {r['skipped']}")
        return
    print(f"threads per stage (paper pipeline, chi=10), each setting in a fresh process; {r['cores']} cores; "
          "loaded = one extra busy process per core")
    print(f"{'':12} {'threads':>7} {'OMP wait':>9} {'load avg':>9} {'Adam step':>10} {'COBYLA eval':>12} "
          f"{'round eval':>11}")
    for x in r["runs"]:
        print(f"{'loaded' if x['loaded'] else 'no extra':12} {x['threads']:>7} {x['policy']:>9} "
              f"{x['load_average_before']:>9.1f} {x['adam_step']:>8.1f}ms {x['cobyla_evaluation']:>10.1f}ms "
              f"{x['round_evaluation']:>9.1f}ms")
    print("fastest: " + "; ".join(f"{k}: {v}" for k, v in r["best"].items()))


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        print(json.dumps(worker(int(sys.argv[2]))))
