"""Time the COBYLA objective's CNN part: plain forward vs plain loss vs ``FixedBatchLoss``.

    PYTHONPATH=. python experiments/profile_cnn.py [--threads 2] [--repeats 30] [--activation none]
                                                   [--images 1000] [--profile]

Prints medians (and minima) in ms over ``--repeats`` timed calls after a warm-up, for
  * plain forward: ``functional_forward`` (F.conv2d / F.max_pool2d / F.linear) alone, no loss
  * plain loss:    ``plain_loss`` (the same forward + F.cross_entropy)
  * fast loss:     one ``FixedBatchLoss`` call (weights change every call, the batch does not)
and fast / plain-forward. The candidates are timed round-robin (one call of each per round), so that
load from other processes on the machine hits all of them alike. ``--profile`` adds a torch.profiler
table of the fast path. Images: the first partial-MNIST training images if the data is found, else
random pixels (real digits have black borders, random pixels do not; the fast path does not depend on
it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pqt.targets import PaperCNN, functional_forward, n_parameters  # noqa: E402
from pqt.targets.paper_cnn_fast import FixedBatchLoss, plain_loss  # noqa: E402


def load_images(n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from pqt.data import load_dataset

        train, _ = load_dataset("partial-mnist", None, download=False)
        if len(train.labels) >= n:
            return train.images[:n].float(), train.labels[:n].long(), "partial-mnist"
    except Exception as exc:  # the script must run anywhere; say what it used
        print(f"(no partial-mnist data: {exc}; using random pixels)")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g).float() / 255
    return images, torch.randint(0, 10, (n,), generator=g), "random pixels"


def round_robin(cands: dict[str, Callable[[], object]], repeats: int, warmup: int = 5) -> dict[str, list[float]]:
    for fn in cands.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(repeats):
        for k, fn in cands.items():
            start = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--activation", default="none")
    ap.add_argument("--profile", action="store_true", help="also print a torch.profiler table of the fast path")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    images, labels, source = load_images(args.images)
    target = PaperCNN(args.activation)
    g = torch.Generator().manual_seed(0)
    # A fresh weight vector per call, as in COBYLA (cycled through a pool to keep generation out of the timing).
    pool = [torch.randn(n_parameters(target), generator=g) * 0.1 for _ in range(8)]
    fixed = FixedBatchLoss(target, images, labels)
    it = {"fwd": 0, "plain": 0, "fast": 0}

    def nxt(k: str) -> torch.Tensor:
        it[k] += 1
        return pool[it[k] % len(pool)]

    def plain_forward() -> torch.Tensor:
        with torch.inference_mode():
            return functional_forward(target, nxt("fwd"), images)

    cands: dict[str, Callable[[], object]] = {
        "plain forward (no loss)": plain_forward,
        "plain loss": lambda: plain_loss(target, nxt("plain"), images, labels),
        "FixedBatchLoss": lambda: fixed(nxt("fast")),
    }
    times = round_robin(cands, args.repeats)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {len(labels)} images ({source}), "
          f"activation {args.activation!r}, fast path {fixed.fast}, {args.repeats} repeats")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"  {k:26s} median {med[k]:7.2f} ms   min {min(v):7.2f} ms")
    worst = max(abs(fixed(w) - plain_loss(target, w, images, labels)) / abs(plain_loss(target, w, images, labels))
                for w in pool)
    fwd = med["plain forward (no loss)"]
    print(f"  fast / plain forward  = {med['FixedBatchLoss'] / fwd:.3f}")
    print(f"  fast / plain loss     = {med['FixedBatchLoss'] / med['plain loss']:.3f}")
    print(f"  max relative loss difference fast vs plain: {worst:.2e}")

    if args.profile:
        from torch.profiler import profile

        with profile() as prof:
            for w in pool * 3:
                fixed(w)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
