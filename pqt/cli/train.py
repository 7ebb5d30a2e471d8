"""``pqt train``, ``pqt plan`` and ``pqt params``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pqt.cli.flags import add_config_flags, config_from_args, given_settings
from pqt.errors import UserError
from pqt.training.config import RESUME_CHANGEABLE, TrainConfig, flag_of, flat_settings, setting_differences

TRAIN_EXAMPLES = """examples:
  a quick check (2 short rounds):
    pqt train --rounds 2 --adam-epochs 1 --cobyla-maxiter 50 --out runs/check
  the paper's protocol (200 rounds, 10,000 shots per circuit evaluation):
    pqt train --bond-dim 4 --out runs/chi4
  continue a stopped run (Ctrl-C, kill, a crash):
    pqt train --resume runs/chi4"""


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
                       usage="%(prog)s [--FLAG VALUE ...] [--out DIR | --resume DIR] [--dry-run]",
                       description="Train a target network whose weights a quantum circuit generates.\n"
                                   "Every flag is also a key of the --config file (flags override it).\n"
                                   "A run writes config.json, provenance.json, metrics.json, checkpoint.pt,\n"
                                   "model.pt and train.log in --out.",
                       epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p)
    add_output_flags(p, "the learning rates, --rounds, --max-shots, --threads, --device and the cloud connection "
                        "settings")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plan", help="circuit evaluations, cloud jobs and shots a configuration needs",
                       usage="%(prog)s [--FLAG VALUE ...]  (the flags of pqt train)")
    add_config_flags(p)
    p.add_argument("--resume", metavar="DIR",
                   help="plan the rest of the run in DIR: what it has spent (its job journal: submitted, uncertain, "
                        "abandoned and not cancelled jobs; shots charged) and what finishing it needs")
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


def resume_config(out: Path, args: argparse.Namespace, config_class: type[TrainConfig] = TrainConfig,
                  changeable: frozenset[str] | set[str] = RESUME_CHANGEABLE) -> tuple[TrainConfig, dict[str, Any]]:
    """The run's settings as of its last checkpoint, with the changes the flags ask for: (config, {key: [old, new]}).

    config.json keeps the settings the run started with; the checkpoint holds them with every change made by
    earlier resumes (which metrics.json lists under ``resumes``). A config.json that no longer says what the
    checkpoint says was edited by hand: that edit would be ignored, so it is refused (settings change by flags).
    """
    if getattr(args, "config", None):
        raise UserError("--config cannot be combined with --resume: the run's settings come from its checkpoint; "
                        "change the ones a resume may change with their flags (pqt train --resume DIR --adam-lr ...)")
    recorded, resumes, path = checkpoint_settings(out)
    try:
        base = config_class.from_dict(recorded).validate()
    except (UserError, TypeError, ValueError) as e:
        raise UserError(f"{path} holds damaged settings ({e}); start a new run with --out DIR") from None
    check_config_json(out, recorded, resumes, config_class)
    old = flat_settings(base.to_dict())
    changes = {}
    for key, value in flat_settings(given_settings_dict(args, config_class)).items():
        before = old.get(key)
        if value == before:
            continue
        if key not in changeable:
            extra = ", --teacher (the same teacher moved)" if "teacher" in changeable else ""
            raise UserError(f"--resume cannot change {flag_of(key)} ({before!r} -> {value!r}): it would no longer be "
                            f"the same run; start a new run with --out DIR (a resume may change: learning rates, "
                            f"--rounds, --max-shots, --threads, --device{extra} and the cloud connection settings)")
        changes[key] = [before, value]
    if "rounds" in changes and base.lr_schedule == "cosine":
        raise UserError("--resume cannot change --rounds of a run with --lr-schedule cosine: the schedule decays over "
                        "the planned rounds, so the run would not match an uninterrupted one; start a new run")
    data = dict(recorded)
    for key, (_, value) in changes.items():
        if key.startswith("backend_options."):
            data["backend_options"] = {**data.get("backend_options", {}), key.split(".", 1)[1]: value}
        else:
            data[key] = value
    return config_class.from_dict(data).validate(), changes


def given_settings_dict(args: argparse.Namespace, config_class: type[TrainConfig] = TrainConfig) -> dict[str, Any]:
    """The flags given, as a config dict (backend options nested, as in config files)."""
    given: dict[str, Any] = {}
    for key, value in given_settings(args, config_class).items():
        if key.startswith("backend_options."):
            given.setdefault("backend_options", {})[key.split(".", 1)[1]] = value
        else:
            given[key] = value
    return given


def checkpoint_settings(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]], Path]:
    """(the settings in the run's checkpoint, the changes its resumes made, the checkpoint's path)."""
    from pqt.training import run_files

    path = out / run_files.CHECKPOINT
    try:
        ck = run_files.load_torch(path)
        config, resumes = ck["config"], ck.get("resumes", [])
    except Exception as e:  # damaged, or not a checkpoint of ours (weights_only refuses pickled code): one line
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UserError(f"cannot read the run's checkpoint {path} ({type(e).__name__}: {detail}); it is damaged or "
                        "not a pqt checkpoint: start a new run with --out DIR") from None
    if not isinstance(config, dict) or not isinstance(resumes, list):
        raise UserError(f"{path} is not a pqt checkpoint (no settings in it); start a new run with --out DIR")
    return config, resumes, path


def check_config_json(out: Path, recorded: dict[str, Any], resumes: list[dict[str, Any]],
                      config_class: type[TrainConfig] = TrainConfig) -> None:
    """config.json must be readable, valid, and say what the checkpoint says the run started with."""
    from pqt.training import run_files

    path = out / run_files.CONFIG
    if not path.is_file():
        return  # the checkpoint records the settings (e.g. a run written through the Trainer API)
    fix = "restore it, or delete it (the checkpoint records the run's settings); change settings with flags"
    try:
        data = run_files.read_json(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:120]}): {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a run config (a JSON object): {fix}")
    try:
        config_class.from_dict(data).validate()
    except (UserError, TypeError, ValueError) as e:
        raise UserError(f"{path}: {e}: {fix}") from None
    started = flat_settings(recorded)
    for entry in reversed(resumes):  # undo the resumes' changes: the settings the run started with
        for key, (before, _) in (entry.get("changes") or {}).items():
            started[key] = before
    nested: dict[str, Any] = {k: v for k, v in started.items() if not k.startswith("backend_options.")}
    nested["backend_options"] = {k.split(".", 1)[1]: v for k, v in started.items() if k.startswith("backend_options.")}
    diffs = setting_differences(data, nested, ignore=frozenset())
    if diffs:
        listed = "; ".join(f"{k}: {a!r} in config.json, {b!r} in the checkpoint"
                           for k, (a, b) in list(diffs.items())[:3])
        raise UserError(f"{path} no longer matches the run's checkpoint ({listed}): it was edited, and the edit "
                        f"would be ignored: {fix} (pqt train --resume {out} --adam-lr ...)")


def cmd_train(args: argparse.Namespace) -> int:
    from pqt.training.accounting import plan_run, spent_so_far

    def start_line(config: TrainConfig, trainer: Any, out: Path) -> str:
        r = trainer.report
        return (f"pqt train -> {out} | {config.dataset} {len(trainer.train_set)}/{len(trainer.test_set)} | "
                f"{trainer.method.describe()['kind']} generator, {config.mapper_kind} mapper | "
                f"backend {config.backend} shots {config.shots or 'exact'} | "
                f"trainable {r['trainable_parameters']} (mapper {r['mapper_parameters']} + circuits "
                f"{r['circuit_parameters']}) for {r['target_parameters']} weights")

    def dry_run(config: TrainConfig, resume_dir: Path | None) -> None:
        spent = spent_so_far(resume_dir, config) if resume_dir is not None else None
        print_plan(plan_run(config, done_rounds=spent["rounds_completed"] if spent else 0), spent)

    return run_training(args, TrainConfig, RESUME_CHANGEABLE, dry_run, start_line)


def run_training(args: argparse.Namespace, config_class: type[TrainConfig], changeable: frozenset[str] | set[str],
                 dry_run: Callable[[TrainConfig, Path | None], None],
                 start_line: Callable[[TrainConfig, Any, Path], str]) -> int:
    """A training command (``pqt train``, ``pqt distill``): new run, --resume, --dry-run, Ctrl-C and SIGTERM, logs.

    ``dry_run(config, resume_dir)`` prints the plan (resume_dir: the run being resumed, else None).
    """
    from pqt.interrupts import sigterm_as_interrupt

    with sigterm_as_interrupt():  # `kill` stops a run as Ctrl-C does: message, status "interrupted", rounds kept
        return _run_training(args, config_class, changeable, dry_run, start_line)


def _run_training(args: argparse.Namespace, config_class: type[TrainConfig], changeable: frozenset[str] | set[str],
                  dry_run: Callable[[TrainConfig, Path | None], None],
                  start_line: Callable[[TrainConfig, Any, Path], str]) -> int:
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
        dry_run(config, out if args.resume else None)
        return 0
    if not args.resume and (out / run_files.CHECKPOINT).exists():
        raise UserError(f"{out} already holds a run; continue it with 'pqt {command} --resume {out}' or choose "
                        "another --out")
    from pqt.interrupts import restore_sigint
    from pqt.training.progress import RunProgress
    from pqt.training.trainer import Trainer

    progress = RunProgress(show_rounds=True)
    # The trainer's detailed round lines go to train.log only; the console gets the short ones (progress).
    trainer = Trainer(config, out, log=lambda line: run_files.append_log(out / run_files.LOG, line),
                      progress=progress)
    restore_sigint()  # backends may load more native code; Ctrl-C must stay a KeyboardInterrupt
    busy = busy_machine_note(config.threads)  # after every check: a refused run still gets one line
    if busy:
        print(busy, file=sys.stderr)
    if not args.resume:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the output folder {out} ({e.strerror or e}): choose a writable --out") \
                from None
    lock = run_files.RunLock(out)  # one process trains a run folder at a time (pqt train, a sweep worker)
    try:
        taken = lock.acquire()
    except OSError as e:
        raise UserError(f"cannot lock {out} ({e.strerror or e}): choose a writable --out") from None
    if taken is not None:
        raise UserError(f"{out}: {taken.replace('; skipped', '')}; wait for it to stop (or stop it) first")
    try:
        return _train_locked(trainer, progress, config, out, args.resume, changes, start_line, command)
    finally:
        lock.release()


def _train_locked(trainer: Any, progress: Any, config: TrainConfig, out: Path, resume: bool,
                  changes: dict[str, Any], start_line: Callable[[TrainConfig, Any, Path], str], command: str) -> int:
    """Train a run folder this process holds: record the resume or write the new run's config, train, report."""
    from pqt.interrupts import Terminated
    from pqt.training import provenance, run_files

    def say(line: str) -> None:  # console and train.log
        progress.write(line)
        if out.is_dir():
            run_files.append_log(out / run_files.LOG, line)

    if not resume and (out / run_files.CHECKPOINT).exists():  # another process started it meanwhile
        raise UserError(f"{out} already holds a run; continue it with 'pqt {command} --resume {out}' or choose "
                        "another --out")
    if resume:
        trainer.load()
        if changes:
            trainer.record_resume_changes(changes)
        provenance.record(out, config.dataset, config.data_dir, config.threads, config.device, "resume")
        note = "; changed: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()) if changes else ""
        say(f"resuming {out} after round {trainer.state.round} of {config.rounds}{note}")
    else:
        run_files.write_json(out / run_files.CONFIG, config.to_dict())
        provenance.record(out, config.dataset, config.data_dir, config.threads, config.device, "start")
        # (the round-0 checkpoint, so that even a run killed in its first round can be resumed, is written by
        # Trainer.begin_attempt)
        say(start_line(config, trainer, out))
    try:
        metrics = trainer.run()
    except KeyboardInterrupt as e:
        why = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        message = (f"{why}; {trainer.state.round} finished round(s) are kept in {out}; continue with "
                   f"'pqt {command} --resume {out}'")
        with contextlib.suppress(UserError):  # a full disk: the message still reaches the console
            run_files.append_log(out / run_files.LOG, message)
        print(f"pqt: {message}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    for note in metrics.get("notes") or []:  # cloud jobs the run may still be billed for (also in train.log)
        print(f"pqt: note: {note}", file=sys.stderr)
    say(f"done: test accuracy {100 * metrics['test_accuracy']:.2f}% after {metrics['rounds_completed']} rounds in "
        f"{metrics['wall_seconds']:.0f}s ({metrics['wall_seconds_attempt']:.0f}s in this attempt); metrics in "
        f"{out / run_files.METRICS}, model in {out / run_files.MODEL}, per-round details in {out / run_files.LOG}")
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


def print_plan(plan: dict[str, Any], spent: dict[str, Any] | None = None) -> None:
    """The plan of a configuration; for a run to resume, what it has spent and what finishing it needs."""
    if spent is not None:
        print(f"run {spent['run_dir']}: {spent['rounds_completed']} of {plan['rounds']} rounds done; shots used by "
              f"results {spent['shots_used']:,}, charged (worst case) {spent['shots_charged']:,}")
        if spent["cloud"]:
            not_cancelled = spent["jobs_not_cancelled"]
            print(f"cloud jobs so far (journal): {spent['jobs_submitted']:,} submitted, {spent['jobs_uncertain']:,} "
                  f"uncertain (creation unanswered: may exist), {spent['jobs_abandoned']:,} abandoned, "
                  f"{len(not_cancelled)} not cancelled" + (f" ({', '.join(not_cancelled)})" if not_cancelled else ""))
        print(f"to finish: {plan['rounds'] - spent['rounds_completed']} round(s)")
    else:
        print(f"rounds: {plan['rounds']}")
    if plan.get("simulated_circuits_per_adam_step"):
        n = plan["simulated_circuits_per_adam_step"]
        print(f"circuit evaluations: none on the backend; the trainer simulates {n} circuits exactly per Adam "
              f"step and {n} after each round (exact-gradient)")
    else:
        print(f"circuit evaluations: {plan['circuit_evaluations_per_round']:,} per round, "
              f"{plan['circuit_evaluations_total']:,} in total (upper bound: COBYLA may stop early)")
    retries = " (plus one for each lost job or unanswered creation, charged too)" if plan["jobs_total"] else ""
    print(f"cloud jobs: {plan['jobs_per_round']:,} per round, {plan['jobs_total']:,} in total{retries}")
    print(f"shots: {plan['shots_per_round']:,} per round, {plan['shots_total']:,} in total")
    if plan["max_shots"] is not None:
        charged = spent["shots_charged"] if spent else 0
        fits = charged + plan["shots_total"] <= plan["max_shots"]
        already = f" ({charged:,} charged already)" if spent else ""
        print(f"--max-shots {plan['max_shots']:,}{already}: " + ("enough" if fits else "the run will stop early"))


def cmd_plan(args: argparse.Namespace) -> int:
    from pqt.training.accounting import plan_run, spent_so_far

    if args.resume:
        out = Path(args.resume)
        config, _ = resume_config(out, args)
        spent = spent_so_far(out, config)
        print_plan(plan_run(config, done_rounds=spent["rounds_completed"]), spent)
        return 0
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
