"""Faults a run must survive and account for (issue 9): stops at any point, full and read-only disks,
damaged or edited run files, bad flags, kills, and what a resume may change.

Each test reproduces one fault through the real code path: a stop before the first round, a mocked or
real ENOSPC, an edited config.json, a checkpoint carrying pickled code, a real ``kill -9`` of a child
``pqt train``. Runs are the suite's tiny ones (300/100 images, a few COBYLA evaluations).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from pqt.cli import main
from pqt.errors import UserError
from pqt.training import run_files
from pqt.training.config import RESUME_CHANGEABLE, TrainConfig, field_kind

REPO = Path(__file__).resolve().parent.parent
EXACT = ["--shots", "exact"]  # the fastest tiny runs, where shots do not matter


@pytest.fixture(autouse=True)
def _quiet_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """pqt train's note on a busy machine (a second stderr line) is not what these tests look at."""
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_line_error(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pqt: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- every stop says why (item 6)


def _stop_with(kind: str, trainer: Any, monkeypatch: pytest.MonkeyPatch) -> type[BaseException]:
    from backends.base import BackendFailure

    if kind == "nan":
        monkeypatch.setattr(trainer.method.generator, "values", lambda dists: torch.full((6690,), float("nan")))
        return UserError
    if kind == "backend":
        def fail(*args: Any) -> None:
            raise BackendFailure("remote backend: the cloud gave up (a test)")

        monkeypatch.setattr(trainer.backend, "_run", fail)
        return UserError
    if kind == "interrupt":
        def interrupt(*args: Any) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(trainer.backend, "_run", interrupt)
        return KeyboardInterrupt
    return UserError  # "budget": --max-shots below what round 1's first evaluation needs


@pytest.mark.parametrize(("kind", "status", "reason"), [
    ("budget", "stopped", "shot budget reached"),
    ("nan", "stopped", "loss became nan"),
    ("backend", "stopped", "the cloud gave up"),
    ("interrupt", "interrupted", "interrupted"),
])
def test_every_stop_writes_metrics_even_at_zero_rounds(tiny_config, make_trainer, tmp_path, monkeypatch, kind,
                                                       status, reason) -> None:
    config = tiny_config(rounds=2, max_shots=1000 if kind == "budget" else None)
    trainer = make_trainer(config, tmp_path / "run")
    raised = _stop_with(kind, trainer, monkeypatch)
    with pytest.raises(raised):
        trainer.run()
    m = run_files.read_metrics(tmp_path / "run")
    assert m["status"] == status and reason in (m["stop_reason"] or "")
    assert m["rounds_completed"] == 0 and m["history"] == [] and m["test_accuracy"] is None
    assert m["attempts"][-1]["status"] == status and m["wall_seconds"] > 0
    assert trainer.backend.counters.shots_used == 0 or kind != "budget"


# --------------------------------------------------------------------------- what a resume may change (item 7)


def _new_value(key: str, value: Any) -> Any:
    """A valid value other than ``value`` for setting ``key`` (a dotted backend option, or a TrainConfig field)."""
    if key == "backend_options.cloud_url":
        return "http://127.0.0.1:9"
    if key == "device":
        return "cuda" if value == "cpu" else "cpu"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5 if value else 0.5
    if value is None:
        return 2
    raise AssertionError(f"no new value for {key}={value!r}")


def _flag_args(key: str, value: Any) -> list[str]:
    flag = "--" + key.split(".")[-1].replace("_", "-")
    meta = TrainConfig.__dataclass_fields__[key].metadata if key in TrainConfig.__dataclass_fields__ else {}
    flag = meta.get("flag") or flag
    return [flag, *(str(v) for v in value)] if isinstance(value, list | tuple) else [flag, str(value)]


@pytest.fixture()
def remote_run(tmp_path: Path) -> Path:
    """A run directory as `pqt train --backend remote` leaves it (config.json + checkpoint), no training."""
    config = TrainConfig(backend="remote", shots=1000, rounds=2,
                         backend_options={"cloud_url": "http://127.0.0.1:8765", "max_retries": 5,
                                          "retry_backoff": 2.0, "job_timeout": 3600.0, "poll_interval": 1.0,
                                          "request_timeout": 30.0})
    run = tmp_path / "remote-run"
    run.mkdir()
    run_files.write_json(run / run_files.CONFIG, config.to_dict())
    run_files.save_torch(run / run_files.CHECKPOINT, {"config": config.to_dict(), "resumes": []})
    return run


def test_resume_accepts_every_safe_change_and_records_it(remote_run) -> None:
    """Every setting in RESUME_CHANGEABLE (the list itself drives the test) may change on resume."""
    import argparse

    from pqt.cli.main import build_parser
    from pqt.cli.train import resume_config

    recorded = TrainConfig.from_dict(run_files.read_json(remote_run / run_files.CONFIG)).to_dict()
    flat = {**{k: v for k, v in recorded.items() if k != "backend_options"},
            **{f"backend_options.{k}": v for k, v in recorded["backend_options"].items()}}
    for key in sorted(RESUME_CHANGEABLE):
        new = _new_value(key, flat[key])
        args: argparse.Namespace = build_parser().parse_args(["train", "--resume", str(remote_run),
                                                              *_flag_args(key, new)])
        config, changes = resume_config(remote_run, args)
        assert changes == {key: [flat[key], new]}, key
        got = config.backend_options[key.split(".", 1)[1]] if key.startswith("backend_options.") else \
            getattr(config, key)
        assert got == new, key


def _unchangeable_numeric_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli") and f.metadata["low"] is not None
            and f.name not in RESUME_CHANGEABLE]


