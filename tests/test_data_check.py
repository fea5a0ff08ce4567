"""``hagrid-edge data check`` on the real data, and on a copy with one fault of each kind planted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hagrid_edge.cli import main
from hagrid_edge.data.check import check_root


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_real_mini_passes(mini_root: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out, _ = run_cli(capsys, "data", "check", str(mini_root))
    assert rc == 0, out
    assert "train         1205 entries" in out and "val            167 entries" in out and "no problems" in out
    rc, out, _ = run_cli(capsys, "data", "check", str(mini_root), "--split", "val", "--images")
    assert rc == 0, out
    assert "167 images decoded" in out


def test_real_full_val_passes(val_full_root: Path) -> None:
    report = check_root(val_full_root)
    assert report.ok, report.problems[:5]
    assert [(r.split, r.images, r.boxes) for r in report.splits] == [("val", 53982, 66035)]


@pytest.fixture
def faulty_root(mini_root: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the mini val split (annotations and images) with one fault of each kind planted.
    Returns the root and, per fault, the ``file:image_id: what`` prefix its report line must have."""
    root = tmp_path / "mini"
    shutil.copytree(mini_root / "annotations" / "val", root / "annotations" / "val")
    for f in (root / "annotations" / "val").glob("*.json"):
        for image_id in json.loads(f.read_text()):
            dst = root / "hagrid_dataset_512" / f.stem / f"{image_id}.jpg"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(mini_root / "hagrid_dataset_512" / f.stem / f"{image_id}.jpg", dst)
    ann = root / "annotations" / "val"
    faults = {}

    def edit(gesture: str, change) -> None:
        path = ann / f"{gesture}.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    ok_file = ann / "ok.json"
    ok_file.write_text(ok_file.read_text()[:-40])
    faults["malformed"] = f"{ok_file}:-: not valid JSON"

    call_ids = list(json.loads((ann / "call.json").read_text()))
    edit("call", lambda d: d[call_ids[0]].update(bboxes="0.1,0.2,0.3,0.4"))
    faults["wrong type"] = f"{ann / 'call.json'}:{call_ids[0]}: bboxes missing or not a list"
    edit("call", lambda d: d[call_ids[1]].update(user_id=["x"]))
    faults["wrong type 2"] = f"{ann / 'call.json'}:{call_ids[1]}: user_id ['x'] is not a string"

    like_ids = list(json.loads((ann / "like.json").read_text()))
    edit("like", lambda d: d[like_ids[0]]["bboxes"][0].__setitem__(0, 0.97))
    faults["outside"] = f"{ann / 'like.json'}:{like_ids[0]}: box [0.97"

    palm_ids = list(json.loads((ann / "palm.json").read_text()))
    edit("palm", lambda d: d[palm_ids[0]]["labels"].__setitem__(0, "wave"))
    faults["unknown label"] = f"{ann / 'palm.json'}:{palm_ids[0]}: unknown label 'wave'"

    fist_ids = list(json.loads((ann / "fist.json").read_text()))
    (root / "hagrid_dataset_512" / "fist" / f"{fist_ids[0]}.jpg").unlink()
    faults["missing image"] = f"{ann / 'fist.json'}:{fist_ids[0]}: image "
    truncated = root / "hagrid_dataset_512" / "fist" / f"{fist_ids[1]}.jpg"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    faults["truncated image"] = f"{ann / 'fist.json'}:{fist_ids[1]}: {truncated}: cannot decode image"
    return root, faults


def test_planted_faults_each_named(faulty_root, capsys: pytest.CaptureFixture) -> None:
    root, faults = faulty_root
    rc, out, err = run_cli(capsys, "data", "check", str(root), "--images")
    assert rc == 1
    lines = out.splitlines()
    for fault, prefix in faults.items():
        assert sum(line.startswith(prefix) for line in lines) == 1, f"{fault}: {prefix!r} not in\n{out}"
    assert f"{len(faults)} problem(s)" in out
    assert "Traceback" not in out + err
    # Without --images only the annotation faults are reported.
    rc, out, _ = run_cli(capsys, "data", "check", str(root))
    assert rc == 1 and f"{len(faults) - 2} problem(s)" in out


def test_cross_entry_faults(mini_root: Path, tmp_path: Path) -> None:
    ann = tmp_path / "annotations" / "val"
    ann.mkdir(parents=True)
    call = json.loads((mini_root / "annotations/val/call.json").read_text())
    image_id, entry = next(iter(call.items()))
    (ann / "call.json").write_text(json.dumps(call))
    (ann / "like.json").write_text(json.dumps({image_id: entry}))  # same id, labelled call, in like.json
    problems = [str(p) for p in check_root(tmp_path).problems]
    assert problems == [f"{ann / 'like.json'}:{image_id}: image id already annotated in {ann / 'call.json'}",
                        f"{ann / 'like.json'}:{image_id}: no box labelled 'like' (labels ['call'])"]


def test_missing_root_and_split(tmp_path: Path, mini_root: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out, err = run_cli(capsys, "data", "check", str(tmp_path / "nope"))
    assert rc == 1 and err.strip() == f"hagrid-edge data: error: {tmp_path / 'nope'}: no such data root"
    rc, out, err = run_cli(capsys, "data", "check", str(mini_root), "--split", "test")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "'test'" in err
    rc, out, err = run_cli(capsys, "data", "check", str(tmp_path))
    assert rc == 1 and "no annotation folders" in err
