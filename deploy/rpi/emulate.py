"""A Raspberry Pi's userland on an x86 machine: Debian 12 arm64 + Python 3.11 under qemu-aarch64 user mode.

``deploy/rpi/emulate.sh --cpu pi5 -- hagrid-edge eval ...`` runs the command on real Arm binaries
(the Debian arm64 packages Raspberry Pi OS Bookworm is made of, PyPI's aarch64 wheels) with the
Pi's CPU pinned (``-cpu cortex-a76`` / ``cortex-a72``) and a matching ``/proc/cpuinfo``: LiteRT reads
it to choose kernels, and a file that does not match the CPU crashes it. Wall time under emulation
means nothing; accuracy and the executed instruction counts (``insn_plugin/``) do.

Everything is built once and cached under ``$HAGRID_EDGE_PI_CACHE`` (default
``~/.cache/hagrid-edge``): the userland (keyed by its package list, requirements-pi.txt and the
CPU profiles), the project's own files (keyed by their content) and the counting plugin. Each is
built in a temporary folder and renamed into place when complete, so a failed build leaves nothing.

``--userland bookworm-system`` (or ``trixie-system``) is the other userland: Raspberry Pi OS as a user
meets it, Debian 12 (13) arm64 with the apt packages the Pi guide installs (``python3-numpy`` 1.24 / 2.2,
``python3-opencv`` 4.6 / 4.10, ``python3-venv``; Debian has no picamera2) and no wheels of ours. The
guide's own commands run in it (``--guide``: ``guide_commands.py`` extracts them from
deploy/rpi/README.md) under PRoot, which starts every program the commands start (pip, the venv's
scripts) through qemu, with no binfmt and no root.
"""

from __future__ import annotations

import argparse
import configparser
import ctypes
import errno
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hagrid_edge.deploy.rpi import guide_commands as guide
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.paths import REPO_ROOT, user_cache

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements-pi.txt"
PLUGIN_SOURCE = HERE / "insn_plugin" / "insn_count.c"
CACHE_ENV = "HAGRID_EDGE_PI_CACHE"
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
# The Debian 12 arm64 packages the Pi's Python runtime needs (what Raspberry Pi OS Bookworm ships).
DEB_PACKAGES = ("python3.11", "libpython3.11-stdlib", "libstdc++6", "libgcc-s1", "zlib1g", "libexpat1", "libffi8")
GUEST_PYTHON = "usr/bin/python3.11"
# Every tag is needed: with manylinux2014 alone pip silently falls back to ai-edge-litert 1.4.0.
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64")
# Host command -> the Debian package that provides it (installed with apt on first use).
HOST_TOOLS = {"mmdebstrap": "mmdebstrap", "qemu-aarch64": "qemu-user", "qemu-aarch64-static": "qemu-user-static"}
PLUGIN_TOOLS = {"gcc": "gcc", "tar": "tar", "xz": "xz-utils", "dpkg-query": "dpkg"}
LAYOUT_VERSION = 1  # bump when the cached layout changes
STALE_PROJECT_S = 24 * 3600
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

# ---- the Raspberry Pi OS-like userlands (--userland bookworm-system / trixie-system) -------------
# Raspberry Pi OS releases as a user has them -> the Debian release each is made of.
SYSTEM_USERLANDS = {"bookworm-system": "bookworm", "trixie-system": "trixie"}
SYSTEM_TOOLS = {**HOST_TOOLS, "proot": "proot"}
# Besides the guide's apt packages: the shell its commands run in, du, /etc/os-release.
SYSTEM_BASE_PACKAGES = ("bash", "coreutils", "base-files")
# Packages of the guide's apt step this userland goes without, and why.
SYSTEM_SKIPPED = {"python3-picamera2": "not in Debian (Raspberry Pi's own archive carries it)",
                  "git": "the guide's clone is replaced by a copy of the working tree"}
# What maintainer scripts would have made (--variant=extract runs none): libblas3's / liblapack3's
# update-alternatives links (numpy loads them) and dash's /bin/sh.
SYSTEM_LINKS = {"usr/lib/aarch64-linux-gnu/libblas.so.3": "blas/libblas.so.3",
                "usr/lib/aarch64-linux-gnu/liblapack.so.3": "lapack/liblapack.so.3", "bin/sh": "bash"}
