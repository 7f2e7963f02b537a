"""``tim4rec bench quality PLAN.yaml``: models x seeds on one dataset, as tables and a plot.

A plan is a YAML file::

    dataset: ml-100k
    seeds: [1, 2, 3]
    common: {train_regime: prefix, time_budget: 1800}   # keys for every run
    runs:
      sasrec: {model: sasrec, n_heads: 2}
      tim4rec-causal: {model: tim4rec, time_mode: causal}

Each (run, seed) trains into ``OUTPUT/runs/<run>/seed<seed>/``. A finished run is not repeated;
an unfinished one (killed, or stopped by a wall-time budget that the plan has since raised) is
resumed, so a long plan can be worked through over several invocations, and several invocations
may share a plan (a run being trained holds a lock on its folder; the others skip it). An
invocation given ``--deadline SECONDS`` (a working session, a batch job's time limit) starts no run
after it and cuts each run's ``time_budget`` so that the run, its test evaluation included, ends by
then; the cut budget is what the run records, and the next invocation resumes it under the plan's.
Then ``quality.md``, ``quality.csv`` and ``quality_valid_ndcg.png`` are written from every
``results.json`` found (``tim4rec.bench.quality_report``). Reading a plan, and what the runner and the report
both take from it, is ``tim4rec.bench.quality_plan``'s.

Optional plan keys: ``title``; ``time_to: {ndcg@10: 0.15}`` (a time-to-accuracy column);
``compare_to: RUN`` (paired per-user tests of every run against that run, and a plain reading of the
table around it, also written alone to ``reading.md``) or ``compare_to: {RUN: REFERENCE}``
(each named run against its own reference); ``anchors:`` published figures shown
beside the table, each ``{model, source, hit@10, ndcg@10, seen_items}`` where ``seen_items`` says
whether that evaluation ranks the items a user already met (``ranked``, as here and in RecBole's
sequential evaluation), removes them (``removed``) or does not say (``not stated``); ``not_run:``
models the plan leaves out, each with the reason (``{caser: "..."}``), listed under the table. Every row's
``tim4rec train`` commands are listed under the tables. A run may say ``alternative_to: ROW``: a setting tried
for another run's row (a learning-rate arm) and set aside on validation; the reading shows it, marked, and
leaves it out of who leads and of its verdicts, and gives its validation beside the row's.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tim4rec.bench.quality_plan import read_plan, run_config, run_seeds, unfinished
from tim4rec.errors import Tim4RecError
from tim4rec.log import log

if TYPE_CHECKING:
    from tim4rec.config import Config

DEADLINE_MARGIN = 300.0  # seconds kept back from a deadline for loading the data and the test evaluations
SHORTEST_RUN = 60.0  # a run that would get less training time than this before the deadline is not started


def _status(folder: Path, config: Config) -> str:
    """``todo``, ``resume``, ``done``, ``failed`` (its loss diverged) or ``stranded`` (unfinished, with no
    checkpoint to continue from) for one run folder."""
    results_path = folder / "results.json"
    has_checkpoint = (folder / "checkpoint.pt").exists()
    if not results_path.exists():
        return "resume" if has_checkpoint else "todo"
    results = json.loads(results_path.read_text())
    if results.get("status") == "failed":  # diverged: running it again would diverge again
        return "failed"
    if not unfinished(results, config):
        return "done"
    return "resume" if has_checkpoint else "stranded"


def _elapsed(folder: Path) -> float:
    """Training and validation seconds a run folder has spent so far: its ``results.json``'s, which the
    trainer rewrites right after every checkpoint, whatever the run's status (0 without one, which
    can only make a cut budget shorter, never later than the deadline)."""
    results_path = folder / "results.json"
    return float(json.loads(results_path.read_text())["elapsed_seconds"]) if results_path.exists() else 0.0


def _cut_to_deadline(config: Config, overrides: dict[str, Any], folder: Path, training_left: float) -> Config:
    """``config`` with its ``time_budget`` cut so that the run trains at most ``training_left`` more seconds."""
    from tim4rec.config import load_config

    budget = math.floor(_elapsed(folder) + training_left)  # a budget counts the seconds of earlier invocations
    if config.time_budget and config.time_budget <= budget:
        return config
    cut, _ = load_config(overrides={**overrides, "time_budget": budget})
    return cut


def _held_elsewhere(folder: Path) -> bool:
    """Whether a process holds ``folder/.lock`` (a run trains there now); a probe with a shared lock, let go at
    once, that creates no file."""
    lock = folder / ".lock"
    if not lock.exists():
        return False
    with open(lock) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def plan_status(plan_path: str | Path, output: str | Path) -> list[dict[str, Any]]:
    """One row per (run, seed) of the plan: where it stands (``state``: ``todo``, ``training`` (another process
    holds it now), ``resume``, ``done``, ``failed`` or ``stranded``), its epochs, best validation, the seconds
    it has spent against its budget and what stopped it last. Reads files only; trains and writes nothing."""
    from tim4rec.bench.quality_report import epochs_reached
    from tim4rec.config import load_config

    plan = read_plan(plan_path)
    rows = []
    for name in plan["runs"]:
        for seed in run_seeds(plan, name):
            folder = Path(output) / "runs" / name / f"seed{seed}"
            config, _ = load_config(overrides=run_config(plan, name, seed))
            state = "training" if _held_elsewhere(folder) else _status(folder, config)
            row: dict[str, Any] = {"run": name, "seed": seed, "state": state, "budget_s": config.time_budget}
            results_path = folder / "results.json"
            if results_path.exists():
                results = json.loads(results_path.read_text())
                best = results.get("best_valid") or {}
                row |= {
                    "epochs": epochs_reached(results),
                    "best_epoch": results.get("best_epoch"),
                    "best_valid": best.get(results.get("valid_metric", "ndcg@10")),
                    "elapsed_s": round(results["elapsed_seconds"]),
                    "stopped_by": results.get("stopped_by") or "",
                }
            rows.append(row)
    return rows


def status_table(rows: list[dict[str, Any]]) -> str:
    """:func:`plan_status`'s rows as a Markdown table, with a count of each state under it."""
    from tim4rec.io.tables import markdown_table

    columns = [("run", "run"), ("seed", "seed"), ("state", "state"), ("epochs", "epochs"),
               ("best_epoch", "best epoch"), ("best_valid", "best validation"), ("elapsed_s", "seconds"),
               ("budget_s", "budget"), ("stopped_by", "stopped by")]  # fmt: skip
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return markdown_table(rows, columns) + "\n" + ", ".join(f"{n} {state}" for state, n in counts.items()) + "\n"


