"""``pqt sweep``, ``pqt baseline`` and ``pqt figures``: studies built from many runs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from pqt.errors import UserError


def _cmd_sweep(args: argparse.Namespace) -> int:
    from pqt.studies.sweep import DEFAULT_OUT, DEFAULT_RESULTS, aggregate, describe_plan, load_study, run_sweep

    study = load_study(args.study, args.set or [])
    out = Path(args.out) if args.out else DEFAULT_OUT
    if args.results:
        results = Path(args.results)
    elif args.set:  # a study changed on the command line must not overwrite the real tables
        results = out / study.name / "results"
    else:
        results = DEFAULT_RESULTS
    if args.dry_run:
        print("\n".join(describe_plan(study, out)))
        return 0
    if args.aggregate_only:
        files = aggregate(study, out, results)
        print(f"results: {', '.join(str(f) for f in files)}")
        return 0
    ray = None
    if args.executor == "ray":
        from pqt.studies.sweep.ray_executor import RayOptions

        if args.cpus_per_run <= 0 or args.gpus_per_run < 0:
            raise UserError("--cpus-per-run must be > 0 and --gpus-per-run >= 0")
        ray = RayOptions(args.address, args.cpus_per_run, args.gpus_per_run)
    elif args.address:
        raise UserError("--address is for --executor ray")
    outcome = run_sweep(study, out, args.jobs, results, ray=ray)
    busy = f", {len(outcome.busy)} busy elsewhere" if outcome.busy else ""
    print(f"{len(outcome.finished)} run(s) finished now, {len(outcome.skipped)} already finished, "
          f"{len(outcome.failed)} failed{busy}; results: {', '.join(str(f) for f in outcome.result_files)}")
    for name, message in outcome.failed.items():
        print(f"  failed: {name}: {message}", file=sys.stderr)
    if outcome.interrupted:
        print(f"pqt: interrupted; finished runs and checkpoints are kept in {out / study.name}; run the same "
              "command again to continue", file=sys.stderr)
        return 130
    return 1 if outcome.failed else 0


def add_sweep_parser(sub: Any) -> None:
    """Register ``pqt sweep`` on the CLI's subparsers object."""
    from pqt.studies.sweep import DEFAULT_OUT, DEFAULT_RESULTS

    p = sub.add_parser("sweep", help="run a study (grid of runs) from a TOML file and aggregate its tables")
    p.add_argument("study", metavar="STUDY.toml", help="study TOML file (see experiments/README.md)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="runs in parallel, each in its own process with cores/jobs torch threads (default: 1)")
    p.add_argument("--out", metavar="DIR", help=f"root of the run directories (default: {DEFAULT_OUT})")
    p.add_argument("--results", metavar="DIR",
                   help=f"folder of the result tables (default: {DEFAULT_RESULTS}; with --set: OUT/<name>/results)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting (TOML value); on a grid key it keeps only the given value(s); "
                        "repeatable. The protocol label records the overrides")
    p.add_argument("--dry-run", action="store_true", help="list the runs and what would happen to each, then stop")
    p.add_argument("--aggregate-only", action="store_true", help="only rewrite the result tables from the runs")
    ray = p.add_argument_group("Ray (runs as tasks on a Ray cluster; run folders on storage every node sees)")
    ray.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local worker processes (--jobs) or Ray tasks (default: local)")
    ray.add_argument("--address", metavar="HOST:PORT",
                     help="Ray cluster to join (default: start a local one on this machine)")
    ray.add_argument("--cpus-per-run", type=float, default=1.0, metavar="N",
                     help="CPUs each run asks Ray for (its torch threads; default: 1)")
    ray.add_argument("--gpus-per-run", type=float, default=0.0, metavar="N",
                     help="GPUs each run asks Ray for; pair with --set device=cuda (default: 0)")
    p.set_defaults(func=_cmd_sweep)


_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--epochs", "epochs", int, "training epochs"),
    ("--lr", "lr", float, "Adam learning rate"),
    ("--batch-size", "batch_size", int, "batch size"),
    ("--seed", "seed", int, "random seed (initialisation, pruning mask, shuffling)"),
    ("--share-k", "share_k", int, "weight-sharing: shared row vectors per layer (required with that method)"),
    ("--keep-ratio", "keep_ratio", float, "pruning: fraction of each weight tensor kept, in (0, 1] (required with "
                                          "that method)"),
    ("--activation", "activation", str, "target activation: none (paper), relu, tanh, gelu"),
    ("--dataset", "dataset", str, "mnist, fashion-mnist, perceval-quest or partial-mnist"),
    ("--data-dir", "data_dir", str, "folder holding the data (else PQT_DATA_DIR, else ../shared/data)"),
    ("--train-limit", "train_limit", int, "use only the first N training images (default: all)"),
    ("--test-limit", "test_limit", int, "use only the first N test images (default: all)"),
    ("--validation-size", "validation_size", int, "hold out the last N training images as a validation set"),
    ("--device", "device", str, "torch device (cpu, cuda)"),
    ("--threads", "threads", int, "torch threads (default: torch's choice)"),
]


