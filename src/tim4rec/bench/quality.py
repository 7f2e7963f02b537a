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
resumed, so a long plan can be worked through over several invocations (``--deadline`` stops an
invocation cleanly between runs), and several invocations may share a plan (a run being trained
holds a lock on its folder; the others skip it). Then ``quality.md``, ``quality.csv`` and
``quality_valid_ndcg.png`` are written from every ``results.json`` found.

Optional plan keys: ``title``; ``time_to: {ndcg@10: 0.15}`` (a time-to-accuracy column);
``compare_to: RUN`` (paired per-user tests against that run); ``anchors:`` published figures shown
beside the table, each ``{model, source, hit@10, ndcg@10, seen_items}`` where ``seen_items`` says
whether that evaluation ranks the items a user already met (``ranked``, as here and in RecBole's
sequential evaluation), removes them (``removed``) or does not say (``not stated``); ``not_run:``
models the plan leaves out, each with the reason (``{caser: "..."}``), listed under the table. Every row's
``tim4rec train`` commands are listed under the tables.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import math
import shlex
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tim4rec.config import Config, load_config, read_yaml
from tim4rec.errors import ConfigError, Tim4RecError
from tim4rec.evaluation.significance import paired_comparison, per_user_ndcg
from tim4rec.io import write_json_atomic
from tim4rec.runtime import runtime_settings
from tim4rec.training import api
from tim4rec.training.trainer import log

PLAN_KEYS = {"dataset", "seeds", "common", "runs", "title", "time_to", "compare_to", "anchors", "not_run"}
TABLE_METRICS = ("ndcg@10", "hit@10", "mrr@10", "ndcg@50", "hit@50")
SEEN_REMOVED_METRICS = ("ndcg@10", "hit@10", "mrr@10")
ANCHOR_KEYS = {"model", "source", "hit@10", "ndcg@10", "seen_items"}
SEEN_ITEMS = ("ranked", "removed", "not stated")


def _check_anchors(path: str | Path, anchors: Any) -> None:
    if not isinstance(anchors, list):
        raise ConfigError(f"{path}: anchors: expected a list of {sorted(ANCHOR_KEYS)} mappings")
    for number, anchor in enumerate(anchors, 1):
        if not isinstance(anchor, dict) or set(anchor) != ANCHOR_KEYS:
            got = sorted(anchor) if isinstance(anchor, dict) else anchor
            raise ConfigError(f"{path}: anchors[{number}]: expected the keys {sorted(ANCHOR_KEYS)}, got {got}")
        for metric in ("hit@10", "ndcg@10"):
            if not isinstance(anchor[metric], (int, float)) or not 0 <= anchor[metric] <= 1:
                got = anchor[metric]
                raise ConfigError(f"{path}: anchors[{number}].{metric}: expected a number in [0, 1], got {got!r}")
        if anchor["seen_items"] not in SEEN_ITEMS:
            got = anchor["seen_items"]
            raise ConfigError(f"{path}: anchors[{number}].seen_items: expected one of {list(SEEN_ITEMS)}, got {got!r}")


def read_plan(path: str | Path) -> dict[str, Any]:
    plan = read_yaml(path)
    unknown = set(plan) - PLAN_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown plan keys {sorted(unknown)}; a plan has {sorted(PLAN_KEYS)}")
    if not isinstance(plan.get("runs"), dict) or not plan["runs"]:
        raise ConfigError(f"{path}: 'runs' must map run names to config dicts")
    for name, run in plan["runs"].items():
        if not isinstance(run, dict) or "model" not in run:
            raise ConfigError(f"{path}: run '{name}' needs a 'model' key")
    plan.setdefault("seeds", [2020])
    plan.setdefault("common", {})
    target = plan.get("time_to")
    if target is not None and not (
        isinstance(target, dict) and len(target) == 1 and all(isinstance(v, (int, float)) for v in target.values())
    ):
        raise ConfigError(f"{path}: time_to: expected one metric and its level, like {{ndcg@10: 0.06}}, got {target!r}")
    if "anchors" in plan:
        _check_anchors(path, plan["anchors"])
    not_run = plan.get("not_run", {})
    if not isinstance(not_run, dict) or not all(isinstance(v, str) and v.strip() for v in not_run.values()):
        raise ConfigError(f"{path}: not_run: expected a mapping of model to the reason it was not run, got {not_run!r}")
    return plan


