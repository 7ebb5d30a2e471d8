"""Table 3 under the paper's full protocol against the paper's own rows, from the committed tables.

    python experiments/table3_paper_analysis.py [--results experiments/results]

Reads table3_paper.csv (one row per run, written by pqt sweep; rows of runs whose folders are gone are
kept there as committed results) and table3_paper_curves.csv, and prints for every bond dimension with
finished runs: each seed's final test and train accuracy and its mean test accuracy over the last 50
rounds (a steadier read of where a run sits than its final round, never used to pick a model), our mean
+- population std, the paper's row, and Welch's t-test between the two. The paper gives mean +- std but
not its number of runs; the test assumes three (as for its classical baseline) and says so.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

# Paper Table 3 (test accuracy %, mean +- std): chi -> (mean, std). Only the rows it gives a spread for;
# chi = 10 also has the corrected value after undoing its notebook's chi = 9 / chi = 10 swap.
PAPER = {4: (93.29, 0.62), 10: (95.50, 0.84)}
PAPER_CORRECTED = {10: (94.92, 0.75)}
PAPER_RUNS_ASSUMED = 3
LAST_ROUNDS = 50


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def welch_against_paper(ours: list[float], paper: tuple[float, float]) -> float:
    """Welch's p between our runs and the paper's summary statistics (population stds, as both report)."""
    n = len(ours)
    # the sample std from the population one, for both sides
    ours_std = float(np.std(ours, ddof=1))
    paper_std = paper[1] * np.sqrt(PAPER_RUNS_ASSUMED / (PAPER_RUNS_ASSUMED - 1))
    return float(stats.ttest_ind_from_stats(np.mean(ours), ours_std, n, paper[0], paper_std, PAPER_RUNS_ASSUMED,
                                            equal_var=False).pvalue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    results = Path(args.results)
    runs = [r for r in read(results / "table3_paper.csv") if r["status"] == "finished"]
    curves: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in read(results / "table3_paper_curves.csv"):
        curves[(row["bond_dim"], row["seed"])].append(100 * float(row["test_accuracy"]))
    by_chi: dict[int, list[dict[str, str]]] = defaultdict(list)
    for r in runs:
        by_chi[int(r["bond_dim"])].append(r)
    for chi in sorted(by_chi):
        rows = sorted(by_chi[chi], key=lambda r: int(r["seed"]))
        print(f"\n## chi = {chi} ({rows[0]['trainable_parameters']} trainable parameters), "
              f"protocol {rows[0]['protocol']}")
        tests = []
        for r in rows:
            test, train = 100 * float(r["test_accuracy"]), 100 * float(r["train_accuracy"])
            tests.append(test)
            tail = curves[(r["bond_dim"], r["seed"])][-LAST_ROUNDS:]
            tail_text = f"{np.mean(tail):.2f}" if len(tail) == LAST_ROUNDS else "n/a"
            print(f"  seed {r['seed']}: test {test:.2f}%, train {train:.2f}%, mean test over the last "
                  f"{LAST_ROUNDS} rounds {tail_text}%, {float(r['wall_seconds']) / 60:.0f} min")
        print(f"  ours: {np.mean(tests):.2f} +- {np.std(tests):.2f} (population std, n = {len(tests)})")
        for label, table in (("paper", PAPER), ("paper, chi 9/10 swap undone", PAPER_CORRECTED)):
            if chi not in table:
                continue
            mean, std = table[chi]
            p = (f"Welch p = {welch_against_paper(tests, table[chi]):.3f} (paper n = {PAPER_RUNS_ASSUMED} assumed)"
                 if len(tests) >= 2 else "no test with one run of ours")
            print(f"  {label}: {mean:.2f} +- {std:.2f}; difference {np.mean(tests) - mean:+.2f} points; {p}")


if __name__ == "__main__":
    main()
