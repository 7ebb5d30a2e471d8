"""Sweeps: run a study (a grid of training runs) and aggregate its results into tables.

Modules: :mod:`.study_file` (TOML -> runs), :mod:`.runs` (one run: state, lock, execution), :mod:`.executor`
(running many: in-process or worker processes), :mod:`.aggregate` (tables, curves, statistics), :mod:`.plan`
(dry run).

A study is a TOML file::

    name = "table3"                      # results/<name>.csv, runs in OUT/<name>/
    protocol = "reduced-20x200"          # a short label written into every table
    kind = "qt"                          # "qt" (pqt train, default), "distill" (pqt distill) or "baseline"
    extends = "protocols/reduced.toml"   # optional: its `protocol` and [base] are the defaults
    [base]                               # settings shared by every run (TrainConfig / BaselineConfig keys)
    rounds = 20
    [base.backend_options]               # nested tables as in the config file
    indistinguishability = 0.9
    [grid]                               # key -> list of values; the runs are the cartesian product
    bond_dim = [1, 2, 3]
    seed = [0, 1, 2]
    "backend_options.transmittance" = [1.0, 0.8]   # dotted keys reach nested settings
    [report]
    group_by = ["bond_dim"]              # a table row (default: every grid key but seed)
    metrics = ["test_accuracy"]          # columns (default: DEFAULT_METRICS)
    std = "population"                   # or "sample" (ddof=1); named in the table header

Several grids (``[[grid]]`` array of tables) give the union of their products, duplicates once;
e.g. noise along one axis at a time. Each run lives in ``OUT/<name>/<k1>=<v1>,<k2>=<v2>`` (grid keys
in file order). A finished run (``metrics.json`` status "finished" with the same settings) is
skipped, a run with a checkpoint resumed, the rest started; a directory holding a run with other
settings is refused (only the number of rounds / epochs may grow: the run is then extended).
Ctrl-C stops cleanly: finished runs and the last checkpoint of each running one are kept, and a
second ``pqt sweep`` continues where it stopped.

Results (``--results``, default ``experiments/results``): ``<name>.csv`` (one row per run),
``<name>_summary.csv`` and ``<name>.md`` (per group: mean and std over seeds, n), and
``<name>_curves.csv`` (per run and round: accuracies, losses, cumulative wall time and objective
evaluations) for the training-curve figures.
"""

from pqt.studies.sweep.aggregate import aggregate
from pqt.studies.sweep.executor import SweepOutcome, default_threads, run_sweep
from pqt.studies.sweep.plan import describe_plan
from pqt.studies.sweep.runs import execute_run, inspect_run, read_error
from pqt.studies.sweep.study_file import (
    DEFAULT_METRICS,
    DEFAULT_OUT,
    DEFAULT_RESULTS,
    LOCK_FILE,
    RunSpec,
    Study,
    config_class,
    display_value,
    format_value,
    load_study,
    run_name,
)

__all__ = ["DEFAULT_METRICS", "DEFAULT_OUT", "DEFAULT_RESULTS", "LOCK_FILE", "RunSpec", "Study", "SweepOutcome",
           "aggregate", "config_class", "default_threads", "describe_plan", "display_value", "execute_run",
           "format_value", "inspect_run", "load_study", "read_error", "run_name", "run_sweep"]
