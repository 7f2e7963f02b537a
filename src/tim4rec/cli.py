"""The ``tim4rec`` command: a thin layer over the data, training and evaluation stages.

    tim4rec data fetch NAME
    tim4rec data stats NAME_OR_PATH
    tim4rec train --model NAME [--dataset NAME_OR_PATH] [--config FILE] [--set k=v ...] [--output DIR] [--resume]
    tim4rec evaluate CHECKPOINT
    tim4rec bench quality PLAN.yaml [--output DIR]

User errors print one line (``tim4rec: error: ...``) and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from tim4rec.data.preprocess import FIVE_CORE
from tim4rec.errors import Tim4RecError

#: ``tim4rec bench``'s subcommands: each is the module ``tim4rec.bench.<name>``
BENCHMARKS = ("speed", "serve", "catalogue", "data", "threads", "kernel", "curves", "quality")


def _format_metrics_table(rows: dict[str, dict[str, float]], ks: Sequence[int], names: Sequence[str]) -> str:
    header = "| split | " + " | ".join(f"{n.upper() if n != 'hit' else 'HR'}@{k}" for n in names for k in ks) + " |"
    lines = [header, "|" + "---|" * (len(names) * len(ks) + 1)]
    for split, metrics in rows.items():
        lines.append(f"| {split} | " + " | ".join(f"{metrics[f'{n}@{k}']:.4f}" for n in names for k in ks) + " |")
    return "\n".join(lines)


def _print_results(results: dict[str, Any]) -> None:
    from tim4rec.config import Config
    from tim4rec.training.results import RunResults

    run = RunResults.from_dict(results)
    config = Config.from_dict(run.config)
    names, ks = config.metric_names, config.topk
    print(
        f"\n{run.model} on {run.dataset} ({run.regime} regime, seed {run.seed}, "
        f"{run.threads} threads): best epoch {run.best_epoch} of {run.epochs_run}, "
        f"stopped by {run.stopped_by}, "
        + (f"{run.seconds_per_epoch:.1f} s per epoch" if run.seconds_per_epoch else "no full epoch")
    )
    splits = {"valid (best)": run.best_valid, "test": run.test}  # test is None with evaluate_test false
    print(_format_metrics_table({split: metrics for split, metrics in splits.items() if metrics}, ks, names))
    if not run.test:
        print("test: not evaluated (evaluate_test false)")
    print(f"results: {run.output_dir}/results.json")


def cmd_data(args: argparse.Namespace) -> int:
    from tim4rec.data import fetch, load_interactions
    from tim4rec.data.readers import FieldNames

    if args.data_command == "fetch":
        print(fetch(args.name, args.cache))
        return 0
    interactions = load_interactions(
        args.name,
        fields=FieldNames(args.user_field, args.item_field, args.time_field),
        user_inter_num_interval=args.user_interval,
        item_inter_num_interval=args.item_interval,
        time_order=args.time_order,
        cache=args.cache,
    )
    stats = interactions.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    lengths = stats["sequence_length"]
    print(f"dataset      {args.name} ({stats['source']})")
    before = stats["filtering"]["before"]
    print(f"before       {before['users']} users, {before['items']} items, {before['interactions']:,} interactions")
    print(
        f"filtering    users {stats['filtering']['user_inter_num_interval']}, "
        f"items {stats['filtering']['item_inter_num_interval']}"
    )
    print(f"users        {stats['users']}")
    print(f"items        {stats['items']}")
    print(f"interactions {stats['interactions']:,}")
    print(f"density      {stats['density']:.4f}")
    print(
        "seq length   min {min}, p5 {p5:.0f}, p25 {p25:.0f}, median {p50:.0f}, mean {mean:.1f}, p75 {p75:.0f}, "
        "p95 {p95:.0f}, p99 {p99:.0f}, max {max}".format(**lengths)
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tim4rec.config import load_config
    from tim4rec.training.api import run

    config, notices = load_config(model=args.model, dataset=args.dataset, config_files=args.config, set_args=args.set)
    results = run(config, output_dir=args.output, resume=args.resume, notices=notices)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        _print_results(results)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from tim4rec.training.tuning import TuneOptions, tune

    options = TuneOptions(
        model=args.model, dataset=args.dataset, space=args.space, trials=args.trials, study_dir=args.study_dir,
        workers=args.workers, set_args=tuple(args.set), config_files=tuple(args.config), prune=not args.no_prune,
        heartbeat=args.heartbeat, seed=args.seed,
    )  # fmt: skip
    best = tune(options, worker=args.worker)
    if best is not None:
        print(Path(args.study_dir, "trials.md").read_text())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tim4rec.runtime import runtime_settings
    from tim4rec.serving.export import export_onnx

    output = args.output or str(Path(args.checkpoint).with_suffix(".onnx"))
    with runtime_settings(threads=args.threads):
        done = export_onnx(args.checkpoint, output)
    eager, runtime = done["eager_seconds"] * 1e3, done["onnxruntime_seconds"] * 1e3
    print(f"{done['model']}: {done['output']} (ids in {done['items']}); scores equal the model's to "
          f"{done['max_abs_difference']:.2g}; a batch of {done['batch']} histories of {done['max_seq_length']} "
          f"events: eager {eager:.1f} ms, onnxruntime {runtime:.1f} ms")  # fmt: skip
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tim4rec.evaluation import evaluate_saved_model

    order = {key: value for key, value in (("time_order", args.time_order), ("time_values", args.time_values)) if value}
    results = evaluate_saved_model(
        args.checkpoint, split=args.split, mask_history=args.mask_history, streaming=args.streaming, data_order=order
    )
    config = results["config"]
    print(_format_metrics_table({args.split: results["metrics"]}, config.topk, config.metric_names))
    return 0


def _benchmarks() -> list[ModuleType]:
    """The modules of ``tim4rec bench``'s subcommands, in the order ``tim4rec bench --help`` lists them. Each
    has ``HELP``, ``add_arguments(parser)`` and ``command(args)``, and imports its heavy parts in ``command``."""
    return [importlib.import_module(f"tim4rec.bench.{name}") for name in BENCHMARKS]


def cmd_bench(args: argparse.Namespace) -> int:
    return importlib.import_module(f"tim4rec.bench.{args.bench_command}").command(args)


def cmd_recommend(args: argparse.Namespace) -> int:
    from tim4rec.runtime import runtime_settings
    from tim4rec.serving.batch import read_users, recommend_users
    from tim4rec.serving.recommender import Recommender, parse_events

    history = None
    if args.history is not None:  # checked before the model loads
        try:
            history = parse_events(json.loads(args.history), "--history")
        except json.JSONDecodeError as error:
            raise Tim4RecError(
                f'--history: expected a JSON list of {{"item": ..., "time": ...}} or [item, time] ({error})'
            ) from None
    with runtime_settings(threads=args.threads, flush_denormal=True, reuse_memory=True):
        recommender = Recommender.load(args.checkpoint)
        if history is not None:
            answer = recommender.recommend(history, args.k, not args.include_seen, request_time=args.request_time)
            print(json.dumps(answer.to_dict(), indent=2))
            return 0
        users = None if args.users == "all" else read_users(args.users)
        frame = recommend_users(
            recommender, users, args.k, args.output, exclude_seen=not args.include_seen, request_time=args.request_time
        )
    print(f"{frame['user'].nunique()} users, {len(frame)} rows: {args.output}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from tim4rec.serving.server import ServeOptions, serve

    options = ServeOptions(
        checkpoint=args.checkpoint,
        host=args.host,
        port=args.port,
        store=args.store,
        api_key=args.api_key or os.environ.get("TIM4REC_API_KEY") or None,
        keyed_reads=args.key_for_reads,
        cache_size=args.cache_size,
        eager_step=args.eager_step,
        batching=not args.no_batching,
        batch_wait_ms=args.batch_wait_ms,
        max_batch=args.max_batch,
        threads=args.threads,
    )
    return serve(options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tim4rec", description="Time-aware sequential recommendation: train, evaluate, benchmark."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="fetch a named dataset or show statistics")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    fetch = data_commands.add_parser("fetch", help="fetch a named dataset into the cache")
    fetch.add_argument("name")
    fetch.add_argument("--cache", help="cache folder (default ~/.cache/tim4rec or $TIM4REC_CACHE)")
    stats = data_commands.add_parser("stats", help="users, items, interactions after filtering")
    stats.add_argument("name", help="a named dataset (ml-100k, ml-1m) or a file/folder")
    stats.add_argument("--cache")
    stats.add_argument("--user-field", default="user_id")
    stats.add_argument("--item-field", default="item_id")
    stats.add_argument("--time-field", default="timestamp")
    stats.add_argument("--user-interval", default=FIVE_CORE, help="RecBole's user_inter_num_interval")
    stats.add_argument("--item-interval", default=FIVE_CORE, help="RecBole's item_inter_num_interval")
    stats.add_argument("--time-order", default="exact", choices=["exact", "recbole"])
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")

    train = commands.add_parser("train", help="train and evaluate a model")
    train.add_argument("--model", help="model name (or 'model' in the config)")
    train.add_argument("--dataset", help="named dataset or file/folder (or 'dataset' in the config)")
    train.add_argument("--config", action="append", default=[], help="YAML config file (repeatable)")
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    train.add_argument("--output", help="output folder (default runs/<model>-<dataset>-seed<seed>)")
    train.add_argument("--resume", action="store_true", help="continue the run in the output folder")

    export = commands.add_parser("export", help="a saved model's scoring path as an ONNX graph")
    export.add_argument("checkpoint", help="a saved model (best.pt)")
    export.add_argument("--format", choices=["onnx"], default="onnx")
    export.add_argument("--output", help="the .onnx file (default: beside the model)")
    export.add_argument("--threads", type=int, default=None)

    tune = commands.add_parser("tune", help="search hyper-parameters on validation (Optuna); test read once")
    tune.add_argument("--model", required=True)
    tune.add_argument("--dataset", required=True)
    tune.add_argument("--space", required=True, help="YAML: setting -> {type: float|int|categorical, ...}")
    tune.add_argument("--trials", type=int, required=True, help="finished trials (complete or pruned) to reach")
    tune.add_argument("--study-dir", default="runs/tune", help="the study (study.db), its trials and report")
    tune.add_argument("--workers", type=int, default=1, help="processes sharing the study")
    tune.add_argument("--config", action="append", default=[], help="YAML config file for every trial")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a fixed setting")
    tune.add_argument("--no-prune", action="store_true", help="train every trial to its end")
    tune.add_argument("--heartbeat", type=float, default=30.0, help="seconds; a trial silent for 2x is failed")
    tune.add_argument("--seed", type=int, default=2020, help="the sampler's seed")
    tune.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)

    bench = commands.add_parser("bench", help="benchmarks that write tables and plots")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    for module in _benchmarks():
        module.add_arguments(bench_commands.add_parser(module.__name__.rpartition(".")[2], help=module.HELP))

    recommend = commands.add_parser("recommend", help="recommendations from a saved model: every user, or one history")
    recommend.add_argument("checkpoint", help="a saved model (best.pt)")
    recommend.add_argument("--users", default="all", help="'all' (every user of the dataset) or a file of user ids")
    recommend.add_argument("-k", type=int, default=10, help="items per user")
    recommend.add_argument("--output", default="recommendations.csv", help="a .csv or .parquet file")
    recommend.add_argument("--history", help='one history as JSON, e.g. \'[{"item": "50", "time": 881250949}]\'')
    recommend.add_argument("--include-seen", action="store_true", help="rank items already in the history too")
    recommend.add_argument(
        "--request-time", type=float, help="unix seconds the recommendations are for (default: now); read by "
        "models trained with request_time",
    )  # fmt: skip
    recommend.add_argument("--threads", type=int, default=None)

    serve = commands.add_parser("serve", help="the HTTP service and demo page for a saved model")
    serve.add_argument("checkpoint", help="a saved model (best.pt)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--store", "--db", dest="store",
        help="where users' events and states live: an SQLite file (default: serving.sqlite beside the model) or "
        "a postgresql:// URL that several replicas share (pip install 'tim4rec[postgres]')",
    )  # fmt: skip
    serve.add_argument(
        "--api-key",
        help="writes (POST /users/{id}/events) need this key in the X-API-Key header; "
        "the environment variable TIM4REC_API_KEY sets it without showing it in the process list",
    )
    serve.add_argument("--key-for-reads", action="store_true", help="reads need the API key too")
    serve.add_argument("--cache-size", type=int, default=10_000, help="user states kept in memory")
    serve.add_argument(
        "--eager-step",
        action="store_true",
        help="do not compile the streaming step at start (AOTInductor takes ~25 s the first time a model is served, "
        "then its library loads from the cache folder's steps/; each step is then about 5x cheaper)",
    )
    serve.add_argument("--no-batching", action="store_true", help="score each /recommend request on its own")
    serve.add_argument(
        "--batch-wait-ms",
        type=float,
        default=0.0,
        help="also wait this long for more requests to batch (default 0: batch what arrived while the model was busy)",
    )
    serve.add_argument("--max-batch", type=int, default=64)
    serve.add_argument("--threads", type=int, default=None)

    evaluate = commands.add_parser("evaluate", help="evaluate a saved model (best.pt) on its dataset")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--split", default="test", choices=["valid", "test"])
    evaluate.add_argument("--mask-history", action="store_true", default=None)
    for option, what in (("--time-order", "which events are held out"), ("--time-values", "the times the model reads")):
        evaluate.add_argument(option, choices=["exact", "recbole"], default=None,
                              help=f"{what}: exact or RecBole's float32 (default: as trained)")  # fmt: skip
    evaluate.add_argument(
        "--streaming",
        action="store_true",
        help="feed each user's history through the streaming state, one event at a time (the whole history; "
        "the last MAX_ITEM_LIST_LENGTH events for fixed-length models)",
    )
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run saves what it has and says how to continue."""


