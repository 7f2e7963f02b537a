"""``tim4rec serve``: load the model, open the user store, run the HTTP service under uvicorn.

uvicorn handles SIGTERM and Ctrl-C by finishing the requests in flight before it exits; the
application's shutdown then writes the cached user states and closes the database. The port is bound
before the service says it is serving, so a port in use is one clear error.
"""

from __future__ import annotations

import gc
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tim4rec.errors import ConfigError, Tim4RecError
from tim4rec.runtime import runtime_settings


@dataclass(frozen=True)
class ServeOptions:
    """What ``tim4rec serve`` is told (its command-line options; the defaults are theirs)."""

    checkpoint: str  #: the saved model (best.pt)
    host: str = "127.0.0.1"
    port: int = 8000
    #: users' events and states: an SQLite file (None: serving.sqlite beside the model) or a postgresql:// URL
    store: str | None = None
    api_key: str | None = field(default=None, repr=False)  #: writes need it (never printed)
    keyed_reads: bool = False  #: reads need the key too
    cache_size: int = 10_000  #: user states kept in memory
    eager_step: bool = False  #: do not compile the streaming step at start
    batching: bool = True  #: score concurrent /recommend requests together (``--no-batching``: False)
    batch_wait_ms: float = 0.0  #: also wait this long for more requests to batch
    max_batch: int = 64
    threads: int | None = None


def check_options(options: ServeOptions) -> None:
    """The serving options that a number can get wrong, named in a :class:`ConfigError` before anything loads."""
    if not 0 < options.port < 65536:
        raise ConfigError(f"--port: expected a port number from 1 to 65535, got {options.port}")
    if options.cache_size < 0:
        raise ConfigError(f"--cache-size: expected a non-negative number of users, got {options.cache_size}")
    if options.keyed_reads and not options.api_key:
        raise ConfigError("--key-for-reads: there is no key: set --api-key or TIM4REC_API_KEY")
    if options.api_key is not None and not options.api_key.strip():
        raise ConfigError("--api-key: the key is empty")
    if options.max_batch < 1:
        raise ConfigError(f"--max-batch: expected a positive number of requests, got {options.max_batch}")
    if not 0 <= options.batch_wait_ms < float("inf"):
        raise ConfigError(
            f"--batch-wait-ms: expected a non-negative number of milliseconds, got {options.batch_wait_ms}"
        )


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or a :class:`Tim4RecError` saying why it cannot be (in use, no such
    address), so that nothing claims to serve before the port is ours."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind)
    except (OSError, UnicodeError) as error:
        raise Tim4RecError(f"--host {host}: cannot listen there ({error})") from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family in (socket.AF_INET, socket.AF_INET6):  # accepted connections inherit it: no Nagle delay on answers
            listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.bind(address)
    except OSError as error:
        listener.close()
        raise Tim4RecError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return listener


def serve(options: ServeOptions) -> int:
    try:
        import uvicorn

        from tim4rec.serving.app import ServiceSettings, create_app
    except ImportError as error:
        raise Tim4RecError(f"tim4rec serve needs the serve extra: pip install 'tim4rec[serve]' ({error})") from None
    from tim4rec.serving.recommender import Recommender
    from tim4rec.serving.step import library_cache
    from tim4rec.serving.store import UserStore

    check_options(options)
    with runtime_settings(threads=options.threads, flush_denormal=True, reuse_memory=True):
        recommender = Recommender.load(options.checkpoint)
        database = options.store or str(Path(options.checkpoint).with_name("serving.sqlite"))
        listener = listen(options.host, options.port)
        try:
            store = UserStore(recommender, database, cache_size=options.cache_size, compile_step=not options.eager_step,
                              step_cache=library_cache())  # fmt: skip
        except BaseException:
            listener.close()
            raise
        if store.step.compile_seconds is not None:
            print(f"tim4rec: the streaming step {store.step.describe()}", file=sys.stderr)
        settings = ServiceSettings(
            api_key=options.api_key, keyed_reads=options.keyed_reads,
            batching=options.batching, batch_wait_ms=options.batch_wait_ms, max_batch=options.max_batch,
        )  # fmt: skip
        app = create_app(recommender, store, settings)
        # the model, id maps and titles live as long as the process: keep their objects (hundreds of
        # thousands for ML-1M) out of the cyclic collector's full passes, which would stall a request
        gc.collect()
        gc.freeze()
        print(f"tim4rec: serving {options.checkpoint} on http://{options.host}:{options.port} "
              f"(users' events in {store.db.where}" + ("; writes need the API key)" if options.api_key else ")"),
              file=sys.stderr, flush=True)  # fmt: skip
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30))
        try:
            server.run(sockets=[listener])
        except KeyboardInterrupt:  # uvicorn re-raises the SIGTERM or Ctrl-C it has handled by shutting down
            pass
        if not server.started:
            raise Tim4RecError(f"the service on {options.host}:{options.port} did not start (see the messages above)")
    return 0
