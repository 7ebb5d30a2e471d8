"""``pqt distill`` (a PQKD student, or the classical KD baseline) and ``pqt teacher`` (its teacher)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pqt.cli.flags import add_config_flags
from pqt.cli.train import add_output_flags, print_plan, run_training
from pqt.distill.config import DistillConfig

# A resume may also point at the same teacher in another place (its SHA-256 is checked).
DISTILL_RESUME_CHANGEABLE = DistillConfig.RESUME_CHANGEABLE


def add_distill_parsers(sub: Any) -> None:
    p = sub.add_parser("distill", help="distil a teacher into a small student conditioned by photonic features "
                                       "(PQKD)",
                       description="Train a dictionary-convolution student whose channel mixing comes from a "
                                   "photonic circuit's shot-limited, EMA-smoothed output distribution, distilling a "
                                   "teacher from 'pqt teacher'. The deployed student (model.pt) is a plain network. "
                                   "Every flag is also a key of the --config file; flags override it.")
    add_config_flags(p, DistillConfig)
    out = add_output_flags(p, "the learning rates, --rounds, --max-shots, --threads, --device, --teacher (the same "
                              "teacher, moved) and the cloud connection settings")
    out.add_argument("--params", action="store_true", help="print the parameter accounting, then stop")
    out.add_argument("--json", action="store_true", help="with --params or --dry-run: print JSON")
    p.set_defaults(func=cmd_distill)

    # pqt teacher's defaults live in the torch-free config module, so that building the parser stays fast
    from pqt.distill import config as defaults

    p = sub.add_parser("teacher", help="train a distillation teacher (a high-capacity CNN) for a dataset",
                       description="Train the classical teacher that 'pqt distill --teacher DIR' distils. An "
                                   "interrupted run resumes when the same command is run again.")
    p.add_argument("--dataset", default="partial-mnist",
                   choices=("partial-mnist", "mnist", "fashion-mnist", "perceval-quest", "cifar-10"),
                   help="dataset (default: partial-mnist)")
    p.add_argument("--data-dir", metavar="DIR", help="data folder (else PQT_DATA_DIR, else ../shared/data)")
    p.add_argument("--architecture", choices=("teacher-cnn", "teacher-resnet"),
                   help="teacher network (default: teacher-resnet for cifar-10, teacher-cnn otherwise)")
    p.add_argument("--epochs", type=int, default=defaults.TEACHER_DEFAULT_EPOCHS, help="epochs (default: %(default)s)")
    p.add_argument("--lr", type=float, default=defaults.TEACHER_DEFAULT_LR,
                   help="Adam learning rate (default: %(default)s)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="cosine",
                   help="learning rate: constant, or cosine decay to 0 over the epochs (default: cosine)")
    p.add_argument("--augment-shift", type=int, default=defaults.TEACHER_DEFAULT_AUGMENT_SHIFT, metavar="PIXELS",
                   help="translate each training image by a random offset of up to PIXELS, afresh every epoch "
                        "(0: off; default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=defaults.TEACHER_DEFAULT_BATCH_SIZE,
                   help="batch size (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--train-limit", type=int, metavar="N", help="use only the first N training images")
    p.add_argument("--test-limit", type=int, metavar="N", help="use only the first N test images")
    p.add_argument("--validation-size", type=int, default=0, metavar="N",
                   help="hold out the last N training images (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/teacher-<dataset>-<timestamp>); an "
                                                "unfinished teacher there is resumed, a finished one reused")
    p.set_defaults(func=cmd_teacher)


def cmd_distill(args: argparse.Namespace) -> int:
    from pqt.distill.accounting import distill_parameter_report, plan_distill

    if args.params:
        from pqt.cli.flags import config_from_args

        report = distill_parameter_report(config_from_args(args, DistillConfig))
        print(json.dumps(report, indent=2) if args.json else format_report(report))
        return 0

    def dry_run(config: Any, resume_dir: Path | None) -> None:
        plan = plan_distill(config)
        if args.json:
            print(json.dumps(plan, indent=2))
        else:
            print_plan(plan)

    def start_line(config: Any, trainer: Any, out: Path) -> str:
        r, d = trainer.report, trainer.method.describe()
        teacher = trainer.method.teacher
        return (f"pqt distill -> {out} | {config.dataset} {len(trainer.train_set)}/{len(trainer.test_set)} | "
                f"{d['kind']} student {'-'.join(map(str, config.widths))}"
                + (f" K={config.basis}" if config.student == "dictionary" else "")
                + f" | teacher {teacher.parameters if teacher else 'none'} | backend {config.backend} shots "
                  f"{config.shots or 'exact'} | trainable {r['trainable_parameters']} (student "
                  f"{r['student_trainable_parameters']} + phases {r['photonic_parameters']}); deployed "
                  f"{r['deployed_parameters']}")

    return run_training(args, DistillConfig, DISTILL_RESUME_CHANGEABLE, dry_run, start_line)


def format_report(r: dict[str, Any]) -> str:
    s = r["student"]
    shape = f"{s['kind']} student, widths {'-'.join(map(str, s['widths']))}, k = {s['kernel_size']}"
    if s["kind"] == "dictionary":
        shape += f", K = {s['basis']} basis filters per layer, coefficients {s['coefficients']}"
    rows = [("teacher", r["teacher_parameters"] if r["teacher_parameters"] is not None else "none"),
            ("student trainable", r["student_trainable_parameters"]),
            ("  basis filters", r["basis_parameters"]), ("  mixing scale + shift", r["mixing_parameters"]),
            ("  conv biases", r["conv_bias_parameters"]), ("  head", r["head_parameters"]),
            ("photonic phases", r["photonic_parameters"]), ("trainable total", r["trainable_parameters"]),
            ("fixed transform entries (not trained)", r["fixed_transform_entries"]),
            ("deployed student (student-cnn)", r["deployed_parameters"])]
    width = max(len(name) for name, _ in rows)
    lines = [shape, *(f"{name:<{width}}  {value:>9,}" if isinstance(value, int) else f"{name:<{width}}  {value:>9}"
                      for name, value in rows)]
    lines.append(f"compression: deployed / trainable = {r['compression_ratio']:.2f}x")
    return "\n".join(lines)


def cmd_teacher(args: argparse.Namespace) -> int:
    from pqt.data import input_shape_of
    from pqt.distill.teacher import default_architecture, train_teacher
    from pqt.errors import UserError
    from pqt.studies.baseline_config import BaselineConfig
    from pqt.studies.sweep import inspect_run
    from pqt.training import run_files

    for name in ("epochs", "batch_size", "threads", "train_limit", "test_limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a whole number >= 1 (got {value})")
    architecture = args.architecture or default_architecture(input_shape_of(args.dataset))
    if args.augment_shift < 0:
        raise UserError(f"--augment-shift must be a whole number >= 0 (got {args.augment_shift})")
    if not args.lr > 0:
        raise UserError(f"--lr must be a number > 0 (got {args.lr})")
    config = BaselineConfig(method="classical", epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                            augment_shift=args.augment_shift, lr_schedule=args.lr_schedule,
                            seed=args.seed, target=architecture, activation="relu", dataset=args.dataset,
                            data_dir=args.data_dir, train_limit=args.train_limit, test_limit=args.test_limit,
                            validation_size=args.validation_size, device=args.device,
                            threads=args.threads).validate()
    out = Path(args.out) if args.out else Path("runs") / f"teacher-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    state, detail = inspect_run(out, "baseline", config.to_dict())
    if state == "mismatch":
        raise UserError(detail)
    try:
        metrics = train_teacher(config, out)
    except KeyboardInterrupt:
        print(f"pqt: interrupted; finished epochs are kept in {out}; run the same command again to continue",
              file=sys.stderr)
        return 130
    print(f"teacher {architecture} ({metrics['trainable_parameters']:,} parameters) on {args.dataset}: test accuracy "
          f"{100 * metrics['test_accuracy']:.2f}% after {metrics['epochs_completed']} epochs; "
          f"use it with 'pqt distill --teacher {out}' (model in {out / run_files.MODEL})")
    return 0
