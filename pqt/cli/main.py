"""The ``pqt`` command line: train, plan, params, distill, teacher, evaluate, predict, bench, sweep, baseline,
figures.

Bad input ends with one line ``pqt: error: ...`` naming the problem and the fix, exit status 2; no
traceback. Each command imports what it needs when it runs (``pqt --help`` imports neither torch nor
Perceval), and ``evaluate`` / ``predict`` never import Perceval: a trained network is classical.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from pqt.errors import UserError


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # "--round 1" must not silently mean --rounds
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # one line, not usage + error
        raise UserError(f"{message} (see '{self.prog} --help')")


def _cmd_bench(args: argparse.Namespace) -> int:
    from pqt.bench import run_bench

    run_bench(as_json=args.json, repeats=args.repeats, only=args.only)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (cheap: building it imports neither torch nor Perceval)."""
    from pqt.cli.deploy import add_deploy_parsers
    from pqt.cli.distill import add_distill_parsers
    from pqt.cli.flags import whole_number
    from pqt.cli.studies import add_baseline_parser, add_figures_parser, add_sweep_parser
    from pqt.cli.train import add_train_parsers

    parser = _Parser(prog="pqt", description="Quantum-Train: quantum circuits (photonic or gate-based) generate the "
                                             "weights of a classical network, which then runs without them.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    add_train_parsers(sub)
    add_distill_parsers(sub)
    add_deploy_parsers(sub)
    p = sub.add_parser("bench", help="time our paths against the straightforward ones and the peers, in one run")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--repeats", type=whole_number(1), default=15, metavar="N",
                   help="timed repeats per measurement (median reported; default: 15)")
    p.add_argument("--only", nargs="+", metavar="SECTION", help="run only these sections (default: all)")
    p.set_defaults(func=_cmd_bench)
    add_sweep_parser(sub)
    add_baseline_parser(sub)
    add_figures_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dotenv import load_dotenv

    load_dotenv(Path.cwd() / ".env", override=False)  # PQT_DATA_DIR, PCVL_CLOUD_TOKEN, ...
    try:
        argv = sys.argv[1:] if argv is None else argv
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"pqt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        from pqt.interrupts import Terminated

        print(f"pqt: {'terminated (SIGTERM)' if isinstance(e, Terminated) else 'interrupted'}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except BrokenPipeError:  # `pqt ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
