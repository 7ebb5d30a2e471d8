"""pqt.studies.sweep (study files, run directories, skip/resume/failure, aggregation) and pqt.studies.figures.

Real tiny runs on the shared partial-MNIST data: 200 training and 100 test images, one round, one
Adam epoch, 5 COBYLA evaluations on 50 images, bond dimension 1-2 (about a second each).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pqt.errors import UserError
from pqt.studies.sweep import aggregate, describe_plan, format_value, load_study, run_name, run_sweep
from pqt.training import run_files

REPO = Path(__file__).resolve().parent.parent

TINY_BASE = """
[base]
train_limit = 200
test_limit = 100
rounds = 1
adam_epochs = 1
cobyla_maxiter = 5
phase_batch = 50
shots = "exact"
"""


def write_study(folder: Path, body: str, name: str = "tiny", protocol: str = "smoke-1x5",
                base: str = TINY_BASE, top: str = "") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\nprotocol = "{protocol}"\n{top}\n{base}\n{body}\n')
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def quiet(_line: str) -> None:
    pass


def sweep(study_path: Path, tmp: Path, overrides: tuple[str, ...] = ()):
    study = load_study(study_path, overrides)
    return study, run_sweep(study, tmp / "runs", jobs=1, results=tmp / "results", show_progress=False,
                            print_fn=quiet)


# --------------------------------------------------------------------------- study files


def test_grid_expansion_with_dotted_keys_and_several_grids(tmp_path: Path) -> None:
    path = write_study(tmp_path, """
