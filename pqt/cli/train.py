"""``pqt train``, ``pqt plan`` and ``pqt params``."""

from __future__ import annotations

import argparse
import json
import sys
import time
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

TRAIN_EXAMPLES = """examples:
  a quick check (2 short rounds):
    pqt train --rounds 2 --adam-epochs 1 --cobyla-maxiter 50 --out runs/check
  the paper's protocol (200 rounds, 10,000 shots per circuit evaluation):
    pqt train --bond-dim 4 --out runs/chi4
  continue a stopped run (Ctrl-C, kill, a crash):
    pqt train --resume runs/chi4"""


def add_train_parsers(sub: Any) -> None:
    p = sub.add_parser("train", help="train a network with Quantum-Train (photonic or gate-based)",
                       usage="%(prog)s [--FLAG VALUE ...] [--out DIR | --resume DIR] [--dry-run]",
                       description="Train a target network whose weights a quantum circuit generates.\n"
                                   "Every flag is also a key of the --config file (flags override it).\n"
                                   "A run writes config.json, provenance.json, metrics.json, checkpoint.pt,\n"
                                   "model.pt and train.log in --out.",
                       epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p)
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="output directory (default: runs/<timestamp>)")
    out.add_argument("--resume", metavar="DIR",
                     help="continue the run in DIR from its last finished round; only the learning rates, "
                          "--rounds, --max-shots, --threads, --device and the cloud connection settings may change")
    out.add_argument("--dry-run", action="store_true", help="print the jobs and shots the run needs, then stop")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plan", help="circuit evaluations, cloud jobs and shots a configuration needs",
                       usage="%(prog)s [--FLAG VALUE ...]  (the flags of pqt train)")
    add_config_flags(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("params", help="parameter accounting for a configuration (no data, no training)",
                       usage="%(prog)s [--bond-dims CHI ... | --block-counts L ...] [--json] [--FLAG VALUE ...]")
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


def resume_config(out: Path, args: argparse.Namespace) -> tuple[TrainConfig, dict[str, Any]]:
    """The run's settings as of its last checkpoint, with the changes the flags ask for: (config, {key: [old, new]}).

    config.json keeps the settings the run started with; the checkpoint holds them with every change made by
    earlier resumes (which metrics.json lists under ``resumes``).
    """
    recorded = recorded_config(out, prefer_checkpoint=True)
    try:
        base = TrainConfig.from_dict(recorded).validate()
    except (TypeError, ValueError) as e:
        raise UserError(f"{out / 'config.json'} is damaged ({e}); start a new run with --out DIR") from None
    old = _flat(base.to_dict())
    changes = {}
    for key, value in given_settings(args).items():
        value = list(value) if isinstance(value, tuple) else value
        before = list(old[key]) if isinstance(old.get(key), tuple) else old.get(key)
        if value == before:
            continue
        if key not in RESUME_CHANGEABLE:
            flag = "--" + key.split(".")[-1].replace("_", "-")
            raise UserError(f"--resume cannot change {flag} ({before!r} -> {value!r}): it would no longer be the "
                            f"same run; start a new run with --out DIR (a resume may change: learning rates, "
                            "--rounds, --max-shots, --threads, --device and the cloud connection settings)")
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
    return TrainConfig.from_dict(data).validate(), changes


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
    from pqt.interrupts import sigterm_as_interrupt

    with sigterm_as_interrupt():  # `kill` stops a run as Ctrl-C does: message, status "interrupted", rounds kept
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from pqt.training import run_files
    from pqt.training.accounting import plan_run

    changes: dict[str, Any] = {}
    if args.resume:
        out = Path(args.resume)
        if not (out / run_files.CHECKPOINT).is_file():
            raise UserError(f"{out} holds no checkpoint to resume ({out / run_files.CHECKPOINT} missing); "
                            "start a new run with --out DIR")
        config, changes = resume_config(out, args)
    else:
        config = config_from_args(args)
        out = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if args.dry_run:
        print_plan(plan_run(config))
        return 0
    if not args.resume and (out / run_files.CHECKPOINT).exists():
        raise UserError(f"{out} already holds a run; continue it with 'pqt train --resume {out}' or choose "
                        "another --out")
    from pqt.interrupts import Terminated, restore_sigint
    from pqt.training import provenance
    from pqt.training.progress import RunProgress
    from pqt.training.trainer import Trainer

    progress = RunProgress(show_rounds=True)

    def say(line: str) -> None:  # console and train.log
        progress.write(line)
        if out.is_dir():
            run_files.append_log(out / run_files.LOG, line)

    # The trainer's detailed round lines go to train.log only; the console gets the short ones (progress).
    trainer = Trainer(config, out, log=lambda line: run_files.append_log(out / run_files.LOG, line),
                      progress=progress)
    restore_sigint()  # backends may load more native code; Ctrl-C must stay a KeyboardInterrupt
    busy = busy_machine_note(config.threads)  # after every check: a refused run still gets one line
    if busy:
        print(busy, file=sys.stderr)
    if args.resume:
        trainer.load()
        if changes:
            trainer.record_resume_changes(changes)
        provenance.record(out, config.dataset, config.data_dir, config.threads, config.device, "resume")
        note = "; changed: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()) if changes else ""
        say(f"resuming {out} after round {trainer.state.round} of {config.rounds}{note}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        run_files.write_json(out / run_files.CONFIG, config.to_dict())
        provenance.record(out, config.dataset, config.data_dir, config.threads, config.device, "start")
        trainer.save()  # a round-0 checkpoint: even a run killed in its first round can be resumed
        r = trainer.report
        say(f"pqt train -> {out} | {config.dataset} {len(trainer.train_set)}/{len(trainer.test_set)} | "
            f"{trainer.method.describe()['kind']} generator, {config.mapper_kind} mapper | "
            f"backend {config.backend} shots {config.shots or 'exact'} | "
            f"trainable {r['trainable_parameters']} (mapper {r['mapper_parameters']} + circuits "
            f"{r['circuit_parameters']}) for {r['target_parameters']} weights")
    try:
        metrics = trainer.run()
    except KeyboardInterrupt as e:
        why = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        message = (f"{why}; {trainer.state.round} finished round(s) are kept in {out}; continue with "
                   f"'pqt train --resume {out}'")
        run_files.append_log(out / run_files.LOG, message)
        print(f"pqt: {message}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    say(f"done: test accuracy {100 * metrics['test_accuracy']:.2f}% after {metrics['rounds_completed']} rounds in "
        f"{metrics['wall_seconds']:.0f}s; metrics in {out / run_files.METRICS}, model in {out / run_files.MODEL}, "
        f"per-round details in {out / run_files.LOG}")
    return 0


def busy_machine_note(threads: int | None) -> str | None:
    """A hint when torch would take every core of a machine other jobs already keep busy.

    Measured here (2 cores, load average ~8), training time of the two-round check: 15 s with --threads 1,
    23 s with torch's default of one thread per core and OpenMP's passive wait policy (pqt's default),
    101 s with spinning threads (OMP_WAIT_POLICY=ACTIVE, libgomp's default, 190 s in an earlier run).
    The default stays one thread per core, which is faster on a quiet machine, and does not follow the
    load: the thread count changes results, so the same command must not depend on what else runs.
    """
    import os

    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    if threads is not None or cores < 2 or load < cores:
        return None
    spinning = os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"
    return (f"pqt: note: this machine is busy (load average {load:.1f} on {cores} cores); --threads 1 is often "
            + ("several times faster than torch's default of one thread per core here (OMP_WAIT_POLICY is not "
               "PASSIVE)" if spinning else "faster than torch's default of one thread per core here"))


def print_plan(plan: dict[str, Any]) -> None:
    print(f"rounds: {plan['rounds']}")
    if plan.get("simulated_circuits_per_adam_step"):
        n = plan["simulated_circuits_per_adam_step"]
        print(f"circuit evaluations: none on the backend; the trainer simulates {n} circuits exactly per Adam "
              f"step and {n} after each round (exact-gradient)")
    else:
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