@pytest.mark.parametrize("field", _unchangeable_numeric_fields(), ids=lambda f: f.name)
def test_resume_refuses_any_other_changed_flag_in_one_line(cli_run_dir, tmp_path, capsys, field) -> None:
    run = copy_run(cli_run_dir, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    recorded = run_files.read_json(run / run_files.CONFIG)[field.name]
    new = [v + 1 for v in recorded] if isinstance(recorded, list) else _new_value(field.name, recorded)
    if field.metadata["high"] is not None and not isinstance(new, list) and new >= field.metadata["high"]:
        new = recorded * 0.5
    rc, _, err = cli(capsys, "train", "--resume", str(run), *_flag_args(field.name, new))
    one_line_error(rc, err, "--resume cannot change", (field.metadata["flag"] or "--" + field.name.replace("_", "-")))
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_resume_refuses_a_config_file(cli_run_dir, tmp_path, capsys) -> None:
    """A --config file beside --resume would be ignored: refused instead."""
    path = tmp_path / "more.json"
    path.write_text(json.dumps({"rounds": 2}))
    rc, _, err = cli(capsys, "train", "--resume", str(cli_run_dir), "--config", str(path))
    one_line_error(rc, err, "--config cannot be combined with --resume")


def test_a_run_being_trained_by_another_process_is_refused(cli_run_dir, tmp_path, capsys) -> None:
    """pqt train holds the run's file lock: a second resume of the same folder is one line, and changes nothing."""
    run = copy_run(cli_run_dir, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code = (f"import fcntl, os, time\nfd = os.open({str(run / run_files.LOCK)!r}, os.O_CREAT | os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nos.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True)\ntime.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, _, err = cli(capsys, "train", "--resume", str(run), "--rounds", "2")
        one_line_error(rc, err, f"another process (pid {holder.pid}) is training this run")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != run_files.LOCK}
    assert after == before


def test_resume_refuses_new_rounds_with_a_cosine_schedule(cli_run_dir, tmp_path, capsys) -> None:
    run = copy_run(cli_run_dir, tmp_path / "run")
    config = run_files.read_json(run / run_files.CONFIG)
    config["lr_schedule"] = "cosine"
    run_files.write_json(run / run_files.CONFIG, config)
    ck = run_files.load_torch(run / run_files.CHECKPOINT)
    ck["config"]["lr_schedule"] = "cosine"
    run_files.save_torch(run / run_files.CHECKPOINT, ck)
    rc, _, err = cli(capsys, "train", "--resume", str(run), "--rounds", "2")
    one_line_error(rc, err, "--rounds", "cosine")


def test_the_nan_advice_works_lower_adam_lr_then_resume(tiny_flags, tmp_path, capsys, runs) -> None:
    """The NaN message says: lower --adam-lr, then pqt train --resume DIR. Doing so finishes the run."""
    run = tmp_path / "nan"
    rc, _, err = cli(capsys, "train", *tiny_flags, "--rounds", "2", "--adam-lr", "1e30", "--out", str(run))
    line = one_line_error(rc, err, "nan", "--adam-lr", f"pqt train --resume {run}")
    assert "round 0" in line
    m = runs.read_metrics(run)
    assert m["status"] == "stopped" and m["rounds_completed"] == 0
    rc, out, err = cli(capsys, "train", "--resume", str(run), "--adam-lr", "0.002")
    assert rc == 0, err
    assert "changed: adam_lr 1e+30 -> 0.002" in out
    m = runs.read_metrics(run)
    assert m["status"] == "finished" and m["rounds_completed"] == 2
    assert m["resumes"] == [{"after_round": 0, "changes": {"adam_lr": [1e30, 0.002]}}]
    assert runs.load_checkpoint(run)["resumes"] == m["resumes"]
    assert [a["status"] for a in m["attempts"]] == ["stopped", "finished"]
    assert json.loads((run / run_files.CONFIG).read_text())["adam_lr"] == 1e30  # as the run started


# --------------------------------------------------------------------------- parse-time ranges (item 11)


def _bad_values(meta: dict[str, Any], kind: type) -> list[str]:
    low, high = meta["low"], meta["high"]
    bad = [str(low if meta["low_open"] else low - 1)]
    if high is not None:
        bad.append(str(high if meta["high_open"] else high + 1))
    if kind is float:
        bad += ["nan", "inf"]
    else:
        bad.append(f"{low + 0.5}")
    return bad


def _numeric_train_flags() -> list[tuple[str, str]]:
    cases = []
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("cli") and f.metadata["low"] is not None:
            flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
            cases += [(flag, v, field_kind(f)) for v in _bad_values(f.metadata, field_kind(f))]
    return cases


@pytest.mark.parametrize(("flag", "value", "kind"), _numeric_train_flags())
def test_every_numeric_train_flag_is_range_checked_when_parsed(capsys, tmp_path, flag, value, kind) -> None:
    rc, _, err = cli(capsys, "train", flag, value, "--out", str(tmp_path / "never"))
    one_line_error(rc, err, flag, "whole number" if kind is int and "." in value else "must be")
    assert not (tmp_path / "never").exists()


def _backend_option_cases() -> list[tuple[str, str]]:
    import backends

    cases, seen = [], set()
    for name in backends.available_backends():
        for opt in backends.backend_class(name).options:
            if opt.low is None or opt.name in seen:
                continue
            seen.add(opt.name)
            meta = opt.metadata()
            cases += [(f"--{opt.name}", v, opt.type) for v in _bad_values(meta, opt.type)]
    return cases


@pytest.mark.parametrize(("flag", "value", "kind"), _backend_option_cases())
def test_every_backend_option_is_range_checked_when_parsed(capsys, flag, value, kind) -> None:
    rc, _, err = cli(capsys, "plan", flag, value)
    one_line_error(rc, err, flag, "whole number" if kind is int and "." in value else "must be")


def _baseline_cases() -> list[tuple[str, str]]:
    from pqt.studies.baseline_config import BaselineConfig

    cases = []
    for f in dataclasses.fields(BaselineConfig):
        if f.metadata.get("cli") and f.metadata["low"] is not None:
            flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
            cases += [(flag, v, field_kind(f)) for v in _bad_values(f.metadata, field_kind(f))]
    return cases


@pytest.mark.parametrize(("flag", "value", "kind"), _baseline_cases())
def test_every_numeric_baseline_flag_is_range_checked_when_parsed(capsys, tmp_path, flag, value, kind) -> None:
    rc, _, err = cli(capsys, "baseline", flag, value, "--out", str(tmp_path / "never"))
    one_line_error(rc, err, flag, "whole number" if kind is int and "." in value else "must be")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("argv", [["sweep", "x.toml", "--jobs", "0"], ["sweep", "x.toml", "--jobs", "-2"],
                                  ["bench", "--repeats", "0"], ["bench", "--repeats", "1.5"]])
def test_count_flags_are_checked_when_parsed(capsys, argv) -> None:
    rc, _, err = cli(capsys, *argv)
    one_line_error(rc, err, argv[-2])


@pytest.mark.parametrize(("content", "needle"), [
    ({"backend_options": "x"}, "backend_options"),
    ({"backend_options": {"max_retries": 3}}, "--max-retries does not apply to --backend slos"),
    ({"backend": "noisy", "backend_options": {"transmittance": 0}}, "--transmittance"),
    ({"backend": "noisy", "backend_options": {"g2": "high"}}, "--g2"),
    ({"data_dir": 5}, "data_dir"),
    ({"target": 5}, "target"),
    ({"device": 5}, "device"),
    ({"bond_dim": "banana"}, "--bond-dim"),
    ({"modes": 9}, "unknown config key"),
    ({"qnn_modes": 9}, "--modes"),
])
def test_config_file_with_wrong_types_is_one_line(capsys, tmp_path, content, needle) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(content))
    rc, _, err = cli(capsys, "train", "--config", str(path), "--out", str(tmp_path / "never"))
    one_line_error(rc, err, needle)
    assert not (tmp_path / "never").exists()


# --------------------------------------------------------------------------- damaged or edited run files (item 9, 12)


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("bond_dim", "banana", "--bond-dim"),
    ("bond_dim", 2, "bond_dim: 2 in config.json, 4 in the checkpoint"),
    ("adam_lr", 0.5, "adam_lr: 0.5 in config.json"),
    ("qnn_modes", "nine", "--modes"),
])
def test_edited_config_json_is_refused_on_resume_in_one_line(cli_run_dir, tmp_path, capsys, key, value,
                                                             needle) -> None:
    run = copy_run(cli_run_dir, tmp_path / "run")
    config = run_files.read_json(run / run_files.CONFIG)
    config[key] = value
    run_files.write_json(run / run_files.CONFIG, config)
    rc, _, err = cli(capsys, "train", "--resume", str(run), "--rounds", "2")
    one_line_error(rc, err, str(run / run_files.CONFIG), needle, "restore it")
    assert run_files.read_metrics(run)["rounds_completed"] == 1


