"""Reading images as RGB uint8 arrays, with one clear error for missing or damaged files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hagrid_edge.errors import DataError


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode ``path`` fully (a truncated JPEG is an error, not a grey bottom) into (H, W, 3) RGB."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None


def split_frames(data: str | Path, split: str, count: int) -> list[np.ndarray]:
    """``count`` photos of a HaGRID split, spread evenly over its gesture files (for export checks)."""
    from hagrid_edge.data.annotations import load_split

    samples = load_split(data, split)
    step = max(len(samples) // max(count, 1), 1)
    return [read_rgb(s.image_path) for s in samples[::step][:count]]
