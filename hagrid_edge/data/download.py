"""``data download``: HaGRID archives fetched resumably, verified, and unpacked safely.

The URL table below is the one place that knows where HaGRID lives (the authors' README and
download.py). Transfers go to ``<name>.part`` and resume with an HTTP Range request; the archive
gets its final name only after its size (from the server, and the table when known) and sha256
(when known, e.g. from ``--checksums``) match. Extraction refuses absolute paths, ``..`` and
symlinks before writing anything, unpacks into a temporary folder under the target, and moves
each file into place whole. ``$HAGRID_EDGE_BASE_URL`` or ``--base-url`` replaces a release's base
URL (a mirror, or a local server in tests).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from hagrid_edge.errors import DataError
from hagrid_edge.labels import GESTURES, NO_GESTURE, V2_EXTRA_GESTURES
from hagrid_edge.paths import write_text_atomic

BASE_URL_ENV = "HAGRID_EDGE_BASE_URL"
RELEASES = ("v1", "v2")
# v1: HaGRID (2022), one archive per gesture for train_val, one each for test and subsample.
# v2: HaGRIDv2 (2024); its 18 original gestures are the HaGRID 2.0 images, all splits in one
# archive per gesture, and one annotations archive (with landmarks) for every split.
BASE_URLS = {
    "v1": "https://n-usr-2uzac.s3pd12.sbercloud.ru/b-usr-2uzac-mv4/hagrid/",
    "v2": "https://rndml-team-cv.obs.ru-moscow-1.hc.sbercloud.ru/datasets/",
}
V2_IN_V2_BUCKET = frozenset(("one", "rock", *V2_EXTRA_GESTURES, NO_GESTURE))
V2_TARGETS = (*GESTURES, *V2_EXTRA_GESTURES, NO_GESTURE)
DOWNLOADS_DIR = ".downloads"  # archives, partial transfers and done-markers under --save_path
CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    name: str  # file name on disk
    path: str  # relative to the release's base URL
    size: int | None = None
    sha256: str | None = None


def archives(release: str, *, train: bool = False, test: bool = False, subset: bool = False,
             annotations: bool = False, dataset: bool = False,
             targets: Sequence[str] = GESTURES) -> list[Archive]:
    """The archives the seed's download.py flags select (v2 ignores the split flags: every
    archive holds all splits)."""
    if release not in RELEASES:
        raise DataError(f"--release {release!r}: choose one of {', '.join(RELEASES)}")
    if not (annotations or dataset):
        raise DataError("nothing to download: give --annotations and/or --dataset")
    known = GESTURES if release == "v1" else V2_TARGETS
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise DataError(f"--targets: {release} has no gesture(s) {unknown}")
    out: list[Archive] = []
    if release == "v1":
        if not (train or test or subset):
            raise DataError("nothing to download: give --train, --test and/or --subset")
        if train and dataset:
            out += [Archive(f"train_val_{t}.zip", f"train_val_{t}.zip") for t in targets]
        for flag, split in ((train, "train_val"), (test, "test"), (subset, "subsample")):
            if flag and dataset and split != "train_val":
                out.append(Archive(f"{split}.zip", f"{split}.zip"))
            if flag and annotations:
                out.append(Archive(f"ann_{split}.zip", f"ann_{split}.zip"))
        return out
    if dataset:
        for t in targets:
            folder = "hagrid_v2/hagrid_v2_zip" if t in V2_IN_V2_BUCKET else \
                "hagrid/hagrid_dataset_new_554800/hagrid_dataset"
            out.append(Archive(f"{t}.zip", f"{folder}/{t}.zip"))
    if annotations:
        out.append(Archive("annotations.zip", "hagrid_v2/annotations_with_landmarks/annotations.zip"))
    return out


def base_url(release: str, override: str | None = None) -> str:
    url = override or os.environ.get(BASE_URL_ENV) or BASE_URLS[release]
    return url if url.endswith("/") else url + "/"


def read_checksums(path: str | Path) -> dict[str, str]:
    """``sha256sum`` output (``<hex>  <file name>`` per line) -> {file name: hex}."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read checksums ({e.strerror})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file of '<sha256>  <file name>' lines") from None
    sums = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{64})\s+\*?(.+)", line.strip())
        if not m:
            raise DataError(f"{path}:{n}: not '<sha256>  <file name>'")
        sums[Path(m.group(2)).name] = m.group(1).lower()
    return sums


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class _Interrupted(Exception):
    """A transfer stopped early; the .part file keeps what arrived."""


def _total_from_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes START-END/TOTAL`` or ``bytes */TOTAL`` -> (start, total)."""
    m = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (value or "").strip())
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _transfer(url: str, part: Path, timeout: float, progress: bool) -> int | None:
    """Append the rest of ``url`` to ``part``; returns the full size the server announced."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part may already be whole
            _, total = _total_from_content_range(e.headers.get("Content-Range"))
            if total == have:
                return total
            part.unlink()
            raise _Interrupted(f"server refused to resume at byte {have}; starting over") from None
        raise DataError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise _Interrupted(str(getattr(e, "reason", e))) from None
    with response:
        if response.status == 206:
            start, total = _total_from_content_range(response.headers.get("Content-Range"))
            if start != have:
                part.unlink()
                raise _Interrupted(f"server resumed at byte {start}, not {have}; starting over")
            mode = "ab"
        else:  # 200: the server sent the whole file
            have, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=part.stem,
                                         disable=not progress, leave=False) as bar:
            while True:
                try:
                    block = response.read(CHUNK)
                except (http.client.HTTPException, OSError) as e:
                    raise _Interrupted(f"connection lost ({type(e).__name__})") from None
                if not block:
                    break
                try:  # a full disk is not a lost connection: no retry, the bytes so far stay in the part file
                    f.write(block)
                    f.flush()
                except OSError as e:
                    raise DataError(f"{part}: cannot write the download ({e.strerror}); "
                                    f"{part.stat().st_size} bytes kept, run again to resume") from None
                bar.update(len(block))
    got = part.stat().st_size
    if total is not None and got < total:
        raise _Interrupted(f"connection closed after {got} of {total} bytes")
    return total