def test_config_json_edited_after_a_resume_is_compared_with_the_start(cli_run_dir, tmp_path, capsys) -> None:
    """A resume's recorded changes are not edits: config.json keeps the start, the checkpoint the changes."""
    run = copy_run(cli_run_dir, tmp_path / "run")
    rc, _, err = cli(capsys, "train", "--resume", str(run), "--rounds", "2", "--adam-lr", "0.002", "--dry-run")
    assert rc == 0, err
    ck = run_files.load_torch(run / run_files.CHECKPOINT)
    ck["config"]["adam_lr"] = 0.002
    ck["resumes"] = [{"after_round": 1, "changes": {"adam_lr": [0.001, 0.002]}}]
    run_files.save_torch(run / run_files.CHECKPOINT, ck)
    rc, out, err = cli(capsys, "train", "--resume", str(run), "--rounds", "2", "--dry-run")
    assert rc == 0, err


@pytest.mark.parametrize("target", [5, "no_such_module:net"])
def test_evaluate_with_a_bad_target_in_config_json_is_one_line(cli_run_dir, tmp_path, capsys, target) -> None:
    run = copy_run(cli_run_dir, tmp_path / "run")
    config = run_files.read_json(run / run_files.CONFIG)
    config["target"] = target
    run_files.write_json(run / run_files.CONFIG, config)
    rc, _, err = cli(capsys, "evaluate", str(run))
    one_line_error(rc, err, "target")


