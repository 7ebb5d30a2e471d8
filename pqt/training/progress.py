"""What a training run shows while it runs: progress bars on stderr and one short line per round.

Bars appear whenever stderr is a terminal (a pty under ``script`` or ``ssh -t`` included): one overall
bar (rounds done, time left) that stays on screen after the run, and one bar per stage (Adam steps,
phase-optimiser evaluations) that clears itself when the stage ends. The round line on stdout is kept
under 100 characters (:func:`format_round_short`); the detailed line (:func:`format_round`: losses,
shots, circuit evaluations, post-selection, jobs) goes to ``train.log`` and every number to
``metrics.json``.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from tqdm import tqdm

SHORT_LINE_LIMIT = 99  # characters: the console line fits a 100-column terminal
# A pty that reports no size (``script`` without a terminal, some CI runners) gives tqdm 0 columns and
# -1 rows, and it then draws nothing: bars use these instead.
_FALLBACK_SIZE = (100, 24)


def _terminal_size(stream: IO[str]) -> tuple[int, int]:
    """(columns, rows) of the terminal behind ``stream``; the fallback for each one it does not report."""
    try:
        size = os.get_terminal_size(stream.fileno())
        columns, rows = size.columns, size.lines
    except (AttributeError, OSError, ValueError):
        columns = rows = 0
    if columns <= 0:
        try:
            columns = int(os.environ.get("COLUMNS", "0"))
        except ValueError:
            columns = 0
    return (columns if columns > 0 else _FALLBACK_SIZE[0], rows if rows > 0 else _FALLBACK_SIZE[1])


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class RunProgress:
    """Progress of one run: an overall round bar and per-stage bars (stderr), round lines (stdout).

    ``show_rounds=False`` (the library default, and sweeps, which draw their own bar) keeps only the
    per-stage bars and prints no round line: the trainer's ``log`` callback receives the detailed line.
    """

    def __init__(self, show_rounds: bool = True, bars: bool | None = None, out: IO[str] | None = None,
                 err: IO[str] | None = None) -> None:
        self.show_rounds = show_rounds
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.bars = _is_terminal(self.err) if bars is None else bars
        self._overall: tqdm | None = None

    def _size(self) -> dict[str, int]:
        columns, rows = _terminal_size(self.err)
        return {"ncols": columns, "nrows": rows}

    def begin(self, rounds_done: int, rounds_total: int) -> None:
        """Open the overall bar at ``rounds_done`` of ``rounds_total`` (a resumed run starts part way)."""
        if not (self.show_rounds and self.bars) or self._overall is not None:
            return
        self._overall = tqdm(total=rounds_total, initial=rounds_done, desc="rounds", unit="round", leave=True,
                             position=0, file=self.err, mininterval=0.5, **self._size(),
                             bar_format="{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed} elapsed, "
                                        "{remaining} left{postfix}")

    def stage(self, description: str, total: int) -> tqdm:
        """A bar for one stage of a round (cleared when closed); a silent one when bars are off."""
        return tqdm(total=total, desc=description, leave=False, disable=not self.bars,
                    position=1 if self._overall is not None else 0, file=self.err, mininterval=0.2,
                    **self._size())

    def round_finished(self, entry: dict[str, Any], rounds_total: int) -> None:
        """Print the round's short line (above the bars) and advance the overall bar."""
        if not self.show_rounds:
            return
        self.write(format_round_short(entry, rounds_total))
        if self._overall is not None:
            self._overall.set_postfix_str(f"test {100 * entry['test_accuracy']:.1f}%", refresh=False)
            self._overall.update(1)

    def write(self, line: str) -> None:
        """A line on stdout that does not break the bars on stderr."""
        if self.bars:
            tqdm.write(line, file=self.out)
            self.out.flush()
        else:
            print(line, file=self.out, flush=True)

    def close(self) -> None:
        if self._overall is not None:
            self._overall.close()
            self._overall = None


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def format_round_short(e: dict[str, Any], rounds: int) -> str:
    """The console line of a round, under 100 characters whatever the settings.

    Accuracies, the round's time and what a run spends (post-selection, cloud jobs) come first; the
    Adam loss and the phase objective are added while they fit.
    """
    head = f"round {e['round']}/{rounds}"
    results = [f"train {_percent(e['train_accuracy'])}"]
    if e.get("validation_accuracy") is not None:
        results.append(f"val {_percent(e['validation_accuracy'])}")
    results.append(f"test {_percent(e['test_accuracy'])}")
    if e.get("postselection_rate") is not None and e["postselection_rate"] < 1:
        results.append(f"kept {_percent(e['postselection_rate'])}")
    if e.get("jobs_submitted"):
        results.append(f"jobs {e['jobs_submitted']:,}")
    results.append(f"{e['seconds']:.1f}s")
    optional = [f"adam {e['adam_loss']:.3f}"]
    if e.get("phase_objective_start") is not None and e.get("phase_objective_end") is not None:
        optional.append(f"phase {e['phase_objective_start']:.3f}->{e['phase_objective_end']:.3f}")
    parts = [head, *optional, *results]
    while len(" | ".join(parts)) > SHORT_LINE_LIMIT and optional:
        parts.remove(optional.pop())
    return " | ".join(parts)


def format_round(e: dict[str, Any], rounds: int) -> str:
    """The detailed line of a round (train.log): losses and accuracies, what was evaluated and spent."""
    parts = [f"round {e['round']}/{rounds}", f"adam loss {e['adam_loss']:.4f}"]
    if e["phase_objective_start"] is not None:
        parts.append(f"phase obj {e['phase_objective_start']:.4f}->{e['phase_objective_end']:.4f} "
                     f"({e['objective_evaluations']} evals)")
    parts.append(f"train {e['train_loss']:.4f}/{100 * e['train_accuracy']:.2f}%")
    if "validation_accuracy" in e:
        parts.append(f"val {e['validation_loss']:.4f}/{100 * e['validation_accuracy']:.2f}%")
    parts.append(f"test {e['test_loss']:.4f}/{100 * e['test_accuracy']:.2f}%")
    evaluations = e.get("circuit_evaluations_round")
    if evaluations is not None:  # computed even when exact: joint training simulates the circuits every step
        parts.append(f"circuit evals {evaluations:,}" + ("" if e["shots_used"] else " (exact)"))
    if e["shots_used"]:
        parts.append(f"shots used {e['shots_used']:,}")
    if e["postselection_rate"] is not None and e["postselection_rate"] < 1:
        parts.append(f"post-sel {100 * e['postselection_rate']:.1f}%")
    if e["jobs_submitted"]:
        parts.append(f"jobs {e['jobs_submitted']}")
    parts.append(f"{e['seconds']:.1f}s")
    return " | ".join(parts)
