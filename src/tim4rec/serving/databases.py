"""Where the user store keeps users' events and states: SQLite (a file, one machine; the default) or
PostgreSQL (a server that several ``tim4rec serve`` replicas share).

Both keep the same two tables and the same promises:

- ``append(user, events)`` writes a user's events in one transaction, durable when it returns, and
  serialised per user across processes (SQLite: the database's write lock; PostgreSQL: an advisory
  lock on the user), so every user's events get one gap-free sequence number order, 0, 1, 2, ...;
- ``events(user, since=n)`` reads a user's events from sequence number n on: a replica whose cached state
  holds n of them reads only those it misses (none: the state is current);
- states are blobs tagged with the model's fingerprint and the number of events they hold.

A PostgreSQL server that cannot be reached raises :class:`StoreUnavailable` (the service answers
503) and the next call connects again; nothing is acknowledged that was not committed.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from tim4rec.errors import Tim4RecError

#: (seq, item, time): one stored event, ``seq`` its place in the order the user's events were stored
Row = tuple[int, str, float]
#: (fingerprint, events, blob): a stored state
StateRow = tuple[str, int, bytes]


class StoreUnavailable(Tim4RecError):
    """The user store's database cannot be reached now (the service answers 503 and retries later)."""


@dataclass(frozen=True)
class Appended:
    """What an :meth:`EventDatabase.append` found and did: the events took sequence numbers from
    ``first_seq``; ``last_time`` is the latest time among the user's events stored before them."""

    first_seq: int
    last_time: float | None


class EventDatabase(Protocol):
    """The user store's database (see the module's docstring)."""

    #: where it is, fit to print (no password)
    where: str

    def events(self, user: str, since: int = 0) -> list[Row]:
        """The user's stored events with ``seq >= since``, in ``seq`` order."""

    def append(self, user: str, events: list[tuple[str, float]]) -> Appended:
        """Store ``events`` (``(item, time)``, in the order given) after the user's others, in one transaction."""

    def load_state(self, user: str) -> StateRow | None: ...

    def save_states(self, rows: list[tuple[str, str, int, bytes]]) -> None:
        """Store ``(user, fingerprint, events, blob)`` states; a stored state that holds more events is kept."""

    def close(self) -> None: ...


def open_database(target: str | Path | None) -> EventDatabase:
    """A ``postgresql://`` (or ``postgres://``) URL: :class:`PostgresEvents`; a path: :class:`SQLiteEvents`
    (None: in memory)."""
    if isinstance(target, str) and target.startswith(("postgresql://", "postgres://")):
        return PostgresEvents(target)
    return SQLiteEvents(target)


class SQLiteEvents:
    """Events and states in an SQLite file (WAL, synchronous commits); None: in memory."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS events (user TEXT NOT NULL, time REAL NOT NULL, seq INTEGER NOT NULL,
                                       item TEXT NOT NULL, PRIMARY KEY (user, seq));
    CREATE TABLE IF NOT EXISTS states (user TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, events INTEGER NOT NULL,
                                       blob BLOB NOT NULL);
    """

    def __init__(self, path: str | Path | None):
        self.where = str(path) if path else ":memory:"
        if path and not Path(path).parent.is_dir():
            raise Tim4RecError(f"{path}: cannot open the user store: folder {Path(path).parent} does not exist")
        try:
            self.db = sqlite3.connect(self.where, check_same_thread=False, isolation_level=None, timeout=30)
            if path:
                self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(self.SCHEMA)
        except sqlite3.Error as error:
            raise Tim4RecError(f"{path}: cannot open as the user store's SQLite database ({error})") from None
        self.lock = threading.Lock()  # one connection, used from the service's threads one at a time

    def events(self, user: str, since: int = 0) -> list[Row]:
        with self.lock:
            query = "SELECT seq, item, time FROM events WHERE user = ? AND seq >= ? ORDER BY seq"
            return self.db.execute(query, (user, since)).fetchall()

    def append(self, user: str, events: list[tuple[str, float]]) -> Appended:
        with self.lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")  # the write lock first: another process appends before or after
            first, last = self.db.execute(
                "SELECT COALESCE(MAX(seq) + 1, 0), MAX(time) FROM events WHERE user = ?", (user,)
            ).fetchone()
            self.db.executemany(
                "INSERT INTO events (user, time, seq, item) VALUES (?, ?, ?, ?)",
                [(user, when, first + k, item) for k, (item, when) in enumerate(events)],
            )
        return Appended(first, last)

    def load_state(self, user: str) -> StateRow | None:
        with self.lock:
            return self.db.execute("SELECT fingerprint, events, blob FROM states WHERE user = ?", (user,)).fetchone()

    def save_states(self, rows: list[tuple[str, str, int, bytes]]) -> None:
        with self.lock, self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO states (user, fingerprint, events, blob) VALUES (?, ?, ?, ?) ON CONFLICT (user) DO "
                "UPDATE SET fingerprint = excluded.fingerprint, events = excluded.events, blob = excluded.blob "
                "WHERE excluded.events >= states.events OR excluded.fingerprint != states.fingerprint",
                rows,
            )

    def close(self) -> None:
        with self.lock:
            self.db.close()


