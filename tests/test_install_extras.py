"""The core install is the runtime: run / eval / bench work with torch, onnx and matplotlib absent, and a
command whose extra is missing says which one in one line (exit 2). The absent packages are refused by
an import hook in a child process (this venv has every extra installed); the models and photos are the
real ones shipped in assets/."""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from hagrid_edge.cli import COMMAND_EXTRA, PACKAGE_EXTRA
from hagrid_edge.paths import DEFAULT_DATA, DEFAULT_MODELS, REPO_ROOT

# What the runtime must not need: the [train], [quantize] and [plots] extras' packages.
BLOCKED = ("torch", "torchvision", "tensorboard", "onnx", "onnxsim", "onnxscript", "matplotlib")

# The child refuses BLOCKED (and their submodules) as if not installed, runs the CLI, then reports what
# it imported on the last line of stderr.
CHILD = """
import importlib.abc, json, sys
BLOCKED = {blocked!r}

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Refuse())
from hagrid_edge.cli import main
try:
    rc = main({argv!r})
except SystemExit as e:  # argparse --help / usage errors
    rc = e.code
sys.stderr.write("\\nIMPORTED " + json.dumps(sorted({{m.partition(".")[0] for m in sys.modules}})) + "\\n")
sys.exit(rc)
"""


def run_without_extras(*argv: str, blocked: tuple[str, ...] = BLOCKED) -> tuple[int, str, str, set[str]]:
    code = CHILD.format(blocked=blocked, argv=list(argv))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    err, _, imported = p.stderr.rpartition("\nIMPORTED ")
    return p.returncode, p.stdout, err.strip(), set(json.loads(imported))


@pytest.mark.parametrize("command", ["run", "eval", "bench", "data"])
def test_runtime_help_without_extras(command: str) -> None:
    rc, out, err, imported = run_without_extras(command, "--help")
    assert rc == 0 and f"usage: hagrid-edge {command}" in out, err
    assert not imported & set(BLOCKED)


def test_eval_and_run_on_the_shipped_pair_without_torch_or_onnx(tmp_path: Path) -> None:
    detector, classifier = DEFAULT_MODELS / "hand_detector.onnx", DEFAULT_MODELS / "crops_classifier.onnx"
    rc, out, err, imported = run_without_extras("eval", "--model", str(detector), "--classifier", str(classifier),
                                                "--data", str(DEFAULT_DATA), "--split", "val", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["images"] == 18 and result["task"] == "gestures" and 0 < result["mAP50_95"] <= 100
    assert {"onnxruntime", "cv2", "pycocotools"} <= imported and not imported & set(BLOCKED)

    # the project's detector: its spec is embedded in the ONNX and beside it; read the embedded one
    model = tmp_path / "ssdlite.onnx"
    model.write_bytes((DEFAULT_MODELS / "ssdlite_small_gestures.onnx").read_bytes())
    events = tmp_path / "events.jsonl"
    rc, out, err, imported = run_without_extras("run", "--engine", str(model), "--source",
                                                str(DEFAULT_DATA / "hagrid_dataset_512"), "--headless",
                                                "--events", str(events), "--output", str(tmp_path / "out.mp4"))
    assert rc == 0, err
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert lines and all(e["event"] in ("start", "end") for e in lines)
    assert (tmp_path / "out.mp4").stat().st_size > 0
    assert not imported & set(BLOCKED)


def test_bench_without_plots_or_onnx(tmp_path: Path) -> None:
    """bench on a runtime install: the QDQ-free ONNX row is read without onnx and the plot is skipped."""
    detector = DEFAULT_MODELS / "hand_detector.onnx"
    rc, out, err, imported = run_without_extras("bench", "--model", str(detector), "--data", str(DEFAULT_DATA),
                                                "--split", "val", "--limit", "3", "--runs", "2", "--warmup", "0",
                                                "--report", str(tmp_path))
    assert rc == 0, err
    assert not (tmp_path / "latency_vs_map.png").exists() and "[plots]" in (tmp_path / "report.md").read_text()
    row = json.loads((tmp_path / "report.json").read_text())["rows"][0]
    assert row["error"] is None and row["precision"] == "FP32"
    assert not imported & set(BLOCKED)


@pytest.mark.parametrize("argv, extra", [
    (["train", "--config", "train/configs/ssdlite_small_gestures.yaml"], "train"),
    (["export", "--checkpoint", "best.pt", "--out", "x.onnx"], "train"),
    (["calibrate", "--out", "int8"], "quantize"),
])
def test_stage_command_without_its_extra_names_it(argv: list[str], extra: str, tmp_path: Path) -> None:
    argv = [str(tmp_path / a) if a in ("int8", "x.onnx") else a for a in argv]
    rc, out, err, _ = run_without_extras(*argv)
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith(f"hagrid-edge {argv[0]}: error: "), err
    assert f"[{extra}] extra (pip install 'hagrid-edge[{extra}]')" in err


def test_checkpoint_without_torch_names_the_train_extra(tmp_path: Path) -> None:
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"a checkpoint torch would read")
    rc, _, err, _ = run_without_extras("eval", "--model", str(checkpoint), "--data", str(DEFAULT_DATA),
                                       "--spec", str(DEFAULT_MODELS / "ssdlite_small_gestures.onnx.json"))
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"{checkpoint}: the runtime for .pt files (torch) is not installed" in err and "[train]" in err


