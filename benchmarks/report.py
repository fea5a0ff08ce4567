"""The bench report: ``report.json`` (versioned schema), ``report.md`` (one table) and a plot.

A report holds rows from one or more machines: every row names its machine, and ``merge``
joins reports made on a Jetson, a Pi and a host into one table with a device column.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.paths import atomic_path, read_json, write_text_atomic

SCHEMA = "hagrid-edge.bench"
SCHEMA_VERSION = 1
JSON_NAME, MD_NAME, PLOT_NAME = "report.json", "report.md", "latency_vs_map.png"
# Accuracy panels of the plot and columns of the table: (task, metric, label).
ACCURACY_COLUMNS = (("gestures", "mAP50_95", "gestures mAP50-95"), ("gestures", "mAP50", "gestures mAP50"),
                    ("hands", "mAP50_95", "hands mAP50-95"), ("hands", "mAP50", "hands mAP50"),
                    ("classify", "f1", "classifier F1"))
PRIMARY = (("gestures", "mAP50_95"), ("hands", "mAP50_95"), ("classify", "f1"))


def build_report(rows: list[dict[str, Any]], machine: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    label = str(machine["label"])
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machines": {label: machine}, "runs": {label: run},
            "rows": [{"machine": label, **row} for row in rows]}


def add_machine(report: dict[str, Any], machine: dict[str, Any], run: dict[str, Any],
                rows: list[dict[str, Any]]) -> None:
    """Add another machine's rows to ``report`` (an emulated Pi measured in the same bench run)."""
    label = str(machine["label"])
    if label in report["machines"]:
        raise HagridEdgeError(f"machine {label!r} is already in the report")
    report["machines"][label] = machine
    report["runs"][label] = run
    report["rows"] += [{"machine": label, **row} for row in rows]


def load_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    data = read_json(path, f"{path}: report")
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise HagridEdgeError(f"{path}: not a hagrid-edge bench report (no \"schema\": \"{SCHEMA}\")")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise HagridEdgeError(f"{path}: report schema version {version!r}; this hagrid-edge reads up to "
                              f"{SCHEMA_VERSION}")
    for key, kind in (("machines", dict), ("runs", dict), ("rows", list)):
        if not isinstance(data.get(key), kind):
            raise HagridEdgeError(f"{path}: report field {key!r} is missing or not a {kind.__name__}")
    return data


def merge(reports: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One report from several (each given with its file name, for errors); machine labels must differ."""
    machines: dict[str, Any] = {}
    runs: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for name, rep in reports:
        clash = sorted(set(rep["machines"]) & set(machines))
        if clash:
            raise HagridEdgeError(f"{name}: machine {clash[0]!r} is already in an earlier report; rerun the "
                                  "bench there with --machine NAME so each device has its own label")
        machines.update(rep["machines"])
        runs.update(rep["runs"])
        rows += rep["rows"]
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machines": machines, "runs": runs, "rows": rows,
            "merged_from": [name for name, _ in reports]}


# ---- markdown -----------------------------------------------------------------------------------
def _num(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def accuracy_of(row: dict[str, Any], task: str, metric: str) -> float | None:
    return ((row.get("accuracy") or {}).get(task) or {}).get(metric)


def primary(row: dict[str, Any]) -> tuple[str, str] | None:
    """The row's headline accuracy (task, metric): gestures mAP, else hands mAP, else F1."""
    return next(((t, m) for t, m in PRIMARY if accuracy_of(row, t, m) is not None), None)


def _delta(row: dict[str, Any]) -> str:
    key = primary(row)
    if not row.get("drop") or key is None or key[0] not in row["drop"]:
        return "–"
    return f"{-row['drop'][key[0]][key[1]]:+.2f}"


def _note(row: dict[str, Any]) -> str:
    if row.get("error"):
        return "ERROR: " + str(row["error"]).replace("|", "\\|")
    notes = []
    if row.get("kind") == "latency-only":
        notes.append("latency only")
    if row.get("reference"):
        notes.append(f"vs {row['reference']}")
    if row.get("reference_missing"):
        notes.append(row["reference_missing"])
    return "; ".join(notes)


def _table_row(row: dict[str, Any]) -> list[str]:
    lat = row.get("latency") or {}
    infer, e2e = lat.get("infer") or {}, lat.get("end_to_end") or {}
    ratio = (row.get("latency_ratio") or {}).get("end_to_end")
    mem = row.get("memory") or {}
    cells = [row["machine"], row["id"], row.get("kind") or "–", row.get("format") or "–", row.get("precision") or "–"]
    cells += [_num(accuracy_of(row, t, m)) for t, m, _ in ACCURACY_COLUMNS]
    cells += [_delta(row),
              " / ".join(_num(infer.get(k), 2) for k in ("median_ms", "p90_ms", "p99_ms")) if infer else "–",
              _num(e2e.get("median_ms"), 2), _num(e2e.get("fps") or infer.get("fps"), 0),
              _num(ratio, 2), _num(row.get("size_mb"), 2), _num(mem.get("peak_rss_mb"), 0), _note(row)]
    return cells


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in body)]


