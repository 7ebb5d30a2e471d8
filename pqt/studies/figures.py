"""Figures from the result tables of ``pqt sweep`` (never from run directories): PNG, matplotlib Agg.

Each figure reads one or two files of ``--results`` and is skipped, with one line saying which
file is missing, when they are not there:

- ``fig3_curves_<study>.png``: test accuracy vs round per bond dimension (``<study>_curves.csv``,
  study ``table3`` or ``table3_paper``), mean over seeds with a +-1 std band (paper Fig. 3); runs a
  sweep has not finished are drawn as far as they got, marked "unfinished" in the legend;
- ``fig4_accuracy_<study>.png``: test accuracy vs trainable parameters for Quantum-Train
  (``<study>_summary.csv``) and the baselines (``baselines_summary.csv``), our classical CNN as
  a horizontal line, the paper's numbers as hollow markers (paper Fig. 4 left);
- ``fig4_generalization_<study>.png``: generalization error vs trainable parameters (Fig. 4 right);
- ``ablation.png``: test accuracy per distribution source and bond dimension (``ablation_summary.csv``);
- ``ablation_paper_curves.png``: test accuracy vs round per distribution source under the paper's
  full protocol (``ablation_paper_curves.csv``);
- ``shots.png``: test accuracy vs shots per circuit evaluation, exact as a line (``shots_summary.csv``);
- ``noise.png``: test accuracy and post-selection rate vs each noise knob with the others ideal, and the
  knobs set together as dashed lines (``noise_summary.csv``);
- ``noise_paper_curves.png``: test and train accuracy vs round of the noisy full-protocol run against
  the ideal run with the same seed (``noise_paper_curves.csv``, ``table3_paper_curves.csv``);
- ``optimizers.png``: test accuracy vs cumulative wall time and vs objective evaluations per phase
  optimizer (``optimizers_curves.csv``).

Quantum-Train is plotted at our honest parameter count (live phases, ``trainable_parameters``);
the paper's points sit at the paper's own count, 31 chi^2 + 192.
"""

from __future__ import annotations

import csv
import math
import re
import textwrap
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pqt.errors import UserError

# Paper Table 3 (test accuracy %, chi = 1..10) at the paper's parameter count 31 chi^2 + 192, and Table 4.
PAPER_TABLE3 = (55.78, 81.38, 87.06, 93.29, 93.04, 94.92, 94.96, 94.71, 94.84, 95.50)
PAPER_TABLE3_COUNTS = tuple(31 * chi * chi + 192 for chi in range(1, 11))
PAPER_CLASSICAL = (6690, 96.89)
PAPER_PRUNING = (3370, 94.44)
PAPER_WEIGHT_SHARING = (4770, 88.67)
QT_STUDIES = ("table3", "table3_paper")
# The noise study's knobs: (column of noise_summary.csv, ideal value, axis label).
NOISE_KNOBS = (("backend_options.indistinguishability", 1.0, "indistinguishability"),
               ("backend_options.transmittance", 1.0, "transmittance"),
               ("backend_options.g2", 0.0, "g2"),
               ("backend_options.phase_error", 0.0, "phase error (rad)"),
               ("backend_options.phase_imprecision", 0.0, "phase imprecision (rad)"))


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _wrap(title: str, width: int = 95) -> str:
    """Titles carry the protocol label, which can be long (overrides): wrap instead of cropping."""
    return textwrap.fill(title, width)


def _sort_key(text: str) -> tuple[int, float, str]:
    value = _num(text)
    return (0, value, "") if not math.isnan(value) else (1, 0.0, text)


def _natural_key(text: str) -> list[tuple[int, float, str]]:
    """Sort "bond_dim=4" before "bond_dim=10": numbers inside the text compare as numbers."""
    return [(0, float(part), "") if part.isdigit() else (1, 0.0, part) for part in re.split(r"(\d+)", text)]


def _knob(row: dict[str, str], key: str, ideal: float) -> float:
    text = row.get(key, "")
    return ideal if text == "" else _num(text)  # a knob a table does not have is at its ideal value


def _noisy_knobs(row: dict[str, str]) -> list[str]:
    return [key for key, ideal, _ in NOISE_KNOBS if _knob(row, key, ideal) != ideal]


