"""The ``hagrid-edge`` command: a table of subcommands, one module each."""

from __future__ import annotations

import argparse
import importlib
import sys

from hagrid_edge import __version__
from hagrid_edge.errors import HagridEdgeError

# Subcommand modules, in the order ``--help`` lists them.
COMMANDS = (
    "hagrid_edge.commands.data",
    "hagrid_edge.commands.eval",
    "hagrid_edge.commands.calibrate",
    "hagrid_edge.commands.train",
    "hagrid_edge.commands.export",
    "hagrid_edge.commands.bench",
    "hagrid_edge.commands.run",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hagrid-edge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hagrid-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HagridEdgeError as e:
        print(f"hagrid-edge {args.command}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"hagrid-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