def _machine_line(label: str, m: dict[str, Any], run: dict[str, Any]) -> str:
    if m.get("emulated"):
        counted = run.get("instructions") or {}
        return (f"- **{label}**: {m.get('cpu')}; {m.get('board')}; Python {m.get('python')}. Instructions counted "
                f"on {counted.get('frames')} real frames of {run.get('data_name')} [{run.get('split')}] after "
                f"{counted.get('warmup')} warm-up frame(s), batch 1, {counted.get('threads')} thread.")
    libs = ", ".join(f"{k} {v}" for k, v in (m.get("libraries") or {}).items())
    board = f"; board: {m['board']}" if m.get("board") else ""
    jetson = "; " + ", ".join(f"{k}: {v}" for k, v in m["jetson"].items()) if m.get("jetson") else ""
    lat = run.get("latency") or {}
    photos = (f"the held-apart half of [{run.get('split')}]'s users (calibrate's report photos), "
              f"{run.get('images')} images of {run.get('users')} users" if run.get("held_apart") else
              f"[{run.get('split')}], {run.get('images')} images")
    boot = f", intervals from {run['bootstrap']} user resamples" if run.get("bootstrap") else ""
    return (f"- **{label}**: {m.get('cpu')} ({m.get('arch')}, {m.get('cores')} cores){board}{jetson}; {libs}. "
            f"Data: {run.get('data_name')} {photos}{boot}; batch 1, "
            f"{lat.get('threads')} thread(s), {lat.get('warmup')} warm-up + {lat.get('runs')} timed runs.")


def _per_class(rows: list[dict[str, Any]], task: str, several: bool) -> list[str]:
    scored = [r for r in rows if accuracy_of(r, task, "per_class")]
    if not scored:
        return []
    classes = list(dict.fromkeys(c for r in scored for c in r["accuracy"][task]["per_class"]))
    header = ["class"] + [f"{r['id']} ({r['machine']})" if several else r["id"] for r in scored]
    body = [[c] + [_num(r["accuracy"][task]["per_class"].get(c)) for r in scored] for c in classes]
    title = "F1 per class (classifier)" if task == "classify" else f"AP50-95 per class ({task})"
    return ["", f"## {title}", "", *_md_table(header, body)]


def _millions(value: Any) -> str:
    return "–" if value is None else f"{value / 1e6:.2f}"


def emulated_machines(report: dict[str, Any]) -> set[str]:
    return {label for label, m in report["machines"].items() if m.get("emulated")}