class _SigtermWhileRunning:
    """The SIGTERM handler of one command: it raises :class:`Terminated` once, and only while the command
    itself runs. A SIGTERM that comes after the command has ended (torchrun stops the other ranks as
    soon as one fails, often while this one is still reporting its own error) is ignored: raised
    there, it would escape the error handling as a raw traceback."""

    def __init__(self) -> None:
        self.running = True

    def __call__(self, signum: int, frame: object) -> None:
        if self.running:
            self.running = False  # a second SIGTERM while the first is being handled must not raise again
            raise Terminated

    def stop(self) -> None:
        self.running = False


def main(argv: Sequence[str] | None = None) -> int:
    status = _run_command(argv)
    if "WORLD_SIZE" in os.environ:  # perhaps a torchrun worker, whose exit must not undo a finished run
        from tim4rec.training.distributed import end_worker, launched_by_torchrun

        if launched_by_torchrun():
            end_worker(status)
    return status


def _run_command(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "data": cmd_data, "train": cmd_train, "evaluate": cmd_evaluate, "bench": cmd_bench,
        "recommend": cmd_recommend, "serve": cmd_serve, "tune": cmd_tune,
        "export": cmd_export,
    }  # fmt: skip
    on_sigterm = _SigtermWhileRunning()
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        try:
            return handlers[args.command](args)
        finally:  # a Terminated raised before this line is caught below like any other
            on_sigterm.stop()
    except Tim4RecError as error:
        print(f"tim4rec: error: {error}", file=sys.stderr)
        return 2
    except Terminated:
        print("tim4rec: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("tim4rec: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