def test_a_checkpoint_of_other_settings_is_refused_naming_them(one_round_run, tiny_config, make_trainer,
                                                               tmp_path) -> None:
    run = copy_run(one_round_run, tmp_path / "run")
    trainer = make_trainer(tiny_config(rounds=2, seed=3), run)
    with pytest.raises(UserError, match="other settings.*seed: 0 there, 3 here"):
        trainer.load()


class _Payload:
    """Unpickling this runs code (here: it creates a folder): what weights_only=True must refuse to do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("command", ["train", "plan"])
def test_a_checkpoint_carrying_pickled_code_is_refused_in_one_line(cli_run_dir, tmp_path, capsys, command) -> None:
    run = copy_run(cli_run_dir, tmp_path / "run")
    marker = tmp_path / "code-ran"
    ck = run_files.load_torch(run / run_files.CHECKPOINT)
    ck["history"] = [_Payload(marker)]
    torch.save(ck, run / run_files.CHECKPOINT)  # as someone could send it: pickled code inside
    rc, _, err = cli(capsys, command, "--resume", str(run), "--rounds", "2")
    one_line_error(rc, err, str(run / run_files.CHECKPOINT), "not a pqt checkpoint")
    assert not marker.exists(), "the checkpoint's pickled code ran"


def test_baseline_checkpoints_load_with_weights_only_and_refuse_pickled_code(tmp_path) -> None:
    from pqt.studies.baseline_config import BaselineConfig
    from pqt.studies.baselines import run_baseline

    config = BaselineConfig(train_limit=200, test_limit=100, epochs=1)
    out = tmp_path / "baseline"
    run_baseline(config, out, log=lambda line: None)
    ck = torch.load(out / run_files.CHECKPOINT, weights_only=True)  # plain tensors and values
    assert ck["epoch"] == 1
    marker = tmp_path / "code-ran"
    ck["history"] = [_Payload(marker)]
    torch.save(ck, out / run_files.CHECKPOINT)
    with pytest.raises(UserError, match="cannot resume from .*checkpoint.pt") as err:
        run_baseline(BaselineConfig(train_limit=200, test_limit=100, epochs=2), out, log=lambda line: None)
    assert "\n" not in str(err.value) and not marker.exists()


def test_a_damaged_config_json_fails_its_sweep_run_in_one_line(tmp_path) -> None:
    from pqt.studies.sweep import inspect_run

    run = tmp_path / "run"
    run.mkdir()
    (run / run_files.CONFIG).write_text("{not json")
    run_files.save_torch(run / run_files.CHECKPOINT, {"round": 0})
    state, detail = inspect_run(run, "qt", {})
    assert state == "mismatch" and "damaged" in detail and "\n" not in detail


# --------------------------------------------------------------------------- leftovers of killed writes (item 8)


def test_stale_temp_files_are_removed_on_resume(cli_run_dir, tmp_path, capsys) -> None:
    run = copy_run(cli_run_dir, tmp_path / "run")
    stale = [run / ".checkpoint.pt.k1ll3d.tmp", run / ".model.pt.abc.tmp", run / ".metrics.json.x.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 360_000)
    keep = run / ".notes.tmp"  # not one of ours
    keep.write_text("mine")
    rc, _, err = cli(capsys, "train", "--resume", str(run), "--rounds", "2")
    assert rc == 0, err
    assert not any(p.exists() for p in stale) and keep.exists()
    assert not list(run.glob(".*.pt.*.tmp"))


def test_stale_temp_files_are_removed_when_a_run_starts(tiny_config, make_trainer, tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / ".checkpoint.pt.old.tmp").write_bytes(b"\0" * 1000)
    trainer = make_trainer(tiny_config(rounds=1, shots=None), run)
    trainer.begin_attempt()
    assert not list(run.glob(".*.tmp"))
    trainer.end_attempt("interrupted", "a test")
    assert run_files.read_metrics(run)["status"] == "interrupted"


# --------------------------------------------------------------------------- a full or read-only disk (item 10)


def _fail_writes(monkeypatch: pytest.MonkeyPatch, code: int, when: Any) -> None:
    """Make run-file writes fail with OSError(code) whenever ``when(path)`` says so (as a full disk would)."""
    stage = run_files._stage

    def failing(path: Path, write: Any) -> str:
        if when(Path(path)):
            raise OSError(code, os.strerror(code), str(path))
        return stage(path, write)

    monkeypatch.setattr(run_files, "_stage", failing)


def test_a_full_disk_keeps_the_last_checkpoint_and_consistent_metrics(runs, two_round_run, tiny_config,
                                                                      make_trainer, tmp_path, monkeypatch) -> None:
    run = tmp_path / "full"
    trainer = make_trainer(tiny_config(rounds=2), run)
    # the disk fills up during round 2: its model.pt / checkpoint.pt / metrics.json cannot be written
    _fail_writes(monkeypatch, errno.ENOSPC, lambda p: trainer.state.round == 2 and p.name != run_files.HEARTBEAT)
    model_after_round_1: list[bytes] = []
    original = trainer._finish_round

    def finish(*args: Any) -> None:
        if trainer.state.round == 1:
            model_after_round_1.append((run / run_files.MODEL).read_bytes())
        original(*args)

    monkeypatch.setattr(trainer, "_finish_round", finish)
    with pytest.raises(UserError) as err:
        trainer.run()
    msg = str(err.value)
    assert "No space left on device" in msg and "free some space" in msg and "\n" not in msg
    assert f"round 1) is kept in {run}" in msg and f"pqt train --resume {run}" in msg
    assert runs.load_checkpoint(run)["round"] == 1
    assert (run / run_files.MODEL).read_bytes() == model_after_round_1[0]
    m = runs.read_metrics(run)
    assert m["rounds_completed"] == 1 and len(m["history"]) == 1  # consistent with the checkpoint
    assert not list(run.glob(".*.tmp"))
    monkeypatch.undo()
    # Space freed: the resume ends exactly as an uninterrupted run.
    resumed = make_trainer(tiny_config(rounds=2), run)
    resumed.load()
    resumed.run()
    runs.assert_same_run(two_round_run["dir"], run)


@pytest.mark.parametrize(("code", "fix"), [(errno.EROFS, "read-only"), (errno.EACCES, "writable")])
def test_an_unwritable_out_folder_is_one_line(tiny_flags, tmp_path, capsys, monkeypatch, code, fix) -> None:
    _fail_writes(monkeypatch, code, lambda p: True)
    out = tmp_path / "ro"
    rc, _, err = cli(capsys, "train", *tiny_flags, "--rounds", "1", "--out", str(out))
    one_line_error(rc, err, str(out / run_files.CONFIG), fix)


def test_an_out_folder_that_cannot_be_created_is_one_line(tiny_flags, tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    rc, _, err = cli(capsys, "train", *tiny_flags, "--rounds", "1", "--out", str(blocker / "run"))
    one_line_error(rc, err, str(blocker / "run"), "choose a writable --out")


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare -Urm` to mount a small tmpfs")
def test_a_really_full_disk(tmp_path) -> None:
    """A real ENOSPC: a 2 MB tmpfs, filled while the run is paused after round 1 (ENOSPC from the kernel)."""
    script = tmp_path / "full_disk.py"
    script.write_text("""
