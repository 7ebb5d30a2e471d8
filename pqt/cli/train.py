"""``pqt train``, ``pqt plan`` and ``pqt params``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pqt.cli.flags import add_config_flags, config_from_args, given_settings
from pqt.errors import UserError
from pqt.training.config import TrainConfig

# What a resumed run may change: how fast it learns from here on, how long it runs, what it may spend, and
# how it talks to the cloud. Anything else would make the resumed run a different experiment.
RESUME_CHANGEABLE = {"adam_lr", "phase_lr", "rounds", "max_shots", "threads", "device",
                     "backend_options.cloud_url", "backend_options.max_retries", "backend_options.retry_backoff",
                     "backend_options.job_timeout", "backend_options.poll_interval",
                     "backend_options.request_timeout"}


def add_output_flags(p: argparse.ArgumentParser, changeable: str) -> argparse._ArgumentGroup:
    """--out, --resume and --dry-run of a training command; ``changeable`` lists what a resume may change."""
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="output directory (default: runs/<timestamp>)")
    out.add_argument("--resume", metavar="DIR",
                     help=f"continue the run in DIR from its last finished round; only {changeable} may change")
    out.add_argument("--dry-run", action="store_true", help="print the jobs and shots the run needs, then stop")
    return out


def add_train_parsers(sub: Any) -> None:
    p = sub.add_parser("train", help="train a network with Quantum-Train (photonic or gate-based)",
                       description="Train a target network whose weights a quantum circuit generates. Every flag "
                                   "is also a key of the --config file; flags override it.")
    add_config_flags(p)
    add_output_flags(p, "the learning rates, --rounds, --max-shots, --threads, --device and the cloud connection "
                        "settings")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plan", help="circuit evaluations, cloud jobs and shots a configuration needs")
    add_config_flags(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("params", help="parameter accounting for a configuration (no data, no training)")
    add_config_flags(p)
    extra = p.add_argument_group("table")
    extra.add_argument("--bond-dims", type=int, nargs="+", metavar="CHI", help="several bond dimensions, a row each")
    extra.add_argument("--block-counts", type=int, nargs="+", metavar="L",
                       help="several gate-based block counts, a row each")
    extra.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_params)


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in config.items() if k != "backend_options"}
    flat.update({f"backend_options.{k}": v for k, v in config.get("backend_options", {}).items()})
    return flat


def resume_config(out: Path, args: argparse.Namespace, config_class: type[TrainConfig] = TrainConfig,
                  changeable: frozenset[str] | set[str] = RESUME_CHANGEABLE) -> tuple[TrainConfig, dict[str, Any]]:
    """The run's settings as of its last checkpoint, with the changes the flags ask for: (config, {key: [old, new]}).

    config.json keeps the settings the run started with; the checkpoint holds them with every change made by
    earlier resumes (which metrics.json lists under ``resumes``).
    """
    recorded = recorded_config(out, prefer_checkpoint=True)
    try:
        base = config_class.from_dict(recorded).validate()
    except (TypeError, ValueError) as e:
        raise UserError(f"{out / 'config.json'} is damaged ({e}); start a new run with --out DIR") from None
    old = _flat(base.to_dict())
    changes = {}
    for key, value in given_settings(args, config_class).items():
        value = list(value) if isinstance(value, tuple) else value
        before = list(old[key]) if isinstance(old.get(key), tuple) else old.get(key)
        if value == before:
            continue
        if key not in changeable:
            flag = "--" + key.split(".")[-1].replace("_", "-")
            extra = ", --teacher (the same teacher moved)" if "teacher" in changeable else ""
            raise UserError(f"--resume cannot change {flag} ({before!r} -> {value!r}): it would no longer be the "
                            f"same run; start a new run with --out DIR (a resume may change: learning rates, "
                            f"--rounds, --max-shots, --threads, --device{extra} and the cloud connection settings)")
        changes[key] = [before, value]
    if "rounds" in changes and base.lr_schedule == "cosine":
        raise UserError("--resume cannot change --rounds of a run with --lr-schedule cosine: the schedule decays over "
                        "the planned rounds, so the run would not match an uninterrupted one; start a new run")
    data = dict(recorded)
    for key, (_, value) in changes.items():
        if key.startswith("backend_options."):
            data.setdefault("backend_options", {})[key.split(".", 1)[1]] = value
        else:
            data[key] = value
    return config_class.from_dict(data).validate(), changes


def recorded_config(out: Path, prefer_checkpoint: bool = False) -> dict[str, Any]:
    """The config a run recorded: config.json (as started), else (or, preferred, first) its checkpoint's copy.

    A config.json that exists must be readable either way: a damaged one means a damaged run directory.
    """
    from pqt.training import run_files

    path = out / run_files.CONFIG
    try:
        data = run_files.read_json(path) if path.is_file() else None
        if data is None or (prefer_checkpoint and (out / run_files.CHECKPOINT).is_file()):
            path = out / run_files.CHECKPOINT
            data = run_files.load_torch(path)["config"]
    except Exception as e:  # damaged files: name them, no traceback
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UserError(f"cannot read the run's config from {path} ({type(e).__name__}: {detail}); the run "
                        "directory is damaged: start a new run with --out DIR") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a run config (a JSON object); start a new run with --out DIR")
    return data


def cmd_train(args: argparse.Namespace) -> int:
    from pqt.training.accounting import plan_run

    def start_line(config: TrainConfig, trainer: Any, out: Path) -> str:
        r = trainer.report
        return (f"pqt train -> {out} | {config.dataset} {len(trainer.train_set)}/{len(trainer.test_set)} | "
                f"{trainer.method.describe()['kind']} generator, {config.mapper_kind} mapper | "
                f"backend {config.backend} shots {config.shots or 'exact'} | "
                f"trainable {r['trainable_parameters']} (mapper {r['mapper_parameters']} + circuits "
                f"{r['circuit_parameters']}) for {r['target_parameters']} weights")

    return run_training(args, TrainConfig, RESUME_CHANGEABLE, lambda config: print_plan(plan_run(config)),
                        start_line)


def run_training(args: argparse.Namespace, config_class: type[TrainConfig], changeable: set[str],
                 dry_run: Callable[[TrainConfig], None], start_line: Callable[[TrainConfig, Any, Path], str]) -> int:
    """A training command (``pqt train``, ``pqt distill``): new run, --resume, --dry-run, Ctrl-C, logs."""
    from pqt.training import run_files

    command = config_class.COMMAND
    changes: dict[str, Any] = {}
    if args.resume:
        out = Path(args.resume)
        if not (out / run_files.CHECKPOINT).is_file():
            raise UserError(f"{out} holds no checkpoint to resume ({out / run_files.CHECKPOINT} missing); "
                            "start a new run with --out DIR")
        config, changes = resume_config(out, args, config_class, changeable)
    else:
        config = config_from_args(args, config_class)
        out = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if args.dry_run:
        dry_run(config)
        return 0
    if not args.resume and (out / run_files.CHECKPOINT).exists():
        raise UserError(f"{out} already holds a run; continue it with 'pqt {command} --resume {out}' or choose "
                        "another --out")
    from pqt.interrupts import restore_sigint
    from pqt.training.trainer import Trainer

    trainer = Trainer(config, out, log=lambda line: log(out, line))
    restore_sigint()  # backends may load more native code; Ctrl-C must stay a KeyboardInterrupt
    if args.resume:
        trainer.load()
        if changes:
            trainer.record_resume_changes(changes)
        note = "; changed: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()) if changes else ""
        log(out, f"resuming {out} after round {trainer.state.round} of {config.rounds}{note}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        run_files.write_json(out / run_files.CONFIG, config.to_dict())
        trainer.save()  # a round-0 checkpoint: even a run killed in its first round can be resumed
        log(out, start_line(config, trainer, out))
    try:
        metrics = trainer.run()
    except KeyboardInterrupt:
        print(f"pqt: interrupted; {trainer.state.round} finished round(s) are kept in {out}; "
              f"continue with 'pqt {command} --resume {out}'", file=sys.stderr)
        return 130
    log(out, f"done: test accuracy {100 * metrics['test_accuracy']:.2f}% after {metrics['rounds_completed']} "
             f"rounds in {metrics['wall_seconds']:.0f}s; metrics in {out / run_files.METRICS}, model in "
             f"{out / run_files.MODEL}")
    return 0


def log(out: Path, line: str) -> None:
    from pqt.training import run_files

    print(line, flush=True)
    if out.is_dir():
        run_files.append_log(out / run_files.LOG, line)


def print_plan(plan: dict[str, Any]) -> None:
    print(f"rounds: {plan['rounds']}")
    print(f"circuit evaluations: {plan['circuit_evaluations_per_round']:,} per round, "
          f"{plan['circuit_evaluations_total']:,} in total (upper bound: COBYLA may stop early)")
    print(f"cloud jobs: {plan['jobs_per_round']:,} per round, {plan['jobs_total']:,} in total")
    print(f"shots: {plan['shots_per_round']:,} per round, {plan['shots_total']:,} in total")
    if plan["max_shots"] is not None:
        fits = plan["shots_total"] <= plan["max_shots"]
        print(f"--max-shots {plan['max_shots']:,}: " + ("enough" if fits else "the run will stop early"))


def cmd_plan(args: argparse.Namespace) -> int:
    from pqt.training.accounting import plan_run

    print_plan(plan_run(config_from_args(args)))
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from pqt.data import input_shape_of
    from pqt.generator import build_generator
    from pqt.targets import create_target, n_parameters
    from pqt.training.accounting import parameter_report

    base = config_from_args(args)
    target = create_target(base.target, input_shape_of(base.dataset), base.activation)
    m = n_parameters(target)
    variants: list[dict[str, Any]] = [{}]
    if args.bond_dims:
        variants = [{"bond_dim": v} for v in args.bond_dims]
    elif args.block_counts:
        variants = [{"blocks": v} for v in args.block_counts]
    rows = []
    for change in variants:
        config = TrainConfig.from_dict({**base.to_dict(), **change}).validate()
        generator = build_generator(config, m)
        rows.append({"bond_dim": config.bond_dim, "blocks": config.blocks,
                     "generator": generator.describe(), **parameter_report(generator, target)})
    if args.json:
        print(json.dumps(rows if len(rows) > 1 else rows[0], indent=2))
        return 0
    g = rows[0]["generator"]
    print(f"generator: {g['kind']}; circuits: " + ", ".join(_circuit_text(c) for c in g["circuits"]) +
          f"; mapper: {g['mapper']['kind']} ({g['mapper']['inputs']}); target: {base.target} ({m:,} weights)")
    # the size settings first: chi for an MPS mapper, L for a gate-based QNN
    keys = (["bond_dim"] if base.mapper_kind == "mps" else []) + (["blocks"] if base.generator == "qubit" else [])
    names = {"bond_dim": "chi", "blocks": "L"}
    print("".join(f"{names[k]:>5}" for k in keys) + f" {'mapper':>7} {'circuits':>9} {'total':>7} "
          f"{'paper count':>12} {'target':>8} {'compression':>12}")
    for r in rows:
        print("".join(f"{r[k]:>5}" for k in keys) + f" {r['mapper_parameters']:>7} {r['circuit_parameters']:>9} "
              f"{r['trainable_parameters']:>7} {r['paper_count_parameters']:>12} {r['target_parameters']:>8} "
              f"{r['compression_ratio']:>11.2f}x")
    print("total counts every circuit parameter that enters its circuit; 'paper count' uses the photonic "
          "paper's 3M(M-1)/2 phases per mesh")
    return 0


def _circuit_text(c: dict[str, Any]) -> str:
    if c["kind"] == "photonic":
        return f"{c['modes']} modes/{c['photons']} photons ({c['parameters']} phases)"
    return f"{c['qubits']} qubits x {c['blocks']} blocks ({c['parameters']} angles)"
