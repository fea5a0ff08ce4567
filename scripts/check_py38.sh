#!/usr/bin/env bash
# Python 3.8 (JetPack 5) check of everything a board imports for run / eval / bench / data:
# hagrid_edge/, deploy/, benchmarks/ and the two quantize modules the Jetson engine builder and the
# CLI parser import. train/ and quantize/ (the rest) may need newer Python and are not checked.
# Annotations are not evaluated where a module has `from __future__ import annotations`; modules
# without it are also checked with their annotations evaluated (module-level `x: list[int] = ...`).
# Run on a real 3.8 as well: `python3.8 -m venv v && v/bin/pip install . && v/bin/hagrid-edge eval ...`.
set -euo pipefail
cd "$(dirname "$0")/.."
VERMIN=${VERMIN:-.venv/bin/vermin}
paths=(hagrid_edge deploy benchmarks quantize/__init__.py quantize/choices.py quantize/trt_cache.py)
args=(--no-tips --violations -t=3.8- --backport dataclasses)
rc=0
"$VERMIN" -q "${args[@]}" "${paths[@]}" || rc=1
mapfile -t plain < <(grep -rL --include='*.py' "^from __future__ import annotations" "${paths[@]}")
if [ "${#plain[@]}" -gt 0 ]; then
    "$VERMIN" -q "${args[@]}" --eval-annotations "${plain[@]}" || rc=1
fi
# Methods vermin cannot attribute when it does not know the receiver's type (str / Path, 3.9+).
if grep -rnE --include='*.py' "\.(removeprefix|removesuffix|is_relative_to|with_stem|readlink)\(" "${paths[@]}"; then
    rc=1
fi
if [ "$rc" -ne 0 ]; then
    echo "check_py38: the files above need a Python newer than 3.8 (JetPack 5)" >&2
    exit 1
fi
echo "check_py38: ${paths[*]} run on Python 3.8"
