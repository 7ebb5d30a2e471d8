"""What a researcher sees: fast help, grouped flags, progress bars on a terminal, short round lines,
and a run stopped by SIGTERM as by Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pqt.cli import main
from pqt.training.progress import SHORT_LINE_LIMIT, RunProgress, format_round, format_round_short

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _child_cpu_seconds(code: str) -> tuple[float, str]:
    """CPU seconds (user + sys) a fresh interpreter spends running ``code``, and its stdout.

    CPU time, not wall time: on a shared machine the wall time of a start-up measures the neighbours.
    """
    script = ("import resource, subprocess, sys\n"
              f"p = subprocess.run([sys.executable, '-c', {code!r}], capture_output=True, text=True)\n"
              "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
              "assert p.returncode == 0, p.stderr\n"
              "print(u.ru_utime + u.ru_stime)\n"
              "print(p.stdout, end='')\n")
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, _, rest = proc.stdout.partition("\n")
    return float(first), rest


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["sweep", "--help"], ["predict", "--help"]])
def test_help_imports_neither_torch_nor_perceval_and_starts_fast(argv) -> None:
    code = ("import contextlib, io, sys\n"
            "from pqt.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            f"        main({argv!r})\n"
            "    except SystemExit:\n"
            "        pass\n"
            "print(sorted(m for m in ('torch', 'perceval', 'scipy', 'matplotlib') if m in sys.modules))\n")
    cpu, out = _child_cpu_seconds(code)
    assert out.strip() == "[]", f"pqt {' '.join(argv)} imported {out.strip()}"
    assert cpu < 1.0, f"pqt {' '.join(argv)} took {cpu:.2f} s of CPU"


# --------------------------------------------------------------------------- flags


def test_abbreviated_flags_are_refused(capsys, tmp_path) -> None:
    rc = main(["train", "--round", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("pqt: error: ") and "--round" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def _train_help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    return capsys.readouterr().out


def test_train_help_groups_flags_with_choices_and_one_default(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    text = _train_help(capsys)
    titles = [line[:-1] for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert titles == ["options", "data", "generator: circuits and how their distributions become values",
                      "mapping model", "target network", "training (Adam)", "circuit-parameter optimiser",
                      "backend (where the circuits run)", "backend noisy (with --backend noisy)",
                      "backend remote (with --backend remote)", "run", "output", "examples"]
    assert "--backend {slos,noisy,remote}" in text
    assert "--phase-optimizer {cobyla,nlopt-cobyla,spsa,exact-gradient}" in text
    # one help entry per option: its text up to the next option
    entries = re.split(r"\n  (?=--)", text.split("\ndata:\n", 1)[1].split("\nexamples:\n")[0])
    assert len(entries) > 50
    for entry in entries:
        assert entry.count("(default:") <= 1, entry
        assert "(default: None)" not in entry, entry
    assert "BACKEND_OPTION" not in text and ":INDISTINGUISHABILITY" not in text
    assert "--indistinguishability X" in text and "--job-timeout SECONDS" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    assert len(text.split("\n\n", 1)[0].splitlines()) == 1, "the usage line lists every flag"


@pytest.mark.parametrize("command", ["train", "plan", "params", "evaluate", "predict", "bench", "sweep", "baseline",
                                     "figures"])
def test_every_help_gives_one_default_per_option(command, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    options = text.split("\noptions:\n", 1)[1].split("\nexamples:\n")[0]
    for entry in re.split(r"\n  (?=-)", options):
        assert entry.count("(default:") <= 1, entry
        assert "(default: None)" not in entry, entry
        assert not re.search(r"--[a-z-]+ [A-Z]+_[A-Z_]*:", entry), entry  # internal dest names as metavars


# --------------------------------------------------------------------------- round lines


def _entry(**changes) -> dict:
    entry = {"round": 7, "adam_loss": 0.43219, "phase_objective_start": 1.23456, "phase_objective_end": 1.1,
             "phase_objective_best_seen": 1.09, "objective_evaluations": 1000, "train_loss": 0.41,
             "train_accuracy": 0.8523, "test_loss": 0.44, "test_accuracy": 0.84, "shots_round": 20_020_000,
             "shots_used": 140_140_000, "circuit_evaluations_round": 2002, "jobs_submitted": 0,
             "postselection_rate": None, "seconds": 17.1}
    entry.update(changes)
    return entry


def test_round_line_stays_under_100_characters() -> None:
    default = format_round_short(_entry(), 200)
    assert default == "round 7/200 | adam 0.432 | phase 1.235->1.100 | train 85.2% | test 84.0% | 17.1s"
    # everything a round line can show, at sizes beyond the paper's (its remote run: 400,402 jobs)
    worst = _entry(round=9_999, validation_loss=0.5, validation_accuracy=0.8333, postselection_rate=0.3125,
                   jobs_submitted=4_004_020, seconds=99_999.9)
    line = format_round_short(worst, 9_999)
    assert len(line) <= SHORT_LINE_LIMIT < 100, line
    for part in ("val 83.3%", "test 84.0%", "kept 31.2%", "jobs 4,004,020", "99999.9s"):
        assert part in line, (part, line)  # what a run spends is never dropped for the losses
    detailed = format_round(worst, 9_999)
    assert "adam loss 0.4322" in detailed and "phase obj 1.2346->1.1000 (1000 evals)" in detailed
    assert "circuit evals 2,002" in detailed and "shots used 140,140,000" in detailed


def test_exact_round_line_says_what_was_computed() -> None:
    joint = _entry(phase_objective_start=None, phase_objective_end=None, objective_evaluations=0, shots_round=0,
                   shots_used=0, circuit_evaluations_round=96)
    assert "circuit evals 96 (exact)" in format_round(joint, 200)
    assert "shots" not in format_round(joint, 200)
    assert "phase" not in format_round_short(joint, 200)


def test_progress_bars_follow_the_terminal() -> None:
    out, err = io.StringIO(), io.StringIO()
    quiet = RunProgress(show_rounds=True, out=out, err=err)  # StringIO is no terminal: lines, no bars
    quiet.begin(0, 2)
    with quiet.stage("round 1 adam", 5) as bar:
        bar.update(5)
    quiet.round_finished(_entry(round=1), 2)
    quiet.close()
    assert err.getvalue() == "" and out.getvalue().startswith("round 1/2 | ")
    out, err = io.StringIO(), io.StringIO()
    shown = RunProgress(show_rounds=True, bars=True, out=out, err=err)
    shown.begin(1, 3)  # a resumed run: 1 of 3 rounds done
    shown.round_finished(_entry(round=2), 3)
    shown.close()
    assert "rounds 2/3" in err.getvalue() and "left" in err.getvalue()
    assert "round 2/3 | " in out.getvalue()


def _read_pty(master: int, proc: subprocess.Popen, until: float) -> bytes:
    chunks = []
    while time.monotonic() < until:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the pty
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks)


def test_bars_appear_on_a_terminal_that_reports_no_size() -> None:
    """Under ``script`` (or a CI pty) the terminal reports 0 x 0; tqdm alone then draws nothing."""
    code = ("from pqt.training.progress import RunProgress\n"
            "p = RunProgress()\n"
            "p.begin(0, 2)\n"
            "with p.stage('round 1 adam', 4) as bar:\n"
            "    bar.update(4)\n"
            "p.round_finished({'round': 1, 'adam_loss': 1.0, 'train_accuracy': 0.5, 'test_accuracy': 0.5, "
            "'seconds': 1.0}, 2)\n"
            "p.close()\n")
    master, slave = pty.openpty()  # a fresh pty: 0 columns, 0 rows
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave, env=ENV)
    os.close(slave)
    output = _read_pty(master, proc, time.monotonic() + 60).decode(errors="replace")
    proc.wait(timeout=30)
    os.close(master)
    assert proc.returncode == 0, output
    assert "rounds 1/2" in output and "round 1 adam" in output, output
    assert "round 1/2 | adam 1.000" in output


def test_busy_machine_suggests_one_thread(monkeypatch) -> None:
    from pqt.cli.train import busy_machine_note

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (9.5, 8.0, 7.0))
    note = busy_machine_note(None)
    assert note is not None and "load average 9.5 on 2 cores" in note and "--threads 1" in note
    assert busy_machine_note(1) is None  # the user chose
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.2, 0.1))
    assert busy_machine_note(None) is None


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_stops_a_run_like_ctrl_c(tmp_path) -> None:
    """A real `pqt train` on a terminal: bars drawn, then `kill` -> message, status "interrupted", rounds kept."""
    out = tmp_path / "run"
    argv = ["train", "--train-limit", "200", "--test-limit", "50", "--rounds", "500", "--adam-epochs", "1",
            "--cobyla-maxiter", "10", "--phase-batch", "50", "--threads", "1", "--out", str(out)]
    code = f"import sys\nfrom pqt.cli.main import main\nsys.exit(main({argv!r}))\n"
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave, env=ENV)
    os.close(slave)
    output = b""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and b"round 2/500" not in output:
            output += _read_pty(master, proc, time.monotonic() + 0.5)
            assert proc.poll() is None, output.decode(errors="replace")
        assert b"round 2/500" in output, output.decode(errors="replace")
        proc.send_signal(signal.SIGTERM)
        output += _read_pty(master, proc, time.monotonic() + 60)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = output.decode(errors="replace")
    assert proc.returncode == 143, text
    assert "rounds 1/500" in text and "left" in text, "no overall progress bar on a terminal:\n" + text
    assert "pqt: terminated (SIGTERM);" in text and f"pqt train --resume {out}" in text, text
    assert "Traceback" not in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    assert metrics["rounds_completed"] >= 2 and len(metrics["history"]) == metrics["rounds_completed"]
    import torch

    checkpoint = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert checkpoint["round"] == metrics["rounds_completed"]
    assert "terminated (SIGTERM)" in (out / "train.log").read_text()


def test_busy_machine_note_says_how_much_spinning_threads_cost(monkeypatch) -> None:
    from pqt.cli.train import busy_machine_note

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (9.5, 8.0, 7.0))
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert "several times faster" in busy_machine_note(None)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert "several times" not in busy_machine_note(None)