def _cmd_baseline(args: argparse.Namespace) -> int:
    from pqt.studies.baseline_config import BaselineConfig
    from pqt.studies.baselines import run_baseline, trainable_count
    from pqt.training import run_files
    from pqt.training.config import load_config_file

    data: dict[str, Any] = load_config_file(args.config) if args.config else {}
    for _, key, _, _ in _FLAGS:
        if hasattr(args, key):
            data[key] = getattr(args, key)
    if args.method is not None:
        data["method"] = args.method
    if getattr(args, "share_layers", None) is not None:
        data["share_layers"] = args.share_layers
    config = BaselineConfig.from_dict(data).validate()
    out = Path(args.out) if args.out else Path("runs") / f"baseline-{config.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.count_only:
        print(trainable_count(config))
        return 0
    from pqt.studies.sweep import inspect_run

    if inspect_run(out, "baseline", config.to_dict())[0] == "finished":
        print(f"{out} already holds this finished run; nothing to do")
        return 0
    try:
        metrics = run_baseline(config, out)
    except KeyboardInterrupt:
        print(f"pqt: interrupted; finished epochs are kept in {out}; run the same command again to continue",
              file=sys.stderr)
        return 130
    print(f"done: test accuracy {100 * metrics['test_accuracy']:.2f}% with {metrics['trainable_parameters']} "
          f"trainable parameters after {metrics['epochs_completed']} epochs in {metrics['wall_seconds']:.0f}s; "
          f"metrics in {out / run_files.METRICS}")
    return 0


def add_baseline_parser(sub: Any) -> None:
    """Register ``pqt baseline`` on the CLI's subparsers object."""
    from pqt.studies.baseline_config import METHODS, BaselineConfig

    defaults = BaselineConfig()
    p = sub.add_parser("baseline", help="train a classical baseline (paper Table 4): classical, weight-sharing, "
                                        "pruning")
    p.add_argument("--method", choices=METHODS, default=None, help="baseline method (default: classical)")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of baseline keys; flags override it")
    for flag, key, typ, text in _FLAGS:
        default = getattr(defaults, key)
        # a setting without a default says in its own text what happens when it is not given
        p.add_argument(flag, dest=key, type=typ, default=argparse.SUPPRESS,
                       metavar="DIR" if key == "data_dir" else {int: "N", float: "X"}.get(typ, "NAME"),
                       help=text if default is None else f"{text} (default: {default})")
    p.add_argument("--share-layers", nargs="+", default=None, metavar="LAYER",
                   help="weight-sharing: layers to share (default: all weight layers: conv1 conv2 fc1 fc2)")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/baseline-<method>-<timestamp>); an "
                                                "existing unfinished run there is resumed, a finished one skipped")
    p.add_argument("--count-only", action="store_true", help="print the exact trainable parameter count and stop")
    p.set_defaults(func=_cmd_baseline)


def _cmd_figures(args: argparse.Namespace) -> int:
    from pqt.studies.figures import make_figures

    written = make_figures(args.results, args.out)
    where = f" in {written[0].parent}" if written else ""
    print(f"{len(written)} figure(s){where}")
    return 0


def add_figures_parser(sub: Any) -> None:
    """Register ``pqt figures`` on the CLI's subparsers object."""
    p = sub.add_parser("figures", help="draw the paper-style figures (PNG) from the sweep result tables",
                       description="Draw the paper-style figures (PNG) from the result tables of pqt sweep. The "
                                   "defaults are the checkout's experiments/ folders, found from anywhere inside it.")
    p.add_argument("--results", metavar="DIR", help="folder of the result tables (default: experiments/results of "
                                                    "the checkout)")
    p.add_argument("--out", metavar="DIR", help="folder for the PNGs (default: experiments/figures of the checkout)")
    p.set_defaults(func=_cmd_figures)
