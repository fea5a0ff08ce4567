"""The docs against the code: every command a reader copies exists, and every file they name is there.

Read: README.md, docs/*.md and the two board guides. In each, the code blocks (``\\``-continued lines
joined) and the inline code spans are searched for a command of ours: ``hagrid-edge`` (or ``python -m
hagrid_edge.cli``), ``python quantize/calibrate.py`` and ``python deploy/jetson/build_engine.py``,
wherever it stands on the line (after ``emulate.sh ... --`` or ``docker run IMAGE`` too). Its
subcommand must be one the real argparse parser has, and each ``-x`` / ``--flag`` a flag of that
subcommand. Rules for what the docs may write:
- ``[--flag VALUE]`` marks an optional flag (the brackets are dropped), ``...`` and upper-case words
  (``FILE``, ``ROOT``) stand for values: only flag names are checked, never values;
- program output quoted in the docs (``hagrid-edge run: error: ...``) is not a command;
- a path written as code that starts with one of the repository's own folders (``assets/``,
  ``deploy/``, ...) must exist (a ``*`` in it must match a file). Placeholders are written outside
  those folders (``OUT/``, ``DET.onnx``, ``out/int8/``), so they are never mistaken for a shipped file;
- a Markdown link to a local file resolves from the page that holds it.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from hagrid_edge.cli import build_parser
from hagrid_edge.deploy.jetson import build_engine

ROOT = Path(__file__).resolve().parents[1]
BOARD_GUIDES = ("deploy/rpi/README.md", "deploy/jetson/README.md")
README_MAX_WORDS = 800
# What CI and a newcomer run first (.ci/run runs the second): the README must keep them verbatim.
README_COMMANDS = ("bash scripts/demo.sh", ".venv/bin/python -m pytest -q")

# The repository's own folders: a path under one of them names a file that ships.
REPO_FOLDERS = ("assets", "benchmarks", "deploy", "docker", "docs", "hagrid_edge", "quantize", "requirements",
                "scripts", "tests", "train")
REPO_PATH = re.compile(rf"(?<![\w./~-])((?:{'|'.join(REPO_FOLDERS)})/[\w./*-]*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`]+)`")
NUMBER = re.compile(r"^-\d")
SHELL_BREAKS = ("|", "||", "&&", ";", "&")


def _calibrate_parser() -> argparse.ArgumentParser:
    """``python quantize/calibrate.py`` is ``hagrid-edge calibrate`` (quantize/calibrate.py says so)."""
    return _subparsers(build_parser())["calibrate"]


# A program token of the docs -> the parser its arguments go to.
PROGRAMS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "hagrid-edge": build_parser,
    "hagrid_edge.cli": build_parser,
    "quantize/calibrate.py": _calibrate_parser,
    "deploy/jetson/build_engine.py": build_engine.parser,
}


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *(ROOT / g for g in BOARD_GUIDES)]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def code_snippets(text: str) -> Iterator[tuple[int, str]]:
    """(line number, code) for each line of a fenced block and each inline code span."""
    for block in FENCE.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        joined, start = "", first
        for i, line in enumerate(block.group(1).splitlines()):
            if not joined:
                start = first + i
            joined += line.strip() if joined else line
            if joined.endswith("\\"):
                joined = joined[:-1].rstrip() + " "
                continue
            yield start, joined
            joined = ""
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # fenced blocks out, line numbers kept
    for span in INLINE.finditer(prose):
        yield prose.count("\n", 0, span.start()) + 1, span.group(1).replace("\n", " ")


def _tokens(code: str) -> list[str]:
    try:
        return shlex.split(code, comments=True)
    except ValueError:  # an apostrophe in quoted program output: split on spaces, cut the comment
        return code.split(" #")[0].split()


def command_problems(code: str) -> list[str]:
    """What in one line of code does not match our parsers: an unknown subcommand or flag."""
    tokens = _tokens(code)
    problems = []
    for i, token in enumerate(tokens):
        if token not in PROGRAMS or (token == "hagrid_edge.cli" and tokens[i - 1:i] != ["-m"]):
            continue
        args = []
        for arg in tokens[i + 1:]:
            if arg in SHELL_BREAKS or arg.startswith((">", "<", "2>")):
                break
            if arg != "...":
                args.append(arg.strip("[]"))
        problems += _args_problems(token, PROGRAMS[token](), args)
    return problems


def _args_problems(program: str, parser: argparse.ArgumentParser, args: list[str]) -> list[str]:
    name = program
    while (subs := _subparsers(parser)) and args:
        if args[0].endswith(":"):  # program output: "hagrid-edge run: error: ..."
            return []
        if args[0] not in subs:
            return [f"{name} has no subcommand {args[0]!r} (it has {', '.join(subs)})"]
        name, parser, args = f"{name} {args[0]}", subs[args[0]], args[1:]
    flags = parser._option_string_actions
    return [f"{name} has no flag {arg.split('=')[0]}" for arg in args
            if arg.startswith("-") and arg != "-" and not NUMBER.match(arg) and arg.split("=")[0] not in flags]


def path_problems(code: str) -> list[str]:
    """Each path into the repository's own folders in one piece of code that names nothing there."""
    paths = (m.group(1).rstrip(".,:") for m in REPO_PATH.finditer(code))
    return [f"{path}: no such file in the repository" for path in paths
            if not (any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists())]


