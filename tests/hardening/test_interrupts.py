"""Interrupts: SIGTERM and Ctrl-C stop training and serving cleanly, and nothing already written (results,
checkpoints, acknowledged events, users' states) is lost or damaged; a SIGTERM after a command has ended
is ignored."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import synthetic_rows, write_inter
from tests.hardening.helpers import TINY_TRAIN
from tests.serving.conftest import Server
from tim4rec.serving import Recommender
from tim4rec.training.checkpoint import load_checkpoint

# signal: (exit status, the one line the command prints)
STOPS = {
    "SIGTERM": (signal.SIGTERM, 128 + signal.SIGTERM, "tim4rec: terminated"),
    "Ctrl-C": (signal.SIGINT, 130, "tim4rec: interrupted"),
}


@pytest.mark.parametrize("stop", STOPS, ids=list(STOPS))
def test_training_stops_and_keeps_what_it_wrote(stop: str, tmp_path: Path):
    number, status, line = STOPS[stop]
    data = write_inter(tmp_path / "data.inter", synthetic_rows(n_users=200, per_user=30))
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "tim4rec", "train", *TINY_TRAIN, "--dataset", str(data), "--output", str(run),
         "--set", "epochs=1000", "--set", "stopping_step=1000"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run / "results.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(number)
    _, err = process.communicate(timeout=120)
    assert process.returncode == status and line in err and "Traceback" not in err, err
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "interrupted" and results["epochs_run"] >= 1
    assert load_checkpoint(run / "checkpoint.pt")["state"]["epoch"] >= 1


@pytest.mark.parametrize("stop", STOPS, ids=list(STOPS))
def test_serving_stops_and_keeps_events_and_states(stop: str, trained, tmp_path: Path):
    number = STOPS[stop][0]
    server = Server(trained["tim4rec"], tmp_path / "users.sqlite").start()
    with server.client() as client:
        for second in range(5):
            assert client.post("/users/v/events", json={"events": [{"item": "50", "time": second}]}).status_code == 200
        served = client.get("/users/v/recommendations").json()["items"]
    assert server.stop(number) == 0
    database = sqlite3.connect(tmp_path / "users.sqlite")
    assert database.execute("SELECT COUNT(*) FROM events WHERE user = 'v'").fetchone() == (5,)
    assert database.execute("SELECT events FROM states WHERE user = 'v'").fetchone() == (5,)  # written at shutdown
    database.close()
    server.start()
    try:
        with server.client() as client:
            assert client.get("/users/v/recommendations").json()["items"] == served
    finally:
        server.stop()
    assert Recommender.load(trained["tim4rec"]).n_items > 0  # the model file is untouched


# A command whose error message, as the command line prints it, sends this process SIGTERM: torchrun's stop
# signal to the other ranks arriving while one rank is still reporting its own failure (seen in CI). Run in a
# child process: the bug let a KeyboardInterrupt escape, which would end the test session itself.
SIGTERM_WHILE_REPORTING = """
import os, signal, sys, time
import tim4rec.cli as cli
from tim4rec.errors import Tim4RecError

class CollectiveFailed(Tim4RecError):
    def __str__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the Python-level handler runs here, inside the error report
        return "a collective failed"

def failing_command(args):
    raise CollectiveFailed()

def long_command(args):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    return 0

before = signal.getsignal(signal.SIGTERM)
cli.cmd_data = {"after": failing_command, "during": long_command}[sys.argv[1]]
status = cli.main(["data", "fetch", "ml-100k"])
assert signal.getsignal(signal.SIGTERM) is before, "the SIGTERM handler was not put back"
sys.exit(status)
"""


@pytest.mark.parametrize(
    "when, status, message",
    [("after", 2, "tim4rec: error: a collective failed"), ("during", 128 + signal.SIGTERM, "tim4rec: terminated")],
)
def test_sigterm_stops_a_running_command_and_only_a_running_one(when: str, status: int, message: str):
    child = subprocess.run([sys.executable, "-c", SIGTERM_WHILE_REPORTING, when], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert child.returncode == status and message in child.stderr and "Traceback" not in child.stderr, child.stderr
