"""``tim4rec bench serve``: the HTTP service under load, streaming updates against recomputing, memory per user.

1. Latency and throughput of ``POST /recommend`` (histories of ``--history`` events from the
   dataset's users): a server process (``tim4rec serve``) and, in a separate client process, an
   async HTTP client keeping ``c`` requests in flight for c in ``--concurrency``; 100 warm-up and
   ``--requests`` measured requests per level; with request batching on and off. Client and server
   share the machine's cores (2 here): the figures include that contention.
2. Per-event update against recomputing: for histories of 50, 200, 1000 and 3000 events, the time of
   ``UserStore.observe`` of one more event followed by ``recommend`` from the state, in its parts
   (the model's step, the read-out and ranking, the store's SQLite write), against
   ``Recommender.recommend`` on the whole (untruncated) history; in this process, one thread, the
   events in an in-memory SQLite database, the step compiled as ``tim4rec serve`` compiles it; then the
   step alone, run eagerly, by ``torch.compile`` and by AOTInductor side by side.
3. Resident memory of the server before and after 10,000 new users post one event each.
4. With ``--store postgresql://...``: users' events under load (each request posts one event of a user,
   or asks for a user's recommendations, alternately), against one replica on SQLite and against
   ``--replicas`` replicas sharing the PostgreSQL store, the load generator spreading the requests
   over them.

Writes ``serve.md``, ``serve.csv``, ``serve_updates.csv``, ``serve_steps.csv`` and ``serve.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tim4rec.bench.common import machine_description
from tim4rec.io.tables import markdown_table, write_csv


# -- the client process ------------------------------------------------------------------------------------------
async def _load(urls: list[str], requests: list[dict], concurrency: int, warmup: int) -> dict[str, Any]:
    """Send ``requests`` (``{"path", "json"}``: a POST; ``{"path"}``: a GET) from ``concurrency`` workers on
    aiohttp, request n to ``urls[n % len(urls)]`` (about 0.6 ms of CPU per request here; httpx's pool took
    7 ms per request at 64 connections, on the server's cores)."""
    import aiohttp

    latencies, errors = [], 0
    queue: asyncio.Queue = asyncio.Queue()
    for index, request in enumerate(requests):
        body = json.dumps(request["json"]).encode() if "json" in request else None
        queue.put_nowait((index, urls[index % len(urls)] + request["path"], body))
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as client:

        async def worker():
            nonlocal errors
            while not queue.empty():
                index, url, body = queue.get_nowait()
                started = time.perf_counter()
                try:
                    sent = client.get(url) if body is None else client.post(url, data=body, headers=headers)
                    async with sent as response:
                        await response.read()
                        ok = response.status == 200
                except Exception:  # noqa: BLE001 -- counted as an error
                    ok = False
                if index >= warmup:
                    latencies.append(time.perf_counter() - started)
                    errors += not ok

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started

    def percentile(q: float) -> float:
        return _quantile(latencies, q) * 1000

    measured = len(latencies)
    return {"p50_ms": percentile(0.5), "p95_ms": percentile(0.95), "p99_ms": percentile(0.99),
            "mean_ms": statistics.fmean(latencies) * 1000, "requests": measured, "errors": errors,
            "requests_per_s": measured / wall * (len(requests) - warmup) / len(requests) if wall else 0.0}  # fmt: skip


def client_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", nargs="+", help="the servers, taking requests in turn")
    parser.add_argument("--requests", help="a JSON file of requests ({path, json} or {path})")
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--warmup", type=int)
    arguments = parser.parse_args(argv)
    requests = json.loads(Path(arguments.requests).read_text())
    print(json.dumps(asyncio.run(_load(arguments.url, requests, arguments.concurrency, arguments.warmup))))
    return 0


def _measure(urls: list[str], requests_file: str, concurrency: int, warmup: int) -> dict[str, Any]:
    """One load level from the client process (so that its CPU is not the measuring process's)."""
    done = subprocess.run(
        [sys.executable, "-m", "tim4rec.bench.serve", "--url", *urls, "--requests", requests_file,
         "--concurrency", str(concurrency), "--warmup", str(warmup)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the server and the measurements -----------------------------------------------------------------------------
def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _start_server(checkpoint: str, port: int, store: Path | str, batching: bool, cache_size: int) -> subprocess.Popen:
    import httpx

    command = [sys.executable, "-m", "tim4rec", "serve", checkpoint, "--port", str(port), "--store", str(store),
               "--cache-size", str(cache_size), "--threads", "1"] + ([] if batching else ["--no-batching"])  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("the server did not start")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _bodies(recommender, history: int, count: int) -> list[dict]:
    users = [u for u in recommender.user_index if len(recommender.user_history(u)) >= history] or list(
        recommender.user_index
    )
    bodies = []
    for n in range(count):
        events = recommender.user_history(users[n % len(users)])[-history:]
        bodies.append({"path": "/recommend", "json": {"history": [{"item": i, "time": t} for i, t in events], "k": 10}})
    return bodies


def _user_requests(recommender, count: int) -> list[dict]:
    """Alternately one new event of a user (200 new users, times increasing) and that user's recommendations."""
    prefix, items = f"bench-{os.getpid()}-{time.time_ns()}", list(recommender.item_ids)
    requests = []
    for n in range(count // 2):
        user = f"{prefix}-{n % 200}"
        event = {"item": items[(7 * n) % len(items)], "time": 1_000_000_000 + n}
        requests.append({"path": f"/users/{user}/events", "json": {"events": [event]}})
        requests.append({"path": f"/users/{user}/recommendations?k=10"})
    return requests


def _stores_under_load(
    checkpoint: str,
    recommender,
    store: str,
    replicas: int,
    folder: Path,
    concurrency: list[int],
    requests: int,
    warmup: int,
) -> list[dict[str, Any]]:
    """Rows of the users' events workload: one replica on SQLite, then ``replicas`` sharing ``store``."""
    rows = []
    for name, stores in (("1 replica, SQLite", [folder / "users.sqlite"]),
                         (f"{replicas} replicas, PostgreSQL", [store] * replicas)):  # fmt: skip
        ports = [_free_port() for _ in stores]
        servers = [_start_server(checkpoint, port, where, True, 10_000) for port, where in zip(ports, stores)]
        try:
            for level in concurrency:
                requests_file = folder / f"users-{len(rows)}.json"
                requests_file.write_text(json.dumps(_user_requests(recommender, requests + warmup)))
                urls = [f"http://127.0.0.1:{port}" for port in ports]
                row = {"setup": name, "concurrency": level, **_measure(urls, str(requests_file), level, warmup)}
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
        finally:
            for server in servers:
                server.terminate()
            for server in servers:
                server.wait(timeout=120)
    return rows


RECOMPUTE_REPEATS = 20  # whole-history recomputations timed per length (each costs milliseconds)
STEP_HISTORY = 200  # events behind the state of the compilers' side-by-side table (a step's cost does not grow with it)


def _update_vs_recompute(recommender, lengths: list[int], repeats: int) -> tuple[list[dict[str, Any]], Any]:
    """Rows of per-event medians (ms) by history length, and the compiled step they ran (a
    :class:`~tim4rec.serving.step.StreamingStep`).

    The streaming side is measured over ``repeats`` consecutive events of one user, as a server takes
    them; recomputing from the whole history, over at most ``RECOMPUTE_REPEATS`` of those histories in a
    loop of its own (so its (L, d) passes do not evict the streaming side's state between events).
    """
    import torch

    from tim4rec.serving.step import library_cache
    from tim4rec.serving.store import UserStore

    rows = []
    generator = torch.Generator().manual_seed(0)
    # compiled once, as a server does (its library cached as the server caches it)
    step = UserStore(recommender, None, cache_size=10, compile_step=True, step_cache=library_cache()).step
    for length in lengths:
        items = torch.randint(1, recommender.n_items + 1, (length + repeats,), generator=generator).tolist()
        events = [(recommender.item_tokens[i], 1_000_000_000 + 3600 * n) for n, i in enumerate(items)]
        store = UserStore(recommender, None, cache_size=10)
        store.step = step
        store.observe("u", events[:length])
        store.recommend("u")
        parts: dict[str, list[float]] = {"update": [], "step": [], "rank": [], "store": []}
        for n in range(repeats):
            started = time.perf_counter()
            store.observe("u", [events[length + n]])
            store.recommend("u")
            parts["update"].append((time.perf_counter() - started) * 1e3)
            for part in ("step", "rank", "store"):
                parts[part].append(store.timings[part])
        store.close()
        recompute = []
        for n in range(min(repeats, RECOMPUTE_REPEATS)):
            started = time.perf_counter()
            recommender.recommend(events[: length + n + 1])
            recompute.append((time.perf_counter() - started) * 1e3)
        served = [s + r for s, r in zip(parts["step"], parts["rank"])]
        row = {"length": length, **{f"{part}_ms": statistics.median(values) for part, values in parts.items()},
               "step_rank_ms": statistics.median(served), "step_rank_p90_ms": _quantile(served, 0.9),
               "recompute_ms": statistics.median(recompute)}  # fmt: skip
        row["speedup"] = row["recompute_ms"] / row["update_ms"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows, step


STEP_COMPILERS = {  # StreamingStep's options for the ways the step runs beside the served (AOTInductor) one
    "eager": {"compile": False},
    "torch.compile": {"compile": True, "ahead_of_time": False},
}


def _steps_side_by_side(recommender, served_step, history: int, repeats: int) -> list[dict[str, Any]]:
    """The model's one-event step run eagerly, by ``torch.compile`` and by AOTInductor, side by side in this
    process: one user's state each, built by ``history`` eager steps, then ``repeats`` more events in turns
    (each event by the three in a row, which one goes first rotating, so a slow spell of the host falls on all
    three alike). Rows: how the step ran (a compiler that failed says so and runs what it fell back to), its
    warm-up seconds, the median and 90th percentile of a step in microseconds, the eager median over its own,
    the calls it ran eagerly (inputs unlike its warm-up's) and the largest difference of its final state from
    the eager step's (float32 reordering over ``repeats`` events). ``served_step``: the AOTInductor step
    already warmed up (loaded from the cache it was kept in)."""
    import torch

    from tim4rec.serving.step import StreamingStep

    model = recommender.model
    generator = torch.Generator().manual_seed(1)
    items = torch.randint(1, recommender.n_items + 1, (history + repeats, 1), generator=generator)
    times = torch.arange(history + repeats).mul(3600).add(1_000_000_000).unsqueeze(1)
    steps = {name: StreamingStep(model, **options) for name, options in STEP_COMPILERS.items()}
    for step in steps.values():
        step.warm_up()
    steps["AOTInductor"] = served_step
    with torch.no_grad():
        state = model.init_state(1)
        for n in range(history):
            _, state = model.step_hidden(state, items[n], times[n])
        states = dict.fromkeys(steps, state)
        micros: dict[str, list[float]] = {name: [] for name in steps}
        eager_before = {name: step.eager_calls for name, step in steps.items()}
        names = list(steps)
        for n in range(history, history + repeats):
            for name in names[n % len(names) :] + names[: n % len(names)]:  # each goes first, second and third in turn
                step = steps[name]
                started = time.perf_counter()
                _, states[name] = step(states[name], items[n], times[n])
                micros[name].append((time.perf_counter() - started) * 1e6)
    eager = statistics.median(micros["eager"])
    reference = states["eager"]
    return [{"compiler": name, "how": step.describe(), "warm_up_s": step.compile_seconds,
             "step_us": statistics.median(micros[name]), "step_p90_us": _quantile(micros[name], 0.9),
             "speedup": eager / statistics.median(micros[name]), "eager_calls": step.eager_calls - eager_before[name],
             "state_difference": _largest_difference(states[name], reference, step.names)}
            for name, step in steps.items()]  # fmt: skip


def _largest_difference(state, reference, names: list[str]) -> float:
    """The largest absolute difference between two states' tensors (flags and counters as numbers)."""
    return max([float((state[key].double() - reference[key].double()).abs().max()) for key in names
                if reference[key].numel()], default=0.0)  # fmt: skip


def _quantile(values: list[float], q: float) -> float:
    """The value at rank ``int(q * n)`` of the sorted ``values`` (the last for q = 1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _memory_per_users(checkpoint: str, users: int, database: Path) -> dict[str, Any]:
    import httpx

    port = _free_port()
    server = _start_server(checkpoint, port, database, True, cache_size=users + 10)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            first_item = client.post("/recommend", json={"history": [], "k": 1}).json()["items"][0]["item"]
            before = _rss_mib(server.pid)
            for n in range(users):
                client.post(f"/users/bench-{n}/events", json={"events": [{"item": first_item, "time": 1000 + n}]})
            after = _rss_mib(server.pid)
        return {"users": users, "rss_before_mib": before, "rss_after_mib": after,
                "kib_per_user": (after - before) * 1024 / users}  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=120)


def run(checkpoint: str, *, history: int, concurrency: list[int], requests: int, warmup: int,
        lengths: list[int], repeats: int, users: int, output: Path, store: str | None = None,
        replicas: int = 2, streaming_only: bool = False) -> str:  # fmt: skip
    """Measure and write ``serve.md`` (and CSVs, a plot); ``streaming_only``: only the one-process streaming
    table (no server, no load generator: one core)."""
    from tim4rec.runtime import runtime_settings
    from tim4rec.serving.recommender import Recommender

    machine = machine_description(1)
    load_rows: list[dict[str, Any]] = []
    store_rows: list[dict[str, Any]] = []
    memory = None
    with runtime_settings(threads=1, flush_denormal=True, reuse_memory=True):
        recommender = Recommender.load(checkpoint)
        if not streaming_only:
            load_rows, memory, store_rows = _under_load(
                checkpoint, recommender, history, concurrency, requests, warmup, users, store, replicas
            )
        update_rows, served_step = _update_vs_recompute(recommender, lengths, repeats)
        # the side-by-side state is built by STEP_HISTORY events: models that stream past L only
        streams_on = recommender.model.streaming and not recommender.model.fixed_length
        step_rows = _steps_side_by_side(recommender, served_step, STEP_HISTORY, repeats) if streams_on else []
    step_mode = served_step.describe()
    output.mkdir(parents=True, exist_ok=True)
    write_csv(update_rows, output / "serve_updates.csv")
    text = f"# Serving {Path(checkpoint).name} ({recommender.saved.model}, {recommender.n_items} items)\n\n"
    if streaming_only:
        text += f"Machine: {json.dumps(machine)}.\n"
    else:
        write_csv(load_rows, output / "serve.csv")
        _plot(load_rows, output / "serve.png")
        text += (
            f"Machine: {json.dumps(machine)}; the load generator shares the cores with the server.\n\n"
            f"## POST /recommend, histories of {history} events ({requests} measured requests per level)\n\n"
            + markdown_table(
                load_rows,
                [
                    ("batching", "batching"),
                    ("concurrency", "clients"),
                    ("p50_ms", "p50 ms"),
                    ("p95_ms", "p95 ms"),
                    ("p99_ms", "p99 ms"),
                    ("requests_per_s", "requests/s"),
                    ("errors", "errors"),
                ],
            )  # fmt: skip
        )
    text += (
        "\n## One new event: streaming update and scoring against recomputing from the whole history\n\n"
        f"In one process, 1 thread; the model's step {step_mode}; the event is stored in an in-memory SQLite "
        "database (the server's file adds one synchronous commit per post); both sides leave the history's items "
        f"out of the ranking. Over {repeats} consecutive events of one user: medians of the step, the read-out "
        "and ranking from the state, their sum per event (and its 90th percentile), the store's write, and the "
        "whole `observe` + `recommend` (which also encodes the event); recomputing: the median over "
        f"{min(repeats, RECOMPUTE_REPEATS)} of those histories, timed in a loop of its own.\n\n"
        + markdown_table(
            update_rows,
            [
                ("length", "history length"),
                ("step_ms", "step ms"),
                ("rank_ms", "read-out + ranking ms"),
                ("step_rank_ms", "step + ranking ms"),
                ("step_rank_p90_ms", "p90 ms"),
                ("store_ms", "store write ms"),
                ("update_ms", "update + score ms"),
                ("recompute_ms", "recompute ms"),
                ("speedup", "x faster"),
            ],
        )  # fmt: skip
    )
    if step_rows:
        write_csv(step_rows, output / "serve_steps.csv")
        text += (
            "\n## The step alone, by each compiler\n\n"
            f"The same user's step (a state built by {STEP_HISTORY} events) run eagerly, by `torch.compile` and by "
            f"AOTInductor in this process, {repeats} events in turns (each event by the three in a row, the first "
            "rotating): the "
            "median and 90th percentile of one step, the eager median over the row's, the calls that ran eagerly "
            "instead (inputs unlike the warm-up's) and the largest difference of the final state from the eager "
            "step's. Warm-up: compiling (or loading a cached library) and the check against the eager step, once "
            "per start.\n\n"
            + markdown_table(
                step_rows,
                [
                    ("compiler", "step"),
                    ("how", "how it ran"),
                    ("warm_up_s", "warm-up s"),
                    ("step_us", "step us"),
                    ("step_p90_us", "p90 us"),
                    ("speedup", "x eager"),
                    ("eager_calls", "calls run eagerly"),
                    ("state_difference", "max abs state difference"),
                ],
            )  # fmt: skip
        )
    if memory is not None:
        text += (
            f"\n## Resident memory of the server\n\n{memory['rss_before_mib']:.0f} MiB before, "
            f"{memory['rss_after_mib']:.0f} MiB after {memory['users']} new users (one event each, states cached): "
            f"{memory['kib_per_user']:.1f} KiB per user.\n"
        )
    if store_rows:
        write_csv(store_rows, output / "serve_stores.csv")
        text += (
            "\n## Users' events: one replica on SQLite against replicas sharing PostgreSQL\n\n"
            "Each request either stores one new event of a user (200 users) or asks for that user's top 10, "
            f"alternately; {requests} measured requests per level, spread over the replicas in turn (each replica "
            "1 thread; the PostgreSQL server, the replicas and the load generator share the machine's cores).\n\n"
            + markdown_table(
                store_rows,
                [
                    ("setup", "setup"),
                    ("concurrency", "clients"),
                    ("p50_ms", "p50 ms"),
                    ("p99_ms", "p99 ms"),
                    ("requests_per_s", "requests/s"),
                    ("errors", "errors"),
                ],
            )  # fmt: skip
        )
    (output / "serve.md").write_text(text)
    return text


def _under_load(
    checkpoint: str,
    recommender,
    history: int,
    concurrency: list[int],
    requests: int,
    warmup: int,
    users: int,
    store: str | None,
    replicas: int,
) -> tuple[list[dict[str, Any]], dict[str, Any], list]:
    """The server under load (batching on and off), its memory per user, and the shared-store replicas."""
    bodies = _bodies(recommender, history, requests + warmup)
    load_rows = []
    with tempfile.TemporaryDirectory(prefix="tim4rec-bench-serve-") as folder:
        (Path(folder) / "bodies.json").write_text(json.dumps(bodies))
        for batching in (True, False):
            port = _free_port()
            server = _start_server(checkpoint, port, Path(folder) / f"db-{batching}.sqlite", batching, 10_000)
            try:
                for level in concurrency:
                    measured = _measure([f"http://127.0.0.1:{port}"], f"{folder}/bodies.json", level, warmup)
                    row = {"batching": "on" if batching else "off", "concurrency": level, "history": history,
                           **measured}  # fmt: skip
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    load_rows.append(row)
            finally:
                server.terminate()
                server.wait(timeout=120)
        memory = _memory_per_users(checkpoint, users, Path(folder) / "memory.sqlite")
        store_rows = (
            _stores_under_load(
                checkpoint, recommender, store, replicas, Path(folder), concurrency, requests, warmup
            )  # fmt: skip
            if store
            else []
        )
    return load_rows, memory, store_rows


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(10, 4))
    for batching in ("on", "off"):
        points = sorted((r for r in rows if r["batching"] == batching), key=lambda r: r["concurrency"])
        levels = [p["concurrency"] for p in points]
        latency.plot(levels, [p["p99_ms"] for p in points], marker="o", label=f"batching {batching}: p99")
        latency.plot(levels, [p["p50_ms"] for p in points], "--", marker="o", label=f"batching {batching}: p50")
        throughput.plot(levels, [p["requests_per_s"] for p in points], marker="o", label=f"batching {batching}")
    for axis, label in ((latency, "latency ms"), (throughput, "requests/s")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(client_main(sys.argv[1:]))


HELP = "the HTTP service under load; streaming updates; memory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tim4rec bench serve``."""
    parser.add_argument("checkpoint", help="a saved model (best.pt)")
    parser.add_argument("--history", type=int, default=200, help="events per /recommend history")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per level")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--lengths", nargs="+", type=int, default=[50, 200, 1000, 3000])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--users", type=int, default=10_000, help="new users for the memory measurement")
    parser.add_argument("--output", default="docs/benchmarks/serve")
    parser.add_argument(
        "--store", help="a postgresql:// URL: also measure users' events on --replicas replicas sharing it"
    )
    parser.add_argument("--replicas", type=int, default=2, help="replicas on the shared store")
    parser.add_argument(
        "--streaming-only",
        action="store_true",
        help="only the one-process streaming table (no server or load generator; one core)",
    )


def command(args: argparse.Namespace) -> int:
    """``tim4rec bench serve``: measure, write the report, print it."""
    print(run(args.checkpoint, history=args.history, concurrency=args.concurrency, requests=args.requests,
              warmup=args.warmup, lengths=args.lengths, repeats=args.repeats, users=args.users,
              output=Path(args.output), store=args.store, replicas=args.replicas,
              streaming_only=args.streaming_only))  # fmt: skip
    return 0
