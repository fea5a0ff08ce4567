"""The emulated Pi: CPU profiles, pinned requirements, the project layout, atomic builds, marker parsing, the lane check.

The emulator itself (mmdebstrap, the aarch64 wheels, qemu) runs in the CI lane (deploy/rpi/ci_lane.sh);
the one test that executes guest code here uses the cached userland when a lane or a bench built it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import missing

from hagrid_edge.benchmarks import emulate as counts
from hagrid_edge.benchmarks.emulate_counts import (
    EMPTY,
    FRAME_END,
    FRAME_START,
    INFER_END,
    INFER_START,
    MARKER_SYSCALL,
    STAGE_END,
    tag,
    untag,
)
from hagrid_edge.deploy.rpi import compare
from hagrid_edge.deploy.rpi import emulate as pi
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.paths import REPO_ROOT


# ---- CPU profiles -------------------------------------------------------------------------------
def test_cpuinfo_matches_the_pinned_cpu() -> None:
    pi5, pi4 = pi.CPUS["pi5"], pi.CPUS["pi4"]
    assert (pi5.qemu_cpu, pi4.qemu_cpu) == ("cortex-a76", "cortex-a72")
    text5, text4 = pi5.cpuinfo(), pi4.cpuinfo()
    assert text5.count("CPU part\t: 0xd0b") == 4 and "asimddp" in text5  # A76: dot product
    assert text4.count("CPU part\t: 0xd08") == 4 and "asimddp" not in text4  # A72: none (else SIGILL)
    assert "Raspberry Pi 5" in text5 and "Raspberry Pi 4" in text4
    assert [ln.split(":")[1].strip() for ln in text5.splitlines() if ln.startswith("processor")] == list("0123")


def test_parse_cpus_keeps_order_and_names_bad_entries() -> None:
    assert [p.name for p in pi.parse_cpus("pi4, pi5,pi4")] == ["pi4", "pi5"]
    with pytest.raises(HagridEdgeError, match="--emulate 'pi3': unknown Pi CPU"):
        pi.parse_cpus("pi5,pi3")
    with pytest.raises(HagridEdgeError, match="at least one"):
        pi.parse_cpus(" , ")


# ---- requirements and the project layout --------------------------------------------------------
def test_shipped_requirements_are_pinned_and_carry_no_training_stack() -> None:
    reqs = pi.read_requirements()
    names = {r.split("==")[0].lower() for r in reqs}
    assert {"ai-edge-litert", "numpy", "opencv-python-headless", "pycocotools"} <= names
    assert not names & {"torch", "torchvision", "onnx", "onnxruntime", "tensorboard", "matplotlib"}
    assert "ai-edge-litert==2.3.0" in reqs


def test_loose_requirement_is_an_error_naming_the_line(tmp_path: Path) -> None:
    f = tmp_path / "req.txt"
    f.write_text("# comment\nnumpy==2.4.6\nopencv-python-headless>=4.9\n", encoding="utf-8")
    with pytest.raises(HagridEdgeError, match=r"req.txt:3: 'opencv-python-headless>=4.9' is not pinned"):
        pi.read_requirements(f)
    with pytest.raises(HagridEdgeError, match="cannot read"):
        pi.read_requirements(tmp_path / "missing.txt")


def test_userland_key_follows_requirements() -> None:
    reqs = pi.read_requirements()
    assert pi.userland_key(reqs) == pi.userland_key(list(reqs))
    assert pi.userland_key(reqs) != pi.userland_key([*reqs[:-1], "typing-extensions==4.0.0"])


def test_project_files_follow_setup_cfg_layout() -> None:
    files = pi._project_files(pi.package_dirs())
    installed = [str(rel) for rel, _ in files]
    assert len(installed) == len(set(installed))  # nested mapped folders are not copied twice
    for path in ("hagrid_edge/cli.py", "hagrid_edge/commands/eval.py", "hagrid_edge/deploy/rpi/emulate.py",
                 "hagrid_edge/deploy/common/backend.py", "hagrid_edge/benchmarks/emulate_counts.py"):
        assert path in installed
    assert not any(p.startswith(("deploy/", "benchmarks/")) or "__pycache__" in p for p in installed)
    src = dict((str(rel), s) for rel, s in files)
    assert src["hagrid_edge/deploy/rpi/emulate.py"] == REPO_ROOT / "deploy" / "rpi" / "emulate.py"


# ---- running ------------------------------------------------------------------------------------
def test_guest_args() -> None:
    assert pi.guest_args(["hagrid-edge", "eval", "--json"]) == ["-P", "-m", "hagrid_edge.cli", "eval", "--json"]
    assert pi.guest_args(["python", "-c", "pass"]) == ["-P", "-c", "pass"]
    with pytest.raises(HagridEdgeError, match="no command"):
        pi.guest_args([])
    with pytest.raises(HagridEdgeError, match="'bash'"):
        pi.guest_args(["bash", "-c", "true"])


def test_failed_tool_reports_its_error_line() -> None:
    out = "Reading package lists...\nE: Unable to locate package qemu-nope\nE: Couldn't find any package\n"
    assert pi.last_line(out) == "E: Couldn't find any package"
    assert pi.last_line("collecting\nERROR: No matching distribution found for foo==9\n") == \
        "ERROR: No matching distribution found for foo==9"
    with pytest.raises(HagridEdgeError, match=r"pip install failed \(exit 3\): ERROR: nope"):
        pi._run("pip install", [sys.executable, "-c", "import sys; print('ERROR: nope', file=sys.stderr); sys.exit(3)"])
    with pytest.raises(HagridEdgeError, match="cannot run"):
        pi._run("a tool", ["/nonexistent/tool"])


def test_a_cache_the_guest_root_shadows_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pi.CACHE_ENV, "/tmp/pi-cache")  # the guest's /tmp hides it: cv2 failed to find its config
    with pytest.raises(HagridEdgeError, match=r"cache /tmp/pi-cache: under /tmp, which the emulated Pi's own root"):
        pi.cache_root()
    monkeypatch.setenv(pi.CACHE_ENV, "/root/pi-cache")
    assert pi.cache_root() == Path("/root/pi-cache")


def test_build_is_atomic(tmp_path: Path) -> None:
    final = tmp_path / "cache" / "thing"

    def broken(tmp: Path) -> None:
        (tmp / "half").write_text("x", encoding="utf-8")
        raise HagridEdgeError("wheel missing for aarch64")

    with pytest.raises(HagridEdgeError, match="wheel missing"):
        pi._build_atomically(final, broken)
    assert not final.exists() and list(final.parent.iterdir()) == []  # nothing half-built left

    def good(tmp: Path) -> None:
        (tmp / "done").write_text("ok", encoding="utf-8")

    assert pi._build_atomically(final, good) == final and (final / "done").read_text(encoding="utf-8") == "ok"
    assert pi._build_atomically(final, broken) == final  # a complete build is reused, not rebuilt


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HAGRID_EDGE_PI_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "hagrid_edge.deploy.rpi.emulate", "--cpu", "pi5", "--", "ls"],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["emulate: 'ls': the emulated Pi runs 'hagrid-edge ...' or "
                                                "'python ...' commands"]
    assert list(tmp_path.iterdir()) == []  # nothing built for a command that cannot run


@pytest.mark.parametrize(("args", "message"), [
    (["--guide"], "--guide and --home go with --userland bookworm-system"),
    (["--userland", "bookworm-system", "--count-to", "m.txt", "--guide"], "--count-to counts on the wheels userland"),
    (["--userland", "bookworm-system"], "runs --guide or a command after --, one of them"),
    (["--userland", "bookworm-system", "--guide", "--", "bash"], "runs --guide or a command after --, one of them"),
])
def test_system_userland_options_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "HAGRID_EDGE_PI_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "hagrid_edge.deploy.rpi.emulate", "--cpu", "pi5", *args],
                          capture_output=True, text=True, env=env, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("emulate: ") and message in lines[0]
    assert list(tmp_path.iterdir()) == []


# ---- marker parsing -----------------------------------------------------------------------------
def test_tags_round_trip() -> None:
    assert untag(tag(3, 517, INFER_END)) == (3, 517, INFER_END)
    assert MARKER_SYSCALL == int(
        next(ln for ln in (REPO_ROOT / "deploy/rpi/insn_plugin/insn_count.c").read_text().splitlines()
             if ln.startswith("#define MARKER_SYSCALL")).split()[2], 16)


def _marks(tmp_path: Path, lines: list[tuple[int, int]]) -> Path:
    f = tmp_path / "marks.txt"
    f.write_text("".join(f"{t} {c}\n" for t, c in lines) + f"end {lines[-1][1] + 5}\n", encoding="ascii")
    return f


def test_stage_counts_two_stage_frames(tmp_path: Path) -> None:
    # marker cost 10 (empty pairs); frame 0 is warm-up; frame 1: pre 100, infer 1000, post+pre 50 | 30, ...
    seq = [(tag(0, 0, EMPTY), 0), (tag(0, 0, EMPTY), 10), (tag(0, 0, EMPTY), 20), (tag(0, 0, EMPTY), 30)]
    c = 1000
    for frame, (pre, inf, post, pre2, inf2, post2) in enumerate([(900, 9000, 90, 90, 900, 9),
                                                                  (100, 1000, 50, 30, 200, 5)]):
        for kind, n in ((FRAME_START, 0), (INFER_START, pre), (INFER_END, inf), (STAGE_END, post),
                        (INFER_START, pre2), (INFER_END, inf2), (FRAME_END, post2)):
            c += n + 10 if kind != FRAME_START else 7
            seq.append((tag(0, frame, kind), c))
    marks = counts.read_marks(_marks(tmp_path, seq))
    assert counts.marker_cost(marks, 0) == 10
    frames = counts.frame_stages(marks, 0)
    assert frames[1] == {"pre": 130, "infer": 1200, "post": 55}
    summary = counts.summarize(frames, warmup=1)
    assert summary["total"] == 1385 and summary["frames"] == 1
    assert summary["pre_post_share"] == round(185 / 1385, 3)
    with pytest.raises(HagridEdgeError, match="no frames"):
        counts.summarize(frames, warmup=5)


def test_bad_marker_lines(tmp_path: Path) -> None:
    f = tmp_path / "m.txt"
    f.write_text("12 34\nhello\n", encoding="ascii")
    with pytest.raises(HagridEdgeError, match=r"m.txt:2: not a marker line"):
        counts.read_marks(f)
    with pytest.raises(HagridEdgeError, match="cannot read the emulator's instruction counts"):
        counts.read_marks(tmp_path / "none.txt")
    with pytest.raises(HagridEdgeError, match="out of order"):
        counts.frame_stages([(tag(0, 2, INFER_START), 5)], 0)


# ---- the lane's check ---------------------------------------------------------------------------
def test_compare_eval_tolerance() -> None:
    x86 = {"images": 167, "mAP50_95": 51.22, "mAP50": 69.8}
    assert compare.compare_eval(x86, {"images": 167, "mAP50_95": 51.22, "mAP50": 69.8}, floor=50) == []
    fails = compare.compare_eval(x86, {"images": 160, "mAP50_95": 50.8, "mAP50": 69.8})
    assert len(fails) == 2 and "160 images" in fails[0] and "mAP50_95: Arm 50.80 vs x86 51.22" in fails[1]
    # what a fresh CI run with OpenCV 5.1 on x86 and 5.0 on the Pi got: mAP50 moved too
    fails = compare.compare_eval(x86, {"images": 167, "mAP50_95": 51.22, "mAP50": 70.2})
    assert fails == ["mAP50: Arm 70.20 vs x86 69.80 (+0.40, limit +-0.05)"]
    nothing = {"images": 167, "mAP50_95": 0.0, "mAP50": 0.0}
    assert compare.compare_eval(nothing, nothing, floor=40) == [
        "mAP50_95 on x86 0.00 is below the floor 40", "mAP50_95 on Arm 0.00 is below the floor 40"]


def test_compare_events(tmp_path: Path) -> None:
    ev = [{"event": "start", "gesture": "like", "track": 1, "frame": 0, "time": 1.0, "score": 0.9, "box": [1, 2, 3, 4]},
          {"event": "end", "gesture": "like", "track": 1, "frame": 1, "time": 2.0, "score": 0.9, "box": [1, 2, 3, 4]}]
    arm = [dict(e, time=e["time"] + 50, score=0.9004, box=[1, 2, 3, 4.25]) for e in ev]
    assert compare.compare_events(ev, arm, min_events=2) == ([], {"score": 0.0004, "box_px": 0.25})
    moved = [dict(e, score=0.97, box=[1, 2, 3, 7.3]) for e in ev]  # the drifted-OpenCV run: 0.07, 3.3 px
    assert compare.compare_events(ev, moved)[0] == ["event scores differ by up to 0.0700 (limit 0.001)",
                                                     "event boxes differ by up to 3.30 px (limit 0.5)"]
    fails, _ = compare.compare_events(ev, arm[:1])
    assert "1 on Arm, 2 on x86" in fails[0] and "event 1" in fails[0]
    assert compare.compare_events([], [], min_events=1)[0] == ["0 events on x86, fewer than the floor 1",
                                                               "0 events on Arm, fewer than the floor 1"]
    f = tmp_path / "e.jsonl"
    f.write_text(json.dumps(ev[0]) + "\n{\"event\": \"start\"}\n", encoding="utf-8")
    with pytest.raises(HagridEdgeError, match=r"e.jsonl:2: an event needs"):
        compare.load_events(f)
    g = tmp_path / "eval.json"
    g.write_text("INFO: noise\n" + json.dumps({"mAP50_95": 1.0, "mAP50": 2.0, "images": 3}) + "\n", encoding="utf-8")
    assert compare.load_eval(g)["mAP50"] == 2.0


# ---- the real emulator, when this machine has built it (.ci/run builds it before the tests) -------
def built_userland(cpu: str) -> Path:
    """The cached userland's prefix for ``cpu``: skipped where none is built, a failure under CI."""
    built = sorted(pi.cache_root().glob(f"pi-userland-{pi.userland_key(pi.read_requirements())}/cpu/{cpu}"))
    if not built or not pi.shutil.which("qemu-aarch64"):
        missing("no emulated Pi userland of deploy/rpi/requirements-pi.txt built on this machine "
                "(deploy/rpi/emulate.sh --cpu pi5 --build-only builds it)")
    return built[-1]