GUEST_HOME = "/home/pi"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # the host's network is the guest's: its CAs too
# Host environment the guest keeps (the network's proxies); everything else is a fresh login's.
GUEST_PASS_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "TERM")
FACCESSAT2 = 439  # the syscall number on x86_64 and aarch64 hosts alike


@dataclass(frozen=True)
class CpuProfile:
    """One Raspberry Pi's CPU: the qemu model pinned for it and the /proc/cpuinfo its kernel shows."""

    name: str
    qemu_cpu: str
    board: str
    revision: str  # the board revision code in cpuinfo
    part: int  # MIDR part number
    variant: int
    cpu_revision: int
    features: str
    bogomips: str = "108.00"
    cores: int = 4

    def cpuinfo(self) -> str:
        per_core = [f"processor\t: {i}\nBogoMIPS\t: {self.bogomips}\nFeatures\t: {self.features}\n"
                    f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: {self.variant:#x}\n"
                    f"CPU part\t: {self.part:#05x}\nCPU revision\t: {self.cpu_revision}\n"
                    for i in range(self.cores)]
        return "\n".join(per_core) + f"\nRevision\t: {self.revision}\nModel\t\t: {self.board}\n"


CPUS: dict[str, CpuProfile] = {
    # Pi 5: BCM2712, Cortex-A76 (Armv8.2: dot product, fp16). Must match -cpu: an A76 cpuinfo under
    # an A72 makes LiteRT pick dot-product kernels and die with SIGILL.
    "pi5": CpuProfile("pi5", "cortex-a76", "Raspberry Pi 5 Model B Rev 1.0", "d04170", 0xD0B, 0x4, 1,
                      "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
                      "dcpop asimddp"),
    # Pi 4: BCM2711, Cortex-A72 (Armv8.0: no dot product, no crypto extensions on the BCM2711).
    "pi4": CpuProfile("pi4", "cortex-a72", "Raspberry Pi 4 Model B Rev 1.5", "d03115", 0xD08, 0x0, 3,
                      "fp asimd evtstrm crc32 cpuid"),
}


def cpu_profile(name: str, option: str = "--cpu") -> CpuProfile:
    try:
        return CPUS[name]
    except KeyError:
        raise HagridEdgeError(f"{option} {name!r}: unknown Pi CPU (known: {', '.join(CPUS)})") from None


def parse_cpus(text: str) -> list[CpuProfile]:
    """``pi4,pi5`` -> profiles, in order, without repeats."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise HagridEdgeError(f"--emulate {text!r}: name at least one Pi CPU ({', '.join(CPUS)})")
    return [cpu_profile(n, "--emulate") for n in dict.fromkeys(names)]


# Top-level folders of the guest's prefix: qemu -L looks a path up in the prefix first, so a cache
# under one of them (e.g. /tmp) is shadowed for the guest (modules then resolve to the wrong folder).
GUEST_TOP_DIRS = ("bin", "dev", "etc", "lib", "proc", "sbin", "tmp", "usr", "var")


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    root = Path(env) if env else user_cache()
    parts = root.resolve().parts
    if len(parts) > 1 and parts[1] in GUEST_TOP_DIRS:
        raise HagridEdgeError(f"cache {root}: under /{parts[1]}, which the emulated Pi's own root shadows under "
                              f"qemu; set {CACHE_ENV} (or XDG_CACHE_HOME) to a folder outside "
                              + " ".join(f"/{d}" for d in GUEST_TOP_DIRS))
    return root


def read_requirements(path: Path = REQUIREMENTS) -> list[str]:
    """Pinned requirement lines (``name==version``); anything looser is an error naming the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise HagridEdgeError(f"{path}: cannot read the Pi requirements ({e.strerror})") from None
    reqs = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip() or any(c in version for c in "<>=!~*,; "):
            raise HagridEdgeError(f"{path}:{number}: {line!r} is not pinned as name==version")
        reqs.append(f"{name.strip()}=={version.strip()}")
    if not reqs:
        raise HagridEdgeError(f"{path}: no requirements")
    return reqs


def read_lines(path: Path, what: str) -> list[str]:
    """The lines of a text file the emulator or a lane produced; unreadable is an error naming it."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise HagridEdgeError(f"{path}: cannot read {what} ({getattr(e, 'strerror', None) or e})") from None


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def userland_key(requirements: Sequence[str]) -> str:
    return _digest(str(LAYOUT_VERSION), SUITE, MIRROR, *DEB_PACKAGES, *requirements, *WHEEL_PLATFORMS,
                   *(p.cpuinfo() for p in CPUS.values()))


# ---- running host tools -------------------------------------------------------------------------
def last_line(text: str) -> str:
    """The most telling line of a failed tool's output: its last error line, else its last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("E:", "ERROR:", "error:", "Error", "fatal")) or " error:" in ln]
    return (errors or lines or ["(no output)"])[-1]


def _run(what: str, argv: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, check=False)
    except OSError as e:
        raise HagridEdgeError(f"{what}: cannot run {argv[0]} ({e.strerror})") from None
    if proc.returncode != 0:
        raise HagridEdgeError(f"{what} failed (exit {proc.returncode}): {last_line(proc.stderr + proc.stdout)}")
    return proc.stdout


def ensure_host_tools(tools: dict[str, str]) -> None:
    """Install the Debian packages behind missing host commands (apt-get update first; needs root)."""
    missing = sorted({pkg for cmd, pkg in tools.items() if shutil.which(cmd) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise HagridEdgeError(f"the emulated Pi needs the Debian package(s) {', '.join(missing)}: install them "
                              f"(apt-get install {' '.join(missing)}) or run this as root to let it do so")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run("apt-get update", ["apt-get", "update", "-q"], env=env)
    _run(f"apt-get install {' '.join(missing)}", ["apt-get", "install", "-y", "-q",
                                                  *missing], env=env)
    still = sorted(cmd for cmd in tools if shutil.which(cmd) is None)
    if still:
        raise HagridEdgeError(f"installed {', '.join(missing)} but {', '.join(still)} is still not on PATH")


def _build_atomically(final: Path, build) -> Path:
    """Run ``build(tmp_dir)`` and rename the result onto ``final``; a failure leaves nothing behind."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a concurrent build that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---- the userland -------------------------------------------------------------------------------
def _mmdebstrap(what: str, packages: Sequence[str], rootfs: Path, suite: str = SUITE) -> None:
    """Debian arm64's ``packages`` and their dependencies, extracted into ``rootfs`` (no maintainer scripts)."""
    _run(f"mmdebstrap (Debian {suite} arm64{what})",
         ["mmdebstrap", "--quiet", "--arch=arm64", "--variant=extract", f"--include={','.join(packages)}",
          suite, str(rootfs), MIRROR])


def _write_cpu_prefixes(tmp: Path) -> None:
    """One qemu -L prefix per CPU: links to the shared root file system plus that CPU's /proc/cpuinfo."""
    rootfs = tmp / "rootfs"
    for profile in CPUS.values():
        prefix = tmp / "cpu" / profile.name
        (prefix / "proc").mkdir(parents=True)
        for entry in sorted(rootfs.iterdir()):
            if entry.name != "proc":
                (prefix / entry.name).symlink_to(Path("..", "..", "rootfs", entry.name))
        (prefix / "proc" / "cpuinfo").write_text(profile.cpuinfo(), encoding="ascii")


def _guest_argv(prefix: Path, cpu: CpuProfile, args: Sequence[str], plugin: str | None = None) -> list[str]:
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        raise HagridEdgeError("qemu-aarch64 is not installed (Debian package qemu-user)")
    argv = [qemu, "-cpu", cpu.qemu_cpu, "-L", str(prefix)]
    if plugin:
        argv += ["-plugin", plugin]
    return argv + [str(prefix / GUEST_PYTHON), *args]


def _compile_guest(prefix: Path, cpu: CpuProfile, folder: Path) -> None:
    """Byte-compile ``folder`` with the guest's own Python, so runs neither compile nor write the cache."""
    _run(f"byte-compiling {folder.name} on the emulated Pi",
         _guest_argv(prefix, cpu, ["-m", "compileall", "-q", "-j", "1", str(folder)]))


def build_userland(requirements: Sequence[str] | None = None) -> Path:
    """The cached Pi userland (built on first use): rootfs/, site/ (wheels) and cpu/<name>/ prefixes."""
    reqs = list(requirements) if requirements is not None else read_requirements()
    final = cache_root() / f"pi-userland-{userland_key(reqs)}"
    if final.is_dir():
        return final
    ensure_host_tools(HOST_TOOLS)

    def build(tmp: Path) -> None:
        print(f"emulate: building the Pi userland in {final} (once)", file=sys.stderr, flush=True)
        _mmdebstrap("", DEB_PACKAGES, tmp / "rootfs")
        if not (tmp / "rootfs" / GUEST_PYTHON).is_file():
            raise HagridEdgeError(f"mmdebstrap finished but {GUEST_PYTHON} is missing from the arm64 root")
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
               "--target", str(tmp / "site"), "--only-binary=:all:", "--python-version", "3.11",
               "--implementation", "cp", "--abi", "cp311"]
        for tag in WHEEL_PLATFORMS:
            pip += ["--platform", tag]
        _run("pip install of the aarch64 wheels (deploy/rpi/requirements-pi.txt)", pip + reqs)
        _write_cpu_prefixes(tmp)
        _compile_guest(tmp / "cpu" / "pi5", CPUS["pi5"], tmp / "site")
        facts = {"suite": SUITE, "debian_packages": list(DEB_PACKAGES), "requirements": reqs,
                 "platforms": list(WHEEL_PLATFORMS), "cpus": {p.name: p.qemu_cpu for p in CPUS.values()}}
        (tmp / "userland.json").write_text(json.dumps(facts, indent=1) + "\n", encoding="utf-8")

    return _build_atomically(final, build)


# ---- the project's own files --------------------------------------------------------------------
def package_dirs(setup_cfg: Path = REPO_ROOT / "setup.cfg") -> dict[str, Path]:
    """setup.cfg's ``package_dir``: installed package name -> source folder (hagrid_edge.deploy -> deploy)."""
    cfg = configparser.ConfigParser()
    if not cfg.read(setup_cfg, encoding="utf-8") or not cfg.has_option("options", "package_dir"):
        raise HagridEdgeError(f"{setup_cfg}: no [options] package_dir to install the project from")
    dirs = {}
    for line in cfg.get("options", "package_dir").splitlines():
        name, sep, folder = line.partition("=")
        if sep:
            dirs[name.strip()] = setup_cfg.parent / folder.strip()
    return dirs


def _project_files(dirs: dict[str, Path]) -> list[tuple]:
    """(installed relative path, source file) for every file of the project's packages."""
    mapped = {p.resolve() for p in dirs.values()}
    files = []
    for name, src in sorted(dirs.items()):
        dest = Path(*name.split("."))
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src)
            inner = [src.joinpath(*rel.parts[:i]).resolve() for i in range(1, len(rel.parts))]
            if (path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc"
                    and not any(d in mapped for d in inner)):  # sub-folders mapped elsewhere come from there
                files.append((dest / rel, path))
    return files


def install_project(userland: Path) -> Path:
    """The project's packages laid out as installed (per setup.cfg's package_dir), without dependencies.

    A copy keyed by the files' content, so a run always sees the working tree as it is now.
    """
    files = _project_files(package_dirs())
    key = _digest(*(f"{rel}:{hashlib.sha256(src.read_bytes()).hexdigest()}" for rel, src in files))
    final = userland / "projects" / key

    def build(tmp: Path) -> None:
        for rel, src in files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / rel)
        _compile_guest(userland / "cpu" / "pi5", CPUS["pi5"], tmp)

    if not final.is_dir():  # earlier states of the working tree, unused for a day (a running command may use one)
        stale = time.time() - STALE_PROJECT_S
        for old in sorted((userland / "projects").glob("*")) if (userland / "projects").is_dir() else ():
            if old.stat().st_mtime < stale:
                shutil.rmtree(old, ignore_errors=True)
    project = _build_atomically(final, build)
    os.utime(project)
    return project