[base.backend_options]
indistinguishability = 0.9
[[grid]]
"backend_options.transmittance" = [1.0, 0.5]
bond_dim = [1, 2]
seed = [0]
[[grid]]
"backend_options.transmittance" = [1.0]
bond_dim = [1, 3]
seed = [0]
""", base=TINY_BASE + 'backend = "noisy"\n')
    study = load_study(path)
    names = [r.name for r in study.runs]
    assert names == [
        "backend_options.transmittance=1.0,bond_dim=1,seed=0",
        "backend_options.transmittance=1.0,bond_dim=2,seed=0",
        "backend_options.transmittance=0.5,bond_dim=1,seed=0",
        "backend_options.transmittance=0.5,bond_dim=2,seed=0",
        "backend_options.transmittance=1.0,bond_dim=3,seed=0",  # (1.0, 1) of grid 2 is a duplicate
    ]
    run = study.runs[2]
    assert run.config["backend_options"] == {"indistinguishability": 0.9, "transmittance": 0.5}
    assert run.config["bond_dim"] == 1 and run.config["rounds"] == 1 and run.config["shots"] is None
    assert study.group_by == ["backend_options.transmittance", "bond_dim"]  # grid keys but seed


def test_run_directory_names() -> None:
    assert run_name({"bond_dim": 4, "seed": 0}) == "bond_dim=4,seed=0"
    assert run_name({"shots": "exact", "lr": 0.001, "keep_ratio": 0.5}) == "shots=exact,lr=0.001,keep_ratio=0.5"
    assert run_name({"share_layers": ["fc1", "fc2"], "flag": True}) == "share_layers=fc1+fc2,flag=true"
    assert run_name({"dataset": "a/b c"}) == "dataset=a_b_c"
    assert run_name({}) == "base"
    assert format_value(None) == "" and format_value(1.0) == "1.0"


def test_set_overrides_restrict_grid_keys_and_change_base(tmp_path: Path) -> None:
    path = write_study(tmp_path, "[grid]\nbond_dim = [1, 2, 3]\nseed = [0, 1, 2]\n")
    study = load_study(path, ["bond_dim=2", "seed=[0, 1]", "adam_lr=0.01", "backend_options.g2=0.1"])
    assert [r.name for r in study.runs] == ["bond_dim=2,seed=0", "bond_dim=2,seed=1"]
    assert all(r.config["adam_lr"] == 0.01 and r.config["backend_options"] == {"g2": 0.1} for r in study.runs)
    assert study.protocol.startswith("smoke-1x5 (overridden: bond_dim=2")


@pytest.mark.parametrize("top, body, match", [
    ("", "[grid]\nbond_dimension = [1]\n", "unknown config key.*bond_dimension"),
    ("", "colour = 1\n", "unknown config key.*colour"),  # inside [base]
    ("", "[grid]\nbond_dim = []\n", "empty list"),
    ("colour = 1\n", "", "unknown study key.*colour"),
    ("kind = \"nonsense\"\n", "", "unknown study kind"),
    ("", "[report]\nstd = \"robust\"\n", "report.std"),
    ("", "[report]\ngroup_by = [\"flavour\"]\n", "group_by key 'flavour'"),
])
def test_bad_study_files_are_user_errors(tmp_path: Path, top: str, body: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        load_study(write_study(tmp_path, body, top=top))


def test_missing_protocol_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\n[grid]\nseed = [0]\n')
    with pytest.raises(UserError, match="protocol"):
        load_study(path)


def test_protocol_file_supplies_defaults(tmp_path: Path) -> None:
    (tmp_path / "protocols").mkdir()
    (tmp_path / "protocols" / "p.toml").write_text('protocol = "reduced-3x7"\n[base]\nrounds = 3\n'
                                                   'cobyla_maxiter = 7\n')
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\nextends = "protocols/p.toml"\n[base]\ncobyla_maxiter = 9\n[grid]\nseed = [0]\n')
    study = load_study(path)
    assert study.protocol == "reduced-3x7"
    assert study.runs[0].config["rounds"] == 3 and study.runs[0].config["cobyla_maxiter"] == 9


# --------------------------------------------------------------------------- running


def test_sweep_writes_tables_then_skips_finished_runs(tmp_path: Path) -> None:
    path = write_study(tmp_path, "[grid]\nbond_dim = [1]\nseed = [0, 1]\n")
    study, outcome = sweep(path, tmp_path)
    assert sorted(outcome.finished) == ["bond_dim=1,seed=0", "bond_dim=1,seed=1"] and not outcome.failed
    results = tmp_path / "results"
    rows = read_csv(results / "tiny.csv")
    assert [r["status"] for r in rows] == ["finished", "finished"]
    assert {r["protocol"] for r in rows} == {"smoke-1x5"}
    assert rows[0]["trainable_parameters"] == "159" and rows[0]["paper_count_parameters"] == "223"
    summary = read_csv(results / "tiny_summary.csv")
    assert len(summary) == 1 and summary[0]["n"] == "2" and summary[0]["std_kind"] == "population"
    accs = [float(r["test_accuracy"]) for r in rows]
    mean = sum(accs) / 2
    assert float(summary[0]["test_accuracy_mean"]) == pytest.approx(mean)
    assert float(summary[0]["test_accuracy_std"]) == pytest.approx(abs(accs[0] - mean))  # population std
    md = (results / "tiny.md").read_text()
    assert md.startswith("# tiny — protocol `smoke-1x5`")
    assert "population std" in md and " ± " in md and "| 1 | 2/2 |" in md
    curves = read_csv(results / "tiny_curves.csv")
    assert [(c["group"], c["seed"], c["round"]) for c in curves] == [("bond_dim=1", "0", "1"), ("bond_dim=1", "1", "1")]
    assert float(curves[0]["objective_evaluations"]) == 5

    metrics_files = [tmp_path / "runs" / "tiny" / r.name / run_files.METRICS for r in study.runs]
    mtimes = [f.stat().st_mtime_ns for f in metrics_files]
    # each run records its provenance beside config.json, which the skip below must not take for a setting
    assert all((f.parent / run_files.PROVENANCE).is_file() for f in metrics_files)
    plan = describe_plan(study, tmp_path / "runs")
    assert "0 new, 0 to resume, 2 finished" in plan[0] and all(line.endswith("finished") for line in plan[1:3])
    _, again = sweep(path, tmp_path)
    assert sorted(again.skipped) == sorted(outcome.finished) and not again.finished
    assert [f.stat().st_mtime_ns for f in metrics_files] == mtimes  # nothing retrained

    # The same directories with other settings are refused, not reused or overwritten.
    _, changed = sweep(path, tmp_path, ("adam_lr=0.5",))
    assert len(changed.failed) == 2 and "other settings (adam_lr: 0.001 -> 0.5)" in next(iter(changed.failed.values()))
    assert [f.stat().st_mtime_ns for f in metrics_files] == mtimes


def test_interrupted_run_is_resumed_not_restarted(tmp_path: Path) -> None:
    from pqt.training.config import TrainConfig
    from pqt.training.trainer import Trainer

    path = write_study(tmp_path, "[grid]\nbond_dim = [2]\nseed = [0]\n", base=TINY_BASE.replace("rounds = 1",
                                                                                                "rounds = 2"))
    study = load_study(path)
    run_dir = tmp_path / "runs" / "tiny" / study.runs[0].name
    # What an interrupted sweep leaves: round 1 finished and checkpointed, status "running".
    trainer = Trainer(TrainConfig.from_dict(study.runs[0].config), run_dir, log=quiet)
    run_dir.mkdir(parents=True)
    run_files.write_json(run_dir / run_files.CONFIG, trainer.config.to_dict())
    first = trainer.run_round(0)
    before = run_files.read_json(run_dir / run_files.METRICS)
    assert before["status"] == "running" and before["rounds_completed"] == 1
    assert "resume" in describe_plan(study, tmp_path / "runs")[1]

    _, outcome = sweep(path, tmp_path)
    assert outcome.finished == [study.runs[0].name]
    after = run_files.read_json(run_dir / run_files.METRICS)
    assert after["status"] == "finished" and after["rounds_completed"] == 2
    assert after["history"][0] == json.loads(json.dumps(first))  # round 1 kept as it was (timing included)
    assert "resuming after round 1 of 2" in (run_dir / run_files.LOG).read_text()


def test_failed_run_is_recorded_and_the_others_proceed(tmp_path: Path) -> None:
    # exact-gradient needs exact probabilities: with shots = 100 the run fails with a UserError.
    path = write_study(tmp_path, """