def test_marker_counts_on_the_emulated_pi(tmp_path: Path) -> None:
    built = [built_userland("pi5")]
    plugins = sorted(pi.cache_root().glob("insn-plugin-*/insn_count.so"))
    if not plugins:
        missing("no instruction-counting plugin built (deploy/rpi/emulate.sh --cpu pi5 --build-only builds it)")
    out = tmp_path / "marks.txt"
    prog = ("from hagrid_edge.benchmarks.emulate_counts import Marker, tag\n"
            "m = Marker()\nm(tag(0, 0, 1)); m(tag(0, 0, 1)); sum(range(20000)); m(tag(0, 0, 5))\n")
    userland = built[-1].parent.parent
    argv = pi._guest_argv(built[-1], pi.CPUS["pi5"], ["-P", "-c", prog], f"{plugins[-1]},out={out}")
    env = pi.guest_env(userland, pi.install_project(userland))
    subprocess.run(argv, env=env, check=True, timeout=120)
    marks = counts.read_marks(out)
    assert [untag(t)[2] for t, _ in marks] == [1, 1, 5]
    empty, loop = marks[1][1] - marks[0][1], marks[2][1] - marks[1][1]
    assert 0 < empty < 50_000 and loop > 20 * empty  # 20000 additions cost far more than one marker