@contextlib.contextmanager
def _claim(folder: Path, patience: float = 1.0) -> Iterator[bool]:
    """Hold ``folder/.lock`` (an exclusive ``flock``) while a run trains; False if another process still holds
    it after ``patience`` seconds (a ``--status`` probe holds it for an instant; a run, for hours)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        give_up = time.monotonic() + patience
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= give_up:
                    yield False
                    return
                time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_plan(
    plan_path: str | Path,
    output: str | Path,
    *,
    only: list[str] | None = None,
    deadline: float | None = None,
    seeds: list[int] | None = None,
    threads: int | None = None,
) -> None:
    """Train every (run, seed) of the plan not done yet (only the runs ``only`` and seeds ``seeds`` if given).

    ``threads`` replaces the plan's thread count for this invocation: a speed setting, not part of what a run
    computes, so a run may resume under another one; each run's results record the count it ran with."""
    from tim4rec.config import load_config
    from tim4rec.training import api

    plan = read_plan(plan_path)
    output = Path(output)
    started = time.monotonic()
    for name in plan["runs"]:
        if only and name not in only:
            continue
        for seed in run_seeds(plan, name):
            if seeds and seed not in seeds:
                continue
            folder = output / "runs" / name / f"seed{seed}"
            overrides = run_config(plan, name, seed) | ({} if threads is None else {"threads": threads})
            config, notices = load_config(overrides=overrides)
            status = _status(folder, config)
            if status == "done":
                continue
            if status == "failed":
                log(f"{name} seed {seed}: failed earlier (see {folder / 'results.json'}); skipped")
                continue
            if status == "stranded":  # results.json came from another machine; its checkpoint stays there
                log(
                    f"{name} seed {seed}: {folder} holds an unfinished run's results.json but no checkpoint.pt to "
                    "continue from; skipped, and left out of the tables (move the folder away to start it again)"
                )
                continue
            training_left = None if deadline is None else deadline - (time.monotonic() - started) - DEADLINE_MARGIN
            if training_left is not None and training_left < SHORTEST_RUN:
                log(f"deadline of {deadline:.0f} s too near to start {name} seed {seed}; run the same command again")
                return
            with _claim(folder) as claimed:
                if not claimed:  # another invocation is running it: two invocations share a plan
                    log(f"{name} seed {seed}: running in another process; skipped")
                    continue
                if training_left is not None:
                    planned = config.time_budget
                    config = _cut_to_deadline(config, overrides, folder, training_left)
                    if config.time_budget != planned:
                        log(f"{name} seed {seed}: time_budget cut to {config.time_budget:.0f} s to end by the deadline")
                log(f"{name} seed {seed}: {'resuming' if status == 'resume' else 'starting'} in {folder}")
                api.run(config, output_dir=folder, resume=status == "resume", notices=notices)


