"""The ``pqt`` command line."""

from pqt.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
