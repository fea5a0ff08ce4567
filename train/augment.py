"""Training augmentations that keep boxes right: crop around every hand, horizontal flip, colour jitter.

They act on the full-resolution frame before the letterbox, so the dataset maps the (changed)
boxes to the model input with the same geometry as the pixels. A crop never cuts a box: it always
contains the union of the frame's boxes, and zooms in on the hands, which are small in HaGRID frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BoxSafeAugment:
    hflip: float = 0.5  # probability of a horizontal flip
    crop: float = 0.5  # probability of a crop around the hands
    min_crop: float = 0.4  # smallest crop side, as a fraction of the frame side
    color: float = 0.3  # brightness / contrast / saturation jitter strength (0: none)

    def __call__(self, frame: np.ndarray, boxes: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
        kept = np.arange(len(boxes))
        if self.crop > 0 and rng.random() < self.crop:
            frame, boxes = self._crop(frame, boxes, rng)
        flipped = bool(self.hflip > 0 and rng.random() < self.hflip)
        if flipped:
            frame = frame[:, ::-1]
            w = frame.shape[1]
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        if self.color > 0:
            frame = self._jitter(frame, rng)
        return np.ascontiguousarray(frame), boxes, kept, flipped

    def _crop(self, frame: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        h, w = frame.shape[:2]
        scale = rng.uniform(self.min_crop, 1.0)
        cw, ch = max(int(w * scale), 1), max(int(h * scale), 1)
        if len(boxes):
            ux1, uy1 = np.floor(boxes[:, :2].min(0)).astype(int)
            ux2, uy2 = np.ceil(boxes[:, 2:].max(0)).astype(int)
            ux1, uy1, ux2, uy2 = max(ux1, 0), max(uy1, 0), min(ux2, w), min(uy2, h)
            cw, ch = max(cw, ux2 - ux1), max(ch, uy2 - uy1)
            x0 = int(rng.integers(max(0, ux2 - cw), min(ux1, w - cw) + 1))
            y0 = int(rng.integers(max(0, uy2 - ch), min(uy1, h - ch) + 1))
        else:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out = boxes.copy()
        out[:, 0::2] = (out[:, 0::2] - x0).clip(0, cw)
        out[:, 1::2] = (out[:, 1::2] - y0).clip(0, ch)
        return frame[y0:y0 + ch, x0:x0 + cw], out

    def _jitter(self, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        s = self.color
        x = frame.astype(np.float32)
        x *= rng.uniform(1 - s, 1 + s)  # brightness
        mean = x.mean()
        x = (x - mean) * rng.uniform(1 - s, 1 + s) + mean  # contrast
        gray = x.mean(axis=2, keepdims=True)
        x = (x - gray) * rng.uniform(1 - s, 1 + s) + gray  # saturation
        return x.clip(0, 255).astype(np.uint8)
