"""``data download`` against a real HTTP server on 127.0.0.1 serving zips of real HaGRID files.

The server is the standard library's, run in a thread; it honours Range requests and can be told
to stop halfway through a file on the first request, as a dropped connection would.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hagrid_edge.cli import main
from hagrid_edge.data.annotations import load_split
from hagrid_edge.data.check import check_root
from hagrid_edge.data.download import BASE_URLS, archives, download, extract, fetch
from hagrid_edge.errors import DataError
from hagrid_edge.labels import GESTURES

CALL_ZIP = "hagrid/hagrid_dataset_new_554800/hagrid_dataset/call.zip"
ANN_ZIP = "hagrid_v2/annotations_with_landmarks/annotations.zip"


class Site:
    """What the loopback server serves, and what it was asked."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_first: set[str] = set()  # paths whose first GET stops halfway
        self.ignore_range = False  # answer every GET with the whole file, as some servers do
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)


class Handler(BaseHTTPRequestHandler):
    site: Site

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        path = self.path.lstrip("/")
        rng = self.headers.get("Range")
        self.site.requests.append((path, rng))
        body = self.site.files.get(path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if rng and not self.site.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if path in self.site.cut_first:
            self.site.cut_first.discard(path)
            self.wfile.write(body[start: start + (len(body) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server() -> Iterator[tuple[str, Site]]:
    site = Site()
    handler = type("SiteHandler", (Handler,), {"site": site})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", site
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def hagrid_site(server, mini_root: Path) -> tuple[str, Site, dict]:
    """v2-style archives of real files: call.zip (the val images of 'call') and annotations.zip
    (the real val call.json)."""
    url, site = server
    ann = (mini_root / "annotations" / "val" / "call.json").read_bytes()
    images = {f"hagrid_dataset_512/call/{i}.jpg": (mini_root / "hagrid_dataset_512" / "call" / f"{i}.jpg").read_bytes()
              for i in json.loads(ann)}
    site.files[CALL_ZIP] = zip_bytes(images)
    site.files[ANN_ZIP] = zip_bytes({"annotations/val/call.json": ann})
    return url, site, images


def test_url_table() -> None:
    v1 = archives("v1", train=True, subset=True, annotations=True, dataset=True, targets=["call", "fist"])
    assert [a.name for a in v1] == ["train_val_call.zip", "train_val_fist.zip", "ann_train_val.zip",
                                    "subsample.zip", "ann_subsample.zip"]
    assert BASE_URLS["v1"] + v1[0].path == "https://n-usr-2uzac.s3pd12.sbercloud.ru/b-usr-2uzac-mv4/hagrid/train_val_call.zip"
    v2 = archives("v2", dataset=True, annotations=True, targets=["call", "rock", "grip"])
    assert [a.path for a in v2] == [CALL_ZIP, "hagrid_v2/hagrid_v2_zip/rock.zip", "hagrid_v2/hagrid_v2_zip/grip.zip",
                                    ANN_ZIP]
    assert len(archives("v1", test=True, dataset=True, annotations=True)) == 2
    assert len(archives("v1", train=True, dataset=True)) == len(GESTURES)
    for kwargs, msg in (({"train": True}, "--annotations and/or --dataset"),
                        ({"dataset": True}, "--train, --test and/or --subset"),
                        ({"train": True, "dataset": True, "targets": ["grip"]}, r"v1 has no gesture\(s\) \['grip'\]")):
        with pytest.raises(DataError, match=msg):
            archives("v1", **kwargs)


def test_interrupted_then_resumed(hagrid_site, tmp_path: Path) -> None:
    url, site, images = hagrid_site
    site.cut_first.add(CALL_ZIP)
    save = tmp_path / "hagrid"
    items = archives("v2", dataset=True, annotations=True, targets=["call"])
    with pytest.raises(DataError, match="download interrupted .*run again to resume"):
        download(items, save, "v2", url, retries=0, progress=False, log=lambda _: None)
    part = save / ".downloads" / "call.zip.part"
    size = len(site.files[CALL_ZIP])
    assert part.stat().st_size == size // 2
    assert not (save / ".downloads" / "call.zip").exists() and not (save / "hagrid_dataset_512").exists()

    download(items, save, "v2", url, progress=False, log=lambda _: None)
    assert site.requests[:2] == [(CALL_ZIP, None), (CALL_ZIP, f"bytes={size // 2}-")]
    assert not part.exists() and not (save / ".downloads" / "call.zip").exists()  # unpacked, then removed
    for name, data in images.items():
        assert (save / name).read_bytes() == data
    assert len(load_split(save, "val")) == len(images)
    assert check_root(save, images=True).ok
    # A re-run finds everything done and asks the server nothing.
    n = len(site.requests)
    download(items, save, "v2", url, progress=False, log=lambda _: None)
    assert len(site.requests) == n


def test_retries_resume_within_one_run(hagrid_site, tmp_path: Path) -> None:
    url, site, _ = hagrid_site
    site.cut_first.add(CALL_ZIP)
    dest = tmp_path / "call.zip"
    fetch(url + CALL_ZIP, dest, retries=1, progress=False)
    assert dest.read_bytes() == site.files[CALL_ZIP]
    assert [r for _, r in site.requests] == [None, f"bytes={len(site.files[CALL_ZIP]) // 2}-"]


def test_part_already_whole_or_range_ignored(hagrid_site, tmp_path: Path) -> None:
    url, site, _ = hagrid_site
    body = site.files[ANN_ZIP]
    dest = tmp_path / "annotations.zip"
    (tmp_path / "annotations.zip.part").write_bytes(body)  # a run that died just before the rename
    fetch(url + ANN_ZIP, dest, progress=False)
    assert dest.read_bytes() == body and site.requests[-1] == (ANN_ZIP, f"bytes={len(body)}-")
    dest.unlink()
    (tmp_path / "annotations.zip.part").write_bytes(body[:100])
    site.ignore_range = True  # 200 with the whole file: the part is rewritten, not appended to
    fetch(url + ANN_ZIP, dest, progress=False)
    assert dest.read_bytes() == body


def test_checksum(hagrid_site, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url, site, _ = hagrid_site
    good = hashlib.sha256(site.files[ANN_ZIP]).hexdigest()
    dest = tmp_path / "annotations.zip"
    with pytest.raises(DataError, match="does not match the expected"):
        fetch(url + ANN_ZIP, dest, sha256="0" * 64, progress=False)
    assert not dest.exists() and not (tmp_path / "annotations.zip.part").exists()
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{good}  annotations.zip\n")
    save = tmp_path / "save"
    rc = main(["data", "download", "--release", "v2", "-a", "-p", str(save), "--base-url", url,
               "--checksums", str(sums)])
    assert rc == 0 and (save / "annotations" / "val" / "call.json").is_file()
    sums.write_text("not a checksum line\n")
    rc = main(["data", "download", "--release", "v2", "-a", "-p", str(tmp_path / "s2"), "--base-url", url,
               "--checksums", str(sums)])
    assert rc == 1 and f"{sums}:1: not '<sha256>  <file name>'" in capsys.readouterr().err


def test_missing_archive_is_one_line(hagrid_site, tmp_path: Path, capsys: pytest.CaptureFixture,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url, _, _ = hagrid_site
    monkeypatch.setenv("HAGRID_EDGE_BASE_URL", url)  # the environment variable works like --base-url
    rc = main(["data", "download", "--release", "v2", "-d", "-t", "fist", "-p", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and err.strip() == f"hagrid-edge data: error: {url}{CALL_ZIP.replace('call', 'fist')}: HTTP 404 Not Found"


@pytest.mark.parametrize("member, why", [
    ("../evil", "climbs out of the target"),
    ("hagrid_dataset/../../evil", "climbs out of the target"),
    ("/tmp/evil", "is an absolute path"),
    ("C:/evil", "is an absolute path"),
])
def test_unsafe_member_refused(hagrid_site, tmp_path: Path, member: str, why: str) -> None:
    url, site, images = hagrid_site
    name, data = next(iter(images.items()))
    site.files[CALL_ZIP] = zip_bytes({name: data, member: b"owned"})
    save = tmp_path / "a" / "b"
    with pytest.raises(DataError, match=f"member '{re.escape(member)}' {why}.*; nothing extracted"):
        download(archives("v2", dataset=True, targets=["call"]), save, "v2", url, progress=False, log=lambda _: None)
    assert not (tmp_path / "a" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not (save / name).exists()  # nothing at all was extracted
    assert [p.name for p in save.iterdir()] == [".downloads"]


def test_symlink_member_refused(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("hagrid_dataset/link")
    info.external_attr = (0o120777 << 16)
    archive = tmp_path / "links.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="is a symbolic link"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "hagrid_dataset").exists()


def test_damaged_zip(tmp_path: Path, mini_root: Path) -> None:
    data = zip_bytes({"a.json": (mini_root / "annotations/val/call.json").read_bytes()})
    archive = tmp_path / "bad.zip"
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="not a readable zip archive"):
        extract(archive, tmp_path / "out")


def test_v1_cli_end_to_end(server, mini_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """v1 archives (train_val_<g>/ and ann_train_val/) through the CLI, then the derived train/val."""
    url, site = server
    ann = (mini_root / "annotations" / "val" / "like.json").read_bytes()
    site.files["train_val_like.zip"] = zip_bytes(
        {f"train_val_like/{i}.jpg": (mini_root / "hagrid_dataset_512" / "like" / f"{i}.jpg").read_bytes()
         for i in json.loads(ann)})
    site.files["ann_train_val.zip"] = zip_bytes({"ann_train_val/like.json": ann})
    save = tmp_path / "v1"
    assert main(["data", "download", "--train", "-a", "-d", "-t", "like", "-p", str(save), "--base-url", url]) == 0
    assert [p for p, _ in site.requests] == ["train_val_like.zip", "ann_train_val.zip"]
    capsys.readouterr()
    assert main(["data", "check", str(save), "--images"]) == 0
    assert "train_val" in capsys.readouterr().out
    assert main(["data", "stats", str(save), "--split", "train", "--split", "val", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["train"]["images"] + stats["val"]["images"] == len(json.loads(ann))