def add_seen_removed(plan_path: str | Path, output: str | Path) -> list[str]:
    """Give every finished run of the plan that lacks them its test metrics with seen items removed.

    Runs trained before the trainer computed ``test_seen_removed`` get them here from their
    ``best.pt`` (kept only on the machine that trained them), on one thread. The saved model must
    first reproduce the run's recorded test NDCG@10 and HR@10 (to 1e-4), so the added figures belong
    to the same weights. Returns a line per run touched.
    """
    from tim4rec.evaluation import evaluate, load_for_evaluation
    from tim4rec.io.files import write_json_atomic
    from tim4rec.runtime import runtime_settings

    plan = read_plan(plan_path)
    lines = []
    for path in sorted(Path(output).glob("runs/*/seed*/results.json")):
        results = json.loads(path.read_text())
        if path.parent.parent.name not in plan["runs"] or results.get("status") != "finished":
            continue
        if "test_seen_removed_ranks" in results or results["config"].get("mask_history"):
            continue
        best = path.parent / "best.pt"
        if not best.exists():
            lines.append(f"{path.parent}: no best.pt here, so no figures with seen items removed")
            continue
        removed_ranks: list[int] = []
        with runtime_settings(threads=1):
            model, config, data, _ = load_for_evaluation(best)  # read once, ranked both ways
            test = data.evaluation_samples("test")
            settings = {"batch_size": config.eval_batch_size, "ks": config.topk, "metric_names": config.metric_names}
            plain = evaluate(model, data, test, mask_history=False, **settings)
            removed = evaluate(model, data, test, mask_history=True, ranks_out=removed_ranks, **settings)
        recorded = results["test"]
        if any(abs(plain[m] - recorded[m]) > 1e-4 for m in ("ndcg@10", "hit@10")):
            raise Tim4RecError(
                f"{best}: test NDCG@10 {plain['ndcg@10']:.4f}, HR@10 {plain['hit@10']:.4f} differ from "
                f"{path}'s {recorded['ndcg@10']:.4f}, {recorded['hit@10']:.4f}: not the run's best weights"
            )
        results["test_seen_removed"] = removed
        results["test_seen_removed_ranks"] = {"users": results["test_ranks"]["users"], "ranks": removed_ranks}
        results["test_seen_removed_from"] = "best.pt, by tim4rec bench quality --add-seen-removed"
        write_json_atomic(results, path)
        lines.append(
            f"{path.parent}: test NDCG@10 {recorded['ndcg@10']:.4f}, {removed['ndcg@10']:.4f} with seen items removed"
        )
    return lines


HELP = "models x seeds from a plan file; resumes what is done"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tim4rec bench quality``."""
    parser.add_argument("plan", help="plan YAML (dataset, seeds, common, runs)")
    parser.add_argument("--output", help="folder for runs and tables (default: the plan's path without .yaml)")
    parser.add_argument("--only", nargs="+", help="run only these runs of the plan")
    parser.add_argument(
        "--deadline",
        type=float,
        help="seconds this invocation may take: no run starts after them, and each run's time_budget is cut "
        "so that it ends by then (a later invocation resumes it under the plan's budget)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="run only these seeds of the plan")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads per run for this invocation instead of the plan's (each run records the count it ran with)",
    )
    parser.add_argument("--report-only", action="store_true", help="only rebuild the tables from finished runs")
    parser.add_argument(
        "--status",
        action="store_true",
        help="only list every run and seed of the plan with where it stands (epochs, best validation, seconds "
        "against its budget); trains and writes nothing",
    )
    parser.add_argument(
        "--add-seen-removed",
        action="store_true",
        help="give finished runs that lack them test metrics with seen items removed (from their best.pt), then report",
    )


def command(args: argparse.Namespace) -> int:
    """``tim4rec bench quality``: train what the plan still lacks (or add seen-removed metrics), then report."""
    from tim4rec.bench import quality_report

    output = args.output or str(Path(args.plan).with_suffix(""))
    if args.status:
        print(status_table(plan_status(args.plan, output)), end="")
        return 0
    if args.add_seen_removed:
        for line in add_seen_removed(args.plan, output):
            print(line)
    elif not args.report_only:
        run_plan(args.plan, output, only=args.only, deadline=args.deadline, seeds=args.seeds, threads=args.threads)
    print(quality_report.report(args.plan, output))
    return 0


def __getattr__(name: str) -> Any:
    """``api``: :mod:`tim4rec.training.api`, imported when first asked for (it imports the trainer and the
    models, which ``tim4rec --help`` does not need); the functions above import it where they use it."""
    if name == "api":
        from tim4rec.training import api

        return api
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
