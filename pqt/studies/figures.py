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
  optimizer (``optimizers_curves.csv``);
- ``pqkd_frontier.png``: PQKD's accuracy against trainable parameters, one panel per dataset
  (``pqkd_frontier_summary.csv``, ``pqkd_frontier_fashion_summary.csv``): the dictionary student over
  widths and basis sizes K, the plain-convolution KD student, the student without distillation, and the
  teacher (``teachers_summary.csv``) as a line;
- ``pqkd_shots.png``: PQKD's accuracy against shots per step with and without EMA smoothing, the
  measured feature noise against 1/sqrt(S), and the accuracy drop against the effective noise
  (``pqkd_shots_summary.csv``).

Titles say the protocol in words ("8 rounds x (2 Adam epochs + 200 COBYLA evaluations)"), read from
the study file beside the results folder (``experiments/<study>.toml``) when its protocol label
matches the tables', else the tables' label is shown; every figure says how many seeds (n) each point
or curve averages. On the parameter axis Quantum-Train and the paper share one count, the paper's
(31 chi^2 + 192 phases, ``paper_count_parameters``): our meshes use 128 of those 192 phases, so our
own trainable count is 64 lower at every chi. Legends sit outside the data.
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
SOURCE_WORDS = {"photonic": "photonic distributions", "circuit": "circuit distributions",
                "random-fixed": "one random vector", "random-redraw": "a new random vector each step",
                "constant": "a constant vector"}


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


def _seed_counts(rows: list[dict[str, str]]) -> list[int]:
    """The finished-seed count (column n) of each summary row that has one."""
    return [int(_num(r["n"])) for r in rows if not math.isnan(_num(r.get("n")))]


def _std(row: dict[str, str], metric: str, scale: float = 1.0) -> float:
    value = _num(row.get(f"{metric}_std"))
    return 0.0 if math.isnan(value) else scale * value


def _wrap(title: str, width: int = 100) -> str:
    """Titles carry the protocol, which can be long (overrides): wrap each line instead of cropping."""
    return "\n".join(textwrap.fill(line, width) for line in title.split("\n"))


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


def _count(n: float) -> str:
    return f"{n:,.0f}"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def n_seeds(ns: list[int] | set[int]) -> str:
    """"one seed", "3 seeds" or "1-3 seeds"."""
    values = sorted({n for n in ns if n > 0})
    if not values:
        return "no finished seed"
    if values == [1]:
        return "one seed"
    return f"{values[0]} seeds" if len(values) == 1 else f"{values[0]}-{values[-1]} seeds"


def seeds_text(ns: list[int]) -> str:
    """How many seeds the curves or points of a figure average, for its title."""
    ns = sorted({n for n in ns if n > 0})
    if not ns:
        return ""
    if ns == [1]:
        return "one seed each (no spread shown)"
    if len(ns) == 1:
        return f"mean ± std over {ns[0]} seeds"
    return f"mean ± std over {ns[0]}-{ns[-1]} seeds (n in the legend)"


def protocol_words(kind: str, settings: dict[str, Any], varied: tuple[str, ...] = ()) -> str:
    """A training protocol in words, from a study's settings (its [base], protocol file included).

    Settings in ``varied`` (the study's grid keys) are left out: the figure shows them on an axis or in
    its legend.
    """
    if kind == "baseline":
        from pqt.studies.baseline_config import BaselineConfig

        b = {**BaselineConfig().to_dict(), **settings}
        return f"{_plural(b['epochs'], 'epoch')} of Adam (lr {b['lr']:g}, batch {b['batch_size']})"
    from pqt.studies.sweep.study_file import config_class

    c = {**config_class(kind)().to_dict(), **settings}  # a Quantum-Train or a distillation run
    if "phase_optimizer" in varied:
        text = (f"{_plural(c['rounds'], 'round')} × ({_plural(c['adam_epochs'], 'Adam epoch')} + "
                f"{_plural(c['cobyla_maxiter'], 'phase-objective evaluation')})")
    elif c["phase_optimizer"] == "exact-gradient":
        text = (f"{_plural(c['rounds'], 'round')} of {_plural(c['adam_epochs'], 'joint Adam epoch')} (circuits and "
                "mapper)")
    else:
        step = (_plural(c["cobyla_maxiter"], "COBYLA evaluation") if c["phase_optimizer"] == "cobyla"
                else _plural(c["spsa_iterations"], "SPSA step"))
        text = f"{_plural(c['rounds'], 'round')} × ({_plural(c['adam_epochs'], 'Adam epoch')} + {step})"
    shots = c["shots"]
    if "shots" not in varied:
        text += ", exact probabilities" if shots in (None, "exact") else f", {int(shots):,} shots per evaluation"
    if c.get("backend", "slos") != "slos":
        text += f", {c['backend']} backend"
    if c.get("dataset", "partial-mnist") != "partial-mnist":
        text += f", {c['dataset']}"
    return text


