"""Argument types that check a flag's value when the command line is parsed.

A value outside its range ends the command at once (exit 2) with one line naming the flag and the
allowed range (``hagrid-edge run: error: argument --max-frames: must be >= 1, got -3``), before any
model or file is opened. The help of each flag states the same range.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(kind: type, text: str) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def ranged(kind: type, low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float | int]:
    """An argparse ``type`` for an int or float in [low, high] (``low_open`` / ``high_open``: excluded)."""
    def describe() -> str:
        if high is None:
            return f"> {low}" if low_open else f">= {low}"
        if low is None:
            return f"< {high}" if high_open else f"<= {high}"
        return f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def parse(text: str) -> float | int:
        value = _number(kind, text)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {'in ' if low is not None and high is not None else ''}"
                                             f"{describe()}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = ranged(int, 1)
non_negative_int = ranged(int, 0)
positive_float = ranged(float, 0, low_open=True)
non_negative_float = ranged(float, 0)
unit_interval = ranged(float, 0, 1)
