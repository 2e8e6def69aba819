"""The ``resad-kit`` command: ``reproduce`` the paper's tables, ``predict`` on your images.

``resad-kit reproduce …`` runs the paper's few-shot protocol (:mod:`resad_kit.cli.reproduce`;
``examples/res2clip_full.py`` is a thin wrapper of it). ``resad-kit predict …`` scores any
folder of images against a few good references (:mod:`resad_kit.cli.predict`). Both take
``--method`` from a small registry (:mod:`resad_kit.cli.registry`).

Subcommands are imported only when run, so ``resad-kit --help`` answers without loading
torch. Also runnable as ``python -m resad_kit.cli``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# subcommand → (module of its flags, module that runs it, one-line summary)
COMMANDS = {
    "reproduce": (
        "resad_kit.cli.reproduce_args",
        "resad_kit.cli.reproduce",
        "reproduce the papers' evaluations (Res²CLIP Tables 1, 6–10; AF-CLIP Tables 1–2; "
        "the WinCLIP baseline); results, heat maps, an HTML report",
    ),
    "predict": (
        "resad_kit.cli.predict_args",
        "resad_kit.cli.predict",
        "score your own images against a few good references: scores.csv, heat maps, an "
        "HTML report, a suggested threshold",
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resad-kit",
        description="Few-shot anomaly detection with CLIP (Res²CLIP and friends). Run "
        "'resad-kit COMMAND --help' for a command's flags.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, summary) in COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``resad-kit`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        parser = _parser()
        parser.parse_args(args)  # --help, or an unknown command: argparse's message
        parser.print_help()
        return 2
    flags, runner, _ = COMMANDS[args[0]]
    prog = f"resad-kit {args[0]}"
    # --help and flag errors are answered by the light module: no torch loaded for them
    importlib.import_module(flags).build_parser(prog).parse_args(args[1:])
    return int(importlib.import_module(runner).main(args[1:], prog=prog) or 0)
