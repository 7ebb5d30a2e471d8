"""A study's results: per-run rows, mean and std per group, training curves, as CSV and Markdown."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

from pqt.studies.sweep.runs import inspect_run, read_error
from pqt.studies.sweep.study_file import (
    DEFAULT_OUT,
    DEFAULT_RESULTS,
    LENGTH_KEYS,
    RUN_COLUMNS,
    STD_KINDS,
    RunSpec,
    Study,
    display_value,
    format_value,
    get_path,
)
from pqt.training import run_files

# --------------------------------------------------------------------------- aggregation


def _run_status(study: Study, run: RunSpec, run_dir: Path) -> tuple[str, dict[str, Any], str]:
    metrics = run_files.read_metrics(run_dir)
    state, detail = inspect_run(run_dir, study.kind, run.config)
    error = read_error(run_dir) or ""
    if state == "finished":
        return "finished", metrics, ""
    if state == "mismatch":
        return "mismatch", {}, detail
    if error:
        return "failed", metrics, error
    if state == "resume":
        length_key, done_key = LENGTH_KEYS[study.kind]
        return f"incomplete ({metrics.get(done_key, 0)}/{run.config[length_key]})", metrics, ""
    return "not started", {}, ""


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return format_value(value)
    return value


def _stats(values: list[float], ddof: int) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:  # the spread of one run is undefined, whichever std
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - ddof))


def _is_percent(metric: str) -> bool:
    return metric.endswith("accuracy") or metric == "postselection_rate"


def _fmt_stat(metric: str, mean: float, std: float) -> str:
    """``mean ± std`` in the metric's unit; the std is left out when it is undefined (n < 2) or a count's 0."""
    if math.isnan(mean):
        return "—"
    if _is_percent(metric):
        mean, std, spec = 100 * mean, 100 * std, ".2f"
    elif metric.endswith(("parameters", "_used", "completed", "seconds")):
        spec = ".0f"
    elif metric == "generalization_error" or metric.endswith("loss"):
        spec = ".4f"
    else:
        spec = ".4g"
    text = format(mean, spec)
    if math.isnan(std):
        return text
    if std == 0 and spec == ".0f":
        return text
    return f"{text} ± {format(std, spec)}"


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _cell(row.get(c)) for c in columns})
    os.replace(tmp, path)


def aggregate(study: Study, out: str | Path = DEFAULT_OUT, results: str | Path = DEFAULT_RESULTS) -> list[Path]:
    """Write <name>.csv, <name>_summary.csv, <name>.md and <name>_curves.csv from the run directories."""
    root, results = Path(out) / study.name, Path(results)
    grid_keys = study.grid_keys
    extra_keys = [k for k in study.group_by if k not in grid_keys]
    key_columns = grid_keys + extra_keys + ([] if "seed" in grid_keys else ["seed"])
    metric_columns = list(dict.fromkeys(list(study.metrics) + list(RUN_COLUMNS)))
    rows, curves, groups = [], [], {}
    for run in study.runs:
        run_dir = root / run.name
        status, metrics, error = _run_status(study, run, run_dir)
        keys = {k: display_value(k, get_path(run.config, k)) for k in key_columns}
        row = {"protocol": study.protocol, "run": run.name, **keys, "status": status, "error": error,
               "run_dir": str(run_dir), **{m: metrics.get(m) for m in metric_columns}}
        rows.append(row)
        group_values = tuple(display_value(k, get_path(run.config, k)) for k in study.group_by)
        groups.setdefault(group_values, []).append(row)
        label = ",".join(f"{k}={v}" for k, v in zip(study.group_by, group_values, strict=True)) or "all"
        seconds = evaluations = 0.0
        for entry in metrics.get("history", []) or []:
            seconds += entry.get("seconds") or 0.0
            evaluations += entry.get("objective_evaluations") or 0
            curves.append({"protocol": study.protocol, "group": label,
                           **dict(zip(study.group_by, group_values, strict=True)),
                           "seed": run.config.get("seed"), "status": status,
                           "round": entry.get("round", entry.get("epoch")),
                           "train_accuracy": entry.get("train_accuracy"), "test_accuracy": entry.get("test_accuracy"),
                           "train_loss": entry.get("train_loss"), "test_loss": entry.get("test_loss"),
                           "validation_accuracy": entry.get("validation_accuracy"),
                           "validation_loss": entry.get("validation_loss"),
                           "wall_seconds": seconds, "objective_evaluations": evaluations,
                           "shots_used": entry.get("shots_used"),
                           "postselection_rate": entry.get("postselection_rate")})
    files = [results / f"{study.name}.csv", results / f"{study.name}_summary.csv", results / f"{study.name}.md",
             results / f"{study.name}_curves.csv"]
    _write_csv(files[0], ["protocol", "run", *key_columns, "status", *metric_columns, "error", "run_dir"], rows)

    ddof = STD_KINDS[study.std]
    std_label = "population std (ddof=0)" if ddof == 0 else "sample std (ddof=1)"
    summary = []
    for group_values, members in groups.items():
        done = [r for r in members if r["status"] == "finished"]
        entry: dict[str, Any] = {"protocol": study.protocol, **dict(zip(study.group_by, group_values, strict=True)),
                                 "n": len(done), "runs": len(members), "std_kind": study.std}
        for m in study.metrics:
            values = [float(r[m]) for r in done if isinstance(r.get(m), int | float) and not isinstance(r[m], bool)]
            entry[f"{m}_mean"], entry[f"{m}_std"] = _stats(values, ddof)
        summary.append(entry)
    stat_columns = [c for m in study.metrics for c in (f"{m}_mean", f"{m}_std")]
    _write_csv(files[1], ["protocol", *study.group_by, "n", "runs", *stat_columns, "std_kind"],
               [{k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in s.items()} for s in summary])

    lines = [f"# {study.name} — protocol `{study.protocol}`", ""]
    if study.description:
        lines += [study.description, ""]
    lines += [f"Mean ± {std_label} over the finished runs of each row (seeds); n = finished runs of the row's "
              f"total. Accuracies and rates in %. One row per run: `{study.name}.csv`; training curves: "
              f"`{study.name}_curves.csv`.", ""]
    headers = [*study.group_by, "n", *[f"{m} (%)" if _is_percent(m) else m for m in study.metrics]]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---:" for _ in headers) + "|")
    for s in summary:
        cells = [str(s[k]) for k in study.group_by] + [f"{s['n']}/{s['runs']}"]
        cells += [_fmt_stat(m, s[f"{m}_mean"], s[f"{m}_std"]) for m in study.metrics]
        lines.append("| " + " | ".join(cells) + " |")
    bad = [r for r in rows if r["status"] != "finished"]
    if bad:
        lines += ["", "Runs not in the table:", ""]
        lines += [f"- `{r['run']}`: {r['status']}" + (f" — {r['error']}" if r["error"] else "") for r in bad]
    files[2].write_text("\n".join(lines) + "\n")

    _write_csv(files[3], ["protocol", "group", *study.group_by, "seed", "status", "round", "train_accuracy",
                          "test_accuracy", "train_loss", "test_loss", "validation_accuracy", "validation_loss",
                          "wall_seconds", "objective_evaluations",
                          "shots_used", "postselection_rate"], curves)
    return files
