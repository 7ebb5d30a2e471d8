"""A study's results: per-run rows, mean and std per group, training curves, as CSV and Markdown.

Results are read from the run directories. A finished run whose directory is gone (another machine, a
cleaned disk, a fresh clone) keeps the row and curves it had in the committed ``<name>.csv`` and
``<name>_curves.csv``, so a table can be completed over several sittings and machines; such rows say
``source = committed`` (the others ``run folder``).
"""

from __future__ import annotations

import csv
import json
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


COMMITTED = "committed"


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(text: str) -> Any:
    """A CSV cell back to a number where it is one (committed results)."""
    if text == "":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _committed(study: Study, results: Path) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], list[dict]]]:
    """Finished runs of this study and protocol in the committed tables: run name -> row, (group, seed) -> curves."""
    rows = {r["run"]: {k: _number(v) for k, v in r.items()} | {"protocol": r["protocol"], "run": r["run"]}
            for r in _read_csv(results / f"{study.name}.csv")
            if r.get("protocol") == study.protocol and r.get("status") == "finished"}
    curves: dict[tuple[str, str], list[dict]] = {}
    for r in _read_csv(results / f"{study.name}_curves.csv"):
        if r.get("protocol") == study.protocol and r.get("status") == "finished":
            curves.setdefault((r["group"], r["seed"]), []).append(r)
    return rows, curves


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
    committed_rows, committed_curves = _committed(study, results)
    rows, curves, groups = [], [], {}
    for run in study.runs:
        run_dir = root / run.name
        status, metrics, error = _run_status(study, run, run_dir)
        keys = {k: display_value(k, get_path(run.config, k)) for k in key_columns}
        group_values = tuple(display_value(k, get_path(run.config, k)) for k in study.group_by)
        label = ",".join(f"{k}={v}" for k, v in zip(study.group_by, group_values, strict=True)) or "all"
        if status == "not started" and run.name in committed_rows:  # finished elsewhere, its folder is gone
            row = {**committed_rows[run.name], **keys, "status": "finished", "source": COMMITTED, "error": ""}
            rows.append(row)
            groups.setdefault(group_values, []).append(row)
            curves += committed_curves.get((label, str(run.config.get("seed"))), [])
            continue
        row = {"protocol": study.protocol, "run": run.name, **keys, "status": status, "source": "run folder",
               "error": error, "run_dir": str(run_dir), **{m: metrics.get(m) for m in metric_columns}}
        rows.append(row)
        groups.setdefault(group_values, []).append(row)
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
    _write_csv(files[0], ["protocol", "run", *key_columns, "status", "source", *metric_columns, "error", "run_dir"],
               rows)

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
    tests = welch_tests(study, groups) if study.compare else []
    if tests:
        files.append(results / f"{study.name}_tests.csv")
        _write_csv(files[-1], ["protocol", *study.group_by, "reference", "metric", "n", "n_reference", "mean",
                               "mean_reference", "difference", "t", "dof", "p_value"], tests)
        m = study.compare_metric
        lines += ["", f"Welch's t-test (two-sided, unequal variances) of {m} against {study.compare} = "
                      f"{study.reference} in the same row otherwise (`{study.name}_tests.csv`):", "",
                  f"| {' | '.join(study.group_by)} | difference | t | p |", "|" + "---:|" * (len(study.group_by) + 3)]
        for t in tests:
            diff = _fmt_stat(m, t["difference"], math.nan).replace("—", "nan")
            lines.append("| " + " | ".join(str(t[k]) for k in study.group_by) +
                         f" | {diff} | {t['t']:.2f} | {t['p_value']:.3g} |")
    if any(r["source"] == COMMITTED for r in rows):
        lines += ["", f"{sum(r['source'] == COMMITTED for r in rows)} finished run(s) come from the committed "
                      "tables (their run folders are not on this machine)."]
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


def welch_tests(study: Study, groups: dict[tuple[str, ...], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Welch's t-test of the compare metric, each value of ``study.compare`` against ``study.reference``.

    Rows are matched on the other group keys; a row needs at least two finished runs on each side.
    """
    from scipy import stats

    key_index = study.group_by.index(study.compare)
    reference = display_value(study.compare, study.reference)
    m = study.compare_metric

    def values(members: list[dict[str, Any]]) -> list[float]:
        return [float(r[m]) for r in members if r["status"] == "finished" and isinstance(r.get(m), int | float)]

    out = []
    for group_values, members in groups.items():
        if group_values[key_index] == reference:
            continue
        ref_values = list(group_values)
        ref_values[key_index] = reference
        a, b = values(members), values(groups.get(tuple(ref_values), []))
        if len(a) < 2 or len(b) < 2:
            continue
        result = stats.ttest_ind(a, b, equal_var=False)
        out.append({"protocol": study.protocol, **dict(zip(study.group_by, group_values, strict=True)),
                    "reference": reference, "metric": m, "n": len(a), "n_reference": len(b),
                    "mean": sum(a) / len(a), "mean_reference": sum(b) / len(b),
                    "difference": sum(a) / len(a) - sum(b) / len(b), "t": float(result.statistic),
                    "dof": float(result.df), "p_value": float(result.pvalue)})
    return out
