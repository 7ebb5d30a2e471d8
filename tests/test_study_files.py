"""The committed study files of experiments/ load, expand and hold only valid settings.

A typo in a study file (an unknown key, a bad value) would otherwise surface only hours into a
sweep; these checks run in a fraction of a second and train nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pqt.studies.sweep import config_class, load_study

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
STUDY_FILES = sorted(EXPERIMENTS.glob("*.toml"))


def test_the_studies_the_experiments_readme_names_exist() -> None:
    readme = (EXPERIMENTS / "README.md").read_text()
    listed = {line.split("`")[1] for line in readme.splitlines() if line.startswith("| `") and ".toml`" in line}
    assert listed == {path.name for path in STUDY_FILES}


@pytest.mark.parametrize("path", STUDY_FILES, ids=[p.stem for p in STUDY_FILES])
def test_study_file_expands_into_valid_runs(path: Path) -> None:
    study = load_study(path)
    assert study.runs, f"{path.name} expands to no run"
    assert study.protocol
    names = [run.name for run in study.runs]
    assert len(names) == len(set(names))
    for run in study.runs:
        config_class(study.kind).from_dict(run.config).validate()  # raises UserError on a bad setting


@pytest.mark.parametrize("path", STUDY_FILES, ids=[p.stem for p in STUDY_FILES])
def test_study_run_counts_match_the_readme(path: Path) -> None:
    readme = (EXPERIMENTS / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith(f"| `{path.name}`")]
    assert len(rows) == 1, f"experiments/README.md has no row (or several) for {path.name}"
    runs_column = rows[0].rstrip(" |").split("|")[-2].strip()
    assert int(runs_column) == len(load_study(path).runs)