def fetch(url: str, dest: Path, archive: Archive | None = None, sha256: str | None = None,
          retries: int = 3, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed across attempts and runs)."""
    size = archive.size if archive else None
    sha256 = sha256 or (archive.sha256 if archive else None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    total = None
    for attempt in range(retries + 1):
        try:
            total = _transfer(url, part, timeout, progress)
            break
        except _Interrupted as e:
            if attempt == retries:
                have = part.stat().st_size if part.exists() else 0
                raise DataError(f"{url}: download interrupted ({e}); {have} bytes kept in {part}, "
                                "run again to resume") from None
    got = part.stat().st_size
    for expected, source in ((total, "the server"), (size, "the URL table")):
        if expected is not None and got != expected:
            part.unlink()
            raise DataError(f"{url}: got {got} bytes, {source} says {expected}; partial file removed")
    if sha256:
        digest = sha256_of(part)
        if digest != sha256.lower():
            part.unlink()
            raise DataError(f"{url}: sha256 {digest} does not match the expected {sha256}; file removed")
    os.replace(part, dest)
    return dest


def _member_error(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    pure = PurePosixPath(name)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in pure.parts:
        return "climbs out of the target with '..'"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    return None


def safe_members(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    """Every member, or DataError naming the first one that could write outside the target, or
    that another member needs as a folder (``a`` and ``a/b``) or repeats."""
    members = zf.infolist()
    for info in members:
        err = _member_error(info)
        if err:
            raise DataError(f"{archive}: member {info.filename!r} {err}; nothing extracted")
    files = {}
    for info in members:
        if not info.is_dir():
            name = PurePosixPath(info.filename.replace("\\", "/")).as_posix()
            if name in files:
                raise DataError(f"{archive}: member {info.filename!r} appears twice; nothing extracted")
            files[name] = info
    for name in files:
        for parent in PurePosixPath(name).parents:
            if parent.as_posix() in files:
                raise DataError(f"{archive}: member {files[parent.as_posix()].filename!r} is a file and also the "
                                f"folder of {name!r}; nothing extracted")
    return members


def extract(archive: Path, target: Path) -> int:
    """Unpack ``archive`` under ``target``; each file appears under its final name only when whole.
    Returns the number of files."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{archive}: not a readable zip archive ({e})") from None
    with zf:
        members = safe_members(zf, archive)
        work = Path(tempfile.mkdtemp(prefix=f".extract-{archive.stem}-", dir=target))
        root = target.resolve()
        try:
            files = []
            for info in members:
                rel = PurePosixPath(info.filename.replace("\\", "/"))
                resolved = (root / rel).resolve()
                if resolved != root and root not in resolved.parents:
                    raise DataError(f"{archive}: member {info.filename!r} resolves outside {target}")
                if info.is_dir():
                    continue
                out = work / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with open(out, "wb") as dst:  # a full disk here is an OSError naming the target, not damage
                    try:
                        src = zf.open(info)
                    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as e:
                        raise DataError(f"{archive}: member {info.filename!r} is damaged ({e})") from None
                    with src:
                        while True:
                            try:
                                block = src.read(CHUNK)
                            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
                                raise DataError(f"{archive}: member {info.filename!r} is damaged ({e})") from None
                            if not block:
                                break
                            try:
                                dst.write(block)
                            except OSError as e:
                                raise OSError(e.errno, f"{e.strerror}; extracting {info.filename!r} from "
                                                       f"{archive.name}, which is kept", str(target)) from None
                files.append(rel)
            for rel in files:
                final = target / rel
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(work / rel, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return len(files)


def download(items: Iterable[Archive], save_path: str | Path, release: str, url_base: str | None = None,
             checksums: dict[str, str] | None = None, extract_archives: bool = True, retries: int = 3,
             progress: bool = True, log: Callable[[str], None] = print) -> list[str]:
    """Fetch (and unpack into ``save_path``) every archive; finished ones are skipped on a re-run.
    Returns the names of the archives fetched or unpacked by this call."""
    save = Path(save_path).expanduser()
    store = save / DOWNLOADS_DIR
    base = base_url(release, url_base)
    done = []
    for item in items:
        zip_path, marker = store / item.name, store / f"{item.name}.extracted"
        if marker.exists() or (not extract_archives and zip_path.exists()):
            log(f"{item.name}: already done")
            continue
        if not zip_path.exists():
            log(f"{item.name}: downloading {base}{item.path}")
            fetch(base + item.path, zip_path, item, (checksums or {}).get(item.name), retries,
                  progress=progress)
        if extract_archives:
            n = extract(zip_path, save)
            write_text_atomic(marker, f"{n} files\n")
            zip_path.unlink()
            log(f"{item.name}: {n} files extracted into {save}")
        done.append(item.name)
    return done
