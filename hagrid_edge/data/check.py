"""``data check``: every entry of every split validated, every problem listed as ``file:image_id: what``.

Parsing (``annotations.parse_entry``) checks each entry on its own; this adds what needs the
whole split or the disk: an image id annotated twice, an entry with no box of its file's gesture,
and, with ``images=True``, that every image exists and decodes completely.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hagrid_edge.data.annotations import Problem, Sample, load_split, resolve_splits
from hagrid_edge.errors import DataError
from hagrid_edge.images import read_rgb
from hagrid_edge.labels import KNOWN_LABELS


@dataclass
class SplitReport:
    split: str
    images: int = 0  # entries that parsed
    boxes: int = 0
    images_checked: int = 0


@dataclass
class CheckReport:
    root: Path
    splits: list[SplitReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [f"{self.root}:"]
        for r in self.splits:
            imgs = f", {r.images_checked} images decoded" if r.images_checked else ""
            lines.append(f"  {r.split:10s} {r.images:7d} entries {r.boxes:7d} boxes{imgs}")
        lines.append(f"  {len(self.problems)} problem(s)" if self.problems else "  no problems")
        return "\n".join(lines)


def consistency_problems(samples: Iterable[Sample]) -> list[Problem]:
    """Problems that only show across entries: duplicate ids, an entry without its file's gesture."""
    out: list[Problem] = []
    first_seen: dict[str, str] = {}
    for s in samples:
        where = first_seen.setdefault(s.image_id, s.source)
        if where != s.source:
            out.append(Problem(s.source, s.image_id, f"image id already annotated in {where}"))
        if s.gesture in KNOWN_LABELS and s.gesture_index() is None:
            out.append(Problem(s.source, s.image_id, f"no box labelled {s.gesture!r} (labels {s.labels})"))
    return out


def image_problem(sample: Sample) -> Problem | None:
    """The image of ``sample`` is missing or does not decode completely."""
    if not sample.image_path.is_file():
        return Problem(sample.source, sample.image_id, f"image {sample.image_path} not found")
    try:
        read_rgb(sample.image_path)
    except DataError as e:
        return Problem(sample.source, sample.image_id, str(e))
    return None


def check_root(root: str | Path, splits: Iterable[str] | None = None, images: bool = False,
               progress: Callable[[Iterable[Sample]], Iterable[Sample]] | None = None) -> CheckReport:
    """Validate ``splits`` (default: every split with annotations) of the HaGRID root ``root``."""
    root, names = resolve_splits(root, splits)
    report = CheckReport(root)
    for split in names:
        samples = load_split(root, split, problems=report.problems)
        report.problems += consistency_problems(samples)
        split_report = SplitReport(split, images=len(samples), boxes=sum(len(s.labels) for s in samples))
        if images:
            for s in progress(samples) if progress else samples:
                problem = image_problem(s)
                if problem:
                    report.problems.append(problem)
                split_report.images_checked += problem is None
        report.splits.append(split_report)
    return report
