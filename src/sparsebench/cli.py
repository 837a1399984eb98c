"""The ``sparsebench`` command. Each area adds its own subcommands through a ``register``
function in its own ``commands`` module, so this file never grows with them."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: Modules with ``register(subparsers)``; each subcommand sets ``func(args) -> int``.
COMMAND_MODULES = (
    "sparsebench.train.commands",
    "sparsebench.study.commands",
    "sparsebench.inference.commands",
)


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser with every available area's subcommands."""
    parser = argparse.ArgumentParser(
        prog="sparsebench",
        description="Train sparse networks and find out which sparsification technique wins.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:  # a real import error inside an existing module
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        # Bad input gets its one sentence, not a traceback; on one line, whatever a library
        # underneath put in its message.
        return _refuse(args.command, " ".join(str(error).split()))
    except (FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError) as error:
        # A path given on the command line that cannot be used as it is; the commands check
        # the paths they know, this catches the rest without a traceback.
        where = error.filename or "a path"
        return _refuse(args.command, f"{where}: {error.strerror or error}; choose another "
                                     f"path or fix its permissions.")


def _refuse(command: str, message: str) -> int:
    print(f"sparsebench {command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