@pytest.mark.parametrize(("extra", "message"), [
    (["--emulate", "pi5,pi3"], "--emulate 'pi3': unknown Pi CPU"),
    (["--emulate", "pi5", "--emulate-frames", "0"], "--emulate-frames: must be at least 1"),
])
def test_bench_emulate_bad_input_is_one_line(capsys, tmp_path, mini_root, extra, message) -> None:
    from hagrid_edge.cli import main

    code = main(["bench", "--model", str(REPO_ROOT / "assets/models/hand_detector_int8.tflite"), "--data",
                 str(mini_root), "--report", str(tmp_path / "r"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "r").exists()  # refused before anything was measured


def test_emulated_rows_merge_and_render() -> None:
    from hagrid_edge.benchmarks import report

    host = report.build_report([{"id": "det_int8.tflite", "kind": "detector", "error": None, "precision": "INT8",
                                 "accuracy": {}, "latency": {}}], {"label": "ci", "cpu": "x86"}, {"images": 1})
    ins = {"pre": 2_790_000, "infer": 23_320_000, "post": 1_870_000, "total": 27_980_000, "pre_post_share": 0.167,
           "frames": 8}
    row = {"id": "det_int8.tflite", "kind": "detector", "error": None, "precision": "INT8", "accuracy": {},
           "latency": {}, "instructions": ins, "instructions_ratio": {"infer": 0.5, "total": 0.55}, "reference": "fp"}
    report.add_machine(host, {"label": "pi5-emulated", "emulated": "cortex-a76", "cpu": "cortex-a76 (emulated)"},
                       {"instructions": {"frames": 8, "warmup": 1, "threads": 1}}, [row])
    with pytest.raises(HagridEdgeError, match="already in the report"):
        report.add_machine(host, {"label": "ci"}, {}, [])
    md = report.render_markdown(host)
    main_table, instructions = md.split("## Instructions per frame")
    assert "pi5-emulated" not in main_table.split("\n\n")[2]  # the latency/accuracy table holds the host only
    assert "| pi5-emulated | det_int8.tflite | INT8 | 2.79 | 23.32 | 1.87 | 27.98 | 17% | 0.50 | 0.55 |" in instructions
    assert "not a latency" in instructions


def test_a_crash_on_the_emulated_pi_is_one_error(tmp_path: Path) -> None:
    built_userland("pi4")
    with pytest.raises(HagridEdgeError, match=r"python -c: crashed on the emulated pi4 \(cortex-a72\) with SIGSEGV"):
        pi.run(pi.CPUS["pi4"], ["python", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"])
    assert pi.run(pi.CPUS["pi4"], ["python", "-c", "import platform, sys; sys.exit(platform.machine() != 'aarch64')"]) == 0


PREPROCESS_HASH = """
import hashlib, sys
from hagrid_edge.data.annotations import load_split
from hagrid_edge.images import read_rgb
from hagrid_edge.processing import crop_inputs, preprocess
from hagrid_edge.spec import resolve_spec
det, cls = resolve_spec(sys.argv[2]), resolve_spec(sys.argv[3])
h = hashlib.sha256()
for s in load_split(sys.argv[1], "val")[:6]:
    f = read_rgb(s.image_path)
    h.update(preprocess(f, det)[0].tobytes())
    h.update(crop_inputs(f, s.boxes_xyxy(f.shape[1], f.shape[0]), cls).tobytes())
print(h.hexdigest())
"""


def test_preprocessing_is_bit_identical_on_the_emulated_pi(mini_root: Path) -> None:
    """The same model inputs on Arm as on x86 (so the lane can compare figures exactly)."""
    built_userland("pi5")
    models = REPO_ROOT / "assets" / "models"
    args = [str(mini_root.resolve()), str(models / "hand_detector_int8.tflite"), str(models / "crops_classifier_int8.tflite")]
    host = subprocess.run([sys.executable, "-c", PREPROCESS_HASH, *args], capture_output=True, text=True, check=True)
    guest = subprocess.run([sys.executable, "-m", "hagrid_edge.deploy.rpi.emulate", "--cpu", "pi5", "--", "python",
                            "-c", PREPROCESS_HASH, *args], capture_output=True, text=True, check=True, timeout=300)
    assert guest.stdout.split() == host.stdout.split() and len(host.stdout.strip()) == 64
