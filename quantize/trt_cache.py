"""TensorRT INT8 calibration cache, in TensorRT's own text format, from the collected activation ranges.

The format TensorRT's calibrators read and write::

    TRT-<version>-<algorithm>
    <tensor name>: <float32 scale, big-endian IEEE bits as 8 hex digits>

with scale = amax / 127 (symmetric int8). ``<version>`` is TensorRT's integer version tag
(8.5.2 -> 8502) and ``<algorithm>`` the calibrator class that wrote it. TensorRT ignores a cache whose
tag differs from its own, so ``retag`` rewrites the header for the TensorRT on the device; the scales
stay as calibrated here.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.paths import write_text_atomic
from hagrid_edge.quantize.choices import DEFAULT_TRT_VERSION

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
# Calibration method -> the TensorRT calibrator class whose cache it fills.
METHOD_ALGORITHM = {"minmax": "MinMaxCalibration", "entropy": "EntropyCalibration2",
                    "percentile": "EntropyCalibration2", "p99.9999": "EntropyCalibration2",
                    "mse": "EntropyCalibration2"}
INT8_MAX = 127.0
MIN_AMAX = 1e-8  # a tensor that is always zero still needs a positive scale
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
_LINE = re.compile(r"^(.+): ([0-9a-fA-F]{8})$")


@dataclass
class CalibrationCache:
    version_tag: int
    algorithm: str
    scales: dict[str, float]  # tensor name -> scale (amax / 127)


def version_tag(version: str) -> int:
    """TensorRT's integer version: 8.5.2 -> 8502 (8.x: M*1000+m*100+p), 10.3.0 -> 100300 (M*10000+m*100+p)."""
    parts = re.findall(r"\d+", version)[:3]
    if len(parts) < 2:
        raise HagridEdgeError(f"TensorRT version {version!r} is not MAJOR.MINOR[.PATCH]")
    major, minor, patch = (int(p) for p in (parts + ["0"])[:3])
    return major * (1000 if major < 10 else 10000) + minor * 100 + patch


def scales_from_ranges(ranges) -> dict[str, float]:
    """amax / 127 per tensor of ORT ``TensorsData`` (ranges are symmetric; the larger side wins)."""
    out = {}
    for name, data in ranges.data.items():
        lo, hi = (float(np.max(np.abs(np.asarray(v)))) for v in data.range_value)
        out[name] = max(lo, hi, MIN_AMAX) / INT8_MAX
    return out


def format_cache(cache: CalibrationCache) -> str:
    if cache.algorithm not in ALGORITHMS:
        raise HagridEdgeError(f"calibration algorithm {cache.algorithm!r} is not one of {ALGORITHMS}")
    lines = [f"TRT-{cache.version_tag}-{cache.algorithm}"]
    lines += [f"{name}: {struct.pack('>f', scale).hex()}" for name, scale in sorted(cache.scales.items())]
    return "\n".join(lines) + "\n"


def parse_cache(text: str, source: str = "calibration cache") -> CalibrationCache:
    lines = [ln.rstrip("\r") for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise HagridEdgeError(f"{source}: empty TensorRT calibration cache")
    head = _HEADER.match(lines[0])
    if head is None or head.group(2) not in ALGORITHMS:
        raise HagridEdgeError(f"{source}: line 1 {lines[0][:60]!r} is not a TensorRT cache header "
                              f"TRT-<version>-<{'|'.join(ALGORITHMS)}>")
    scales = {}
    for k, line in enumerate(lines[1:], start=2):
        m = _LINE.match(line)
        if m is None:
            raise HagridEdgeError(f"{source}: line {k} {line[:60]!r} is not '<tensor>: <8 hex digits>'")
        scales[m.group(1)] = struct.unpack(">f", bytes.fromhex(m.group(2)))[0]
    return CalibrationCache(int(head.group(1)), head.group(2), scales)


def read_cache(path: str | Path) -> CalibrationCache:
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise HagridEdgeError(f"{path}: cannot read the calibration cache ({e})") from None
    return parse_cache(text, str(path))


def write_cache(path: str | Path, ranges, method: str, trt_version: str = DEFAULT_TRT_VERSION) -> CalibrationCache:
    """Write the cache for ``ranges`` (collected with ``method``) atomically; returns what was written."""
    cache = CalibrationCache(version_tag(trt_version), METHOD_ALGORITHM[method], scales_from_ranges(ranges))
    text = format_cache(cache)
    parse_cache(text, str(path))  # what TensorRT will read back parses: tensor names hold no line breaks
    write_text_atomic(path, text)
    return cache


def retag(cache: CalibrationCache, trt_version: str) -> CalibrationCache:
    """The same scales under the header of the TensorRT that will read them."""
    return CalibrationCache(version_tag(trt_version), cache.algorithm, dict(cache.scales))
