"""What a TensorRT engine was built with, and the refusal to run it anywhere else.

Engines are tied to the TensorRT version and GPU that built them. The builder records both (and
precision and source) in ``spec.provenance["engine"]`` of the engine's ``<engine>.json`` sidecar;
the runtime compares them with what it runs on and, on a mismatch, refuses with the exact command
that rebuilds the engine on this device.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hagrid_edge.errors import HagridEdgeError

if TYPE_CHECKING:  # the CLI's parser reads PRECISIONS: no numpy at import
    from hagrid_edge.spec import ModelSpec

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class EngineInfo:
    tensorrt_version: str
    gpu: str
    compute_capability: str  # "8.7"
    precision: str
    source_onnx: str
    source_onnx_sha256: str
    calibration_cache: str | None = None
    jetpack: str | None = None
    dla_core: int | None = None  # the DLA core it was built for; the runtime loads it onto the same core

    def rebuild_command(self, engine: str | Path) -> str:
        from hagrid_edge.deploy.jetson.engine_cache import cached_engine
        from hagrid_edge.paths import DEFAULT_MODELS

        if Path(engine) == cached_engine(self.source_onnx, self.precision) and self.dla_core is None:
            source = Path(self.source_onnx)  # a shipped model by its name: the folder moves with an upgrade
            model = source.name if source.parent == DEFAULT_MODELS else self.source_onnx
            return shlex.join(["hagrid-edge", "build", "--model", model, "--precision", self.precision])
        cmd = ["python", "deploy/jetson/build_engine.py", "--onnx", self.source_onnx,
               "--precision", self.precision, "--out", str(engine)]
        if self.calibration_cache:
            cmd += ["--calib-cache", self.calibration_cache]
        if self.dla_core is not None:
            cmd += ["--dla-core", str(self.dla_core)]
        return shlex.join(cmd)


def engine_info(spec: ModelSpec, engine: str | Path) -> EngineInfo:
    raw = spec.provenance.get("engine")
    if not isinstance(raw, dict):
        raise HagridEdgeError(f"{engine}: its spec has no provenance.engine record (TensorRT version, GPU); "
                              "rebuild it with deploy/jetson/build_engine.py")
    try:
        return EngineInfo(**raw)
    except TypeError as e:
        raise HagridEdgeError(f"{engine}: malformed provenance.engine record ({e})") from None


def with_engine_info(spec: ModelSpec, info: EngineInfo) -> ModelSpec:
    """A copy of ``spec`` carrying ``info`` in its provenance."""
    from hagrid_edge.spec import ModelSpec

    return ModelSpec.from_dict({**spec.to_dict(), "provenance": {**spec.provenance, "engine": asdict(info)}})


def check_compatible(info: EngineInfo, engine: str | Path, tensorrt_version: str, gpu: str,
                     compute_capability: str) -> None:
    """Refuse an engine built by another TensorRT version or for another GPU."""
    problems = []
    if info.tensorrt_version != tensorrt_version:
        problems.append(f"built with TensorRT {info.tensorrt_version}, this is TensorRT {tensorrt_version}")
    if info.compute_capability != compute_capability or info.gpu != gpu:
        problems.append(f"built for {info.gpu} (sm {info.compute_capability}), this is {gpu} "
                        f"(sm {compute_capability})")
    if problems:
        raise HagridEdgeError(f"{engine}: {'; '.join(problems)}; rebuild it here: {info.rebuild_command(engine)}")
