"""``pqt evaluate`` and ``pqt predict``: a trained network, no quantum software."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_deploy_parsers(sub: Any) -> None:
    for name, text in (("evaluate", "accuracy of a trained model.pt on a dataset (no quantum software)"),
                       ("predict", "labels for images from a trained model.pt (no quantum software)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("model", help="model.pt, or a run directory holding one")
        p.add_argument("--target", metavar="NAME",
                       help="target network (default: from the run's config.json, else paper-cnn)")
        p.add_argument("--activation", choices=("none", "relu", "tanh", "gelu"),
                       help="target activation (default: from the run's config.json, else the target's own)")
        if name == "evaluate":
            p.add_argument("--dataset", help="dataset name (default: the one the run was trained on)")
            p.add_argument("--data-dir", metavar="DIR", help="data folder (else PQT_DATA_DIR, else ../shared/data)")
            p.add_argument("--split", choices=("test", "train"), default="test", help="(default: test)")
            p.add_argument("--json", action="store_true", help="print JSON")
            p.set_defaults(func=cmd_evaluate)
        else:
            p.add_argument("images", nargs="+", help="PNG/JPEG images, .npy arrays, IDX image files or CSVs")
            p.set_defaults(func=cmd_predict)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pqt.deploy import evaluate_model

    result = evaluate_model(args.model, args.dataset, args.data_dir, args.split, args.activation, args.target)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['dataset']} {result['split']} ({result['images']} images): accuracy "
              f"{100 * result['accuracy']:.2f}%, loss {result['loss']:.4f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pqt.deploy import predict_files

    for path, labels in predict_files(args.model, args.images, args.activation, args.target):
        print(f"{path}: {' '.join(str(v) for v in labels)}")
    return 0