def find_experiments_dir(start: Path | None = None) -> Path | None:
    """The checkout's ``experiments`` folder: above ``start`` (default: the working directory), else
    beside this package's checkout. ``pqt figures`` then works from anywhere in the checkout."""
    starts = [Path.cwd() if start is None else start, Path(__file__).resolve().parents[2]]
    for origin in starts:
        for folder in (origin.resolve(), *origin.resolve().parents):
            if (folder / "experiments" / "results").is_dir():
                return folder / "experiments"
    return None


class _Figures:
    def __init__(self, results: Path, out: Path, log: Callable[[str], None]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt
        self.results, self.out, self.log = results, out, log
        self.written: list[Path] = []
        self.texts: dict[str, dict[str, Any]] = {}  # per figure: its titles and legend entries, as drawn
        self._protocols: dict[tuple[str, str], str] = {}

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
        titles = [fig.get_suptitle()] if fig.get_suptitle() else []
        titles += [ax.get_title() for ax in fig.axes if ax.get_title()]
        legends = [leg for leg in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if leg is not None]
        self.texts[name] = {"titles": titles, "legend": [t.get_text() for leg in legends for t in leg.get_texts()],
                            "xlabels": [ax.get_xlabel() for ax in fig.axes]}
        fig.savefig(path, dpi=150, bbox_inches="tight")  # tight: legends outside the axes stay in the picture
        self.plt.close(fig)
        self.written.append(path)
        self.log(f"wrote {path}")

    def protocol(self, study: str, rows: list[dict[str, str]]) -> str:
        """The tables' protocol in words, from the study file that produced them (else its label)."""
        label = rows[0].get("protocol", "") if rows else ""
        if (study, label) not in self._protocols:
            self._protocols[study, label] = self._protocol_words(study, label)
        return self._protocols[study, label]

    def _protocol_words(self, study: str, label: str) -> str:
        base_label, _, overrides = label.partition(" (overridden: ")
        path = self.results.parent / f"{study}.toml"
        if path.is_file():
            from pqt.studies.sweep.study_file import load_study

            try:
                found = load_study(path)
            except UserError:
                found = None
            if found is not None and found.protocol == base_label:
                words = protocol_words(found.kind, found.base, tuple(found.grid_keys))
                return words + (f" (overridden: {overrides}" if overrides else "")
        return label or "protocol not recorded"

    @staticmethod
    def legend_right(ax: Any) -> None:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, borderaxespad=0)

    # ---- Fig. 3: training curves ------------------------------------------------------------------
    def curves(self, study: str, what: str, figure: str | None = None) -> None:
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
        seeds: dict[str, set[str]] = defaultdict(set)
        unfinished: dict[str, int] = {}  # group -> last round reached by its unfinished runs
        for r in rows:
            round_ = int(_num(r["round"]))
            by_group[r["group"]][round_].append(100 * _num(r["test_accuracy"]))
            seeds[r["group"]].add(r.get("seed", ""))
            if r.get("status") != "finished":
                unfinished[r["group"]] = max(round_, unfinished.get(r["group"], 0))
        source_order = list(SOURCE_WORDS)

        def order(group: str) -> tuple[int, list[tuple[int, float, str]]]:  # photonic first, then the ablations
            source = group.split("distribution_source=")[-1].split(",")[0] if "distribution_source=" in group else ""
            return (source_order.index(source) if source in source_order else -1, _natural_key(group))

        groups = sorted(by_group, key=order)
        ns = [len(seeds[g]) for g in groups]
        fields = [dict(part.split("=", 1) for part in g.split(",") if "=" in part) for g in groups]
        common_chi = {f.get("bond_dim") for f in fields}
        fig, ax = self.plt.subplots(figsize=(8.5, 4.5))
        for group, keys, n in zip(groups, fields, ns, strict=True):
            rounds = sorted(by_group[group])
            stats = [_mean_std(by_group[group][k]) for k in rounds]
            mean = [s[0] for s in stats]
            std = [s[1] for s in stats]
            parts = []
            if "distribution_source" in keys:
                parts.append(SOURCE_WORDS.get(keys["distribution_source"], keys["distribution_source"]))
            if "bond_dim" in keys and (len(common_chi) > 1 or not parts):
                parts.append(f"χ = {keys['bond_dim']}")
            label = ", ".join(parts) or group
            if len(set(ns)) > 1:
                label += f" (n={n})"
            if group in unfinished:
                label += f" (unfinished, {unfinished[group]} rounds)"
            (line,) = ax.plot(rounds, mean, label=label, lw=1.4)
            ax.fill_between(rounds, [m - s for m, s in zip(mean, std, strict=True)],
                            [m + s for m, s in zip(mean, std, strict=True)], color=line.get_color(), alpha=0.15)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy (%)")
        chi = f" at χ = {next(iter(common_chi))}" if len(common_chi) == 1 and None not in common_chi else ""
        ax.set_title(_wrap(f"{what}{chi}: test accuracy after each round\n{self.protocol(study, rows)}; "
                           f"{seeds_text(ns)}"), fontsize=9)
        self.legend_right(ax)
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
            if _num(r.get("n")) == 0:
                continue
            method = r.get("method", "")
            if method == "weight-sharing":
                layers = r.get("share_layers", "")
                name = f"weight sharing, {layers} only" if layers else "weight sharing, all layers"
            else:
                name = method
            series[name].append(r)
        return series

    @staticmethod
    def _count_column(row: dict[str, str]) -> str:
        """The paper's count where the table has it (Quantum-Train), else the trainable count."""
        return "paper_count_parameters_mean" if "paper_count_parameters_mean" in row else "trainable_parameters_mean"

    def parameters(self, study: str, metric: str, figure: str) -> None:
        tables = self.need(figure, f"{study}_summary.csv")
        if tables is None:
            return
        qt = [r for r in tables[0] if _num(r.get("n")) != 0]  # groups with no finished run yet
        if not qt:
            self.log(f"skipped {figure}: {study}_summary.csv has no finished group")
            return
        if f"{metric}_mean" not in qt[0]:
            self.log(f"skipped {figure}: {study}_summary.csv has no {metric}_mean column")
            return
        count = self._count_column(qt[0])
        qt.sort(key=lambda r: _num(r.get(count)))
        scale = 100.0 if metric == "test_accuracy" else 1.0
        fig, ax = self.plt.subplots(figsize=(9.5, 4.8))
        qt_n = sorted(set(_seed_counts(qt)))
        n_text = f", {n_seeds(qt_n)} each" if qt_n else ""
        xs = [_num(r[count]) for r in qt]
        ys = [scale * _num(r[f"{metric}_mean"]) for r in qt]
        ax.errorbar(xs, ys, yerr=[_std(r, metric, scale) for r in qt], fmt="o-", color="C0", capsize=3,
                    label=f"photonic QT, ours ({len(qt)} bond dimensions{n_text})")
        if "bond_dim" in qt[0]:
            for x, y, r in zip(xs, ys, qt, strict=True):
                ax.annotate(f"χ={r['bond_dim']}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=6,
                            color="C0")
        markers = {"weight sharing": "s", "pruning": "^", "classical": "D"}
        colors = {"classical": "C1", "pruning": "C2", "weight sharing, all layers": "C3",
                  "weight sharing, fc1 only": "C4"}
        baseline_n: set[int] = set()
        for i, (name, rows) in enumerate(sorted(self._baseline_series().items())):
            rows = sorted(rows, key=lambda r: _num(r.get("trainable_parameters_mean")))
            if f"{metric}_mean" not in rows[0]:
                continue
            baseline_n |= set(_seed_counts(rows))
            xs = [_num(r["trainable_parameters_mean"]) for r in rows]
            ys = [scale * _num(r[f"{metric}_mean"]) for r in rows]
            es = [_std(r, metric, scale) for r in rows]
            color = colors.get(name, f"C{i + 5}")
            if name == "classical":
                ax.axhline(ys[0], color=color, ls="--", lw=1.2, label=f"classical CNN, ours ({_count(xs[0])} "
                                                                       "parameters)")
                ax.axhspan(ys[0] - es[0], ys[0] + es[0], color=color, alpha=0.1)
                continue
            if name == "pruning":
                detail = " (keep " + ", ".join(f"{100 * _num(r.get('keep_ratio')):.0f}%" for r in rows) + ")"
            elif name.startswith("weight sharing") and all(r.get("share_k") for r in rows):
                detail = " (k = " + ", ".join(r["share_k"] for r in rows) + ")"
            else:
                detail = ""
            label = f"{name}{detail}, ours"
            ax.errorbar(xs, ys, yerr=es, fmt=markers.get(name.split(",")[0], "o") + "-", color=color, capsize=3,
                        label=label)
        if metric == "test_accuracy":
            ax.plot(PAPER_TABLE3_COUNTS, PAPER_TABLE3, "o", mfc="none", color="C0", ms=7,
                    label="photonic QT (Table 3, χ = 1..10), paper")
            for (x, y), label, marker, color in ((PAPER_CLASSICAL, "classical CNN, paper", "D", "C1"),
                                                 (PAPER_PRUNING, "pruning 50%, paper", "^", "C2"),
                                                 (PAPER_WEIGHT_SHARING, "weight sharing, fc1 only, paper", "s", "C4")):
                ax.plot([x], [y], marker, mfc="none", color=color, ms=8, mew=1.5, label=label)
            ax.set_ylabel("test accuracy (%)")
            what, paper_note = "Test accuracy", "; hollow: the paper's (full protocol)"
        else:
            ax.set_ylabel("generalization error (test loss − train loss)")
            ax.axhline(0, color="k", lw=0.6)
            what, paper_note = "Generalization error", ""
        if count == "paper_count_parameters_mean":
            ax.set_xlabel("trainable parameters as the paper counts them (QT: 31χ² MPS + 192 phases, of which our "
                          "meshes use 128)")
        else:
            ax.set_xlabel("trainable parameters")
        baselines = ""
        if baseline_n:
            words = self.protocol("baselines", _read(self.results / "baselines_summary.csv"))
            baselines = f"\nbaselines: {words}, {n_seeds(baseline_n)} each"
        ax.set_title(_wrap(f"{what} vs trainable parameters. Filled: ours (mean ± std){paper_note}\n"
                           f"QT: {self.protocol(study, qt)}{baselines}"), fontsize=9)
        handles, labels = ax.get_legend_handles_labels()
        ranked = sorted(zip(handles, labels, strict=True), key=lambda hl: hl[1].endswith("paper"))  # ours first
        ax.legend([h for h, _ in ranked], [lab for _, lab in ranked], loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  fontsize=8, frameon=False, borderaxespad=0)
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
        fig, ax = self.plt.subplots(figsize=(9, 4.5))
        width = 0.8 / max(1, len(sources))
        ns: list[int] = []
        for i, source in enumerate(sources):
            xs, ys, es = [], [], []
            for j, chi in enumerate(chis):
                r = cell.get((source, chi))
                if r is None:
                    continue
                xs.append(j + (i - (len(sources) - 1) / 2) * width)
                ys.append(100 * _num(r["test_accuracy_mean"]))
                es.append(_std(r, "test_accuracy", 100))
                if not math.isnan(_num(r.get("n"))):
                    ns.append(int(_num(r["n"])))
            ax.bar(xs, ys, width, yerr=es, capsize=3, label=SOURCE_WORDS.get(source, source))
        ax.set_xticks(range(len(chis)), [f"χ = {c}" for c in chis])
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(_wrap(f"Ablation: what the MPS is fed instead of the photonic distributions\n"
                           f"{self.protocol('ablation', rows)}; {seeds_text(ns)}"), fontsize=9)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, borderaxespad=0,
                  title="MPS input", title_fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        self.save(fig, "ablation.png")

    def shots(self) -> None:
        tables = self.need("shots.png", "shots_summary.csv")
        if tables is None:
            return
        rows = tables[0]
        finite = sorted((r for r in rows if not math.isnan(_num(r.get("shots")))), key=lambda r: _num(r["shots"]))
        exact = [r for r in rows if r.get("shots") in ("", "exact", "none")]
        ns = _seed_counts(rows)
        fig, ax = self.plt.subplots(figsize=(8.5, 4.5))
        if finite:
            ax.errorbar([_num(r["shots"]) for r in finite], [100 * _num(r["test_accuracy_mean"]) for r in finite],
                        yerr=[_std(r, "test_accuracy", 100) for r in finite], fmt="o-", capsize=3,
                        label="sampled: shots per circuit evaluation")
            ax.set_xscale("log")
        for r in exact:
            y, e = 100 * _num(r["test_accuracy_mean"]), _std(r, "test_accuracy", 100)
            ax.axhline(y, color="k", ls="--", lw=1, label="exact probabilities (mean ± std band)")
            ax.axhspan(y - e, y + e, color="k", alpha=0.08)
        ax.set_xlabel("shots per circuit evaluation")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(_wrap(f"Finite sampling at χ = 4: test accuracy vs shots per circuit evaluation\n"
                           f"{self.protocol('shots', rows)}; {seeds_text(ns)}"),
                     fontsize=9)
        self.legend_right(ax)
        ax.grid(alpha=0.3)
        self.save(fig, "shots.png")

    def noise(self) -> None:
        tables = self.need("noise.png", "noise_summary.csv")
        if tables is None:
            return
        rows = tables[0]
        knobs = [k for k in NOISE_KNOBS if k[0] in rows[0]]
        lines, together = noise_lines(rows)
        ns = _seed_counts(rows)
        metrics = (("test_accuracy", "test accuracy (%)"), ("postselection_rate", "post-selection rate (%)"))
        fig, axes = self.plt.subplots(2, len(knobs), figsize=(3.3 * len(knobs), 6.5), sharey="row", squeeze=False)
        for col, (key, ideal, label) in enumerate(knobs):
            line = lines[key]
            for row_i, (metric, ylabel) in enumerate(metrics):
                ax = axes[row_i][col]
                if line and f"{metric}_mean" in line[0]:
                    ax.errorbar([_knob(r, key, ideal) for r in line], [100 * _num(r[f"{metric}_mean"]) for r in line],
                                yerr=[_std(r, metric, 100) for r in line], fmt="o-", capsize=3,
                                label="this knob alone")
                else:
                    ax.text(0.5, 0.5, f"no {metric} data", ha="center", transform=ax.transAxes)
                for r in together:
                    mean = 100 * _num(r.get(f"{metric}_mean"))
                    if not math.isnan(mean):
                        settings = ", ".join(f"{lab} {_knob(r, k, i):g}" for k, i, lab in knobs if k in _noisy_knobs(r))
                        ax.axhline(mean, color="C3", ls="--", lw=1, label=f"together: {settings} (± std band)")
                        std = _std(r, metric, 100)
                        ax.axhspan(mean - std, mean + std, color="C3", alpha=0.08)
                ax.set_xlabel(f"{label} (others ideal)")
                if col == 0:  # the rows share their y axis: one label, on the left
                    ax.set_ylabel(ylabel)
                ax.grid(alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles),
                       fontsize=8, frameon=False)
        fig.suptitle(_wrap(f"Noisy backend at χ = 4: test accuracy, and the post-selection rate (share of shots in "
                           f"which all N detectors click), each knob with the others ideal\n"
                           f"{self.protocol('noise', rows)}; {seeds_text(ns)}", 170), fontsize=9)
        fig.tight_layout()
        self.save(fig, "noise.png")

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
        fig.suptitle(_wrap(f"Noisy hardware at the paper's training length, χ = 4, one seed\n"
                           f"{self.protocol('noise_paper', noisy)}"), fontsize=9)
        fig.tight_layout()
        self.save(fig, figure)

    @staticmethod
    def _optimizer_label(row: dict[str, str]) -> str:
        """"SPSA (a = 0.02, c = 0.1), 10,000 shots" from the row's settings: only the optimiser's own gains."""
        optimizer = row.get("phase_optimizer") or row.get("group", "").split("=")[-1]
        if optimizer == "exact-gradient":
            name = "exact gradient (joint Adam)"
        elif optimizer == "spsa":
            gains = [f"{k} = {row[f'spsa_{k}']}" for k in ("a", "c") if row.get(f"spsa_{k}")]
            name = "SPSA" + (f" ({', '.join(gains)})" if gains else "")
        else:
            name = optimizer.upper()
        shots = row.get("shots", "")
        if shots and shots != "exact" and not math.isnan(_num(shots)):
            return f"{name}, {int(_num(shots)):,} shots"
        return f"{name}, exact" if shots == "exact" and optimizer != "exact-gradient" else name

    def optimizers(self) -> None:
        tables = self.need("optimizers.png", "optimizers_curves.csv")
        if tables is None:
            return
        rows = [r for r in tables[0] if r.get("status") == "finished"]
        if not rows:
            self.log("skipped optimizers.png: no finished run in optimizers_curves.csv")
            return
        data: dict[str, dict[int, list[tuple[float, float, float]]]] = defaultdict(lambda: defaultdict(list))
        labels: dict[str, str] = {}
        seeds: dict[str, set[str]] = defaultdict(set)
        for r in rows:
            data[r["group"]][int(_num(r["round"]))].append(
                (_num(r["wall_seconds"]), _num(r["objective_evaluations"]), 100 * _num(r["test_accuracy"])))
            labels[r["group"]] = self._optimizer_label(r)
            seeds[r["group"]].add(r.get("seed", ""))
        fig, axes = self.plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
        for group in sorted(data, key=lambda g: labels[g]):
            rounds = sorted(data[group])
            seconds = [_mean_std([v[0] for v in data[group][k]])[0] for k in rounds]
            evals = [_mean_std([v[1] for v in data[group][k]])[0] for k in rounds]
            acc = [_mean_std([v[2] for v in data[group][k]])[0] for k in rounds]
            (line,) = axes[0].plot(seconds, acc, "-", marker=".", label=labels[group])
            if any(e > 0 for e in evals):
                axes[1].plot(evals, acc, "-", marker=".", color=line.get_color())
        axes[0].set_xlabel("cumulative wall time (s) on this shared 2-core machine")
        axes[1].set_xlabel("cumulative phase-objective evaluations (exact gradient has none)")
        axes[0].set_ylabel("test accuracy (%)")
        for ax in axes:
            ax.grid(alpha=0.3)
        ns = [len(seeds[g]) for g in data]
        n_text = f"mean over {ns[0]} seeds" if len(set(ns)) == 1 else "mean over seeds"
        fig.suptitle(_wrap(f"Phase optimisers at χ = 4: test accuracy after each round, against time and "
                           f"objective evaluations\n{self.protocol('optimizers', rows)}; {n_text}"), fontsize=9)
        fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, -0.08))
        fig.tight_layout()
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
        protocols, ns = [], []
        for ax, (study, label) in zip(axes[0], panels, strict=True):
            rows = _read(self.results / f"{study}_summary.csv")
            protocols.append(self.protocol(study, rows))
            ns += _seed_counts(rows)
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
        fig.suptitle(_wrap(f"PQKD compression-accuracy frontier; {seeds_text(ns)}; protocols: "
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
        protocol = self.protocol("pqkd_shots", rows)
        ns = _seed_counts(rows)
        fig.suptitle(_wrap(f"PQKD under finite sampling ({protocol}); {seeds_text(ns)}", 130), fontsize=9)
        self.save(fig, "pqkd_shots.png")


def make_figures(results: str | Path | None = None, out: str | Path | None = None,
                 log: Callable[[str], None] = print) -> list[Path]:
    """Draw every figure whose result files exist; returns the PNGs written.

    Defaults: the checkout's ``experiments/results`` and ``experiments/figures``, found from the
    working directory (anywhere inside the checkout) or from this package.
    """
    return draw_figures(results, out, log).written


def draw_figures(results: str | Path | None = None, out: str | Path | None = None,
                 log: Callable[[str], None] = print) -> _Figures:
    """As :func:`make_figures`, returning the drawer (written files and each figure's texts)."""
    experiments = find_experiments_dir() if results is None or out is None else None
    if (results is None or out is None) and experiments is None:
        raise UserError(f"no experiments/results folder found above {Path.cwd()} or beside the pqt package; "
                        "pass --results DIR (and --out DIR)")
    results = Path(results) if results is not None else experiments / "results"  # type: ignore[operator]
    out = Path(out) if out is not None else experiments / "figures"  # type: ignore[operator]
    if not results.is_dir():
        raise UserError(f"results folder {results} not found; run 'pqt sweep STUDY.toml' first or pass --results")
    figs = _DistillFigures(results, out, log)
    for study, what in (("table3", "Photonic QT per bond dimension χ"),
                        ("table3_paper", "Photonic QT per bond dimension χ")):
        figs.curves(study, what)
    for study in QT_STUDIES:
        figs.parameters(study, "test_accuracy", f"fig4_accuracy_{study}.png")
        figs.parameters(study, "generalization_error", f"fig4_generalization_{study}.png")
    figs.ablation()
    figs.curves("ablation_paper", "Ablation of the MPS input", "ablation_paper_curves.png")
    figs.shots()
    figs.noise()
    figs.noise_paper()
    figs.optimizers()
    figs.frontier()
    figs.shots_pqkd()
    return figs
