"""Where things live: the shared HaGRID data/models folder, the shipped defaults, atomic writes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_ENV = "HAGRID_EDGE_SHARED"
ASSETS = REPO_ROOT / "assets"
DEFAULT_DATA = ASSETS / "hagrid-sample"
# The shipped models: assets/models/ in a clone, installed from there as the package data
# hagrid_edge/shipped_models/ (setup.cfg) by a wheel, which has no assets/.
WHEEL_MODELS = Path(__file__).resolve().parent / "shipped_models"
DEFAULT_MODELS = WHEEL_MODELS if WHEEL_MODELS.is_dir() else ASSETS / "models"


def shared_root() -> Path:
    """The shared data/models folder: $HAGRID_EDGE_SHARED, else ``../shared`` beside the repository."""
    env = os.environ.get(SHARED_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared"


def user_cache() -> Path:
    """hagrid-edge's per-user cache folder: ``$XDG_CACHE_HOME/hagrid-edge``, else ``~/.cache/hagrid-edge``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hagrid-edge"


def engine_cache() -> Path:
    """Where ``hagrid-edge build`` keeps the TensorRT engines it builds, each beside its ``.json`` record."""
    return user_cache() / "engines"


def resolve_model(value: str) -> str:
    """A model as given on the command line. A path that exists wins; otherwise a bare file name (or
    ``assets/models/NAME``, as the docs write it) names a shipped model, then an engine ``hagrid-edge
    build`` cached. Anything else comes back as given, so opening it fails naming it."""
    path = Path(value)
    if path.exists() or path.parent.as_posix() not in (".", "assets/models"):
        return value
    for folder in (DEFAULT_MODELS, engine_cache()):
        if (folder / path.name).is_file():
            return str(folder / path.name)
    return value


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's data to the disk (where the file system can)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    The file's data reaches the disk before the rename (and the rename before returning), so a
    power cut leaves the old file or the new one, never an empty one. An ``OSError`` inside the block
    (a full disk) is raised naming ``final``; the old file is kept."""
    final = Path(final)
    if final.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as e:
            if e.filename is not None and Path(e.filename) != tmp_path:
                raise
            raise OSError(e.errno, e.strerror or str(e), str(final)) from None
        if tmp_path.exists():  # mkstemp makes files 0600; give them the usual umask-derived mode
            umask = os.umask(0)
            os.umask(umask)
            tmp_path.chmod(0o666 & ~umask)
            fsync_path(tmp_path)
        os.replace(tmp_path, final)
        fsync_path(final.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name one file: the same path once links are resolved, or one inode."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
        return pa.resolve() == pb.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False


def refuse_same_file(flag: str, output: str | os.PathLike[str],
                     inputs: Iterable[tuple[str, str | os.PathLike[str] | None]]) -> None:
    """``HagridEdgeError`` if the output of ``flag`` is the file of one of ``inputs`` (flag, path)."""
    from hagrid_edge.errors import HagridEdgeError

    for in_flag, path in inputs:
        if path and same_file(output, path):
            raise HagridEdgeError(f"{flag} {output}: is the same file as {in_flag} {path}; "
                                  "writing it would destroy it (choose another output)")


def check_output_path(flag: str, path: str | os.PathLike[str]) -> None:
    """``HagridEdgeError`` naming ``flag`` if ``path`` is a folder, lies under a file, or its folder cannot be
    written (read-only, no permission): found before any work is done rather than when writing it."""
    from hagrid_edge.errors import HagridEdgeError

    path = Path(path)
    if path.is_dir():
        raise HagridEdgeError(f"{flag} {path}: is a folder; give a file name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise HagridEdgeError(f"{flag} {path}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".hagrid-edge-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise HagridEdgeError(f"{flag} {path}: cannot write in {folder} ({e.strerror})") from None


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """Parse a JSON file; an unreadable or malformed one is a ``HagridEdgeError`` naming ``what``."""
    from hagrid_edge.errors import HagridEdgeError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise HagridEdgeError(f"{what}: cannot read it ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        detail = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise HagridEdgeError(f"{what}: not valid JSON ({detail})") from None
