"""The ``hagrid-edge`` command: a table of subcommands, one module each."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from hagrid_edge import __version__
from hagrid_edge.errors import HagridEdgeError, MissingExtra
from hagrid_edge.system_modules import import_system_module

# Subcommand modules, in the order ``--help`` lists them, and the extra each needs beyond the core
# install (the runtime: run, eval, bench, data); setup.cfg's [options.extras_require] defines them.
COMMANDS = (
    ("hagrid_edge.commands.data", ""),
    ("hagrid_edge.commands.eval", ""),
    ("hagrid_edge.commands.calibrate", "quantize"),
    ("hagrid_edge.commands.train", "train"),
    ("hagrid_edge.commands.export", "train"),
    ("hagrid_edge.commands.bench", ""),
    ("hagrid_edge.commands.run", ""),
    ("hagrid_edge.commands.build", "jetson"),
    ("hagrid_edge.commands.doctor", ""),
)
COMMAND_EXTRA = {module.rpartition(".")[2]: extra for module, extra in COMMANDS}
# What a board runs, with OpenCV (a board's own, from apt or JetPack, may be built for another numpy).
OPENCV_COMMANDS = ("run", "eval", "bench")
# Optional packages a core command may reach (a plot, a model format) -> the extra that installs them.
PACKAGE_EXTRA = {"torch": "train", "torchvision": "train", "tensorboard": "train", "onnx": "quantize",
                 "onnxsim": "quantize", "onnxscript": "quantize", "ai_edge_quantizer": "quantize", "matplotlib": "plots",
                 "ai_edge_litert": "tflite"}


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (exit 2) like every other error; subcommands inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hagrid-edge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hagrid-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module, _ in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def missing_package(command: str, e: ModuleNotFoundError) -> HagridEdgeError:
    """The one-line error for a package this install lacks: the extra that brings it, else a reinstall."""
    package = (e.name or "").partition(".")[0]
    if package in ("", "hagrid_edge"):  # our own module missing is a bug, not an install choice
        raise e
    extra = COMMAND_EXTRA.get(command) or PACKAGE_EXTRA.get(package)
    if extra:
        return MissingExtra(extra, package)
    return HagridEdgeError(f"{package} is not installed: it belongs to the core install (pip install hagrid-edge)")


def os_error_line(e: OSError) -> str:
    """``path: reason`` for an operating-system error (both paths of a failed rename or link)."""
    reason = e.strerror or str(e) or type(e).__name__
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in OPENCV_COMMANDS:  # a broken OpenCV: one line with its fix, not numpy's page and a stack
            import_system_module("cv2")
        return int(args.func(args) or 0)
    except ModuleNotFoundError as e:
        print(f"hagrid-edge {args.command}: error: {missing_package(args.command, e)}", file=sys.stderr)
        return 2
    except MissingExtra as e:
        print(f"hagrid-edge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except HagridEdgeError as e:
        print(f"hagrid-edge {args.command}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early: not a success
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot raise again
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by a closed pipe
    except OSError as e:  # a path that is a folder, not writable, on a full disk, ...: one line naming it
        print(f"hagrid-edge {args.command}: error: {os_error_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hagrid-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
