"""The Raspberry Pi guide's commands as a script, so what CI runs on the emulated Pi is what the guide says.

``deploy/rpi/README.md`` marks the code blocks of its install and first run with an HTML comment on the
line before the fence: ``<!-- ci: pi-guide STEP -->`` for each STEP of ``STEPS``, in that order.
``python -m hagrid_edge.deploy.rpi.guide_commands`` prints them as one bash script for the emulated
Raspberry Pi OS userland (``deploy/rpi/emulate.sh --userland bookworm-system --guide``), every command
verbatim except two that cannot run there as written, each replaced by a comment that says so: the
``apt-get install`` (its packages are the userland's, installed when it is built) and the ``git clone``
(the working tree under test is copied to ``~/hagrid-edge`` instead).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.paths import REPO_ROOT

GUIDE = REPO_ROOT / "deploy" / "rpi" / "README.md"
STEPS = ("apt", "clone", "install", "run")
MARK = "<!-- ci: pi-guide"
BLOCK = re.compile(r"^<!-- ci: pi-guide (\S+) -->\n```bash\n(.*?)^```$", re.M | re.S)
CLONE_DIR = "hagrid-edge"  # where the guide's clone lands, in the home folder


@dataclass(frozen=True)
class Block:
    """One marked code block: its step, the guide's line number of its first line, its commands."""

    step: str
    line: int
    commands: tuple[str, ...]  # each verbatim, a ``\\``-continued command with its continuation lines


def split_commands(code: str) -> list[str]:
    """The commands of a code block: ``\\``-continued lines stay one command; blank and comment lines go."""
    commands, current = [], ""
    for raw in code.splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        current = f"{current}\n{raw}" if current else raw
        if not raw.endswith("\\"):
            commands.append(current)
            current = ""
    if current:
        commands.append(current)
    return commands


def read_blocks(path: Path = GUIDE) -> dict[str, Block]:
    """The guide's marked blocks by step; a step missing, repeated, unknown or out of order is an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise HagridEdgeError(f"{path}: cannot read the Pi guide ({e.strerror})") from None
    blocks: dict[str, Block] = {}
    for m in BLOCK.finditer(text):
        step, line = m.group(1), text.count("\n", 0, m.start(2)) + 1
        if step not in STEPS:
            raise HagridEdgeError(f"{path}:{line - 2}: unknown pi-guide step {step!r} (known: {', '.join(STEPS)})")
        if step in blocks:
            raise HagridEdgeError(f"{path}:{line - 2}: pi-guide step {step!r} is marked twice "
                                  f"(first at line {blocks[step].line - 2})")
        blocks[step] = Block(step, line, tuple(split_commands(m.group(2))))
    if text.count(MARK) != len(blocks):
        raise HagridEdgeError(f"{path}: {text.count(MARK) - len(blocks)} '{MARK} ...' marker(s) not directly "
                              "followed by a ```bash block")
    missing = [s for s in STEPS if s not in blocks or not blocks[s].commands]
    if missing:
        raise HagridEdgeError(f"{path}: no marked commands for step(s) {', '.join(missing)} "
                              f"('{MARK} STEP -->' before a ```bash block)")
    lines = [blocks[s].line for s in STEPS]
    if lines != sorted(lines):
        raise HagridEdgeError(f"{path}: the pi-guide steps must come in the order {', '.join(STEPS)}")
    return blocks


def _words(command: str) -> list[str]:
    return shlex.split(command.replace("\\\n", " "), comments=True)


def apt_packages(blocks: dict[str, Block]) -> list[str]:
    """The packages the apt step installs (``[sudo] apt[-get] install [-y] PKG ...``)."""
    packages = []
    for command in blocks["apt"].commands:
        words = _words(command)
        words = words[1:] if words[:1] == ["sudo"] else words
        if words[:1] in (["apt"], ["apt-get"]) and "install" in words:
            packages += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    if not packages:
        raise HagridEdgeError(f"{GUIDE.name}:{blocks['apt'].line}: the apt step installs no package")
    return packages


def _replaced(command: str, why: str) -> list[str]:
    return [*(f"# {line}" for line in command.splitlines()), f"#   -> not run here: {why}"]


def emulated_script(blocks: dict[str, Block], guide: str = "deploy/rpi/README.md") -> str:
    """The bash script of the guide's steps for the emulated userland, run from the home folder."""
    out = ["#!/bin/bash",
           f"# The commands of {guide} (blocks marked '{MARK} STEP -->'), written by",
           "# deploy/rpi/guide_commands.py: each runs verbatim, printed first, except the two replaced below.",
           "set -eo pipefail", "cd ~"]
    for step in STEPS:
        block = blocks[step]
        out.append(f"\n# ---- {step} ({guide}, line {block.line})")
        for command in block.commands:
            words = _words(command)
            if step == "apt":
                out += _replaced(command, "the emulated userland was built with these packages (Debian's own)")
            elif step == "clone" and words[:2] == ["git", "clone"]:
                out += _replaced(command, f"the working tree under test was copied to ~/{CLONE_DIR}")
            else:
                out += [f"echo {shlex.quote('$ ' + command)} >&2", command]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hagrid_edge.deploy.rpi.guide_commands",
                                description="Print the Raspberry Pi guide's marked install and run commands as the "
                                            "bash script CI runs on the emulated Raspberry Pi OS userland.")
    p.add_argument("--guide", type=Path, default=GUIDE, help="the guide (default: deploy/rpi/README.md)")
    p.add_argument("-o", "--output", type=Path, help="write the script here (default: standard output)")
    args = p.parse_args(argv)
    try:
        script = emulated_script(read_blocks(args.guide))
        if args.output:
            args.output.write_text(script, encoding="utf-8")
        else:
            sys.stdout.write(script)
    except HagridEdgeError as e:
        print(f"guide_commands: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"guide_commands: {args.output}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