def run_seeds(plan: dict[str, Any], name: str) -> list[int]:
    """The run's own ``seeds`` if it gives them, else the plan's."""
    return list(plan["runs"][name].get("seeds", plan["seeds"]))


def _run_keys(plan: dict[str, Any], name: str) -> dict[str, Any]:
    """The config keys the plan sets for run ``name``: its ``common`` keys, then the run's own."""
    return {**plan["common"], **{key: value for key, value in plan["runs"][name].items() if key != "seeds"}}


def _run_config(plan: dict[str, Any], name: str, seed: int) -> dict[str, Any]:
    return {"dataset": plan["dataset"], **_run_keys(plan, name), "seed": seed, "show_progress": False}


def _status(folder: Path, config: Config) -> str:
    """``todo``, ``resume``, ``done`` or ``failed`` (its loss diverged) for one run folder."""
    results_path = folder / "results.json"
    if not results_path.exists():
        return "resume" if (folder / "checkpoint.pt").exists() else "todo"
    results = json.loads(results_path.read_text())
    if results.get("status") == "failed":  # diverged: running it again would diverge again
        return "failed"
    if results.get("status") != "finished":
        return "resume"
    budget = config.time_budget
    if results.get("stopped_by") == "time_budget" and budget and results["elapsed_seconds"] < budget * 0.98:
        return "resume"  # the plan's budget was raised since
    if results.get("stopped_by") == "epochs" and config.epochs > results["epochs_run"]:
        return "resume"
    return "done"


