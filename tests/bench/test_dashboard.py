"""`optbench dashboard OUT` serves optuna-dashboard on the bench's own study storage."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest

from optbench.bench import layout
from optbench.cli import main
from tests.required import missing

STARTUP_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def studies_served(port: int, proc: subprocess.Popen) -> list[str]:
    """The study names the dashboard's API lists, once it answers."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the dashboard exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                return sorted(s["study_name"] for s in json.load(response)["study_summaries"])
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"the dashboard did not answer within {STARTUP_S} s")


@pytest.mark.xdist_group("processes")
def test_the_dashboard_serves_the_benchs_studies(tmp_path):
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        missing("optuna-dashboard is not installed (the test extra installs it)")
    out = tmp_path / "bench"
    out.mkdir()
    names = ["tiny/s/adamw/tune", "tiny/s/adamw/final"]
    for name in names:
        study = optuna.create_study(study_name=name, storage=layout.sqlite_url(out))
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.5))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "optbench", "dashboard", str(out), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert studies_served(port, proc) == sorted(names)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    first = proc.stdout.readline()
    assert first.startswith(f"optuna-dashboard of {layout.sqlite_url(out)} at http://127.0.0.1:{port}")
    assert "tune-K = repeated tuning study K" in first


def test_a_folder_without_a_study_storage_is_refused_in_one_line(tmp_path, capsys):
    assert main(["dashboard", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no study storage at {tmp_path / 'study.db'}" in err
    assert not (tmp_path / "study.db").exists()  # nothing created by looking
