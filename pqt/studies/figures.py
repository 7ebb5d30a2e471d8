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
- ``noise.png``: test accuracy and post-selection rate vs indistinguishability and transmittance
  (``noise_summary.csv``);
- ``optimizers.png``: test accuracy vs cumulative wall time and vs objective evaluations per phase
  optimizer (``optimizers_curves.csv``);
- ``pqkd_frontier.png``: PQKD's accuracy against trainable parameters, one panel per dataset
  (``pqkd_frontier_summary.csv``, ``pqkd_frontier_fashion_summary.csv``): the dictionary student over
  widths and basis sizes K, the plain-convolution KD student, the student without distillation, and the
  teacher (``teachers_summary.csv``) as a line;
- ``pqkd_shots.png``: PQKD's accuracy against shots per step with and without EMA smoothing, the
  measured feature noise against 1/sqrt(S), and the accuracy drop against the effective noise
  (``pqkd_shots_summary.csv``).

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

    def save(self, fig: Any, name: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / name
        fig.tight_layout()
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
        ind_key, tr_key = "backend_options.indistinguishability", "backend_options.transmittance"
        fig, axes = self.plt.subplots(2, 2, figsize=(9, 6.5), sharey="row")
        for col, (key, other, label) in enumerate(((ind_key, tr_key, "indistinguishability"),
                                                   (tr_key, ind_key, "transmittance"))):
            line = sorted((r for r in rows if _num(r.get(other, "1")) in (1.0,) or r.get(other, "") == ""),
                          key=lambda r: _num(r.get(key)))
            line = [r for r in line if not math.isnan(_num(r.get(key)))]
            for row_i, (metric, scale, ylabel) in enumerate((("test_accuracy", 100, "test accuracy (%)"),
                                                             ("postselection_rate", 100, "post-selection rate (%)"))):
                ax = axes[row_i][col]
                if line and f"{metric}_mean" in line[0]:
                    ax.errorbar([_num(r[key]) for r in line], [scale * _num(r[f"{metric}_mean"]) for r in line],
                                yerr=[scale * (_num(r[f"{metric}_std"]) if r[f"{metric}_std"] else 0) for r in line],
                                fmt="o-", capsize=3)
                else:
                    ax.text(0.5, 0.5, f"no {metric} data", ha="center", transform=ax.transAxes)
                ax.set_xlabel(f"{label} (other knob at 1)")
                ax.set_ylabel(ylabel)
                ax.grid(alpha=0.3)
        fig.suptitle(_wrap(f"Noisy backend ({self.protocol(rows)})"), fontsize=9)
        self.save(fig, "noise.png")

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


class _DistillFigures(_Figures):
    """PQKD's figures (experiments/pqkd_*.toml)."""

    FRONTIER = (("pqkd_frontier", "partial-MNIST"), ("pqkd_frontier_fashion", "Fashion-MNIST"))
    TEACHER_DATASETS = {"pqkd_frontier": "partial-mnist", "pqkd_frontier_fashion": "fashion-mnist"}

    def _teacher(self, dataset: str) -> tuple[float, float, float] | None:
        """(accuracy %, std %, parameters) of the teachers study's row for ``dataset``."""
        path = self.results / "teachers_summary.csv"
        if not path.is_file():
            return None
        for r in _read(path):
            if r.get("dataset") == dataset:
                return (100 * _num(r["test_accuracy_mean"]), 100 * (_num(r["test_accuracy_std"]) or 0.0),
                        _num(r.get("trainable_parameters_mean")))
        return None

    def frontier(self) -> None:
        panels = [(study, label) for study, label in self.FRONTIER if (self.results / f"{study}_summary.csv").is_file()]
        if not panels:
            self.log(f"skipped pqkd_frontier.png: {self.results / 'pqkd_frontier_summary.csv'} not found")
            return
        fig, axes = self.plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.8), squeeze=False)
        protocols = []
        for ax, (study, label) in zip(axes[0], panels, strict=True):
            rows = _read(self.results / f"{study}_summary.csv")
            protocols.append(self.protocol(rows))
            series: dict[str, list[dict[str, str]]] = defaultdict(list)
            for r in rows:
                if r.get("student") == "plain":
                    name = "plain-convolution student, same KD loss"
                elif _num(r.get("alpha")) == 0:
                    name = "PQKD student without distillation (alpha = 0)"
                elif r.get("basis") == "4" or "widths" not in r:
                    name = "PQKD (dictionary student, K = 4, widths vary)"
                else:
                    name = "PQKD, widths 8-16, K varies"
                series[name].append(r)
            styles = {"PQKD (dictionary student, K = 4, widths vary)": ("o-", "C0"),
                      "PQKD, widths 8-16, K varies": ("s--", "C0"),
                      "plain-convolution student, same KD loss": ("^-", "C1"),
                      "PQKD student without distillation (alpha = 0)": ("v:", "C2")}
            for name, members in series.items():
                members = sorted(members, key=lambda r: _num(r.get("trainable_parameters_mean")))
                fmt, color = styles[name]
                xs = [_num(r["trainable_parameters_mean"]) for r in members]
                ys = [100 * _num(r["test_accuracy_mean"]) for r in members]
                es = [100 * (_num(r["test_accuracy_std"]) if r.get("test_accuracy_std") else 0.0) for r in members]
                ax.errorbar(xs, ys, yerr=es, fmt=fmt, color=color, capsize=3, ms=5, label=name)
                for x, y, r in zip(xs, ys, members, strict=True):
                    tag = r.get("widths", "").replace("+", "-")
                    if name.startswith("PQKD, widths"):
                        tag = f"K={r.get('basis')}"
                    ax.annotate(tag, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=6, color=color)
            teacher = self._teacher(self.TEACHER_DATASETS[study])
            if teacher is not None:
                y, e, n = teacher
                ax.axhline(y, color="k", ls="--", lw=1, label=f"teacher ({n:,.0f} parameters)")
                ax.axhspan(y - e, y + e, color="k", alpha=0.08)
            ax.set_xscale("log")
            ax.set_xlabel("trainable parameters (student + photonic phases)")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(label, fontsize=10)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7, loc="lower right")
        fig.suptitle(_wrap("PQKD compression-accuracy frontier; mean ± std over seeds; protocols: "
                           + "; ".join(dict.fromkeys(protocols)), 130), fontsize=9)
        self.save(fig, "pqkd_frontier.png")

    def shots_pqkd(self) -> None:
        tables = self.need("pqkd_shots.png", "pqkd_shots_summary.csv")
        if tables is None:
            return
        rows = tables[0]
        betas = sorted(dict.fromkeys(r.get("ema_beta", "") for r in rows), key=_sort_key)
        fig, axes = self.plt.subplots(1, 3, figsize=(15, 4.6))
        exact: dict[str, tuple[float, float]] = {}
        for i, beta in enumerate(betas):
            color = f"C{i}"
            members = [r for r in rows if r.get("ema_beta", "") == beta]
            finite = sorted((r for r in members if not math.isnan(_num(r.get("shots")))),
                            key=lambda r: _num(r["shots"]))
            for r in members:
                if r.get("shots") in ("", "exact"):
                    exact[beta] = (100 * _num(r["test_accuracy_mean"]), 100 * (_num(r["test_accuracy_std"]) or 0.0))
                    axes[0].axhline(exact[beta][0], color=color, ls=":", lw=1, label=f"exact, beta = {beta}")
            label = "no smoothing (beta = 0)" if _num(beta) == 0 else f"EMA, beta = {beta}"
            if finite:
                shots = [_num(r["shots"]) for r in finite]
                acc = [100 * _num(r["test_accuracy_mean"]) for r in finite]
                err = [100 * (_num(r["test_accuracy_std"]) if r.get("test_accuracy_std") else 0.0) for r in finite]
                axes[0].errorbar(shots, acc, yerr=err, fmt="o-", color=color, capsize=3, label=label)
                noise = [_num(r.get("feature_noise_mean")) for r in finite]
                if not all(math.isnan(v) for v in noise):
                    axes[1].plot(shots, noise, "o", color=color, label=f"measured, {label}")
                    # effective noise of what the student sees: an EMA of independent estimates has variance
                    # (1 - beta) / (1 + beta) times one estimate's
                    b = _num(beta)
                    effective = [v * math.sqrt((1 - b) / (1 + b)) for v in noise]
                    reference = exact.get(beta, exact.get(betas[0], (math.nan, 0.0)))[0]
                    axes[2].plot(effective, [reference - a for a in acc], "o-", color=color, label=label)
        ax = axes[1]
        measured = [(_num(r["shots"]), _num(r.get("feature_noise_mean"))) for r in rows
                    if not math.isnan(_num(r.get("shots"))) and not math.isnan(_num(r.get("feature_noise_mean")))]
        if measured:
            xs = sorted({s for s, _ in measured})
            # the 1/sqrt(S) line through the geometric mean of the measurements
            scale = math.exp(sum(math.log(v * math.sqrt(s)) for s, v in measured) / len(measured))
            ax.plot(xs, [scale / math.sqrt(s) for s in xs], "k--", lw=1, label="c / sqrt(S)")
            if len({s for s, _ in measured}) > 1:
                lx = [math.log(s) for s, _ in measured]
                ly = [math.log(v) for _, v in measured]
                mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
                slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)
                ax.text(0.03, 0.05, f"fitted slope {slope:.3f} (shot noise: -0.5)", transform=ax.transAxes, fontsize=8)
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel("shots per estimate S")
        ax.set_ylabel("RMS noise per component of one estimate of phi")
        ax.set_title("Feature noise", fontsize=10)
        axes[0].set_xscale("log")
        axes[0].set_xlabel("shots per circuit evaluation (a fresh estimate every student step)")
        axes[0].set_ylabel("test accuracy (%)")
        axes[0].set_title("Accuracy against shots", fontsize=10)
        axes[2].set_xscale("log")
        axes[2].set_xlabel("effective noise of the smoothed phi: measured x sqrt((1 - beta) / (1 + beta))")
        axes[2].set_ylabel("accuracy drop from exact (percentage points)")
        axes[2].axhline(0, color="k", lw=0.6)
        axes[2].set_title("Drop against effective noise", fontsize=10)
        for ax in axes:
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        fig.suptitle(_wrap(f"PQKD under finite sampling ({self.protocol(rows)}); mean ± std over seeds", 130),
                     fontsize=9)
        self.save(fig, "pqkd_shots.png")


def make_figures(results: str | Path = "experiments/results", out: str | Path = "experiments/figures",
                 log: Callable[[str], None] = print) -> list[Path]:
    """Draw every figure whose result files exist; returns the PNGs written."""
    results, out = Path(results), Path(out)
    if not results.is_dir():
        raise UserError(f"results folder {results} not found; run 'pqt sweep STUDY.toml' first or pass --results")
    figs = _DistillFigures(results, out, log)
    for study in QT_STUDIES:
        figs.curves(study)
    for study in QT_STUDIES:
        figs.parameters(study, "test_accuracy", f"fig4_accuracy_{study}.png")
        figs.parameters(study, "generalization_error", f"fig4_generalization_{study}.png")
    figs.ablation()
    figs.curves("ablation_paper", "ablation_paper_curves.png")
    figs.shots()
    figs.noise()
    figs.optimizers()
    figs.frontier()
    figs.shots_pqkd()
    return figs.written