@contextlib.contextmanager
def _claim(folder: Path) -> Iterator[bool]:
    """Hold ``folder/.lock`` (an exclusive ``flock``) while a run trains; False if another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
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
) -> None:
    """Train every (run, seed) of the plan not done yet (only the runs ``only`` and seeds ``seeds`` if given)."""
    plan = read_plan(plan_path)
    output = Path(output)
    started = time.monotonic()
    for name in plan["runs"]:
        if only and name not in only:
            continue
        for seed in run_seeds(plan, name):
            if seeds and seed not in seeds:
                continue
            if deadline is not None and time.monotonic() - started >= deadline:
                log(f"deadline of {deadline:.0f} s reached; run the same command again to go on")
                return
            folder = output / "runs" / name / f"seed{seed}"
            overrides = _run_config(plan, name, seed)
            config, notices = load_config(overrides=overrides)
            status = _status(folder, config)
            if status == "done":
                continue
            if status == "failed":
                log(f"{name} seed {seed}: failed earlier (see {folder / 'results.json'}); skipped")
                continue
            with _claim(folder) as claimed:
                if not claimed:  # another invocation is running it: two invocations share a plan
                    log(f"{name} seed {seed}: running in another process; skipped")
                    continue
                log(f"{name} seed {seed}: {'resuming' if status == 'resume' else 'starting'} in {folder}")
                api.run(config, output_dir=folder, resume=status == "resume", notices=notices)


def collect(output: str | Path) -> list[dict[str, Any]]:
    """Every finished results.json under OUTPUT/runs/<run>/seed*/, with its run name."""
    rows = []
    for path in sorted(Path(output).glob("runs/*/seed*/results.json")):
        results = json.loads(path.read_text())
        if results.get("status") == "finished":
            results["_run"] = path.parent.parent.name
            rows.append(results)
    return rows


def add_seen_removed(plan_path: str | Path, output: str | Path) -> list[str]:
    """Give every finished run of the plan that lacks them its test metrics with seen items removed.

    Runs trained before the trainer computed ``test_seen_removed`` get them here from their
    ``best.pt`` (kept only on the machine that trained them), on one thread. The saved model must
    first reproduce the run's recorded test NDCG@10 and HR@10 (to 1e-4), so the added figures belong
    to the same weights. Returns a line per run touched.
    """
    from tim4rec.evaluation import evaluate, load_for_evaluation

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


def _set_value(value: Any) -> str:
    """A config value as ``--set key=VALUE`` reads it back (YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def train_command(plan: dict[str, Any], name: str, results: dict[str, Any]) -> str:
    """The ``tim4rec train`` command that trains what the plan's (run, seed) trained into ``results``.

    The settings are the plan's keys for the run; their values are the ones the run recorded (a run
    whose budget was changed for a session shows the budget it ran under). ``--output`` is relative
    to the plan's output folder.
    """
    keys = _run_keys(plan, name)
    model = keys.pop("model")
    recorded = results["config"]
    parts = ["tim4rec", "train", "--model", model, "--dataset", str(plan["dataset"])]
    for key in keys:
        parts += ["--set", f"{key}={_set_value(recorded.get(key, keys[key]))}"]
    parts += ["--set", f"seed={results['seed']}", "--output", f"runs/{name}/seed{results['seed']}"]
    return shlex.join(parts)


def _mean_spread(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _epochs_reached(results: dict[str, Any]) -> str:
    """``"12"``, or ``"3.4"`` when the last epoch was cut by a limit."""
    last = results["epochs"][-1] if results["epochs"] else None
    if last and last.get("partial") and last.get("fraction"):
        return f"{results['epochs_run'] - 1 + last['fraction']:.2f}"
    return str(results["epochs_run"])


def time_to(results: dict[str, Any], metric: str, value: float) -> float | None:
    """Wall seconds (training and validation, compiling included) until the validation ``metric``
    first reached ``value``; None if it never did."""
    elapsed = 0.0
    for epoch in results["epochs"]:
        elapsed += epoch["train_seconds"] + epoch.get("valid_seconds", 0.0)
        if epoch["valid"][metric] >= value:
            return elapsed
    return None


def summarise(results: list[dict[str, Any]], target: dict[str, float] | None = None) -> list[dict[str, Any]]:
    by_run: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_run.setdefault(r["_run"], []).append(r)
    summary = []
    for name, runs in by_run.items():
        row: dict[str, Any] = {
            "run": name,
            "model": runs[0]["model"],
            "regime": runs[0]["regime"],
            "seeds": [r["seed"] for r in runs],
            "threads": sorted({r["threads"] for r in runs}),
        }
        for metric in runs[0]["test"]:
            row[f"test_{metric}"], row[f"test_{metric}_std"] = _mean_spread([r["test"][metric] for r in runs])
        if all("test_seen_removed" in r for r in runs):
            for metric in SEEN_REMOVED_METRICS:
                row[f"seen_removed_{metric}"], row[f"seen_removed_{metric}_std"] = _mean_spread(
                    [r["test_seen_removed"][metric] for r in runs]
                )
        per_epoch = [r["seconds_per_epoch"] for r in runs if r["seconds_per_epoch"]]
        # a run stopped inside its first epoch: extrapolate the epoch's time from the part done
        estimated = [
            e["train_seconds"] / e["fraction"]
            for r in runs
            if not r["seconds_per_epoch"]
            for e in r["epochs"][-1:]
            if e.get("fraction")
        ]
        row["seconds_per_epoch"], row["seconds_per_epoch_std"] = _mean_spread(per_epoch + estimated)
        row["seconds_per_epoch_estimated"] = bool(estimated)
        row["best_epoch"] = [r["best_epoch"] for r in runs]
        row["epochs_run"] = [_epochs_reached(r) for r in runs]
        row["stopped_by"] = sorted({r["stopped_by"] for r in runs})
        row["budget"] = sorted({r["config"].get("time_budget") for r in runs if r["stopped_by"] == "time_budget"})
        if target:
            ((metric, value),) = target.items()
            row["time_to"] = [time_to(r, metric, value) for r in runs]
        summary.append(row)
    return summary


def _cell(row: dict[str, Any], key: str) -> str:
    mean, spread = row[key], row.get(f"{key}_std", 0.0)
    return f"{mean:.4f} ± {spread:.4f}" if len(row["seeds"]) > 1 else f"{mean:.4f}"


def _metric_title(metric: str) -> str:
    return metric.replace("hit", "HR").replace("ndcg", "NDCG").replace("mrr", "MRR")


def markdown(summary: list[dict[str, Any]], title: str, dataset: str, target: dict[str, float] | None = None) -> str:
    ((metric, value),) = (target or {"": 0}).items()
    reached = f" | s to valid {_metric_title(metric)} ≥ {value:g}" if target else ""
    lines = [
        f"# {title}",
        "",
        f"Dataset `{dataset}`; test metrics at the best validation epoch (NDCG@10); "
        "mean ± sample standard deviation over seeds."
        + (
            " Time to a validation level: training and validation wall time until it was first reached."
            if target
            else ""
        ),
        "",
        "| run | model | regime | seeds | "
        + " | ".join(_metric_title(m) for m in TABLE_METRICS)
        + f" | s/epoch | best epoch | epochs | stopped by{reached} |",
        "|" + "---|" * (len(TABLE_METRICS) + 8 + bool(target)),
    ]
    for row in summary:
        stopped = ", ".join(
            s if s != "time_budget" else f"time budget ({', '.join(f'{b:.0f} s' for b in row['budget'])})"
            for s in row["stopped_by"]
        )
        lines.append(
            f"| {row['run']} | {row['model']} | {row['regime']} | {', '.join(map(str, row['seeds']))} | "
            + " | ".join(_cell(row, f"test_{m}") for m in TABLE_METRICS)
            + f" | {row['seconds_per_epoch']:.1f}{' (est.)' if row['seconds_per_epoch_estimated'] else ''}"
            + f" | {', '.join(map(str, row['best_epoch']))} | {', '.join(map(str, row['epochs_run']))} | {stopped}"
            + (" | " + ", ".join("not reached" if t is None else f"{t:.0f}" for t in row["time_to"]) if target else "")
            + " |"
        )
    return "\n".join(lines) + "\n"


def seen_removed_table(summary: list[dict[str, Any]]) -> str:
    """The runs' test metrics when the items each user already met are not ranked (if any run has them)."""
    rows = [row for row in summary if "seen_removed_ndcg@10" in row]
    if not rows:
        return ""
    lines = [
        "The same runs' test metrics when the items each user already met are not ranked (the protocol of "
        "some published figures; the table above ranks them, as RecBole's sequential evaluation does):",
        "",
        "| run | seeds | " + " | ".join(f"{_metric_title(m)}, seen removed" for m in SEEN_REMOVED_METRICS) + " |",
        "|" + "---|" * (len(SEEN_REMOVED_METRICS) + 2),
    ]
    for row in rows:
        cells = " | ".join(_cell(row, f"seen_removed_{m}") for m in SEEN_REMOVED_METRICS)
        lines.append(f"| {row['run']} | {', '.join(map(str, row['seeds']))} | {cells} |")
    return "\n".join(lines) + "\n"


def not_run_list(not_run: dict[str, str]) -> str:
    """The models a plan leaves out, with the reason for each."""
    return "Not run:\n\n" + "".join(f"- **{name}**: {why.strip()}\n" for name, why in not_run.items())


def anchors_table(anchors: list[dict[str, Any]]) -> str:
    """Published figures on the same dataset and protocol family, not run here."""
    lines = [
        "Published figures (not run here; `seen items` says whether that evaluation ranks the items a user "
        "already met):",
        "",
        "| model | source | HR@10 | NDCG@10 | seen items |",
        "|---|---|---|---|---|",
    ]
    for a in anchors:
        lines.append(f"| {a['model']} | {a['source']} | {a['hit@10']:.4f} | {a['ndcg@10']:.4f} | {a['seen_items']} |")
    return "\n".join(lines) + "\n"


def commands_block(plan: dict[str, Any], results: list[dict[str, Any]], order: list[str]) -> str:
    """Every (run, seed)'s ``tim4rec train`` command, folded (GitHub shows a ``<details>`` block closed)."""
    ordered = sorted(results, key=lambda r: (order.index(r["_run"]), r["seed"]))
    lines = [
        "<details><summary>The <code>tim4rec train</code> command of every row (run, seed); "
        "<code>--output</code> is relative to this folder</summary>",
        "",
        "```sh",
        *(train_command(plan, r["_run"], r) for r in ordered),
        "```",
        "",
        "</details>",
    ]
    return "\n".join(lines) + "\n"


def comparisons(results: list[dict[str, Any]], reference: str, order: list[str], *, seen_removed: bool = False) -> str:
    """A table of paired comparisons of each run against ``reference`` on per-user test NDCG@10
    (``seen_removed``: on the ranks with the items each user already met removed; "" if the
    reference has none)."""
    key = "test_seen_removed_ranks" if seen_removed else "test_ranks"
    by_run: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_run.setdefault(r["_run"], []).append(r)
    if reference not in by_run or not all(key in r for r in by_run[reference]):
        if seen_removed:
            return ""
        return f"(no paired comparison: run '{reference}' has no finished runs with per-user ranks)\n"
    base = per_user_ndcg(by_run[reference], key=key)
    lines = [
        f"Paired comparison with `{reference}` on per-user test NDCG@10"
        + (", seen items removed" if seen_removed else "")
        + " (each user's value averaged over the run's seeds): the difference of the means (run minus "
        "reference), its 95% bootstrap interval over users, and a two-sided sign-flip permutation p-value "
        "(10,000 draws each).",
        "",
        f"| run | users | ΔNDCG@10 vs {reference} | 95% interval | p |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(by_run, key=order.index):
        runs = by_run[name]
        if name == reference or not all(key in r for r in runs):
            continue
        c = paired_comparison(per_user_ndcg(runs, key=key), base)
        lines.append(f"| {name} | {c.users} | {c.difference:+.4f} | [{c.low:+.4f}, {c.high:+.4f}] | {c.p_value:.4f} |")
    return "\n".join(lines) + "\n"


def plot_validation(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    names = list(dict.fromkeys(r["_run"] for r in results))
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}  # one colour per run, its seeds alike
    labelled: set[str] = set()
    for r in results:
        epochs = [e["epoch"] for e in r["epochs"]]
        values = [e["valid"]["ndcg@10"] for e in r["epochs"]]
        name = r["_run"]
        style = {"color": colours[name], "alpha": 0.8, "label": None if name in labelled else name}
        labelled.add(name)
        if r["stopped_by"] == "nothing_to_learn":  # a popularity floor: a level across the plot
            axis.axhline(values[0], linestyle="--", **style)
        else:  # a marker shows a run that validated only once
            axis.plot(epochs, values, marker="o" if len(values) == 1 else None, **style)
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation NDCG@10")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report(plan_path: str | Path, output: str | Path) -> str:
    plan = read_plan(plan_path)
    output = Path(output)
    results = [r for r in collect(output) if r["_run"] in plan["runs"]]
    if not results:
        return "no finished runs yet"
    order = list(plan["runs"])
    target = plan.get("time_to")
    summary = sorted(summarise(results, target), key=lambda row: order.index(row["run"]))
    text = markdown(summary, plan.get("title", f"Quality on {plan['dataset']}"), plan["dataset"], target)
    if plan.get("compare_to"):
        text += "\n" + comparisons(results, plan["compare_to"], order)
    if plan.get("not_run"):
        text += "\n" + not_run_list(plan["not_run"])
    removed = seen_removed_table(summary)
    if removed:
        text += "\n" + removed
        if plan.get("compare_to") and (paired := comparisons(results, plan["compare_to"], order, seen_removed=True)):
            text += "\n" + paired
    if plan.get("anchors"):
        text += "\n" + anchors_table(plan["anchors"])
    text += "\n" + commands_block(plan, results, order)
    (output / "quality.md").write_text(text)
    keys = list(dict.fromkeys(key for row in summary for key in row))  # rows differ: seen-removed figures
    with open(output / "quality.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        for row in summary:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    plot_validation(results, output / "quality_valid_ndcg.png")
    write_json_atomic({"plan": plan, "summary": summary}, output / "quality.json")
    return text
