"""pqt bench's plumbing: optional peers found or skipped with a note, the peer-driver file format, peak memory."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pqt.bench import SECTIONS, peer_drivers, peers, run_bench
from pqt.errors import UserError


def test_sections_cover_the_issue_comparisons() -> None:
    assert {"photonic-qt", "qubit", "cifar", "merlin", "pennylane", "cobyla", "threads"} <= set(SECTIONS)
    with pytest.raises(UserError, match="unknown bench section"):
        run_bench(only=["no-such-section"])


def test_a_missing_peer_is_skipped_with_a_note(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("PQT_PEER_VENVS", str(tmp_path))  # no venv there
    monkeypatch.delenv("PQT_MERLIN_PYTHON", raising=False)
    monkeypatch.delenv("PQT_PENNYLANE_PYTHON", raising=False)
    result = run_bench(as_json=True, only=["merlin", "pennylane"])
    for name in ("merlin", "pennylane"):
        assert "not installed" in result[name]["skipped"] and "PQT_" in result[name]["skipped"]
    assert '"skipped"' in capsys.readouterr().out
    assert "omp_wait_policy" in result["machine"] and "torch_threads" in result["machine"]


def test_peer_python_prefers_this_interpreter_then_the_configured_venv(monkeypatch, tmp_path) -> None:
    assert peers.peer_python("numpy", "numpy") == sys.executable
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("PQT_PEER_VENVS", str(tmp_path))
    monkeypatch.delenv("PQT_MERLIN_PYTHON", raising=False)
    assert peers.peer_python("merlin", "merlin") is None
    python = tmp_path / "merlin" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    assert peers.peer_python("merlin", "merlin") == str(python)
    monkeypatch.setenv("PQT_MERLIN_PYTHON", sys.executable)
    assert peers.peer_python("merlin", "merlin") == sys.executable


def test_peer_driver_files_round_trip(tmp_path) -> None:
    data = {"modes": 9, "version": "0.4.1", "probs": np.arange(5.0), "devices": ["default", "lightning"]}
    peer_drivers.save(tmp_path / "x.npz", data)
    back = peer_drivers.load(tmp_path / "x.npz")
    assert back["modes"] == 9 and back["version"] == "0.4.1" and "lightning" in back["devices"]
    np.testing.assert_array_equal(back["probs"], data["probs"])


def test_cobyla_section_skips_without_nlopt(monkeypatch) -> None:
    from pqt.bench import cobyla

    monkeypatch.setattr(cobyla.importlib.util, "find_spec", lambda name: None)
    assert "nlopt" in cobyla.run(3)["skipped"]


def test_peak_memory_sees_an_allocation() -> None:
    from pqt.bench.cifar import peak_mb

    base, how = peak_mb(lambda: None)
    peak, _ = peak_mb(lambda: np.ones(50_000_000).sum())  # 400 MB
    assert peak > 0 and how
    if "reset" in how:
        assert peak - base > 300
