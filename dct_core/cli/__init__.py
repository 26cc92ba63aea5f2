"""The ``dct`` command line: one module per command (``add_parser`` declares it, ``run`` runs it), options from
the one settings table (``options``), loading in ``loading``, progress and Ctrl+C in ``progress``. Commands
translate options into the engine's jobs and print the results; they never import each other."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import DCTError
from ..formats.printable import printable
from . import dataset, demo, eval, generate, labels, library, train

COMMANDS = (train, generate, eval, labels, library, dataset, demo)  # in the order `dct --help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dct", description="Discriminative class tokens for text-to-image diffusion.")
    parser.add_argument("--debug", action="store_true", help="on an unexpected error, print the Python traceback")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        before = set(sub.choices)
        command.add_parser(sub)
        for name in set(sub.choices) - before:  # a module may add several commands (labels, classifier-info)
            sub.choices[name].set_defaults(**{"handler": sub.choices[name].get_default("handler") or command.run})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except DCTError as exc:
        print(f"dct {args.command}: error: {printable(exc, 2000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dct {args.command}: aborted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last catch: one line, never a traceback unless asked
        if args.debug:
            raise
        print(f"dct {args.command}: error: {type(exc).__name__}: {printable(exc, 2000)} (run with --debug for the "
              "traceback)", file=sys.stderr)
        return 1