def noise_lines(rows: list[dict[str, str]]) -> tuple[dict[str, list[dict[str, str]]], list[dict[str, str]]]:
    """The noise study's rows per knob (that knob alone noisy, or none: the ideal point), sorted by its value,
    and the rows with several knobs noisy at once."""
    lines = {key: sorted((r for r in rows if set(_noisy_knobs(r)) <= {key}), key=lambda r: _knob(r, key, ideal))
             for key, ideal, _ in NOISE_KNOBS}
    return lines, [r for r in rows if len(_noisy_knobs(r)) > 1]


class _Figures:
    def __init__(self, results: Path, out: Path, log: Callable[[str], None]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt
        self.results, self.out, self.log = results, out, log
        self.written: list[Path] = []

    def need(self, figure: str, *names: str) -> list[list[dict[str, str]]] | None:
        missing = [n for n in names if not (self.results / n).is_file()]
        if missing:
            self.log(f"skipped {figure}: {self.results / missing[0]} not found")
            return None
        tables = [_read(self.results / n) for n in names]
        if any(not t for t in tables):
            self.log(f"skipped {figure}: {self.results / names[0]} has no rows")
            return None
        return tables

    def save(self, fig: Any, name: str, rect: tuple[float, float, float, float] | None = None) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / name
        fig.tight_layout(rect=rect)  # rect leaves room for a figure-level legend
        fig.savefig(path, dpi=150)
        self.plt.close(fig)
        self.written.append(path)
        self.log(f"wrote {path}")

    @staticmethod
    def protocol(rows: list[dict[str, str]]) -> str:
        return rows[0].get("protocol", "") if rows else ""

    # ---- Fig. 3: training curves ------------------------------------------------------------------
    def curves(self, study: str, figure: str | None = None) -> None:
        figure = figure or f"fig3_curves_{study}.png"
        tables = self.need(figure, f"{study}_curves.csv")
        if tables is None:
            return
        rows = [r for r in tables[0] if r.get("round")]
        if not rows:
            self.log(f"skipped {figure}: no round in {study}_curves.csv")
            return
        # One line per group (a bond dimension, or e.g. a distribution source); runs a sweep has not
        # finished yet are drawn as far as they got and marked as such in the legend.
        by_group: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        unfinished: dict[str, int] = {}  # group -> last round reached by its unfinished runs
        for r in rows:
            round_ = int(_num(r["round"]))
            by_group[r["group"]][round_].append(100 * _num(r["test_accuracy"]))
            if r.get("status") != "finished":
                unfinished[r["group"]] = max(round_, unfinished.get(r["group"], 0))
        fig, ax = self.plt.subplots(figsize=(7, 4.5))
        for group in sorted(by_group, key=_natural_key):
            rounds = sorted(by_group[group])
            stats = [_mean_std(by_group[group][k]) for k in rounds]
            mean = [s[0] for s in stats]
            std = [s[1] for s in stats]
            label = group.replace("bond_dim=", "χ=").replace("distribution_source=", "")
            if group in unfinished:
                label += f" (unfinished, {unfinished[group]} rounds)"
            (line,) = ax.plot(rounds, mean, label=label, lw=1.4)
            ax.fill_between(rounds, [m - s for m, s in zip(mean, std, strict=True)],
                            [m + s for m, s in zip(mean, std, strict=True)], color=line.get_color(), alpha=0.15)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(_wrap(f"Training curves ({study}, {self.protocol(rows)}); mean ± std over seeds"), fontsize=9)
        ax.legend(fontsize=8, ncol=2)
        ax.grid(alpha=0.3)
        self.save(fig, figure)

    # ---- Fig. 4: accuracy and generalization vs parameters ----------------------------------------
    def _baseline_series(self) -> dict[str, list[dict[str, str]]]:
        path = self.results / "baselines_summary.csv"
        if not path.is_file():
            self.log(f"note: {path} not found; Fig. 4 shows Quantum-Train and the paper's points only")
            return {}
        series: dict[str, list[dict[str, str]]] = defaultdict(list)
        for r in _read(path):
            method = r.get("method", "")
            layers = r.get("share_layers", "")
            name = method if not layers else f"{method} ({layers})"
            series[name].append(r)
        return series

    def parameters(self, study: str, metric: str, figure: str) -> None:
        tables = self.need(figure, f"{study}_summary.csv")
        if tables is None:
            return
        qt = sorted(tables[0], key=lambda r: _num(r.get("trainable_parameters_mean")))
        if f"{metric}_mean" not in qt[0]:
            self.log(f"skipped {figure}: {study}_summary.csv has no {metric}_mean column")
            return
        scale = 100.0 if metric == "test_accuracy" else 1.0
        fig, ax = self.plt.subplots(figsize=(7, 4.5))
        ax.errorbar([_num(r["trainable_parameters_mean"]) for r in qt],
                    [scale * _num(r[f"{metric}_mean"]) for r in qt],
                    yerr=[scale * (_num(r[f"{metric}_std"]) if r[f"{metric}_std"] else 0.0) for r in qt],
                    fmt="o-", color="C0", capsize=3, label=f"photonic QT ({study}, live-phase count)")
        markers = {"weight-sharing": "s", "pruning": "^", "classical": "D"}
        colors = {"classical": "C1", "pruning": "C2", "weight-sharing": "C3"}
        for i, (name, rows) in enumerate(sorted(self._baseline_series().items())):
            rows = sorted(rows, key=lambda r: _num(r.get("trainable_parameters_mean")))
            if f"{metric}_mean" not in rows[0]:
                continue
            xs = [_num(r["trainable_parameters_mean"]) for r in rows]
            ys = [scale * _num(r[f"{metric}_mean"]) for r in rows]
            es = [scale * (_num(r[f"{metric}_std"]) if r[f"{metric}_std"] else 0.0) for r in rows]
            color = colors.get(name, f"C{i + 4}")
            if name == "classical":
                ax.axhline(ys[0], color=color, ls="--", lw=1.2, label=f"classical CNN ({xs[0]:.0f} params)")
                ax.axhspan(ys[0] - es[0], ys[0] + es[0], color=color, alpha=0.1)
                continue
            ax.errorbar(xs, ys, yerr=es, fmt=markers.get(name.split(" ")[0], "o") + "-", color=color, capsize=3,
                        label=name)
        if metric == "test_accuracy":
            ax.plot(PAPER_TABLE3_COUNTS, PAPER_TABLE3, "o", mfc="none", color="C0", ms=7,
                    label="paper QT (Table 3, paper count)")
            for (x, y), label, marker, color in ((PAPER_CLASSICAL, "paper classical", "D", "C1"),
                                                 (PAPER_PRUNING, "paper pruning (50%)", "^", "C2"),
                                                 (PAPER_WEIGHT_SHARING, "paper weight sharing", "s", "C3")):
                ax.plot([x], [y], marker, mfc="none", color=color, ms=8, mew=1.5, label=label)
            ax.set_ylabel("test accuracy (%)")
        else:
            ax.set_ylabel("generalization error (test loss − train loss)")
            ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("trainable parameters")
        ax.set_title(_wrap(f"{'Accuracy' if metric == 'test_accuracy' else 'Generalization'} vs parameters "
                     f"({self.protocol(qt)})"), fontsize=9)
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
        self.save(fig, figure)

    # ---- studies ----------------------------------------------------------------------------------
    def ablation(self) -> None:
        tables = self.need("ablation.png", "ablation_summary.csv")
        if tables is None:
            return
        rows = tables[0]
        sources = list(dict.fromkeys(r.get("distribution_source", "") for r in rows))
        chis = sorted(dict.fromkeys(r.get("bond_dim", "") for r in rows), key=_sort_key)
        cell = {(r.get("distribution_source", ""), r.get("bond_dim", "")): r for r in rows}
        fig, ax = self.plt.subplots(figsize=(7, 4.5))
        width = 0.8 / max(1, len(sources))
        for i, source in enumerate(sources):
            xs, ys, es = [], [], []
            for j, chi in enumerate(chis):
                r = cell.get((source, chi))
                if r is None:
                    continue
                xs.append(j + (i - (len(sources) - 1) / 2) * width)
                ys.append(100 * _num(r["test_accuracy_mean"]))
                es.append(100 * (_num(r["test_accuracy_std"]) if r["test_accuracy_std"] else 0.0))
            ax.bar(xs, ys, width, yerr=es, capsize=3, label=source)
        ax.set_xticks(range(len(chis)), [f"χ={c}" for c in chis])
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(_wrap(f"Ablation: what feeds the MPS ({self.protocol(rows)})"), fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        self.save(fig, "ablation.png")

    def shots(self) -> None:
        tables = self.need("shots.png", "shots_summary.csv")
        if tables is None:
            return
        rows = tables[0]
        finite = sorted((r for r in rows if not math.isnan(_num(r.get("shots")))), key=lambda r: _num(r["shots"]))
        exact = [r for r in rows if r.get("shots") in ("", "exact", "none")]
        fig, ax = self.plt.subplots(figsize=(7, 4.5))
        if finite:
            ax.errorbar([_num(r["shots"]) for r in finite], [100 * _num(r["test_accuracy_mean"]) for r in finite],
                        yerr=[100 * (_num(r["test_accuracy_std"]) if r["test_accuracy_std"] else 0) for r in finite],
                        fmt="o-", capsize=3, label="shots per circuit evaluation")
            ax.set_xscale("log")
        for r in exact:
            y, e = 100 * _num(r["test_accuracy_mean"]), 100 * (_num(r["test_accuracy_std"]) or 0.0)
            ax.axhline(y, color="k", ls="--", lw=1, label="exact probabilities")
            if not math.isnan(e):
                ax.axhspan(y - e, y + e, color="k", alpha=0.08)
        ax.set_xlabel("shots per circuit evaluation")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(_wrap(f"Finite sampling ({self.protocol(rows)})"), fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        self.save(fig, "shots.png")

    def noise(self) -> None:
        tables = self.need("noise.png", "noise_summary.csv")
        if tables is None:
            return
        rows = tables[0]
        knobs = [k for k in NOISE_KNOBS if k[0] in rows[0]]
        lines, together = noise_lines(rows)
        metrics = (("test_accuracy", "test accuracy (%)"), ("postselection_rate", "post-selection rate (%)"))
        fig, axes = self.plt.subplots(2, len(knobs), figsize=(3.3 * len(knobs), 6.5), sharey="row", squeeze=False)
        for col, (key, ideal, label) in enumerate(knobs):
            line = lines[key]
            for row_i, (metric, ylabel) in enumerate(metrics):
                ax = axes[row_i][col]
                if line and f"{metric}_mean" in line[0]:
                    ax.errorbar([_knob(r, key, ideal) for r in line], [100 * _num(r[f"{metric}_mean"]) for r in line],
                                yerr=[100 * (_num(r[f"{metric}_std"]) if r[f"{metric}_std"] else 0) for r in line],
                                fmt="o-", capsize=3, label="this knob alone")
                else:
                    ax.text(0.5, 0.5, f"no {metric} data", ha="center", transform=ax.transAxes)
                for r in together:
                    mean = 100 * _num(r.get(f"{metric}_mean"))
                    if not math.isnan(mean):
                        settings = ", ".join(f"{lab} {_knob(r, k, i):g}" for k, i, lab in knobs if k in _noisy_knobs(r))
                        ax.axhline(mean, color="C3", ls="--", lw=1, label=f"together: {settings} (± std band)")
                        std = 100 * (_num(r.get(f"{metric}_std")) or 0.0)
                        if not math.isnan(std):
                            ax.axhspan(mean - std, mean + std, color="C3", alpha=0.08)
                ax.set_xlabel(f"{label} (others ideal)")
                if col == 0:
                    ax.set_ylabel(ylabel)
                ax.tick_params(labelleft=True)
                ax.grid(alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
        fig.suptitle(_wrap(f"Noisy backend, mean ± std over seeds ({self.protocol(rows)})", 120), fontsize=9)
        self.save(fig, "noise.png", rect=(0, 0.05, 1, 1))

    def noise_paper(self) -> None:
        """The noisy full-protocol run(s) against the ideal run of the same settings (table3_paper, chi = 4)."""
        figure = "noise_paper_curves.png"
        tables = self.need(figure, "noise_paper_curves.csv", "table3_paper_curves.csv")
        if tables is None:
            return
        noisy = [r for r in tables[0] if r.get("round")]
        seeds = {r["seed"] for r in noisy}
        ideal = [r for r in tables[1] if r.get("round") and r.get("bond_dim") == "4" and r["seed"] in seeds]
        noise = noisy[0]["group"].replace("backend_options.", "").replace(",", ", ")
        fig, axes = self.plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
        for ax, metric in zip(axes, ("test_accuracy", "train_accuracy"), strict=True):
            for label, rows, style in ((f"ideal (table3_paper, χ=4, seed {', '.join(sorted(seeds))})", ideal, "-"),
                                       (f"noisy: {noise}", noisy, "-")):
                if not rows:
                    continue
                by_round: dict[int, list[float]] = defaultdict(list)
                for r in rows:
                    by_round[int(_num(r["round"]))].append(100 * _num(r[metric]))
                rounds = sorted(by_round)
                unfinished = any(r.get("status") != "finished" for r in rows)
                suffix = f" (unfinished, {rounds[-1]} rounds)" if unfinished else ""
                ax.plot(rounds, [_mean_std(by_round[k])[0] for k in rounds], style, lw=1.2,
                        label=textwrap.fill(label + suffix, 60))
            ax.set_xlabel("round")
            ax.set_ylabel(metric.replace("_", " ") + " (%)")
            ax.tick_params(labelleft=True)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7, loc="lower right")
        fig.suptitle(_wrap(f"Noisy hardware at the paper's training length ({self.protocol(noisy)})"), fontsize=9)
        self.save(fig, figure)

    def optimizers(self) -> None:
        tables = self.need("optimizers.png", "optimizers_curves.csv")
        if tables is None:
            return
        rows = [r for r in tables[0] if r.get("status") == "finished"]
        if not rows:
            self.log("skipped optimizers.png: no finished run in optimizers_curves.csv")
            return
        data: dict[str, dict[int, list[tuple[float, float, float]]]] = defaultdict(lambda: defaultdict(list))
        for r in rows:
            data[r["group"]][int(_num(r["round"]))].append(
                (_num(r["wall_seconds"]), _num(r["objective_evaluations"]), 100 * _num(r["test_accuracy"])))
        fig, axes = self.plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
        for group in sorted(data):
            rounds = sorted(data[group])
            seconds = [_mean_std([v[0] for v in data[group][k]])[0] for k in rounds]
            evals = [_mean_std([v[1] for v in data[group][k]])[0] for k in rounds]
            acc = [_mean_std([v[2] for v in data[group][k]])[0] for k in rounds]
            (line,) = axes[0].plot(seconds, acc, "-", marker=".", label=group)
            if any(e > 0 for e in evals):
                axes[1].plot(evals, acc, "-", marker=".", color=line.get_color(), label=group)
        axes[0].set_xlabel("cumulative wall time (s)")
        axes[1].set_xlabel("cumulative phase-objective evaluations (exact-gradient has none)")
        axes[0].set_ylabel("test accuracy (%)")
        for ax in axes:
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(_wrap(f"Phase optimizers ({self.protocol(rows)}); mean over seeds"), fontsize=9)
        self.save(fig, "optimizers.png")


def make_figures(results: str | Path = "experiments/results", out: str | Path = "experiments/figures",
                 log: Callable[[str], None] = print) -> list[Path]:
    """Draw every figure whose result files exist; returns the PNGs written."""
    results, out = Path(results), Path(out)
    if not results.is_dir():
        raise UserError(f"results folder {results} not found; run 'pqt sweep STUDY.toml' first or pass --results")
    figs = _Figures(results, out, log)
    for study in QT_STUDIES:
        figs.curves(study)
    for study in QT_STUDIES:
        figs.parameters(study, "test_accuracy", f"fig4_accuracy_{study}.png")
        figs.parameters(study, "generalization_error", f"fig4_generalization_{study}.png")
    figs.ablation()
    figs.curves("ablation_paper", "ablation_paper_curves.png")
    figs.shots()
    figs.noise()
    figs.noise_paper()
    figs.optimizers()
    return figs.written
