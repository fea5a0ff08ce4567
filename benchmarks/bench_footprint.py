"""Install footprint of the runtime: a fresh virtual environment per variant (core, core+[tflite], ...),
``pip install`` from the package registry / pip cache, then the installed size and the time of
``import hagrid_edge`` and ``hagrid-edge run --help``. Each environment is also checked for what a board
needs: no torch or onnx importable, and ``hagrid-edge eval`` on the shipped ONNX pair scores the 18
shipped HaGRID photos.

    python benchmarks/bench_footprint.py [--variants core tflite] [--python python3.8] [--json out.json]
    python benchmarks/bench_footprint.py --board pi-bookworm jetpack5 jetpack6    # aarch64 sizes only

Wheels are the ones pip picks for this machine (x86_64 here). ``--board`` sizes the install a board
gets: pip resolves the aarch64 wheels for the board's Python and glibc and unpacks them into a folder
(nothing runs, so no timings). The [rpi] figure inside the emulated Pi userland is measured there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "assets" / "hagrid-sample"
MODELS = REPO / "assets" / "models"
HEAVY = ("torch", "torchvision", "onnx", "onnxsim", "onnxscript", "tensorboard", "matplotlib")
# board -> (Python, glibc minor, the extras it installs besides the core)
BOARDS = {"pi-bookworm": ("3.11", 36, ("rpi",)), "jetpack5": ("3.8", 31, ("jetson",)),
          "jetpack6": ("3.10", 35, ("jetson",))}


def source_tree(dest: Path) -> Path:
    """The repository's tracked files as they are now, so pip builds outside the working tree."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    tar = dest / "src.tar"
    with tarfile.open(tar, "w") as t:
        for name in filter(None, files):
            path = REPO / name.decode()
            if path.is_file():
                t.add(path, arcname=name.decode())
    src = dest / "src"
    with tarfile.open(tar) as t:
        t.extractall(src)
    tar.unlink()
    return src


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def timed(argv: list[str], repeat: int) -> float:
    """Median wall time of ``argv`` in ms, after one untimed run (disk cache warm)."""
    subprocess.run(argv, capture_output=True, check=True)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def largest(site: Path, n: int = 6, skip: frozenset[str] = frozenset()) -> list[tuple[str, float]]:
    sizes = [(d.name, tree_bytes(d) / 2**20) for d in site.iterdir()
             if d.is_dir() and not d.name.endswith("-info") and d.name not in skip]
    return sorted(sizes, key=lambda x: -x[1])[:n]


def measure(python: str, extra: str, src: Path, work: Path, repeat: int) -> dict:
    venv = work / f"venv-{extra or 'core'}"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    py, site = venv / "bin" / "python", site_packages(venv)
    empty, bare = tree_bytes(site), frozenset(d.name for d in site.iterdir())  # pip (+ setuptools) of a bare venv
    target = f"{src}[{extra}]" if extra else str(src)
    t = time.perf_counter()
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-warn-script-location", target], check=True,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    install_s = time.perf_counter() - t
    present = subprocess.run([str(py), "-c", "import importlib.util as u, json; "
                              f"print(json.dumps([m for m in {HEAVY!r} if u.find_spec(m)]))"],
                             capture_output=True, text=True, check=True).stdout
    evaluation = subprocess.run([str(venv / "bin" / "hagrid-edge"), "eval", "--model", str(MODELS / "hand_detector.onnx"),
                                 "--classifier", str(MODELS / "crops_classifier.onnx"), "--data", str(SAMPLE),
                                 "--json"], capture_output=True, text=True, check=True).stdout
    result = json.loads(evaluation)
    version = subprocess.run([str(py), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    return {"variant": f"core+[{extra}]" if extra else "core", "python": version,
            "installed_mb": round((tree_bytes(site) - empty) / 2**20, 1),
            "install_s": round(install_s, 1),
            "import_ms": round(timed([str(py), "-c", "import hagrid_edge"], repeat), 1),
            "run_help_ms": round(timed([str(venv / "bin" / "hagrid-edge"), "run", "--help"], repeat), 1),
            "heavy_importable": json.loads(present),
            "eval_shipped_pair": {"images": result["images"], "mAP50_95": result["mAP50_95"]},
            "largest_mb": [[name, round(mb, 1)] for name, mb in largest(site, skip=bare)]}


def board_size(board: str, extra: str, src: Path, work: Path) -> dict:
    """Installed size of core (+ ``extra``) for ``board``: its aarch64 wheels, unpacked without running."""
    python, glibc, _ = BOARDS[board]
    wheels = work / "wheel"
    if not wheels.is_dir():
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(src)], check=True)
    wheel = next(wheels.glob("hagrid_edge-*.whl"))
    target = work / f"{board}-{extra or 'core'}"
    platforms = ["manylinux2014_aarch64"] + [f"manylinux_2_{m}_aarch64" for m in range(17, glibc + 1)]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "--only-binary=:all:",
                    "--python-version", python, "--implementation", "cp",
                    *(f"--platform={p}" for p in platforms), f"{wheel}[{extra}]" if extra else str(wheel)], check=True)
    dists = sorted(d.name.split("-")[0] for d in target.glob("*.dist-info"))
    return {"board": board, "variant": f"core+[{extra}]" if extra else "core", "python": python,
            "installed_mb": round(tree_bytes(target) / 2**20, 1), "distributions": dists,
            "largest_mb": [[name, round(mb, 1)] for name, mb in largest(target)]}


def board_markdown(rows: list[dict]) -> str:
    out = ["| board (aarch64) | install | Python | installed MB | largest packages MB |", "|---|---|---|---|---|"]
    for r in rows:
        big = ", ".join(f"{n} {mb}" for n, mb in r["largest_mb"])
        out.append(f"| {r['board']} | {r['variant']} | {r['python']} | {r['installed_mb']} | {big} |")
    return "\n".join(out)


def markdown(rows: list[dict]) -> str:
    out = ["| install | Python | installed MB | pip install s | import hagrid_edge ms | run --help ms | "
           "torch/onnx importable | eval on the shipped pair (18 photos) | largest packages MB |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ev = r["eval_shipped_pair"]
        big = ", ".join(f"{n} {mb}" for n, mb in r["largest_mb"])
        out.append(f"| {r['variant']} | {r['python']} | {r['installed_mb']} | {r['install_s']} | {r['import_ms']} | "
                   f"{r['run_help_ms']} | {', '.join(r['heavy_importable']) or 'none'} | "
                   f"mAP50-95 {ev['mAP50_95']:.1f} ({ev['images']} images) | {big} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=["core", "tflite"],
                   help="core, or extras to add to it (tflite, rpi, jetson, ...); default: core tflite")
    p.add_argument("--python", default=sys.executable, help="interpreter for the venvs (e.g. python3.8)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per figure (median; default 5)")
    p.add_argument("--board", nargs="+", choices=sorted(BOARDS),
                   help="instead: the aarch64 install size on these boards, core and core + the board's extra")
    p.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hagrid-footprint-") as tmp:
        src = source_tree(Path(tmp))
        for board in args.board or []:
            for extra in ("", *BOARDS[board][2]):
                rows.append(board_size(board, extra, src, Path(tmp)))
                print(f"footprint: {board} {rows[-1]['variant']} done", file=sys.stderr, flush=True)
        for variant in [] if args.board else args.variants:
            rows.append(measure(args.python, "" if variant == "core" else variant, src, Path(tmp), args.repeat))
            print(f"footprint: {rows[-1]['variant']} done", file=sys.stderr, flush=True)
    print(board_markdown(rows) if args.board else markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
