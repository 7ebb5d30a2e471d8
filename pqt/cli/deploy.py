"""``pqt evaluate`` and ``pqt predict``: a trained network, no quantum software."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_deploy_parsers(sub: Any) -> None:
    for name, text in (("evaluate", "accuracy of a trained model.pt on a dataset (no quantum software)"),
                       ("predict", "class probabilities for image files from a trained model.pt (no quantum "
                                   "software)")):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("model", help="model.pt, or a run directory holding one")
        p.add_argument("--target", metavar="NAME",
                       help="target network (default: from the run's config.json, else paper-cnn)")
        p.add_argument("--activation", choices=("none", "relu", "tanh", "gelu"),
                       help="target activation (default: from the run's config.json, else the target's own)")
        if name == "evaluate":
            p.add_argument("--dataset", help="dataset name (default: the one the run was trained on)")
            p.add_argument("--data-dir", metavar="DIR", help="data folder (else PQT_DATA_DIR, else ../shared/data)")
            p.add_argument("--split", choices=("test", "train"), default="test", help="(default: test)")
            p.add_argument("--confusion", action="store_true",
                           help="also print the confusion matrix (rows: true class, columns: predicted)")
            p.add_argument("--json", action="store_true",
                           help="print one JSON object: dataset, split, images, accuracy, loss (and classes, "
                                "confusion with --confusion)")
            p.set_defaults(func=cmd_evaluate)
        else:
            p.add_argument("images", nargs="+", metavar="IMAGE",
                           help="PNG/JPEG pictures, .npy arrays, IDX image files or Perceval Quest CSVs")
            p.add_argument("--invert", action=argparse.BooleanOptionalAction, default=None,
                           help="flip dark-on-light digit images to the training data's light-on-dark: --invert "
                                "always, --no-invert never (default: when an image's border is light)")
            p.add_argument("--top", type=int, default=3, metavar="K", help="classes shown per image (default: 3)")
            p.add_argument("--json", action="store_true",
                           help="print JSON: per file, its preparation and per image the top classes")
            p.set_defaults(func=cmd_predict)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pqt.deploy import evaluate_model

    result = evaluate_model(args.model, args.dataset, args.data_dir, args.split, args.activation, args.target,
                            confusion=args.confusion)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['dataset']} {result['split']} ({result['images']} images): accuracy "
          f"{100 * result['accuracy']:.2f}%, loss {result['loss']:.4f}")
    if args.confusion:
        print("\n".join(confusion_table(result["classes"], result["confusion"])))
    return 0


def confusion_table(classes: list[str], matrix: list[list[int]]) -> list[str]:
    """Rows: true class; columns: predicted class; last column: the row's accuracy (recall)."""
    short = [c if len(c) <= 6 else c[:5] + "." for c in classes]
    width = max(5, *(len(c) for c in short), *(len(str(v)) for row in matrix for v in row)) + 1
    corner = "true \\ predicted"
    label = max(len(corner), *(len(c) for c in classes))
    lines = [corner.ljust(label) + "".join(f"{c:>{width}}" for c in short) + f"{'correct':>9}"]
    for name, row in zip(classes, matrix, strict=True):
        total = sum(row)
        correct = f"{100 * row[classes.index(name)] / total:.1f}%" if total else "-"
        lines.append(f"{name:<{label}}" + "".join(f"{v:>{width}}" for v in row) + f"{correct:>9}")
    return lines


def _percent(p: float) -> str:
    """A probability to one decimal, never rounded to a certainty it is not."""
    if 0.999 < p < 1:
        return ">99.9%"
    if 0 < p < 0.0005:
        return "<0.1%"
    return f"{100 * p:.1f}%"


def cmd_predict(args: argparse.Namespace) -> int:
    from pqt.deploy import predict_files
    from pqt.errors import UserError

    if args.top < 1:
        raise UserError(f"--top must be at least 1 (got {args.top})")
    results = predict_files(args.model, args.images, args.activation, args.target, args.invert, args.top)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        predictions = result["predictions"]
        for p in predictions:
            where = result["file"] if len(predictions) == 1 else f"{result['file']}[{p['index']}]"
            ranked = " | ".join(f"{c['label']}{' ' + c['name'] if 'name' in c else ''} {_percent(c['probability'])}"
                                for c in p["top"])
            print(f"{where}: {ranked}")
        if result["preparation"]:
            print(f"  ({result['file']}: {'; '.join(result['preparation'])})")
    return 0
