"""The ``pqt`` command line: train, plan, params, evaluate, predict, bench, sweep.

Bad input ends with one line ``pqt: error: ...`` naming the problem and the fix, exit status 2;
no traceback. ``evaluate`` and ``predict`` never import perceval: a trained network is classical.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from pqt.errors import UserError
from pqt.training.config import TrainConfig, load_config_file


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + error
        raise UserError(f"{message} (see '{self.prog} --help')")


def _shots(value: str) -> int | None:
    if value.lower() == "exact":
        return None
    try:
        shots = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shots must be a whole number or 'exact' (got {value!r})") from None
    if shots < 1:
        raise argparse.ArgumentTypeError(f"shots must be >= 1 (got {shots}); use --shots exact for exact "
                                         "probabilities")
    return shots


# flag -> (config key, type, help); defaults live in TrainConfig and show in --help.
_TRAIN_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--dataset", "dataset", str, "mnist, fashion-mnist, perceval-quest or partial-mnist"),
    ("--data-dir", "data_dir", str, "folder holding the data (else PQT_DATA_DIR, else ../shared/data)"),
    ("--train-limit", "train_limit", int, "use only the first N training images"),
    ("--test-limit", "test_limit", int, "use only the first N test images"),
    ("--validation-size", "validation_size", int, "hold out the last N training images as a validation set"),
    ("--backend", "backend", str, "where the photonic QNNs run: slos, noisy or remote"),
    ("--shots", "shots", _shots, "shots per circuit evaluation, or 'exact'"),
    ("--max-shots", "max_shots", int, "total shot budget; the run stops cleanly before exceeding it"),
    ("--bond-dim", "bond_dim", int, "MPS bond dimension chi (>= 1)"),
    ("--mps-init-std", "mps_init_std", float, "std of the MPS core initialisation"),
    ("--scaling", "scaling", str, "probability scaling before the MPS: mean (paper) or none"),
    ("--target", "target", str, "target network (paper-cnn)"),
    ("--activation", "activation", str, "target activation: none (paper), relu, tanh, gelu"),
    ("--rounds", "rounds", int, "training rounds"),
    ("--adam-epochs", "adam_epochs", int, "Adam epochs on the MPS per round"),
    ("--adam-lr", "adam_lr", float, "Adam learning rate"),
    ("--lr-schedule", "lr_schedule", str, "Adam learning rates: constant (paper) or cosine decay over the run"),
    ("--batch-size", "batch_size", int, "Adam batch size"),
    ("--phase-optimizer", "phase_optimizer", str, "cobyla (paper), spsa or exact-gradient"),
    ("--phase-batch", "phase_batch", int, "training images in the phase objective (fixed per call)"),
    ("--cobyla-maxiter", "cobyla_maxiter", int, "COBYLA objective evaluations per round"),
    ("--cobyla-rhobeg", "cobyla_rhobeg", float, "COBYLA initial step"),
    ("--spsa-iterations", "spsa_iterations", int, "SPSA steps per round (2 evaluations each)"),
    ("--spsa-a", "spsa_a", float, "SPSA step-size gain a"),
    ("--spsa-c", "spsa_c", float, "SPSA perturbation size c"),
    ("--spsa-alpha", "spsa_alpha", float, "SPSA step-size decay exponent"),
    ("--spsa-gamma", "spsa_gamma", float, "SPSA perturbation decay exponent"),
    ("--phase-lr", "phase_lr", float, "exact-gradient: Adam learning rate of the phases"),
    ("--seed", "seed", int, "random seed"),
    ("--device", "device", str, "torch device for the MPS and CNN (cpu, cuda)"),
    ("--threads", "threads", int, "torch threads (default: torch's choice)"),
]


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    p.add_argument("--config", help="JSON or TOML file of config keys; flags override it")
    for flag, key, typ, text in _TRAIN_FLAGS:
        default = getattr(defaults, key)
        p.add_argument(flag, dest=key, type=typ, default=argparse.SUPPRESS,
                       help=f"{text} (default: {'exact' if key == 'shots' and default is None else default})")
    p.add_argument("--modes", dest="qnn_modes", type=int, nargs="+", default=argparse.SUPPRESS,
                   help="modes of each QNN (default: 9 8)")
    p.add_argument("--photons", dest="qnn_photons", type=int, nargs="+", default=argparse.SUPPRESS,
                   help="photons of each QNN (default: 4 4)")
    import backends

    seen: set[str] = set()
    for name in backends.available_backends():
        group = p.add_argument_group(f"{name} backend")
        for opt in backends.backend_class(name).options:
            if opt.secret or opt.name in seen:
                continue
            seen.add(opt.name)
            group.add_argument(f"--{opt.name}", dest=f"backend_option:{opt.key}", type=opt.type,
                               default=argparse.SUPPRESS, help=f"{opt.help} (default: {opt.default})")


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    data: dict[str, Any] = load_config_file(args.config) if getattr(args, "config", None) else {}
    options = dict(data.get("backend_options", {}))
    for key, value in vars(args).items():
        if key.startswith("backend_option:"):
            options[key.split(":", 1)[1]] = value
        elif key in TrainConfig.__dataclass_fields__:
            data[key] = value
    data["backend_options"] = options
    return TrainConfig.from_dict(data).validate()


def _cmd_train(args: argparse.Namespace) -> int:
    from pqt.circuits.photonic import restore_sigint
    from pqt.training import run_files
    from pqt.training.trainer import Trainer, plan_run

    if args.resume:
        out = Path(args.resume)
        if not (out / run_files.CHECKPOINT).is_file():
            raise UserError(f"{out} holds no checkpoint to resume ({out / run_files.CHECKPOINT} missing); "
                            "start a new run with --out DIR")
        data = _recorded_config(out)
        for key in ("rounds", "max_shots"):  # the only settings a resumed run may change
            if hasattr(args, key):
                data[key] = getattr(args, key)
        config = TrainConfig.from_dict(data).validate()
    else:
        config = _config_from_args(args)
        out = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if args.dry_run:
        _print_plan(plan_run(config))
        return 0
    if not args.resume and (out / run_files.CHECKPOINT).exists():
        raise UserError(f"{out} already holds a run; continue it with 'pqt train --resume {out}' or choose "
                        "another --out")
    trainer = Trainer(config, out, log=lambda line: _log(out, line))
    restore_sigint()  # backends may load more native code; Ctrl-C must stay a KeyboardInterrupt
    if args.resume:
        trainer.load()
        _log(out, f"resuming {out} after round {trainer.state.round} of {config.rounds}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        run_files.write_json(out / run_files.CONFIG, config.to_dict())
        trainer.save()  # a round-0 checkpoint: even a run killed in its first round can be resumed
        r = trainer.report
        _log(out, f"pqt train -> {out} | {config.dataset} {len(trainer.train_set)}/{len(trainer.test_set)} | "
                  f"backend {config.backend} shots {config.shots or 'exact'} | chi={config.bond_dim} | "
                  f"trainable {r['trainable_parameters']} (MPS {r['mps_parameters']} + phases "
                  f"{r['photonic_parameters']}) for {r['target_parameters']} weights")
    try:
        metrics = trainer.run()
    except KeyboardInterrupt:
        print(f"pqt: interrupted; {trainer.state.round} finished round(s) are kept in {out}; "
              f"continue with 'pqt train --resume {out}'", file=sys.stderr)
        return 130
    _log(out, f"done: test accuracy {100 * metrics['test_accuracy']:.2f}% after {metrics['rounds_completed']} "
              f"rounds in {metrics['wall_seconds']:.0f}s; metrics in {out / run_files.METRICS}, model in "
              f"{out / run_files.MODEL}")
    return 0


def _recorded_config(out: Path) -> dict[str, Any]:
    """The config a run recorded: config.json, else the copy inside its checkpoint."""
    from pqt.training import run_files

    path = out / run_files.CONFIG
    try:
        if path.is_file():
            return run_files.read_json(path)
        return run_files.load_torch(out / run_files.CHECKPOINT)["config"]
    except Exception as e:  # damaged files: name them, no traceback
        raise UserError(f"cannot read the run's config from {out} ({type(e).__name__}: {e}); "
                        "the run directory is damaged: start a new run with --out DIR") from None


def _log(out: Path, line: str) -> None:
    from pqt.training import run_files

    print(line, flush=True)
    if out.is_dir():
        run_files.append_log(out / run_files.LOG, line)


def _print_plan(plan: dict[str, Any]) -> None:
    print(f"rounds: {plan['rounds']}")
    print(f"circuit evaluations: {plan['circuit_evaluations_per_round']:,} per round, "
          f"{plan['circuit_evaluations_total']:,} in total (upper bound: COBYLA may stop early)")
    print(f"cloud jobs: {plan['jobs_per_round']:,} per round, {plan['jobs_total']:,} in total")
    print(f"shots: {plan['shots_per_round']:,} per round, {plan['shots_total']:,} in total")
    if plan["max_shots"] is not None:
        fits = plan["shots_total"] <= plan["max_shots"]
        print(f"--max-shots {plan['max_shots']:,}: " + ("enough" if fits else "the run will stop early"))


def _cmd_plan(args: argparse.Namespace) -> int:
    from pqt.training.trainer import plan_run

    _print_plan(plan_run(_config_from_args(args)))
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    from pqt.circuits.photonic import PhotonicQNN
    from pqt.distributions.combine import check_outcome_capacity
    from pqt.targets.networks import build_target, n_parameters
    from pqt.training.accounting import parameter_report

    base = _config_from_args(args)
    target = build_target(base.target, base.activation)
    pairs = list(zip(base.qnn_modes, base.qnn_photons, strict=True))
    check_outcome_capacity(pairs, n_parameters(target))
    qnns = [PhotonicQNN(m, n) for m, n in pairs]
    rows = []
    for chi in args.bond_dims or [base.bond_dim]:
        base.bond_dim = chi
        rows.append({"bond_dim": chi, **parameter_report(base.validate(), qnns, target)})
    if args.json:
        print(json.dumps(rows if len(rows) > 1 else rows[0], indent=2))
        return 0
    print(f"QNNs: {', '.join(f'{q.modes} modes/{q.photons} photons ({q.n_parameters} phases)' for q in qnns)}")
    print(f"{'chi':>4} {'MPS':>6} {'phases':>7} {'total':>6} {'paper count':>12} {'target':>7} {'compression':>12}")
    for r in rows:
        print(f"{r['bond_dim']:>4} {r['mps_parameters']:>6} {r['photonic_parameters']:>7} "
              f"{r['trainable_parameters']:>6} {r['paper_count_parameters']:>12} {r['target_parameters']:>7} "
              f"{r['compression_ratio']:>11.2f}x")
    print("total counts live phases; 'paper count' uses the paper's 3M(M-1)/2 phases per mesh")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pqt.deploy import evaluate_model

    result = evaluate_model(args.model, args.dataset, args.data_dir, args.split, args.activation)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['dataset']} {result['split']} ({result['images']} images): accuracy "
              f"{100 * result['accuracy']:.2f}%, loss {result['loss']:.4f}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from pqt.deploy import predict_files

    for path, labels in predict_files(args.model, args.images, args.activation):
        print(f"{path}: {' '.join(str(v) for v in labels)}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from pqt.bench import run_bench

    run_bench(as_json=args.json, repeats=args.repeats)
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``command`` given, only that subcommand gets its full flags.

    Training flags include every backend's options, which imports the backends (and perceval);
    ``pqt evaluate`` and ``pqt predict`` must not pay for that, nor need perceval at all.
    """
    parser = _Parser(prog="pqt", description="Photonic Quantum-Train: photonic QNNs generate a CNN's weights.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def train_arguments(p: argparse.ArgumentParser, name: str) -> None:
        if command in (None, name):
            _add_train_arguments(p)

    p = sub.add_parser("train", help="train a network with photonic Quantum-Train")
    train_arguments(p, "train")
    p.add_argument("--out", help="output directory (default: runs/<timestamp>)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last finished round")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and shots the run needs, then stop")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("plan", help="jobs and shots a training configuration needs (same as train --dry-run)")
    train_arguments(p, "plan")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("params", help="parameter accounting for a configuration")
    train_arguments(p, "params")
    p.add_argument("--bond-dims", type=int, nargs="+", help="several bond dimensions, one row each")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_params)

    for name, text in (("evaluate", "accuracy of a trained model.pt on a dataset (no quantum software)"),
                       ("predict", "labels for images from a trained model.pt (no quantum software)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("model", help="model.pt, or a run directory holding one")
        p.add_argument("--activation", help="target activation (default: from the run's config.json, else none)")
        if name == "evaluate":
            p.add_argument("--dataset", default="partial-mnist", help="dataset name (default: partial-mnist)")
            p.add_argument("--data-dir", help="data folder (else PQT_DATA_DIR, else ../shared/data)")
            p.add_argument("--split", choices=("test", "train"), default="test")
            p.add_argument("--json", action="store_true", help="print JSON")
            p.set_defaults(func=_cmd_evaluate)
        else:
            p.add_argument("images", nargs="+", help="PNG/JPEG images, .npy arrays, IDX image files or CSVs")
            p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("bench", help="time our paths against the straightforward ones, in one run")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--repeats", type=int, default=15, help="timed repeats per measurement (median reported)")
    p.set_defaults(func=_cmd_bench)

    from pqt.studies.baselines import add_baseline_parser
    from pqt.studies.figures import add_figures_parser
    from pqt.studies.sweep import add_sweep_parser

    add_sweep_parser(sub)
    add_baseline_parser(sub)
    add_figures_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dotenv import load_dotenv

    load_dotenv(Path.cwd() / ".env", override=False)  # PQT_DATA_DIR, PCVL_CLOUD_TOKEN, ...
    try:
        argv = sys.argv[1:] if argv is None else argv
        command = next((a for a in argv if not a.startswith("-")), None)
        args = build_parser(command).parse_args(argv)
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"pqt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pqt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