import json, os, signal, subprocess, sys, time
disk, report = sys.argv[1], sys.argv[2]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", disk], check=True)
run = os.path.join(disk, "run")
cmd = [sys.executable, "-c", "import sys; from pqt.cli import main; sys.exit(main(sys.argv[1:]))", "train",
       "--train-limit", "300", "--test-limit", "100", "--adam-epochs", "1", "--cobyla-maxiter", "40",
       "--phase-batch", "100", "--shots", "exact", "--rounds", "3", "--threads", "1", "--out", run]
proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
while True:
    try:
        if json.load(open(os.path.join(run, "metrics.json"))).get("rounds_completed") == 1:
            break
    except (OSError, ValueError):
        pass
    assert proc.poll() is None, proc.stderr.read()
    time.sleep(0.01)
proc.send_signal(signal.SIGSTOP)
with open(os.path.join(disk, "filler"), "wb") as f:  # leave 64 KB: metrics.json fits, a checkpoint does not
    st = os.statvfs(disk)
    f.write(b"\\0" * (st.f_bavail * st.f_frsize - 65536))
proc.send_signal(signal.SIGCONT)
out, err = proc.communicate(timeout=300)
result = {"rc": proc.returncode, "err": err, "metrics": json.load(open(os.path.join(run, "metrics.json"))),
          "round": __import__("torch").load(os.path.join(run, "checkpoint.pt"), weights_only=True)["round"],
          "tmp": [n for n in os.listdir(run) if n.endswith(".tmp")]}