def _instruction_table(rows: list[dict[str, Any]], emulated: set[str]) -> list[str]:
    """Instructions per frame on emulated CPUs, per stage; INT8 rows with their ratio to FP32."""
    from hagrid_edge.benchmarks.emulate import PROXY_NOTE

    counted = [r for r in rows if r["machine"] in emulated]
    if not counted:
        return []
    header = ["device", "artifact", "precision", "pre M", "infer M", "post M", "total M", "pre+post share",
              "× FP32 infer", "× FP32 total", "note"]
    body = []
    for r in counted:
        ins, ratio = r.get("instructions") or {}, r.get("instructions_ratio") or {}
        share = ins.get("pre_post_share")
        body.append([r["machine"], r["id"], r.get("precision") or "–", *(_millions(ins.get(s)) for s in
                     ("pre", "infer", "post", "total")), "–" if share is None else f"{share:.0%}",
                     _num(ratio.get("infer"), 2), _num(ratio.get("total"), 2), _note(r)])
    return ["", "## Instructions per frame (emulated Pi CPUs)", "", *_md_table(header, body), "",
            "Millions of instructions per frame, median over the counted frames. " + PROXY_NOTE]


# The accuracies a Pareto front is drawn on, one front each: (task, metric, mark in the "front" column).
FRONT_METRICS = (("gestures", "mAP50_95", "G"), ("gestures", "mAP50", "G50"), ("hands", "mAP50_95", "H"))


def _cost(row: dict[str, Any]) -> float | None:
    """A row's cost on its device: millions of instructions per frame (emulated), else e2e median ms."""
    ins = row.get("instructions")
    return ins["total"] / 1e6 if ins else _latency_ms(row)


def _scored(row: dict[str, Any], measured: list[dict[str, Any]]) -> dict[str, Any]:
    """The row itself where it has accuracy, else the first measured row of the same files (an emulated Pi
    runs the same LiteRT kernels, so its accuracy is the host's; ``measured`` lists its own run's first)."""
    if row.get("accuracy"):
        return row
    shas = [a["sha256"] for a in row.get("artifacts") or []]
    return next((r for r in measured if [a["sha256"] for a in r.get("artifacts") or []] == shas), row)


def _with_interval(acc: dict[str, Any] | None, metric: str) -> str:
    if not acc or acc.get(metric) is None:
        return "–"
    low_high = (acc.get("interval") or {}).get(metric)
    return f"{acc[metric]:.1f}" + (f" [{low_high[0]:.1f}, {low_high[1]:.1f}]" if low_high else "")


def _change(row: dict[str, Any]) -> str:
    """Gestures mAP50-95 of the row minus its FP32 form's, with the paired interval where bench drew one."""
    drop = ((row.get("drop") or {}).get("gestures") or {}).get("mAP50_95")
    if drop is None:
        return "–"
    low_high = ((row.get("change_interval") or {}).get("gestures") or {}).get("mAP50_95")
    return f"{-drop:+.2f}" + (f" [{low_high[0]:+.1f}, {low_high[1]:+.1f}]" if low_high else "")


