"""A real PostgreSQL server for the tests: Debian's ``postgresql`` package, a throwaway cluster started as an
unprivileged user (``postgres`` when the tests run as root) on a free loopback port.

Outside CI a machine without the package skips these tests with the reason; under CI (``CI`` set, as
``.ci/run`` does, which installs the package) it fails them."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.serving.conftest import free_port


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """``initdb`` + ``pg_ctl`` in a temporary folder; ``url`` connects to its ``postgres`` database."""

    def __init__(self) -> None:
        self.bin = _binaries()
        if self.bin is None:
            message = "Debian's postgresql package is needed for the PostgreSQL store tests (.ci/run installs it)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        try:
            import psycopg  # noqa: F401
        except ImportError:
            pytest.fail("psycopg is missing: the postgres extra is part of the test install (make install)")
        self.root = Path(tempfile.mkdtemp(prefix="tim4rec-pg-"))
        self.data, self.port = self.root / "data", free_port()
        self.url = f"postgresql://tim4rec@127.0.0.1:{self.port}/postgres"
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to the package's postgres user
            shutil.chown(self.root, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(self.root, 0o755)
        # the encoding explicit: initdb otherwise takes it from the locale it inherits (SQL_ASCII without one)
        self._run("initdb", "-D", str(self.data), "-U", "tim4rec", "-A", "trust", "--no-sync", "-E", "UTF8",
                  "--no-locale")  # fmt: skip
        self.start()

    def _run(self, program: str, *arguments: str) -> None:
        command = [*self.as_user, str(self.bin / program), *arguments]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed: {done.stdout}\n{done.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def fresh_database(self, name: str, encoding: str | None = None) -> str:
        """A new empty database on this server (in ``encoding``, default the cluster's); its URL."""
        import psycopg

        options = f" ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" if encoding else ""
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            connection.execute(f'CREATE DATABASE "{name}"{options}')
        return self.url.rsplit("/", 1)[0] + f"/{name}"