# ---- the Raspberry Pi OS-like userland -----------------------------------------------------------
def system_packages(guide_apt: Sequence[str]) -> list[str]:
    """Its Debian packages: the base ones and the guide's apt step, less those Debian lacks."""
    return list(dict.fromkeys([*SYSTEM_BASE_PACKAGES, *(p for p in guide_apt if p not in SYSTEM_SKIPPED)]))


def system_userland_key(name: str, packages: Sequence[str]) -> str:
    return _digest(str(LAYOUT_VERSION), name, SYSTEM_USERLANDS[name], MIRROR, *packages,
                   *(f"{link}->{target}" for link, target in sorted(SYSTEM_LINKS.items())),
                   *(p.cpuinfo() for p in CPUS.values()))


def build_system_userland(name: str, packages: Sequence[str]) -> Path:
    """The cached Raspberry Pi OS-like userland ``name`` (built on first use): rootfs/, a cpuinfo-<cpu> per Pi CPU."""
    suite = SYSTEM_USERLANDS[name]
    final = cache_root() / f"pi-system-{system_userland_key(name, packages)}"
    if final.is_dir():
        return final
    ensure_host_tools(SYSTEM_TOOLS)

    def build(tmp: Path) -> None:
        print(f"emulate: building the Raspberry Pi OS-like userland {name} in {final} (once)", file=sys.stderr,
              flush=True)
        rootfs = tmp / "rootfs"
        _mmdebstrap(", the Pi guide's apt packages", packages, rootfs, suite)
        for link, target in SYSTEM_LINKS.items():
            path = rootfs / link
            if (path.parent / target).exists() and not path.is_symlink() and not path.exists():
                path.symlink_to(target)
        for folder in (GUEST_HOME.lstrip("/"), "etc/ssl/certs"):
            (rootfs / folder).mkdir(parents=True, exist_ok=True)
        for profile in CPUS.values():
            (tmp / f"cpuinfo-{profile.name}").write_text(profile.cpuinfo(), encoding="ascii")
        facts = {"suite": suite, "debian_packages": list(packages), "skipped": SYSTEM_SKIPPED,
                 "links": SYSTEM_LINKS, "cpus": {p.name: p.qemu_cpu for p in CPUS.values()}}
        (tmp / "userland.json").write_text(json.dumps(facts, indent=1) + "\n", encoding="utf-8")

    return _build_atomically(final, build)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class FaccessAt2Enosys:
    """A ``preexec_fn`` making faccessat2 fail with ENOSYS in the child's process tree (a seccomp filter).

    PRoot 5.1 (Debian 12) does not translate faccessat2, which qemu uses for the guest's access checks,
    so the host's path was checked instead of the guest's (bash found no script of the venv on PATH);
    with ENOSYS, libc falls back to calls PRoot translates. Built in the parent, installed in the child.
    """

    def __init__(self) -> None:
        code = b"".join(struct.pack("HBBI", *ins) for ins in (
            (0x20, 0, 0, 0),  # load the system call number
            (0x15, 0, 1, FACCESSAT2),  # faccessat2?
            (0x06, 0, 0, 0x00050000 | errno.ENOSYS),  # yes: fail with ENOSYS
            (0x06, 0, 0, 0x7FFF0000)))  # no: allow
        self._code = ctypes.create_string_buffer(code, len(code))
        self._prog = _SockFprog(len(code) // 8, ctypes.addressof(self._code))
        self._prctl = ctypes.CDLL(None, use_errno=True).prctl

    def __call__(self) -> None:
        # PR_SET_NO_NEW_PRIVS (38), then PR_SET_SECCOMP (22) with SECCOMP_MODE_FILTER (2)
        if self._prctl(38, 1, 0, 0, 0) != 0 or self._prctl(22, 2, ctypes.byref(self._prog), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "cannot install the seccomp filter PRoot needs")


def system_argv(userland: Path, cpu: CpuProfile, home: Path, command: Sequence[str]) -> list[str]:
    """PRoot into the userland, every guest program started through qemu with ``cpu`` pinned; the host
    folder ``home`` is the guest's /home/pi, the host's network settings and CA bundle are the guest's."""
    tools = {name: shutil.which(name) for name in ("proot", "qemu-aarch64")}
    absent = [name for name, path in tools.items() if path is None]
    if absent:
        raise HagridEdgeError(f"{' and '.join(absent)} not installed (Debian packages proot, qemu-user)")
    binds = ["/dev", "/proc", "/sys", f"{userland / f'cpuinfo-{cpu.name}'}:/proc/cpuinfo", f"{home.resolve()}:{GUEST_HOME}"]
    binds += [f"{path}:{path}" for path in ("/etc/resolv.conf", "/etc/hosts", HOST_CA_BUNDLE) if Path(path).is_file()]
    argv = [str(tools["proot"]), "-q", f"{tools['qemu-aarch64']} -cpu {cpu.qemu_cpu}", "-r", str(userland / "rootfs"),
            "-w", GUEST_HOME]
    for bind in binds:
        argv += ["-b", bind]
    return argv + list(command)


def system_env() -> dict[str, str]:
    """A fresh login's environment on the Pi, plus the host's proxies."""
    env = {k: v for k, v in os.environ.items() if k in GUEST_PASS_ENV}
    env.update(HOME=GUEST_HOME, USER="pi", LOGNAME="pi", SHELL="/bin/bash", LANG="C.UTF-8",
               PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def run_system(userland: Path, cpu: CpuProfile, home: Path, command: Sequence[str],
               capture: bool = False) -> subprocess.CompletedProcess:
    """Run a guest program (``/bin/bash ...``) in the Raspberry Pi OS-like userland, in ``home``."""
    if not command:
        raise HagridEdgeError("no command: give one after --, e.g. -- bash -c 'python3 --version'")
    try:
        return subprocess.run(system_argv(userland, cpu, home, command), env=system_env(),
                              preexec_fn=FaccessAt2Enosys(), capture_output=capture, text=True, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise HagridEdgeError(f"cannot start PRoot for the emulated Raspberry Pi OS ({e})") from None


def copy_working_tree(dest: Path) -> None:
    """The repository as a clone has it plus the uncommitted work: files git tracks or would (not ignored)."""
    listed = _run("git ls-files (the working tree to copy)",
                  ["git", "-C", str(REPO_ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    for rel in listed.split("\0"):
        src = REPO_ROOT / rel
        if rel and src.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def system_userland(name: str) -> Path:
    """The Raspberry Pi OS-like userland ``name`` with the Pi guide's apt packages (built on first use)."""
    return build_system_userland(name, system_packages(guide.apt_packages(guide.read_blocks())))


def run_guide(name: str, cpu: CpuProfile, home: Path, capture: bool = False) -> subprocess.CompletedProcess:
    """The Pi guide's commands (guide_commands.py), from ``home`` in the Raspberry Pi OS-like userland ``name``,
    the working tree copied where the guide's clone would be."""
    blocks = guide.read_blocks()
    userland = system_userland(name)
    clone = home / guide.CLONE_DIR
    if clone.exists():
        raise HagridEdgeError(f"{clone}: already there (the guide clones into it): give --home an empty folder")
    copy_working_tree(clone)
    (home / "pi-guide.sh").write_text(guide.emulated_script(blocks), encoding="utf-8")
    return run_system(userland, cpu, home, ["/bin/bash", f"{GUEST_HOME}/pi-guide.sh"], capture)


# ---- the counting plugin ------------------------------------------------------------------------
def qemu_source_version() -> tuple:
    """(source package, version) of the installed qemu-user: the plugin API must come from the same source."""
    out = _run("dpkg-query qemu-user", ["dpkg-query", "-W", "-f=${source:Package} ${source:Version}", "qemu-user"])
    name, _, version = out.strip().partition(" ")
    if not name or not version:
        raise HagridEdgeError(f"dpkg-query: no source version for qemu-user ({out.strip()!r})")
    return name, version


def _apt_source_config(tmp: Path) -> list[str]:
    """apt options for a private deb-src list (the host's apt sources are left untouched)."""
    sources = tmp / "deb-src.sources"
    sources.write_text("".join(f"Types: deb-src\nURIs: {uri}\nSuites: {suites}\nComponents: main\n"
                               f"Signed-By: {DEBIAN_KEYRING}\n\n"
                               for uri, suites in ((MIRROR, f"{SUITE} {SUITE}-updates"),
                                                   ("http://deb.debian.org/debian-security", f"{SUITE}-security"))),
                       encoding="utf-8")
    (tmp / "lists" / "partial").mkdir(parents=True)
    return ["-o", f"Dir::Etc::SourceList={sources}", "-o", "Dir::Etc::SourceParts=/nonexistent",
            "-o", f"Dir::State::Lists={tmp / 'lists'}", "-o", f"Dir::Cache={tmp / 'cache'}"]


def build_plugin() -> Path:
    """The instruction-counting plugin, compiled against qemu-plugin.h of the installed qemu's source."""
    ensure_host_tools({**HOST_TOOLS, **PLUGIN_TOOLS})
    package, version = qemu_source_version()
    source = PLUGIN_SOURCE.read_text(encoding="utf-8")
    final = cache_root() / f"insn-plugin-{_digest(source, package, version)}"

    def build(tmp: Path) -> None:
        print(f"emulate: building the instruction-count plugin against {package} {version} (once)",
              file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="hagrid-edge-qemu-src.") as scratch:
            work = Path(scratch)
            apt = ["apt-get", *_apt_source_config(work)]
            _run("apt-get update (deb-src)", [*apt, "update", "-q"])
            _run(f"apt-get source {package}={version}",
                 [*apt, "source", "--download-only", "-q", f"{package}={version}"], cwd=work)
            tarballs = sorted(work.glob("*.orig.tar.*"))
            if not tarballs:
                raise HagridEdgeError(f"apt-get source {package}={version}: no upstream tarball downloaded")
            _run("extracting qemu-plugin.h", ["tar", "-xf", str(tarballs[0]), "-C", str(work), "--wildcards",
                                              "*/include/qemu/qemu-plugin.h"])
            headers = sorted(work.glob("*/include/qemu/qemu-plugin.h"))
            if not headers:
                raise HagridEdgeError(f"{tarballs[0].name}: has no include/qemu/qemu-plugin.h")
            _run("compiling deploy/rpi/insn_plugin/insn_count.c",
                 ["gcc", "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-I", str(headers[0].parent),
                  "-o", str(tmp / "insn_count.so"), str(PLUGIN_SOURCE)])
            shutil.copy2(headers[0], tmp / "qemu-plugin.h")  # what it was built against, for the record

    return _build_atomically(final, build) / "insn_count.so"


# ---- running ------------------------------------------------------------------------------------
def guest_args(command: Sequence[str]) -> list[str]:
    """What the guest Python runs for ``command``: ``hagrid-edge ...`` or ``python ...`` (the Pi's python3.11).

    ``-P`` keeps the working directory off sys.path, so a checkout's folders never shadow the
    installed layout (where deploy/ is hagrid_edge.deploy).
    """
    if not command:
        raise HagridEdgeError("no command: give one after --, e.g. -- hagrid-edge eval --model M --data D")
    head, rest = command[0], list(command[1:])
    if head == "hagrid-edge":
        return ["-P", "-m", "hagrid_edge.cli", *rest]
    if head in ("python", "python3", "python3.11"):
        return ["-P", *rest]
    raise HagridEdgeError(f"{head!r}: the emulated Pi runs 'hagrid-edge ...' or 'python ...' commands")


def guest_env(userland: Path, project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONPATH") and not k.startswith("QEMU_")}
    env.update(PYTHONPATH=f"{project}{os.pathsep}{userland / 'site'}", PYTHONNOUSERSITE="1",
               PYTHONDONTWRITEBYTECODE="1")
    return env


def run(cpu: CpuProfile, command: Sequence[str], count_to: Path | None = None) -> int:
    """Run ``command`` on the emulated Pi ``cpu``; with ``count_to``, the plugin writes its marker counts there.

    Returns the command's exit status; a crash of the emulated process is an error naming the signal.
    """
    args = guest_args(command)
    userland = build_userland()
    project = install_project(userland)
    plugin = f"{build_plugin()},out={count_to}" if count_to is not None else None
    proc = subprocess.run(_guest_argv(userland / "cpu" / cpu.name, cpu, args, plugin),
                          env=guest_env(userland, project), check=False)
    code = proc.returncode
    if code < 0 or code in (128 + signal.SIGSEGV, 128 + signal.SIGILL, 128 + signal.SIGBUS, 128 + signal.SIGABRT):
        sig = -code if code < 0 else code - 128
        raise HagridEdgeError(f"{' '.join(command[:2])}: crashed on the emulated {cpu.name} ({cpu.qemu_cpu}) "
                              f"with {signal.Signals(sig).name}")
    return code


def _main_system(args: argparse.Namespace, cpu: CpuProfile, command: list[str]) -> int:
    if args.count_to:
        raise HagridEdgeError(f"--count-to counts on the wheels userland, not on {args.userland}")
    if args.build_only:
        print(f"emulate: userland {system_userland(args.userland)}", file=sys.stderr)
        return 0
    if args.guide == bool(command):
        raise HagridEdgeError(f"--userland {args.userland} runs --guide or a command after --, one of them")
    home = args.home or Path(tempfile.mkdtemp(prefix="hagrid-edge-pi-home."))
    home.mkdir(parents=True, exist_ok=True)
    print(f"emulate: {GUEST_HOME} is {home}", file=sys.stderr, flush=True)
    if args.guide:
        return run_guide(args.userland, cpu, home).returncode
    return run_system(system_userland(args.userland), cpu, home, command).returncode


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="deploy/rpi/emulate.sh",
        description="Run hagrid-edge on an emulated Raspberry Pi userland (Debian 12 arm64, Python 3.11, "
                    "aarch64 wheels) under qemu-aarch64 user mode with the Pi's CPU pinned.",
        epilog="Example: deploy/rpi/emulate.sh --cpu pi5 -- hagrid-edge eval --model M.tflite --data D --json. "
               f"Cache: ${CACHE_ENV} (default ~/.cache/hagrid-edge).")
    p.add_argument("--cpu", required=True, choices=sorted(CPUS), help="pi5: Cortex-A76; pi4: Cortex-A72")
    p.add_argument("--userland", choices=("wheels", *SYSTEM_USERLANDS), default="wheels",
                   help="wheels (default): Debian 12's Python + the aarch64 wheels of requirements-pi.txt; "
                        f"{' / '.join(SYSTEM_USERLANDS)}: Raspberry Pi OS Bookworm / Trixie as a user has it "
                        "(Debian's python3-numpy, python3-opencv, python3-venv), for the Pi guide's own commands")
    p.add_argument("--build-only", action="store_true", help="build (or check) the cached userland and plugin, "
                                                             "run nothing")
    p.add_argument("--count-to", metavar="FILE", help="count guest instructions between markers into FILE")
    p.add_argument("--guide", action="store_true", help="the -system userlands: run the Pi guide's install and first "
                                                        "run (deploy/rpi/README.md) in --home")
    p.add_argument("--home", metavar="DIR", type=Path,
                   help=f"the -system userlands: the host folder the guest sees as {GUEST_HOME} (default: a new one)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- hagrid-edge ... | -- python ... "
                                                             "(the -system userlands: any program, e.g. -- bash -c ...)")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        cpu = cpu_profile(args.cpu)
        if args.userland in SYSTEM_USERLANDS:
            return _main_system(args, cpu, command)
        if args.guide or args.home:
            raise HagridEdgeError(f"--guide and --home go with --userland {' or '.join(SYSTEM_USERLANDS)}")
        if args.build_only:
            userland = build_userland()
            install_project(userland)
            print(f"emulate: userland {userland}; plugin {build_plugin()}", file=sys.stderr)
            return 0
        return run(cpu, command, Path(args.count_to).resolve() if args.count_to else None)
    except HagridEdgeError as e:
        print(f"emulate: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