class PostgresEvents:
    """Events and states on a PostgreSQL server (psycopg 3, the ``postgres`` extra), shared by replicas.

    One connection, opened again after the server was lost. The schema is created on first start
    (under an advisory lock, so that replicas starting together do not race)."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS tim4rec_events (user_id TEXT NOT NULL, seq INTEGER NOT NULL,
        time DOUBLE PRECISION NOT NULL, item TEXT NOT NULL, PRIMARY KEY (user_id, seq));
    CREATE TABLE IF NOT EXISTS tim4rec_states (user_id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL,
        events INTEGER NOT NULL, blob BYTEA NOT NULL);
    """
    #: the advisory lock key taken while the schema is created (any fixed number)
    SCHEMA_LOCK = 0x7469_6D34

    def __init__(self, url: str, connect_timeout: float = 5.0):
        try:
            import psycopg
        except ImportError:
            raise Tim4RecError(
                "a PostgreSQL user store needs the psycopg driver: pip install 'tim4rec[postgres]'"
            ) from None
        self.psycopg, self.url, self.connect_timeout = psycopg, url, connect_timeout
        self.where = _without_password(url)
        self.lock = threading.Lock()
        self.connection = None
        with self.lock:
            self._call(self._create_schema)

    def _connect(self):
        if self.connection is None or self.connection.closed:
            # UTF8 on the wire whatever the database's encoding: a SQL_ASCII database would otherwise hand back
            # bytes for text columns (item ids then fail as b'242')
            self.connection = self.psycopg.connect(
                self.url, autocommit=True, connect_timeout=self.connect_timeout, client_encoding="UTF8"
            )
        return self.connection

    def _call(self, work):
        """``work(connection)``; a lost or unreachable server is a :class:`StoreUnavailable` (the connection is
        dropped and the next call connects again)."""
        try:
            return work(self._connect())
        except (self.psycopg.OperationalError, self.psycopg.InterfaceError) as error:
            if self.connection is not None:
                self.connection.close()
            self.connection = None
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise StoreUnavailable(f"the user store {self.where} cannot be reached: {reason}") from None
        except self.psycopg.Error as error:
            raise Tim4RecError(f"the user store {self.where}: {type(error).__name__}: {error}") from None

    def _create_schema(self, connection) -> None:
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (self.SCHEMA_LOCK,))
            for statement in self.SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)

    def events(self, user: str, since: int = 0) -> list[Row]:
        query = "SELECT seq, item, time FROM tim4rec_events WHERE user_id = %s AND seq >= %s ORDER BY seq"
        with self.lock:
            return self._call(lambda c: c.execute(query, (user, since)).fetchall())

    def append(self, user: str, events: list[tuple[str, float]]) -> Appended:
        def work(connection) -> Appended:
            with connection.transaction():  # committed when the block ends: durable before the caller hears of it
                connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (user,))
                first, last = connection.execute(
                    "SELECT COALESCE(MAX(seq) + 1, 0), MAX(time) FROM tim4rec_events WHERE user_id = %s", (user,)
                ).fetchone()
                with connection.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO tim4rec_events (user_id, seq, time, item) VALUES (%s, %s, %s, %s)",
                        [(user, first + k, when, item) for k, (item, when) in enumerate(events)],
                    )
            return Appended(first, last)

        with self.lock:
            return self._call(work)

    def load_state(self, user: str) -> StateRow | None:
        query = "SELECT fingerprint, events, blob FROM tim4rec_states WHERE user_id = %s"
        with self.lock:
            row = self._call(lambda c: c.execute(query, (user,)).fetchone())
        return None if row is None else (row[0], row[1], bytes(row[2]))

    def save_states(self, rows: list[tuple[str, str, int, bytes]]) -> None:
        def work(connection) -> None:
            with connection.transaction(), connection.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO tim4rec_states (user_id, fingerprint, events, blob) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (user_id) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, "
                    "events = EXCLUDED.events, blob = EXCLUDED.blob WHERE EXCLUDED.events >= tim4rec_states.events "
                    "OR EXCLUDED.fingerprint != tim4rec_states.fingerprint",
                    rows,
                )

        if rows:
            with self.lock:
                self._call(work)

    def close(self) -> None:
        with self.lock:
            if self.connection is not None:
                self.connection.close()
            self.connection = None


def _without_password(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc[1]}"))