[[grid]]
phase_optimizer = ["exact-gradient", "cobyla"]
bond_dim = [1]
""", base=TINY_BASE.replace('shots = "exact"', "shots = 100"))
    study, outcome = sweep(path, tmp_path)
    bad, good = (r.name for r in study.runs)
    assert outcome.finished == [good]
    assert list(outcome.failed) == [bad] and "exact-gradient needs exact" in outcome.failed[bad]
    assert "exact-gradient needs exact" in (tmp_path / "runs" / "tiny" / bad / "error.txt").read_text()
    rows = {r["run"]: r for r in read_csv(tmp_path / "results" / "tiny.csv")}
    assert rows[bad]["status"] == "failed" and "exact-gradient" in rows[bad]["error"]
    assert rows[good]["status"] == "finished" and rows[good]["test_accuracy"]
    md = (tmp_path / "results" / "tiny.md").read_text()
    assert "Runs not in the table" in md and bad in md


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process that takes the run's lock (as a worker would) and keeps it until killed."""
    from pqt.studies.sweep import LOCK_FILE

    run_dir.mkdir(parents=True, exist_ok=True)
    # RunLock's protocol by hand (open, flock, write the pid): importing pqt would take seconds
    code = (f"import fcntl, os, time\nfd = os.open({str(run_dir / LOCK_FILE)!r}, os.O_CREAT | os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nos.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_run_locked_by_a_live_process_is_left_alone_until_it_dies(tmp_path: Path) -> None:
    """A real file lock (flock): busy while its holder lives, free the moment it dies (kill -9 included)."""
    from pqt.studies.sweep import LOCK_FILE, execute_run

    config = {"method": "classical", "epochs": 1, "train_limit": 200, "test_limit": 100}
    run_dir = tmp_path / "run"
    holder = _hold_lock(run_dir)
    try:
        status, message = execute_run("baseline", config, run_dir)
        assert status == "busy" and f"pid {holder.pid}" in message
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert execute_run("baseline", config, run_dir) == ("finished", None)
    assert not (run_dir / LOCK_FILE).exists()


def test_a_pid_in_the_lock_file_is_not_a_lock(tmp_path: Path) -> None:
    """The old PID-file lock misfired when a pid was reused: a live pid without the flock holds nothing."""
    from pqt.studies.sweep import LOCK_FILE, execute_run

    config = {"method": "classical", "epochs": 1, "train_limit": 200, "test_limit": 100}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text(str(os.getppid()))  # a live process that never locked the run
    assert execute_run("baseline", config, run_dir) == ("finished", None)


def test_a_sweep_with_runs_busy_elsewhere_does_not_report_success(tmp_path: Path, capsys) -> None:
    from pqt.cli import main

    path = write_study(tmp_path, "[grid]\nbond_dim = [1, 2]\n")
    study = load_study(path)
    holder = _hold_lock(tmp_path / "runs" / "tiny" / study.runs[1].name)
    try:
        rc = main(["sweep", str(path), "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    err = capsys.readouterr().err
    assert rc == 1 and f"not finished: {study.runs[1].name}" in err


def test_aggregate_only_reports_unstarted_runs(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path, "[grid]\nbond_dim = [1, 2]\n"))
    files = aggregate(study, tmp_path / "runs", tmp_path / "results")
    assert [f.name for f in files] == ["tiny.csv", "tiny_summary.csv", "tiny.md", "tiny_curves.csv"]
    assert [r["status"] for r in read_csv(files[0])] == ["not started", "not started"]
    assert read_csv(files[1])[0]["n"] == "0"


# --------------------------------------------------------------------------- CLI hooks and figures


def test_parsers_register_subcommands(tmp_path: Path) -> None:
    from pqt.cli.studies import add_baseline_parser, add_figures_parser, add_sweep_parser

    parser = argparse.ArgumentParser(prog="pqt")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_sweep_parser, add_baseline_parser, add_figures_parser):
        add(sub)
    args = parser.parse_args(["sweep", "s.toml", "--jobs", "2", "--dry-run", "--set", "rounds=3"])
    assert args.jobs == 2 and args.dry_run and args.set == ["rounds=3"] and callable(args.func)
    args = parser.parse_args(["baseline", "--method", "pruning", "--keep-ratio", "0.5", "--count-only"])
    assert args.func(args) == 0
    args = parser.parse_args(["figures", "--results", str(tmp_path / "nothing")])
    with pytest.raises(UserError, match="not found"):
        args.func(args)


def _write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_figures_from_result_files_and_skips(tmp_path: Path) -> None:
    from pqt.studies.figures import make_figures

    res = tmp_path / "results"
    res.mkdir()
    p = {"protocol": "synthetic"}
    _write(res / "table3_curves.csv", [{**p, "group": f"bond_dim={c}", "bond_dim": c, "seed": s, "status": "finished",
                                        "round": r, "test_accuracy": 0.5 + 0.01 * r * c, "wall_seconds": r,
                                        "objective_evaluations": 5 * r}
                                       for c in (1, 2) for s in (0, 1) for r in (1, 2, 3)])
    _write(res / "table3_summary.csv", [{**p, "bond_dim": c, "n": 3, "trainable_parameters_mean": 31 * c * c + 128,
                                         "trainable_parameters_std": 0, "test_accuracy_mean": 0.8 + 0.01 * c,
                                         "test_accuracy_std": 0.01, "generalization_error_mean": 0.01 * c,
                                         "generalization_error_std": ""} for c in (1, 2, 3)])
    _write(res / "baselines_summary.csv", [
        {**p, "method": m, "share_k": k, "share_layers": "", "keep_ratio": r, "n": 3, "trainable_parameters_mean": n,
         "trainable_parameters_std": 0, "test_accuracy_mean": a, "test_accuracy_std": 0.003,
         "generalization_error_mean": 0.02, "generalization_error_std": 0.001}
        for m, k, r, n, a in (("classical", "", "", 6690, 0.97), ("weight-sharing", 2, "", 924, 0.8),
                              ("weight-sharing", 4, "", 1798, 0.85), ("pruning", "", 0.5, 3370, 0.94))])
    _write(res / "ablation_summary.csv", [{**p, "distribution_source": s, "bond_dim": c, "test_accuracy_mean": 0.9,
                                           "test_accuracy_std": 0.01}
                                          for s in ("photonic", "constant") for c in (2, 4)])
    _write(res / "shots_summary.csv", [{**p, "shots": s, "test_accuracy_mean": 0.9, "test_accuracy_std": 0.01}
                                       for s in ("100", "10000", "")])
    _write(res / "noise_summary.csv", [
        {**p, "backend_options.indistinguishability": i, "backend_options.transmittance": t,
         "test_accuracy_mean": 0.9, "test_accuracy_std": 0.01, "postselection_rate_mean": 0.5 * t,
         "postselection_rate_std": 0.01} for i, t in ((1.0, 1.0), (0.9, 1.0), (1.0, 0.5))])
    _write(res / "optimizers_curves.csv", [{**p, "group": f"phase_optimizer={o}", "seed": 0, "status": "finished",
                                            "round": r, "test_accuracy": 0.1 * r, "wall_seconds": 2.0 * r,
                                            "objective_evaluations": 0 if o == "exact-gradient" else 5 * r}
                                           for o in ("cobyla", "exact-gradient") for r in (1, 2)])
    # A full-protocol ablation caught mid-sweep: one run finished, one stopped after 2 of 3 rounds.
    _write(res / "ablation_paper_curves.csv", [
        {**p, "group": f"distribution_source={d},bond_dim=4", "distribution_source": d, "bond_dim": 4, "seed": 0,
         "status": status, "round": r, "test_accuracy": 0.5 + 0.1 * r}
        for d, status, last in (("photonic", "finished", 3), ("constant", "interrupted", 2))
        for r in range(1, last + 1)])
    # The noisy full-protocol run; its figure also needs table3_paper's curves, missing here.
    _write(res / "noise_paper_curves.csv", [
        {**p, "group": "backend_options.g2=0.01", "seed": 0, "status": "running", "round": r, "test_accuracy": 0.8,
         "train_accuracy": 0.85} for r in (1, 2)])
    lines: list[str] = []
    written = make_figures(res, tmp_path / "figs", log=lines.append)
    assert sorted(p.name for p in written) == sorted([
        "fig3_curves_table3.png", "fig4_accuracy_table3.png", "fig4_generalization_table3.png", "ablation.png",
        "ablation_paper_curves.png", "shots.png", "noise.png", "optimizers.png"])
    assert all(p.stat().st_size > 1000 for p in written)
    skipped = [line for line in lines if line.startswith("skipped")]
    # the paper-protocol table's figures (and the noisy run drawn against them), and PQKD's two (test_distill.py)
    assert len(skipped) == 6
    assert sum("table3_paper" in line and "not found" in line for line in skipped) == 4
    assert sum(("pqkd_frontier.png" in line or "pqkd_shots.png" in line) and "not found" in line
               for line in skipped) == 2
    # With the ideal curves there, the noisy run is drawn against them.
    _write(res / "table3_paper_curves.csv", [
        {**p, "group": f"bond_dim={c}", "bond_dim": c, "seed": 0, "status": "finished", "round": r,
         "test_accuracy": 0.9, "train_accuracy": 0.95} for c in (4, 10) for r in (1, 2, 3)])
    assert "noise_paper_curves.png" in [p.name for p in make_figures(res, tmp_path / "figs", log=lines.append)]


def test_figures_say_protocol_seeds_and_counts_from_anywhere_in_the_checkout(tmp_path: Path, monkeypatch) -> None:
    from pqt.cli.main import build_parser
    from pqt.studies.figures import draw_figures

    experiments = tmp_path / "checkout" / "experiments"
    res = experiments / "results"
    res.mkdir(parents=True)
    write_study(experiments, "[grid]\nbond_dim = [1, 2]\nseed = [0, 1]\n", name="table3", protocol="synthetic",
                base="[base]\nrounds = 3\nadam_epochs = 2\ncobyla_maxiter = 40\nshots = \"exact\"\n")
    write_study(experiments, '[grid]\nphase_optimizer = ["cobyla", "spsa"]\nshots = ["exact", 10000]\n',
                name="optimizers", protocol="synthetic", base="[base]\nrounds = 2\nadam_epochs = 1\n")
    p = {"protocol": "synthetic"}
    # chi = 1 has two seeds, chi = 2 one: the legend must say n per curve
    _write(res / "table3_curves.csv", [{**p, "group": f"bond_dim={c}", "bond_dim": c, "seed": s, "status": "finished",
                                        "round": r, "test_accuracy": 0.5 + 0.01 * r * c}
                                       for c, seeds in ((1, (0, 1)), (2, (0,))) for s in seeds for r in (1, 2, 3)])
    _write(res / "table3_summary.csv", [{**p, "bond_dim": c, "n": 2, "trainable_parameters_mean": 31 * c * c + 128,
                                         "paper_count_parameters_mean": 31 * c * c + 192, "test_accuracy_mean": 0.8,
                                         "test_accuracy_std": 0.01, "generalization_error_mean": 0.01,
                                         "generalization_error_std": 0.0} for c in (1, 2)])
    settings = (("cobyla", "0.2", "exact"), ("spsa", "0.02", "10000"), ("exact-gradient", "0.2", "exact"))
    _write(res / "optimizers_curves.csv", [
        {**p, "group": f"phase_optimizer={o},spsa_a={a},spsa_c=0.1,shots={shots}", "phase_optimizer": o, "spsa_a": a,
         "spsa_c": "0.1", "shots": shots, "seed": 0, "status": "finished", "round": r, "test_accuracy": 0.1 * r,
         "wall_seconds": 2.0 * r, "objective_evaluations": 0 if o == "exact-gradient" else 40 * r}
        for o, a, shots in settings for r in (1, 2)])
    inside = tmp_path / "checkout" / "pqt" / "deep"
    inside.mkdir(parents=True)
    monkeypatch.chdir(inside)
    # no --results / --out (as `pqt figures`): the checkout's experiments/results and experiments/figures
    args = build_parser().parse_args(["figures"])
    assert (args.results, args.out) == (None, None)
    drawn = draw_figures(args.results, args.out, log=lambda _: None)
    assert {p.name for p in drawn.written} == {"fig3_curves_table3.png", "fig4_accuracy_table3.png",
                                               "fig4_generalization_table3.png", "optimizers.png"}
    assert all(p.parent == (experiments / "figures").resolve() for p in drawn.written)
    texts = drawn.texts
    curves = texts["fig3_curves_table3.png"]
    title = " ".join(curves["titles"]).replace("\n", " ")
    assert "3 rounds × (2 Adam epochs + 40 COBYLA evaluations), exact probabilities" in title
    assert "synthetic" not in title and "1-2 seeds" in title
    assert curves["legend"] == ["χ = 1 (n=2)", "χ = 2 (n=1)"]
    accuracy = texts["fig4_accuracy_table3.png"]
    assert "as the paper counts them" in accuracy["xlabels"][0]
    assert "photonic QT, ours (2 bond dimensions, 2 seeds each)" in accuracy["legend"]
    optimizers = texts["optimizers.png"]
    assert sorted(optimizers["legend"]) == ["COBYLA, exact", "SPSA (a = 0.02, c = 0.1), 10,000 shots",
                                            "exact gradient (joint Adam)"]
    title = " ".join(optimizers["titles"]).replace("\n", " ")
    assert "2 rounds × (1 Adam epoch + 1,000 phase-objective evaluations)" in title and "shots" not in title
    # elsewhere than in a checkout, the defaults cannot be guessed: one line
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("pqt.studies.figures.find_experiments_dir", lambda start=None: None)
    with pytest.raises(UserError, match="--results"):
        draw_figures()


def test_figure_groups_sort_numbers_as_numbers() -> None:
    from pqt.studies.figures import _natural_key

    groups = ["bond_dim=10", "bond_dim=2", "bond_dim=1", "distribution_source=constant,bond_dim=4"]
    assert sorted(groups, key=_natural_key) == ["bond_dim=1", "bond_dim=2", "bond_dim=10",
                                                "distribution_source=constant,bond_dim=4"]


@pytest.mark.slow
def test_parallel_workers_run_and_record(tmp_path: Path) -> None:
    """--jobs 2: each run in its own spawned process; results and failures as with one job."""
    path = write_study(tmp_path, """
[[grid]]
phase_optimizer = ["cobyla", "exact-gradient"]
bond_dim = [1]
""", base=TINY_BASE.replace('shots = "exact"', "shots = 100"))
    study = load_study(path)
    outcome = run_sweep(study, tmp_path / "runs", jobs=2, results=tmp_path / "results", show_progress=False,
                        print_fn=quiet)
    good, bad = (r.name for r in study.runs)
    assert outcome.finished == [good] and list(outcome.failed) == [bad]
    assert "exact-gradient needs exact" in outcome.failed[bad]
    metrics = run_files.read_json(tmp_path / "runs" / "tiny" / good / run_files.METRICS)
    assert metrics["status"] == "finished" and metrics["shots"] == 100
    assert [r["status"] for r in read_csv(tmp_path / "results" / "tiny.csv")] == ["finished", "failed"]


def test_noise_figure_lines_take_one_knob_at_a_time() -> None:
    from pqt.studies.figures import noise_lines

    ind, tr, g2 = "backend_options.indistinguishability", "backend_options.transmittance", "backend_options.g2"
    rows = [{ind: "1.0", tr: "1.0", g2: "0.0"}, {ind: "0.8", tr: "1.0", g2: "0.0"}, {ind: "1.0", tr: "0.5", g2: "0.0"},
            {ind: "1.0", tr: "1.0", g2: "0.05"}, {ind: "0.9", tr: "0.8", g2: "0.01"},
            {ind: "0.6", tr: "1.0"}]  # a table written before g2 was a column: g2 at its ideal value
    lines, together = noise_lines(rows)
    assert [r[ind] for r in lines[ind]] == ["0.6", "0.8", "1.0"]
    assert [r[tr] for r in lines[tr]] == ["0.5", "1.0"]
    assert [r[g2] for r in lines[g2]] == ["0.0", "0.05"]
    assert lines["backend_options.phase_error"] == [rows[0]]  # only the ideal point
    assert together == [rows[4]]


def test_welch_tests_in_the_aggregation(tmp_path: Path) -> None:
    """report.compare: each value of a group key against its reference, as Welch's t-test computed by hand."""
    import math as m

    path = write_study(tmp_path, """
[grid]
distribution_source = ["photonic", "constant"]
bond_dim = [2]
seed = [0, 1, 2]
[report]
group_by = ["distribution_source", "bond_dim"]
compare = "distribution_source"
reference = "photonic"
""")
    study = load_study(path)
    accuracy = {"photonic": [0.70, 0.74, 0.75], "constant": [0.60, 0.66, 0.61]}
    for run in study.runs:  # finished runs with known accuracies (what a sweep leaves)
        run_dir = tmp_path / "runs" / "tiny" / run.name
        run_dir.mkdir(parents=True)
        run_files.write_json(run_dir / run_files.CONFIG, run.config)
        acc = accuracy[run.config["distribution_source"]][run.config["seed"]]
        run_files.write_json(run_dir / run_files.METRICS, {
            "status": "finished", "rounds_completed": 1, "rounds_planned": 1, "test_accuracy": acc,
            "history": []})
    files = aggregate(study, tmp_path / "runs", tmp_path / "results")
    (row,) = read_csv(tmp_path / "results" / "tiny_tests.csv")
    assert tmp_path / "results" / "tiny_tests.csv" in files
    a, b = accuracy["constant"], accuracy["photonic"]
    va = sum((x - sum(a) / 3) ** 2 for x in a) / 2
    vb = sum((x - sum(b) / 3) ** 2 for x in b) / 2
    t = (sum(a) / 3 - sum(b) / 3) / m.sqrt(va / 3 + vb / 3)
    dof = (va / 3 + vb / 3) ** 2 / ((va / 3) ** 2 / 2 + (vb / 3) ** 2 / 2)
    assert row["distribution_source"] == "constant" and row["reference"] == "photonic"
    assert float(row["t"]) == pytest.approx(t, rel=1e-9) and float(row["dof"]) == pytest.approx(dof, rel=1e-9)
    assert 0.0 < float(row["p_value"]) < 0.05  # clearly different samples
    assert "Welch's t-test" in (tmp_path / "results" / "tiny.md").read_text()


def test_aggregation_keeps_committed_results_of_runs_whose_folders_are_gone(tmp_path: Path) -> None:
    """A table completed over several machines: rows of finished runs survive the loss of their folders."""
    import shutil

    path = write_study(tmp_path, "[grid]\nbond_dim = [2]\nseed = [0, 1]\n")
    study, outcome = sweep(path, tmp_path)
    assert sorted(outcome.finished) == sorted(r.name for r in study.runs)
    before = read_csv(tmp_path / "results" / "tiny.csv")
    curves_before = read_csv(tmp_path / "results" / "tiny_curves.csv")
    shutil.rmtree(tmp_path / "runs" / "tiny" / study.runs[0].name)  # this machine lost one run folder
    aggregate(study, tmp_path / "runs", tmp_path / "results")
    after = read_csv(tmp_path / "results" / "tiny.csv")
    assert [r["status"] for r in after] == ["finished", "finished"]
    assert [r["source"] for r in after] == ["committed", "run folder"]
    assert [r["test_accuracy"] for r in after] == [r["test_accuracy"] for r in before]
    assert len(read_csv(tmp_path / "results" / "tiny_curves.csv")) == len(curves_before)
    (summary,) = read_csv(tmp_path / "results" / "tiny_summary.csv")
    assert summary["n"] == "2"
    # a different protocol never borrows those rows
    other = load_study(path, ("rounds=1",))
    other.protocol = "another-protocol"
    aggregate(other, tmp_path / "runs", tmp_path / "results")
    assert [r["status"] for r in read_csv(tmp_path / "results" / "tiny.csv")] == ["not started", "finished"]


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by whoever adopted it, counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow
def test_workers_die_with_a_killed_sweep(tmp_path: Path) -> None:
    """kill -9 of `pqt sweep --jobs 2`: its workers stop too (checkpoints kept), and free their runs' locks."""
    from pqt.training.run_files import RunLock

    path = write_study(tmp_path, "[grid]\nbond_dim = [1, 2]\n",
                       base=TINY_BASE.replace("rounds = 1", "rounds = 40").replace("cobyla_maxiter = 5",
                                                                                   "cobyla_maxiter = 10"))
    study = load_study(path)
    dirs = [tmp_path / "runs" / "tiny" / r.name for r in study.runs]
    code = "import sys; from pqt.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    sweep_proc = subprocess.Popen([sys.executable, "-c", code, "sweep", str(path), "--jobs", "2", "--out",
                                   str(tmp_path / "runs"), "--results", str(tmp_path / "results")],
                                  cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not all(run_files.read_metrics(d).get("rounds_completed", 0) >= 1 for d in dirs):
            assert sweep_proc.poll() is None and time.monotonic() < deadline, "the workers never trained"
            time.sleep(0.1)
        workers = [int((d / ".run.lock").read_text()) for d in dirs]
    finally:
        sweep_proc.send_signal(signal.SIGKILL)
        sweep_proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its killed sweep"
        time.sleep(0.1)
    for d in dirs:
        lock = RunLock(d)
        assert lock.acquire() is None  # free: a rerun resumes the run instead of skipping it as busy
        lock.release()
        m = run_files.read_metrics(d)
        assert m["status"] == "interrupted" and 1 <= m["rounds_completed"] < 40
    assert all(line.endswith(f"resume: after {run_files.read_metrics(d)['rounds_completed']} of 40 rounds")
               for line, d in zip(describe_plan(study, tmp_path / "runs")[1:1 + len(dirs)], dirs, strict=True))