def _pareto_table(label: str, report: dict[str, Any]) -> list[str]:
    """One device's rows: cost, ratio to FP32, accuracy with intervals, agreement, and the fronts each is on."""
    emulated = emulated_machines(report)
    command = report["runs"].get(label, {}).get("command")
    measured = sorted((r for r in report["rows"] if r["machine"] not in emulated and not r.get("error")),
                      key=lambda r: report["runs"].get(r["machine"], {}).get("command") != command)  # own run first
    rows = [r for r in report["rows"] if r["machine"] == label and not r.get("error") and _cost(r) is not None
            and r.get("kind") != "latency-only"]
    if not rows:
        return []
    scored = [_scored(r, measured) for r in rows]
    marks: list[list[str]] = [[] for _ in rows]
    for task, metric, mark in FRONT_METRICS:
        idx = [i for i, s in enumerate(scored) if accuracy_of(s, task, metric) is not None]
        for k in pareto_front([(_cost(rows[i]), accuracy_of(scored[i], task, metric)) for i in idx]):
            marks[idx[k]].append(mark)
    unit = "M instructions / frame" if label in emulated else "e2e ms p50"
    ratio_of = ((lambda r: (r.get("instructions_ratio") or {}).get("total")) if label in emulated else
                (lambda r: (r.get("latency_ratio") or {}).get("end_to_end")))
    header = ["pipeline", "precision", unit, "× FP32", "gestures mAP50-95", "gestures mAP50", "hands mAP50-95",
              "hands mAP50", "agreement gestures / hands", "gestures mAP50-95 − FP32 form [paired]", "front",
              "FP32 form"]
    body = []
    for r, s, mark in sorted(zip(rows, scored, marks), key=lambda t: _cost(t[0])):  # noqa: B905
        acc, agree = s.get("accuracy") or {}, s.get("agreement") or {}
        body.append([r["id"], r.get("precision") or "–", _num(_cost(r), 1 if label in emulated else 2),
                     _num(ratio_of(r), 2), *(_with_interval(acc.get(t), m) for t in ("gestures", "hands")
                                             for m in ("mAP50_95", "mAP50")),
                     " / ".join(_num((agree.get(t) or {}).get("mAP50_95"), 2) for t in ("gestures", "hands"))
                     if agree else "–", _change(s), "**" + ", ".join(mark) + "**" if mark else "",
                     r.get("reference") or ""])
    return ["", f"## Pareto table: {label}", "", *_md_table(header, body)]


def render_pareto(report: dict[str, Any]) -> list[str]:
    """One table per device of the report; the legend once."""
    tables = [line for label in report["machines"] for line in _pareto_table(label, report)]
    if not tables:
        return []
    marks = ", ".join(f"{mark} = {task} {metric.replace('_', '-')}" for task, metric, mark in FRONT_METRICS)
    return tables + ["", f"front: the accuracies on which no other row of the device is at least as cheap and as "
                     f"accurate and better in one of the two ({marks}). Accuracy [95 % interval over the photos' users] on the measured "
                     "device's photos; an emulated Pi's rows take the accuracy of the same files measured there. "
                     "Agreement: mAP50-95 against the FP32 form's own detections. × FP32: e2e median ratio "
                     "(measured), total instructions ratio (emulated)."]


def render_markdown(report: dict[str, Any]) -> str:
    emulated = emulated_machines(report)
    rows = [r for r in report["rows"] if r["machine"] not in emulated]
    header = ["device", "artifact", "kind", "format", "precision"] + [c for _, _, c in ACCURACY_COLUMNS] + [
        "Δ vs FP32", "infer ms p50 / p90 / p99", "e2e ms p50", "FPS", "× FP32 e2e", "size MB", "peak RSS MB", "note"]
    lines = ["# hagrid-edge benchmark", "",
             *(_machine_line(k, m, report["runs"].get(k, {})) for k, m in report["machines"].items()), "",
             *_md_table(header, [_table_row(r) for r in rows]), "",
             "Accuracy in percent (COCO mAP via pycocotools; F1 macro over classes). Δ vs FP32: change of the "
             "headline accuracy against the FP32 artifact it was made from. e2e = pre + inference + post on "
             "real frames; infer = the runtime call alone. × FP32 e2e: ratio of medians measured in the same run "
             "(the gate uses the ratio of the fastest runs, the figure least disturbed by other load)."]
    several = len(report["machines"]) > 1
    for task in ("gestures", "classify"):  # the hands task has one class: its AP is the hands mAP column
        lines += _per_class(rows, task, several)
    lines += _instruction_table(report["rows"], emulated)
    if report.get("pareto"):
        lines += render_pareto(report)
    gate = report.get("gate")
    if gate:
        lines += ["", "## Gate", "", f"Baseline `{gate['baseline']}`: {gate['checks']} checks, "
                  + (f"**{len(gate['failures'])} failed**" if gate["failures"] else "all passed"), ""]
        lines += [f"- FAIL {f}" for f in gate["failures"]]
    lines += ["", *(f"Note: {n}" for n in report.get("notes", []))] if report.get("notes") else []
    return "\n".join(lines) + "\n"


