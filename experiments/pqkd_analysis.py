"""The statistics experiments/README.md quotes for the PQKD studies, from the committed per-run tables.

    python experiments/pqkd_analysis.py [--results experiments/results]

Reads pqkd_frontier.csv, pqkd_frontier_fashion.csv, pqkd_ablation.csv, pqkd_shots.csv, pqkd_noise.csv and
teachers.csv (one row per run, written by pqt sweep) and prints: mean +- population std of the test accuracy
per group, Welch's t-tests (scipy) of the comparisons the README makes, and for the shots study the fitted
log-log slopes of the measured feature noise and of the accuracy drop against the shots per estimate.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("status") == "finished"]


def accuracies(rows: list[dict[str, str]], **where: str) -> list[float]:
    return [100 * float(r["test_accuracy"]) for r in rows if all(r.get(k) == v for k, v in where.items())]


def summary(values: list[float]) -> str:
    return f"{np.mean(values):.2f} +- {np.std(values):.2f} (n = {len(values)})" if values else "no runs"


def welch(a: list[float], b: list[float]) -> str:
    if len(a) < 2 or len(b) < 2:
        return "p = n/a"
    return f"Welch p = {stats.ttest_ind(a, b, equal_var=False).pvalue:.3f}"


def slope(xs: list[float], ys: list[float]) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def frontier(rows: list[dict[str, str]], title: str) -> None:
    print(f"\n## {title}")
    groups: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    counts: dict[tuple[str, str, str, str], str] = {}
    for r in rows:
        key = (r["student"], r["widths"], r["basis"], r["alpha"])
        groups[key].append(100 * float(r["test_accuracy"]))
        counts[key] = r["trainable_parameters"]
    for key in sorted(groups, key=lambda k: (k[0], k[3], int(counts[k]))):
        print(f"  {'/'.join(key):<28} trainable {counts[key]:>5}: {summary(groups[key])}")
    # each dictionary student against the plain student of the nearest trainable count, and without distillation
    plain = {k: v for k, v in groups.items() if k[0] == "plain"}
    for key, values in groups.items():
        if key[0] != "dictionary" or key[3] == "0.0":
            continue
        near = min(plain, key=lambda k: abs(int(counts[k]) - int(counts[key]))) if plain else None
        if near is not None:
            print(f"  {'/'.join(key)} vs plain {near[1]} ({counts[near]}): {welch(values, plain[near])}")
        alone = groups.get(("dictionary", key[1], key[2], "0.0"))
        if alone:
            print(f"  {'/'.join(key)} vs the same without distillation: {welch(values, alone)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="experiments/results")
    results = Path(parser.parse_args().results)
    teachers = read(results / "teachers.csv") if (results / "teachers.csv").is_file() else []
    for dataset in ("partial-mnist", "fashion-mnist"):
        print(f"teacher {dataset}: {summary(accuracies(teachers, dataset=dataset))}")
    for name, title in (("pqkd_frontier", "frontier, partial-MNIST"), ("pqkd_frontier_fashion", "frontier, Fashion")):
        if (results / f"{name}.csv").is_file():
            frontier(read(results / f"{name}.csv"), title)
    if (results / "pqkd_ablation.csv").is_file():
        rows = read(results / "pqkd_ablation.csv")
        circuit = accuracies(rows, distribution_source="circuit")
        print("\n## ablation")
        for source in ("circuit", "random-fixed", "constant"):
            values = accuracies(rows, distribution_source=source)
            versus = "" if source == "circuit" else f"; vs circuit {welch(values, circuit)}"
            print(f"  {source:<13} {summary(values)}{versus}")
    if (results / "pqkd_shots.csv").is_file():
        rows = read(results / "pqkd_shots.csv")
        print("\n## shots and EMA")
        for beta in ("0.0", "0.9"):
            exact = accuracies(rows, shots="exact", ema_beta=beta)
            print(f"  beta {beta}: exact {summary(exact)}")
            shots, noise, drops = [], [], []
            for s in ("10", "100", "1000", "10000"):
                values = accuracies(rows, shots=s, ema_beta=beta)
                measured = [float(r["feature_noise"]) for r in rows if r["shots"] == s and r["ema_beta"] == beta]
                drop = float(np.mean(exact) - np.mean(values)) if values and exact else math.nan
                print(f"    S = {s:>5}: {summary(values)}; drop from exact {drop:.2f}; {welch(values, exact)}; "
                      f"feature noise {np.mean(measured):.4f}")
                shots.append(float(s))
                noise.append(float(np.mean(measured)))
                drops.append(drop)
            print(f"    feature-noise slope against S (log-log): {slope(shots, noise):.3f} (shot noise: -0.5)")
            kept = [(s, d) for s, d in zip(shots, drops, strict=True) if d > 0]
            if len(kept) >= 2:
                print(f"    accuracy-drop slope against S over S = {', '.join(f'{s:g}' for s, _ in kept)}: "
                      f"{slope([s for s, _ in kept], [d for _, d in kept]):.3f}")
        for s in ("10", "100", "1000", "10000", "exact"):
            a, b = accuracies(rows, shots=s, ema_beta="0.0"), accuracies(rows, shots=s, ema_beta="0.9")
            print(f"  S = {s}: beta 0.9 - beta 0 = {np.mean(b) - np.mean(a):+.2f} points; {welch(b, a)}")
    if (results / "pqkd_noise.csv").is_file() and (results / "pqkd_frontier.csv").is_file():
        rows = read(results / "pqkd_noise.csv")
        ideal = accuracies(read(results / "pqkd_frontier.csv"), student="dictionary", widths="8+16", basis="4",
                           alpha="0.5")
        print(f"\n## noise (ideal: {summary(ideal)})")
        for ind, tr in (("0.9", "1.0"), ("1.0", "0.5")):
            values = accuracies(rows, **{"backend_options.indistinguishability": ind,
                                         "backend_options.transmittance": tr})
            rate = [float(r["postselection_rate"]) for r in rows if r["backend_options.indistinguishability"] == ind
                    and r["backend_options.transmittance"] == tr]
            print(f"  indistinguishability {ind}, transmittance {tr}: {summary(values)}; post-selection "
                  f"{100 * np.mean(rate):.1f}%; vs ideal {welch(values, ideal)}")


if __name__ == "__main__":
    main()
