"""Time the training step's CNN part: plain ``functional_forward`` vs ``training_forward``, forward + backward.

    PYTHONPATH=. python experiments/profile_train_step.py [--threads 2] [--repeats 50] [--batch 128]
                                                          [--activation none [relu ...]] [--profile]

One step = logits of the target with a leaf weight vector (requires_grad), F.cross_entropy, backward (the
gradient w.r.t. the weights), as in the Adam stage of ``pqt train`` minus the MPS generator. Every step
uses another batch of ``--batch`` images (partial-MNIST if the data is found, else MNIST-like random
digits with black borders) and another weight vector (N(0, 0.1)), cycled through small pools so both paths
see the same inputs.

The two paths are timed alternately (ABBA order, one step each), so load from other processes hits both
alike; printed per path: median and minimum wall time, median CPU time of the process (all threads; with
more than one thread it includes OpenMP spin-waiting), and the ratios fast / plain: of the medians and
the median of the per-round ratios (paired, the most load-robust number). ``--profile`` adds a
torch.profiler table of each path. Also checks that logits and gradients agree.

On a machine whose cores are busy with other processes, OpenMP's default spin-waiting makes every
parallel region cost a scheduler time slice (~8 ms here) and both paths take ~200 ms a step with 2
threads: compare there with ``OMP_WAIT_POLICY=passive`` or ``--threads 1`` (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pqt.targets import ACTIVATIONS, PaperCNN, functional_forward, n_parameters  # noqa: E402
from pqt.targets.paper_cnn_fast import fast_path_applies, training_forward  # noqa: E402

Forward = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def load_images(n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from pqt.data import load_dataset

        train, _ = load_dataset("partial-mnist", None, download=False)
        if len(train.labels) >= n:
            return train.images[:n].float().contiguous(), train.labels[:n].long(), "partial-mnist"
    except Exception as exc:  # the script must run anywhere; say what it used
        print(f"(no partial-mnist data: {exc}; using MNIST-like random digits)")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g).float() / 255
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., 5:23, 6:22] = 1.0
    images = images * mask * (torch.rand(n, 1, 28, 28, generator=g) < 0.4)
    return images, torch.randint(0, 10, (n,), generator=g), "MNIST-like random digits"


def make_step(forward: Forward, target: torch.nn.Module, weights: list[torch.Tensor],
              batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], None]:
    it = [0]

    def step() -> None:
        i = it[0] = it[0] + 1
        w = weights[i % len(weights)]
        x, y = batches[i % len(batches)]
        F.cross_entropy(forward(target, w, x), y).backward()
        w.grad = None

    return step


def check(target: torch.nn.Module, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Max |difference| / max |plain| of logits and of the weight gradient, fast vs plain."""
    out = []
    for forward in (functional_forward, training_forward):
        logits = forward(target, w, x)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), w)
        out.append((logits.detach(), grad))
    (l0, g0), (l1, g1) = out
    return float((l1 - l0).abs().max() / l0.abs().max()), float((g1 - g0).abs().max() / g0.abs().max())


def time_pair(steps: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in steps}
    names = list(steps)
    for r in range(repeats):
        for k in names if r % 2 == 0 else names[::-1]:  # ABBA: neither path always runs first
            c0, t0 = time.process_time(), time.perf_counter()
            steps[k]()
            t1, c1 = time.perf_counter(), time.process_time()
            times[k]["wall"].append((t1 - t0) * 1e3)
            times[k]["cpu"].append((c1 - c0) * 1e3)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--activation", nargs="+", default=["none"], choices=list(ACTIVATIONS))
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler tables")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    n_batches = 8
    images, labels, source = load_images(args.batch * n_batches)
    batches = [(images[i * args.batch : (i + 1) * args.batch], labels[i * args.batch : (i + 1) * args.batch])
               for i in range(n_batches)]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch} ({source}), "
          f"{args.repeats} repeats after {args.warmup} warm-up steps, load average {os.getloadavg()[0]:.2f}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}")
    for act in args.activation:
        target = PaperCNN(act)
        g = torch.Generator().manual_seed(0)
        weights = [(torch.randn(n_parameters(target), generator=g) * 0.1).requires_grad_() for _ in range(4)]
        assert fast_path_applies(target, weights[0], batches[0][0])
        dl, dg = check(target, weights[0], *batches[0])
        steps = {"plain": make_step(functional_forward, target, weights, batches),
                 "fast": make_step(training_forward, target, weights, batches)}
        times = time_pair(steps, args.repeats, args.warmup)

        print(f"activation {act!r}: fast vs plain max rel. difference: logits {dl:.1e}, gradient {dg:.1e}")
        med = {k: statistics.median(v["wall"]) for k, v in times.items()}
        for k, v in times.items():
            print(f"  {k:6s} wall median {med[k]:7.2f} ms   min {min(v['wall']):7.2f} ms   "
                  f"CPU median {statistics.median(v['cpu']):7.2f} ms")
        paired = statistics.median(f / p for f, p in zip(times["fast"]["wall"], times["plain"]["wall"], strict=True))
        print(f"  fast / plain: ratio of wall medians {med['fast'] / med['plain']:.3f}, "
              f"median paired ratio {paired:.3f}, ratio of CPU medians "
              f"{statistics.median(times['fast']['cpu']) / statistics.median(times['plain']['cpu']):.3f}")

        if args.profile:
            from torch.profiler import profile

            for k, fn in steps.items():
                with profile() as prof:
                    for _ in range(20):
                        fn()
                print(f"--- {k} ({act}), 20 steps")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