# ---- plot ---------------------------------------------------------------------------------------
def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both lower latency and higher accuracy, by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _latency_ms(row: dict[str, Any]) -> float | None:
    lat = row.get("latency") or {}
    part = lat.get("end_to_end") or lat.get("infer")
    return part["median_ms"] if part else None


def plot(report: dict[str, Any], out: Path) -> None:
    """Latency (e2e median) against headline accuracy, one panel per task, Pareto front per device."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if not r.get("error") and _latency_ms(r) is not None]
    panels = [(t, m) for t, m in PRIMARY if any(accuracy_of(r, t, m) is not None for r in rows)] or [PRIMARY[0]]
    labels = {"gestures": "gestures mAP50-95 (%)", "hands": "hands mAP50-95 (%)", "classify": "classifier F1 (%)"}
    markers = dict(zip(report["machines"], "osD^vP*X"))  # noqa: B905
    fronts = dict(zip(report["machines"], ("tab:green", "tab:purple", "tab:orange", "tab:brown")))  # noqa: B905
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    for ax, (task, metric) in zip(axes[0], panels):  # noqa: B905
        for machine, marker in markers.items():
            mine = [r for r in rows if r["machine"] == machine and accuracy_of(r, task, metric) is not None]
            pts = [(_latency_ms(r), accuracy_of(r, task, metric)) for r in mine]
            for r, (x, y) in zip(mine, pts):  # noqa: B905
                ax.scatter(x, y, marker=marker, s=50, zorder=3,
                           color="tab:red" if "INT8" in str(r.get("precision")) else "tab:blue")
                ax.annotate(r["id"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
            front = [pts[i] for i in pareto_front(pts)]
            color = fronts.get(machine, "tab:green")
            if front:
                ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=color,
                        linewidth=1.2, zorder=2, label=f"Pareto front, {machine} ({marker})")
                ax.scatter([p[0] for p in front], [p[1] for p in front], s=160, facecolors="none",
                           edgecolors=color, zorder=4)
        if task != "classify":  # latency-only anchors are detectors: a reference line, no accuracy
            for r in (r for r in rows if r.get("kind") == "latency-only"):
                ax.axvline(_latency_ms(r), color="grey", linestyle=":", linewidth=1)
                ax.annotate(f"{r['id']} ({r['machine']}, latency only)", (_latency_ms(r), 0.98),
                            xycoords=("data", "axes fraction"), rotation=90, fontsize=7, color="grey",
                            ha="right", va="top")
        xs = [_latency_ms(r) for r in rows]
        ax.set_xlim(0, max(xs, default=1.0) * 1.45)  # room for the point labels
        ax.margins(y=0.15)
        ax.set_xlabel("latency, median ms per frame (end-to-end; infer for latency-only)")
        ax.set_ylabel(labels[task])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    fig.suptitle("hagrid-edge: latency vs accuracy (blue FP32/FP16, red INT8)")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and the plot into ``out_dir`` (each atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / JSON_NAME, "md": out_dir / MD_NAME, "plot": out_dir / PLOT_NAME}
    try:
        import matplotlib  # noqa: F401  (the plot is the [plots] extra's; a board's runtime has none)
    except ModuleNotFoundError:
        del paths["plot"]
        report = {**report, "notes": [*report.get("notes", []), f"{PLOT_NAME} skipped: matplotlib is not "
                                      "installed (pip install 'hagrid-edge[plots]')"]}
    write_text_atomic(paths["json"], json.dumps(report, indent=1) + "\n")
    write_text_atomic(paths["md"], render_markdown(report))
    if "plot" in paths:
        plot(report, paths["plot"])
    return paths
