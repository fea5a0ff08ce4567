"""Fault injection against ``data``, ``eval``, ``export``, ``train`` and ``bench``: hostile
annotation files, user folders in the way, decompression bombs, full and read-only disks, bad flags.

Each test asserts what the user keeps (their files untouched, nothing written outside --out), the
one line naming the file or option, and the exit code.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml
from test_faults_run import bomb_png, one_error_line, tmpfs  # noqa: F401 (tmpfs: a fixture)

from hagrid_edge.cli import main
from hagrid_edge.data.download import extract
from hagrid_edge.errors import DataError

BOX = {"bboxes": [[0.1, 0.1, 0.2, 0.2]], "labels": ["palm"], "user_id": "u1"}


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (symlinks by target), to compare before and after."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = str(p.readlink() if hasattr(p, "readlink") else "").encode()
        elif p.is_file():
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def small_root(mini_root: Path, where: Path, gesture: str = "palm", n: int = 3) -> Path:
    """A HaGRID root of ``n`` real val photos of one gesture (images copied)."""
    entries = json.loads((mini_root / "annotations" / "val" / f"{gesture}.json").read_text())
    keep = dict(list(entries.items())[:n])
    (where / "annotations" / "val").mkdir(parents=True)
    (where / "annotations" / "val" / f"{gesture}.json").write_text(json.dumps(keep))
    images = where / "hagrid_dataset_512" / gesture
    images.mkdir(parents=True)
    for image_id in keep:
        shutil.copy(mini_root / "hagrid_dataset_512" / gesture / f"{image_id}.jpg", images)
    return where


# ---- hostile annotation files ---------------------------------------------------------------------
@pytest.mark.parametrize("image_id", ["../../escaped", "/tmp/absolute", "a/b", "..", "x\\..\\y"])
def test_image_ids_that_are_paths_are_refused(image_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                              ) -> None:
    root = tmp_path / "root"
    (root / "annotations" / "val").mkdir(parents=True)
    (root / "annotations" / "val" / "palm.json").write_text(json.dumps({image_id: BOX, "fine": BOX}))
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"palm.json:{image_id}: image id {image_id!r} is not a plain file name" in out
    before = tree(tmp_path)
    line = one_error_line(capsys, ["data", "convert", str(root), "--to", "yolo", "--out", str(tmp_path / "out")])
    assert f":{image_id}: image id" in line
    assert tree(tmp_path) == before  # nothing written anywhere, inside --out or out of it


def test_split_and_gesture_names_that_are_paths_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    root = tmp_path / "root"
    (root / "annotations" / "val").mkdir(parents=True)
    (root / "annotations" / "val" / "...json").write_text(json.dumps({"a": BOX}))  # gesture name '..'
    assert main(["data", "check", str(root)]) == 1
    assert "gesture name '..' (from the file name) is not a plain file name" in capsys.readouterr().out
    line = one_error_line(capsys, ["data", "convert", str(root), "--to", "yolo", "--split", "../../val",
                                   "--out", str(tmp_path / "out")])
    assert "--split '../../val': is not a plain file name" in line


# ---- user folders in the way ----------------------------------------------------------------------
def test_convert_into_a_folder_of_the_users_deletes_nothing(mini_root: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = small_root(mini_root, tmp_path / "root")
    out = tmp_path / "datasets"
    (out / "images" / "val").mkdir(parents=True)
    (out / "images" / "val" / "holiday.jpg").write_bytes(b"the user's photo")
    (out / "labels" / "other").mkdir(parents=True)
    (out / "labels" / "other" / "x.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (out / "notes.txt").write_text("mine")
    before = tree(out)
    line = one_error_line(capsys, ["data", "convert", str(root), "--to", "yolo", "--out", str(out)])
    assert f"{out / 'images' / 'val'} was not written by data convert; it is left as it is" in line
    assert tree(out) == before

    (out / "data.yaml").write_text("path: /somewhere\ntrain: images/train\n")  # the user's own data.yaml
    shutil.rmtree(out / "images" / "val")
    before = tree(out)
    line = one_error_line(capsys, ["data", "convert", str(root), "--to", "yolo", "--out", str(out)])
    assert f"{out / 'data.yaml'} was not written by data convert" in line and tree(out) == before

    coco = tmp_path / "coco"
    coco.mkdir()
    (coco / "val.json").write_text('{"images": [], "mine": true}')
    line = one_error_line(capsys, ["data", "convert", str(root), "--to", "coco", "--out", str(coco)])
    assert f"{coco / 'val.json'} was not written by data convert" in line
    assert (coco / "val.json").read_text() == '{"images": [], "mine": true}'


def test_convert_into_its_own_folder_lists_only_its_own_splits(mini_root: Path, tmp_path: Path) -> None:
    root = small_root(mini_root, tmp_path / "root")
    out = tmp_path / "yolo"
    assert main(["data", "convert", str(root), "--to", "yolo", "--out", str(out)]) == 0
    (out / "images" / "unrelated").mkdir()  # a folder the user added: not named in data.yaml
    assert main(["data", "convert", str(root), "--to", "yolo", "--out", str(out)]) == 0  # ours: replaced
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["val"] == "images/val" and "unrelated" not in data
    assert (out / "images" / "unrelated").is_dir() and len(list((out / "labels" / "val").rglob("*.txt"))) == 3
    coco = tmp_path / "coco"
    for _ in range(2):  # its own val.json is replaced
        assert main(["data", "convert", str(root), "--to", "coco", "--out", str(coco)]) == 0


def test_export_onto_its_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hagrid_edge.paths import REPO_ROOT

    model = tmp_path / "hand_detector.onnx"
    model.write_bytes((REPO_ROOT / "assets" / "models" / "hand_detector.onnx").read_bytes())
    before = model.read_bytes()
    line = one_error_line(capsys, ["export", "--cut", str(model), "--out", str(model)])
    assert line == (f"hagrid-edge export: error: --out {model}: is the same file as --cut {model}; writing it "
                    "would destroy it (choose another output)")
    spec = tmp_path / "spec.json"
    spec.write_text("{}")
    line = one_error_line(capsys, ["export", "--cut", str(model), "--spec", str(spec), "--out", str(tmp_path / "spec")])
    assert "--out's spec" in line and "--spec" in line
    assert model.read_bytes() == before and spec.read_text() == "{}"


def test_train_into_an_earlier_run_needs_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from hagrid_edge.paths import REPO_ROOT

    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pt").write_bytes(b"an hour of training")
    line = one_error_line(capsys, ["train", "--config", str(REPO_ROOT / "train" / "configs" / "gesture_classifier.yaml"),
                                   "--out", str(out)])
    assert line == (f"hagrid-edge train: error: --out {out}: holds an earlier run (best.pt); continue it with "
                    "--resume, or choose another folder")
    assert (out / "best.pt").read_bytes() == b"an hour of training"


# ---- decompression bombs --------------------------------------------------------------------------
def test_decompression_bomb_is_a_problem_not_a_crash(mini_root: Path, hand_detector: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    root = small_root(mini_root, tmp_path / "root")
    victim = next((root / "hagrid_dataset_512" / "palm").iterdir())
    victim.write_bytes(bomb_png())  # named .jpg, as a hostile upload would be
    assert main(["data", "check", str(root), "--images"]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s)" in out and f"{victim}: image too large to decode (200,000,000 pixels" in out
    line = one_error_line(capsys, ["data", "convert", str(root), "--to", "coco", "--out", str(tmp_path / "c")])
    assert "image too large to decode" in line and str(victim) in line
    line = one_error_line(capsys, ["eval", "--model", str(hand_detector), "--data", str(root), "--task", "hands",
                                   "--json"])
    assert "image too large to decode" in line and str(victim) in line


# ---- eval -----------------------------------------------------------------------------------------
def test_eval_of_a_hands_only_detector_on_gestures_is_one_line(mini_root: Path, hand_detector: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = small_root(mini_root, tmp_path / "root")
    line = one_error_line(capsys, ["eval", "--model", str(hand_detector), "--data", str(root)])
    assert line.startswith(f"hagrid-edge eval: error: --task gestures: {hand_detector} names no gesture")
    line = one_error_line(capsys, ["eval", "--model", str(hand_detector), "--data", str(root), "--limit", "-5"],
                          code=2)
    assert "argument --limit: must be >= 1, got -5" in line


# ---- full and read-only disks, paths that are not folders -----------------------------------------
def test_read_only_and_full_disks_are_one_line(mini_root: Path, tmp_path: Path, tmpfs,  # noqa: F811
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from hagrid_edge.paths import REPO_ROOT

    root = small_root(mini_root, tmp_path / "root")
    ro = tmpfs("ro", "ro,size=64k")
    line = one_error_line(capsys, ["data", "convert", str(root), "--to", "coco", "--out", str(ro / "c")])
    assert line.startswith("hagrid-edge data: error: ") and str(ro / "c") in line and "Read-only file system" in line
    model = REPO_ROOT / "assets" / "models" / "hand_detector.onnx"
    line = one_error_line(capsys, ["export", "--cut", str(model), "--out", str(ro / "cut.onnx")])
    assert line == f"hagrid-edge export: error: --out {ro / 'cut.onnx'}: cannot write in {ro} (Read-only file system)"

    full = tmpfs("full", "size=16k")
    line = one_error_line(capsys, ["data", "convert", str(root), "--to", "yolo", "--out", str(full / "y")])
    assert line.startswith("hagrid-edge data: error: ") and "No space left on device" in line and str(full) in line

    (tmp_path / "afile").write_text("x")
    line = one_error_line(capsys, ["data", "download", "--subset", "-a", "--save-path", str(tmp_path / "afile"),
                                   "--base-url", "http://127.0.0.1:9/"])
    assert str(tmp_path / "afile") in line


def test_extract_on_a_full_disk_blames_the_disk_and_keeps_the_archive(tmp_path: Path, tmpfs) -> None:  # noqa: F811
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("palm/a.jpg", bytes(200_000))
    full = tmpfs("full", "size=64k")
    with pytest.raises(OSError) as e:
        extract(archive, full / "data")
    assert e.value.filename == str(full / "data") and "No space left on device" in str(e.value)
    assert "damaged" not in str(e.value) and archive.exists()
    assert not list((full / "data").rglob("a.jpg"))


def test_archives_and_checksum_files_that_cannot_be_used_are_one_line(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "clash.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a", b"file")
        zf.writestr("a/b", b"file under it")
    with pytest.raises(DataError, match="member 'a' is a file and also the folder of 'a/b'; nothing extracted"):
        extract(archive, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())
    sums = tmp_path / "sums.bin"
    sums.write_bytes(bytes(range(256)) * 4)
    line = one_error_line(capsys, ["data", "download", "--subset", "-a", "--checksums", str(sums),
                                   "--save-path", str(tmp_path / "d")])
    assert line == f"hagrid-edge data: error: {sums}: not a text file of '<sha256>  <file name>' lines"
    buf = io.BytesIO()
    line = one_error_line(capsys, ["data", "download", "--retries", "-1"], code=2)
    assert "argument --retries: must be >= 0, got -1" in line and not buf.getvalue()


@pytest.mark.parametrize("argv, flag", [
    (["export", "--cut", "x.onnx", "--out", "y.onnx", "--check-images", "0"], "--check-images"),
    (["export", "--cut", "x.onnx", "--out", "y.onnx", "--opset", "11"], "--opset"),
    (["train", "--config", "c.yaml", "--epochs", "0"], "--epochs"),
    (["eval", "--model", "m.onnx", "--data", "d", "--threads", "0"], "--threads"),
])
def test_flags_of_other_commands_are_checked_when_parsed(argv: list[str], flag: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error_line(capsys, argv, code=2)
    assert f"error: argument {flag}: must be" in line