def test_onnx_without_onnx_runtime_names_the_board_choice() -> None:
    """A board install (deploy/rpi/requirements-board.txt) has no ONNX Runtime: an .onnx model names the
    fix, not a reinstall that would not bring it back."""
    model = DEFAULT_MODELS / "gesture_detector.onnx"
    rc, _, err, imported = run_without_extras("run", "--engine", str(model), "--source", str(DEFAULT_DATA),
                                              "--headless", blocked=(*BLOCKED, "onnxruntime"))
    assert rc == 1 and len(err.splitlines()) == 1 and "onnxruntime" not in imported, err
    assert f"{model}: the runtime for .onnx files is not installed (onnxruntime)" in err
    assert err.endswith("pick one of those, or pip install onnxruntime")


# ---- the extras table in setup.cfg and the CLI's view of it ----------------------------------------
def _lines(text: str) -> list[str]:
    return [r.strip() for r in text.splitlines() if r.strip()]


def _setup_cfg() -> tuple[list[str], dict[str, list[str]]]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO_ROOT / "setup.cfg")
    extras = {name: _lines(value) for name, value in cfg["options.extras_require"].items()}
    return _lines(cfg["options"]["install_requires"]), extras


def _name(requirement: str) -> str:
    for sep in "=<>!~;[ ":
        requirement = requirement.split(sep)[0]
    return requirement.lower()


def test_core_is_the_runtime_and_stages_are_extras() -> None:
    core, extras = _setup_cfg()
    assert {_name(r) for r in core} >= {"numpy", "onnxruntime", "opencv-python-headless", "pycocotools", "tqdm",
                                        "pyyaml"}
    assert not {_name(r) for r in core} & {"torch", "torchvision", "onnx", "onnxsim", "onnxscript", "matplotlib",
                                           "tensorboard"}
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(extras["train"])  # other versions: multi-GB downloads
    assert {_name(r) for r in extras["quantize"]} >= {"onnx", "onnxsim", "onnxscript"}
    for board in ("jetson", "rpi", "tflite"):
        assert not {_name(r) for r in extras[board]} & {"torch", "onnx", "matplotlib", "tensorrt"}, board


def test_cli_extras_exist_and_hold_their_packages() -> None:
    _, extras = _setup_cfg()
    assert {e for e in COMMAND_EXTRA.values() if e} <= set(extras)
    installed = metadata.packages_distributions()  # import name -> distributions, of this venv
    for package, extra in PACKAGE_EXTRA.items():
        dists = {d.lower() for d in installed.get(package, [])}
        assert dists and dists & {_name(r) for r in extras[extra]}, (package, extra, dists)


def test_onnx_outline_without_onnx_matches_onnx(crop_classifier: Path) -> None:
    """The spec, node types and weight types the runtime reads with protobuf alone are onnx's own reading."""
    from collections import Counter

    import onnx

    from hagrid_edge.spec import ONNX_METADATA_KEY, read_onnx_outline

    for path in (DEFAULT_MODELS / "ssdlite_small_gestures.onnx", DEFAULT_MODELS / "hand_detector.onnx", crop_classifier):
        model, outline = onnx.load(str(path)), read_onnx_outline(path)
        assert outline.metadata == {p.key: p.value for p in model.metadata_props}
        assert outline.op_types == {n.op_type for n in model.graph.node}
        assert outline.initializer_types == dict(Counter(t.data_type for t in model.graph.initializer))
    assert ONNX_METADATA_KEY in read_onnx_outline(DEFAULT_MODELS / "ssdlite_small_gestures.onnx").metadata