json.dump(result, open(report, "w"))
""")
    disk, report = tmp_path / "disk", tmp_path / "report.json"
    disk.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["unshare", "-Urm", sys.executable, str(script), str(disk), str(report)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(report.read_text())
    lines = r["err"].strip().splitlines()
    assert r["rc"] == 2 and len(lines) == 1 and "No space left on device" in lines[0], r["err"]
    assert r["round"] == 1 and r["tmp"] == []
    m = r["metrics"]
    assert m["rounds_completed"] == 1 and m["status"] == "stopped" and "No space left" in m["stop_reason"]
    # (the resume after freeing space: test_a_full_disk_keeps_the_last_checkpoint_and_consistent_metrics)


# --------------------------------------------------------------------------- a killed attempt's time (item 5)


def _start_train(out: Path, *flags: str) -> subprocess.Popen:
    code = "import sys; from pqt.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, "train", *flags, "--threads", "1", "--out", str(out)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_round(proc: subprocess.Popen, run: Path, rounds: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while run_files.read_metrics(run).get("rounds_completed", 0) < rounds:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.02)


@pytest.mark.slow
def test_wall_seconds_count_a_killed_attempt(tiny_flags, tmp_path, capsys) -> None:
    run = tmp_path / "killed"
    proc = _start_train(run, *tiny_flags, "--rounds", "100")
    try:
        _wait_for_round(proc, run, 1)
        time.sleep(2.5)  # into round 2, past at least one heartbeat
    finally:
        proc.send_signal(signal.SIGKILL)
        killed_at = time.time()
        proc.wait()
    killed = run_files.read_metrics(run)
    started = killed["attempts"][0]["started_unix"]
    # finish soon: --rounds may change on resume
    rc, out, err = cli(capsys, "train", "--resume", str(run), "--rounds", str(killed["rounds_completed"] + 1))
    assert rc == 0, err
    m = run_files.read_metrics(run)
    first, second = m["attempts"]
    assert first["status"] == "killed" and second["status"] == "finished"
    # the killed attempt ran until its last heartbeat (every 2 s), not just until its last checkpoint
    assert killed_at - started - 2.6 <= first["seconds"] <= killed_at - started + 0.1
    assert m["wall_seconds"] == pytest.approx(first["seconds"] + second["seconds"])
    assert m["wall_seconds_attempt"] == second["seconds"] < m["wall_seconds"]
    assert m["rounds_seconds"] == pytest.approx(sum(e["seconds"] for e in m["history"]))
