"""Reading images as RGB uint8 arrays, with one clear error for missing or damaged files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hagrid_edge.errors import DataError


def bomb_message(e: Exception) -> str:
    """One line for PIL's decompression-bomb refusal (an image with more pixels than it will decode)."""
    m = re.search(r"\((\d+) pixels\)", str(e))
    pixels = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
    return f"image too large to decode ({pixels}, over PIL's limit of {2 * (Image.MAX_IMAGE_PIXELS or 0):,})"


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode ``path`` fully (a truncated JPEG is an error, not a grey bottom) into (H, W, 3) RGB."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except Image.DecompressionBombError as e:  # PIL refuses to allocate it: skip it like a damaged image
        raise DataError(f"{path}: {bomb_message(e)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None


def split_frames(data: str | Path, split: str, count: int) -> list[np.ndarray]:
    """``count`` photos of a HaGRID split, spread evenly over its gesture files (for export checks)."""
    from hagrid_edge.data.annotations import load_split

    samples = load_split(data, split)
    step = max(len(samples) // max(count, 1), 1)
    return [read_rgb(s.image_path) for s in samples[::step][:count]]
