"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of a library's exception text (runtimes raise pages), else its type name."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class HagridEdgeError(Exception):
    """Bad input or an unmet requirement; the message names the file, entry or option at fault."""


class SpecError(HagridEdgeError):
    """A model spec is missing, malformed or does not fit its artifact."""


class DataError(HagridEdgeError):
    """A HaGRID annotation file, image or data root is missing or malformed."""


class MissingExtra(HagridEdgeError):
    """A command or artifact needs an optional part of hagrid-edge that is not installed (exit 2)."""

    def __init__(self, extra: str, missing: str) -> None:
        super().__init__(f"{missing} is not installed: this needs hagrid-edge's [{extra}] extra "
                         f"(pip install 'hagrid-edge[{extra}]')")
        self.extra = extra