def link_problems(text: str, page: Path) -> list[tuple[int, str]]:
    """(line, problem) for each Markdown link to a local file that is not there."""
    problems = []
    for m in LINK.finditer(text):
        target = m.group(1).split("#")[0]
        if target and "://" not in target and not target.startswith("mailto:") \
                and not (page.parent / target).exists():
            problems.append((text.count("\n", 0, m.start()) + 1, f"link {target}: no such file"))
    return problems


def doc_problems(page: Path) -> list[str]:
    """Every problem of one page, as ``path:line: problem``."""
    text = page.read_text(encoding="utf-8")
    rel = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
    found = [(line, f"`{code.strip()}`: {p}") for line, code in code_snippets(text) for p in command_problems(code)]
    found += [(line, p) for line, code in code_snippets(text) for p in path_problems(code)]
    found += link_problems(text, page)
    return [f"{rel}:{line}: {p}" for line, p in sorted(found)]


@pytest.mark.parametrize("page", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_and_paths_in_docs_exist(page: Path) -> None:
    assert page.is_file(), f"{page} is missing"
    problems = doc_problems(page)
    assert not problems, "\n".join(problems)


def test_docs_hold_commands_to_check() -> None:
    """The extraction finds the docs' commands (a regex that found none would pass every page)."""
    found = {page.name if page.parent.name == "docs" else str(page.relative_to(ROOT)):
             sum(any(t in PROGRAMS for t in _tokens(code)) for _, code in code_snippets(page.read_text()))
             for page in doc_files()}
    assert found["README.md"] >= 1 and found["quantization.md"] >= 5 and found["running.md"] >= 5, found
    assert all(found[g] >= 3 for g in BOARD_GUIDES), found


def test_a_bad_flag_subcommand_or_path_is_caught(tmp_path: Path) -> None:
    """Planted mistakes of each kind are reported with their line; the docs' own conventions are not."""
    page = tmp_path / "planted.md"
    page.write_text(
        "# planted\n"
        "```bash\n"
        "hagrid-edge run --engine assets/models/gesture_detector.onnx \\\n"
        "    --source usb://0 --no-such-flag   # a flag run lacks\n"
        "deploy/rpi/emulate.sh --cpu pi5 -- hagrid-edge evaluate --model X\n"
        "python quantize/calibrate.py --subset --model DET.onnx --out OUT --max-drop-pct 1\n"
        "hagrid-edge eval --model FILE [--classifier FILE] --data ROOT --split val [--task gestures|hands] ...\n"
        "hagrid-edge data download --train -a -d [-t call like] -p ~/hagrid\n"
        "hagrid-edge run: error: model.trt: built with TensorRT 8.6.2\n"
        "```\n"
        "Shipped: `scripts/no_such_script.sh`, `assets/models/*_int9.tflite`, `assets/models/gesture_detector.onnx`;"
        " an output `OUT/model_int8.onnx`; `python deploy/jetson/build_engine.py --onnx X --dla 0`.\n"
        "[guide](no_such_page.md) [site](https://example.org/x.md)\n", encoding="utf-8")
    assert doc_problems(page) == [
        f"{page}:3: `hagrid-edge run --engine assets/models/gesture_detector.onnx --source usb://0 "
        "--no-such-flag   # a flag run lacks`: hagrid-edge run has no flag --no-such-flag",
        f"{page}:5: `deploy/rpi/emulate.sh --cpu pi5 -- hagrid-edge evaluate --model X`: hagrid-edge has no "
        "subcommand 'evaluate' (it has data, eval, calibrate, train, export, bench, run, build, doctor)",
        f"{page}:6: `python quantize/calibrate.py --subset --model DET.onnx --out OUT --max-drop-pct 1`: "
        "quantize/calibrate.py has no flag --max-drop-pct",
        f"{page}:11: `python deploy/jetson/build_engine.py --onnx X --dla 0`: deploy/jetson/build_engine.py has "
        "no flag --dla",
        f"{page}:11: assets/models/*_int9.tflite: no such file in the repository",
        f"{page}:11: scripts/no_such_script.sh: no such file in the repository",
        f"{page}:12: link no_such_page.md: no such file",
    ]


def test_readme_is_short_and_keeps_the_ci_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.split()) < README_MAX_WORDS, f"README.md has {len(text.split())} words"
    for command in README_COMMANDS:
        assert command in text, f"README.md lost {command!r}"


def test_every_docs_page_is_in_the_site_nav() -> None:
    """mkdocs builds a page left out of the nav without a word: each docs/*.md is listed, and only those."""
    def pages(nav: list) -> Iterator[str]:
        for entry in nav:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            yield from pages(value) if isinstance(value, list) else [value]

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert sorted(pages(config["nav"])) == sorted(p.name for p in (ROOT / "docs").glob("*.md"))
