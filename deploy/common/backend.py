"""One interface for every runtime: load an artifact with its spec, run a preprocessed batch.

Backends are thin adapters over a runtime library; everything before and after the runtime call
(letterbox, normalisation, decode, NMS) lives in ``hagrid_edge.processing``. ``BACKENDS`` maps file
suffixes to adapter modules (from the one format table, ``hagrid_edge.formats``), imported only when
such a file is opened, so a board needs only its own runtime installed.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np

from hagrid_edge.errors import HagridEdgeError, MissingExtra
from hagrid_edge.formats import BY_SUFFIX
from hagrid_edge.spec import ModelSpec, resolve_spec

# suffix -> (module, class, extra that installs its runtime)
BACKENDS: dict[str, tuple[str, str, str]] = {
    suffix: (*fmt.backend.split(":"), fmt.extra) for suffix, fmt in BY_SUFFIX.items()  # type: ignore[misc]
}


class Backend(Protocol):
    """What every runtime adapter offers."""

    spec: ModelSpec
    path: Path
    name: str  # runtime and device, e.g. "onnxruntime-cpu"
    max_batch: int | None  # None: any batch size

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a preprocessed input batch; outputs by tensor name, as the runtime returns them."""
        ...


def open_backend(path: str | Path, spec: ModelSpec | None = None, spec_file: str | Path | None = None,
                 threads: int | None = None, device: str = "cpu") -> Backend:
    """Open ``path`` with the adapter its suffix names; its spec is resolved unless given."""
    path = Path(path)
    entry = BACKENDS.get(path.suffix.lower())
    if entry is None:
        raise HagridEdgeError(f"{path}: unsupported model format {path.suffix!r} "
                              f"(known: {', '.join(sorted(BACKENDS))})")
    if spec is None:
        spec = resolve_spec(path, spec_file)
    module_name, cls_name, extra = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        if not extra:
            raise HagridEdgeError(f"{path}: the runtime for {path.suffix} files is not installed ({e.name}); "
                                  f"the board installs leave it out and run .tflite or .trt files: pick one of "
                                  f"those, or pip install {e.name}") from None
        raise MissingExtra(extra, f"{path}: the runtime for {path.suffix} files ({e.name})") from None
    return getattr(module, cls_name)(path, spec, threads=threads, device=device)
