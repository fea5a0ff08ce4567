"""Parse + check the authors' full HaGRID 2.0 val annotations (53,982 entries); target < 5 s on 2 cores.

Usage: python benchmarks/bench_annotations.py [ROOT] [--repeat N]
ROOT defaults to <shared>/data/hagrid-annotations-val-full.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from hagrid_edge.data.annotations import load_split
from hagrid_edge.data.check import check_root
from hagrid_edge.paths import shared_root

TARGET_S = 5.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", nargs="?", default=str(shared_root() / "data" / "hagrid-annotations-val-full"))
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)

    parse_s, check_s = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        samples = load_split(args.root, "val")
        parse_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        report = check_root(args.root)
        check_s.append(time.perf_counter() - t0)
    entries = sum(r.images for r in report.splits)
    print(f"entries                 {entries} ({len(samples)} from load_split), problems {len(report.problems)}")
    print(f"parse only (load_split) median {statistics.median(parse_s):.2f} s  min {min(parse_s):.2f} s")
    check = statistics.median(check_s)
    print(f"parse + check (check_root) median {check:.2f} s  min {min(check_s):.2f} s"
          f"  (target < {TARGET_S:.0f} s): {'OK' if check < TARGET_S else 'SLOW'}")
    return 0 if check < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
