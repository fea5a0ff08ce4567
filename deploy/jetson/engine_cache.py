"""The per-user cache of TensorRT engines that ``hagrid-edge build`` makes and ``hagrid-edge run`` opens.

An engine lies in ``$XDG_CACHE_HOME/hagrid-edge/engines/<onnx stem>_<precision>.trt`` beside its
``.json`` record (``deploy/jetson/build_engine.py`` writes both, each atomically). It is reused while
the record matches what would be built now (TensorRT version, GPU, precision, the ONNX's sha256) and
rebuilt otherwise. The record goes first when a rebuild starts and is written last, so a build cut
short never leaves an engine that looks current. TensorRT and CUDA are imported only to build.
"""

from __future__ import annotations

from pathlib import Path

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.paths import engine_cache


def cached_engine(onnx: str | Path, precision: str) -> Path:
    """Where the engine of ``onnx`` at ``precision`` is cached."""
    return engine_cache() / f"{Path(onnx).stem}_{precision}.trt"


def stale_reason(engine: Path, onnx: Path, precision: str, tensorrt_version: str, gpu: str,
                 compute_capability: str) -> str | None:
    """Why the cached ``engine`` cannot serve (``onnx``, ``precision``) on this TensorRT and GPU; None if it can."""
    from hagrid_edge.deploy.jetson.engine_meta import engine_info
    from hagrid_edge.spec import load_spec_file, sha256_file, sidecar_path

    if not engine.is_file() or not sidecar_path(engine).is_file():
        return "not built yet"
    try:
        info = engine_info(load_spec_file(sidecar_path(engine)), engine)
    except HagridEdgeError as e:
        return str(e)
    built = {"TensorRT": info.tensorrt_version, "GPU": f"{info.gpu} (sm {info.compute_capability})",
             "precision": info.precision, "ONNX sha256": info.source_onnx_sha256[:12]}
    now = {"TensorRT": tensorrt_version, "GPU": f"{gpu} (sm {compute_capability})", "precision": precision,
           "ONNX sha256": sha256_file(onnx)[:12]}
    changed = [f"{key} {built[key]} -> {now[key]}" for key in built if built[key] != now[key]]
    if info.dla_core is not None or info.calibration_cache:
        changed.append("built for a DLA core or from a calibration cache")
    return "; ".join(changed) or None


def ensure_engine(onnx: Path, precision: str, force: bool = False) -> tuple[Path, str | None]:
    """The cached engine of ``onnx``, built first when missing or stale (or ``force``): (engine, why it was
    built, None when reused)."""
    from hagrid_edge.deploy.jetson.build_engine import BuildOptions, build_engine, device_identity
    from hagrid_edge.deploy.jetson.tensorrt_backend import _import_cudart, _import_tensorrt
    from hagrid_edge.spec import sidecar_path

    trt = _import_tensorrt()
    gpu, capability = device_identity(_import_cudart())
    engine = cached_engine(onnx, precision)
    reason = "--force" if force else stale_reason(engine, onnx, precision, trt.__version__, gpu, capability)
    if reason is None:
        return engine, None
    sidecar_path(engine).unlink(missing_ok=True)
    build_engine(BuildOptions(onnx, precision, engine))
    return engine, reason
