"""A real server process on a free port (the small trained models are in tests/conftest.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``tim4rec serve`` in a subprocess; ``client`` talks to it."""

    def __init__(self, checkpoint: Path, database: Path, *extra: str, compiled_step: bool = False):
        # the tests' servers step eagerly (compiling takes seconds at every start) unless a test asks otherwise
        self.checkpoint, self.database = checkpoint, database
        self.extra = extra if compiled_step else (*extra, "--eager-step")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.stderr = ""  # what the last stopped process wrote to stderr

    def start(self) -> Server:
        command = [sys.executable, "-m", "tim4rec", "serve", str(self.checkpoint), "--port", str(self.port),
                   "--db", str(self.database), "--threads", "1", *self.extra]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def stop(self, signal_number: int | None = None) -> int:
        if self.process is None:
            return 0
        if signal_number is None:
            self.process.terminate()
        else:
            self.process.send_signal(signal_number)
        _, self.stderr = self.process.communicate(timeout=60)
        code, self.process = self.process.returncode, None
        return code

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)


@pytest.fixture(scope="session")
def step_cache_environment(tmp_path_factory) -> dict[str, str]:
    """The environment with TIM4REC_CACHE in a folder of the session: compiled streaming steps go there (the
    session's first compile is a real one), not into the user's cache."""
    return {**os.environ, "TIM4REC_CACHE": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def server(trained: dict[str, Path], tmp_path_factory) -> Server:
    running = Server(trained["tim4rec"], tmp_path_factory.mktemp("db") / "serving.sqlite").start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server (tests/serving/postgres.py); skipped outside CI where it is missing."""
    from tests.serving.postgres import PostgresServer

    server = PostgresServer()
    yield server
    server.close()
