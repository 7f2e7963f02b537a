"""The report of a quality plan: ``quality.md`` (the table, paired per-user comparisons, the
seen-removed table, anchors, every row's ``tim4rec train`` command), ``quality.csv``,
``quality.json`` and ``quality_valid_ndcg.png`` (validation NDCG@10 per epoch), from the finished
``results.json`` files of the plan's runs (see ``tim4rec.bench.quality`` for the plan format).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tim4rec.bench.quality_plan import alternatives, collect, complete_under_plan, read_plan, train_command
from tim4rec.evaluation.significance import PairedComparison, paired_comparison, per_user_ndcg
from tim4rec.io import write_json_atomic
from tim4rec.log import log
from tim4rec.training.results import epoch_wall_seconds

TABLE_METRICS = ("ndcg@10", "hit@10", "mrr@10", "ndcg@50", "hit@50")
SEEN_REMOVED_METRICS = ("ndcg@10", "hit@10", "mrr@10")


def _mean_spread(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def epochs_reached(results: dict[str, Any]) -> str:
    """Epochs trained: ``"12"``, or ``"31.07"`` when a limit cut epochs short. Each cut epoch counts
    the fraction of it done, wherever it lies: runs trained before the trainer finished a cut epoch on
    resume hold one in the middle of their history, not only at its end."""
    cut = [e["fraction"] for e in results["epochs"] if e.get("partial") and e.get("fraction")]
    if not cut:
        return str(results["epochs_run"])
    return f"{results['epochs_run'] - len(cut) + sum(cut):.2f}"


def time_to(results: dict[str, Any], metric: str, value: float) -> float | None:
    """Wall seconds (training and validation, compiling included) until the validation ``metric``
    first reached ``value``; None if it never did."""
    elapsed = 0.0
    for epoch in results["epochs"]:
        elapsed += epoch_wall_seconds(epoch)
        if epoch["valid"][metric] >= value:
            return elapsed
    return None


def _by_run(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The finished runs grouped by run name (each group: that run's seeds), in the order met."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_run.setdefault(r["_run"], []).append(r)
    return by_run


def _by_metric(metrics: list[dict[str, float]]) -> dict[str, list[float]]:
    """Each metric's values over several runs' metric dicts."""
    return {name: [m[name] for m in metrics] for name in metrics[0]}


def summarise(results: list[dict[str, Any]], target: dict[str, float] | None = None) -> list[dict[str, Any]]:
    summary = []
    for name, runs in _by_run(results).items():
        row: dict[str, Any] = {
            "run": name,
            "plan_run": name,
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
        row["epochs_run"] = [epochs_reached(r) for r in runs]
        row["stopped_by"] = sorted({r["stopped_by"] for r in runs})
        row["budget"] = sorted({r["config"].get("time_budget") for r in runs if r["stopped_by"] == "time_budget"})
        if target:
            ((metric, value),) = target.items()
            row["time_to"] = [time_to(r, metric, value) for r in runs]
        summary.append(row)
        if all("test_gap0" in r for r in runs):  # read the held-out event's time: the same model at a gap of 0
            row["run"] = f"{name} (reads the held-out event's time)"
            gap0 = {**row, "run": f"{name} (the same models at a gap of 0)"}
            for metric, values in _by_metric([r["test_gap0"] for r in runs]).items():
                gap0[f"test_{metric}"], gap0[f"test_{metric}_std"] = _mean_spread(values)
            summary.append({k: v for k, v in gap0.items() if not k.startswith("seen_removed_")})
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


class PairedTests:
    """The paired per-user tests of one report, each pair and protocol computed once: the comparison
    tables and the plain reading ask for the same pairs (the reading the other way round)."""

    def __init__(self, results: list[dict[str, Any]]) -> None:
        self.by_run = _by_run(results)
        self.done: dict[tuple[str, str, str], PairedComparison] = {}

    def __call__(self, name: str, base: str, key: str) -> PairedComparison:
        """Run ``name`` minus run ``base`` on per-user test NDCG@10 from the ranks under ``key``."""
        if (base, name, key) in self.done:
            return self.done[(base, name, key)].swapped()
        if (name, base, key) not in self.done:
            self.done[(name, base, key)] = paired_comparison(
                per_user_ndcg(self.by_run[name], key=key), per_user_ndcg(self.by_run[base], key=key)
            )
        return self.done[(name, base, key)]


def comparisons(
    results: list[dict[str, Any]],
    reference: str | dict[str, str],
    order: list[str],
    *,
    seen_removed: bool = False,
    tests: PairedTests | None = None,
) -> str:
    """A table of paired comparisons on per-user test NDCG@10 (``seen_removed``: on the ranks with the
    items each user already met removed): of each run against the run ``reference``, or of each run
    named in a ``{run: reference}`` mapping against its own reference. "" (seen removed) or a line
    saying so when a reference has no finished runs with per-user ranks."""
    key = "test_seen_removed_ranks" if seen_removed else "test_ranks"
    tests = tests or PairedTests(results)
    by_run = tests.by_run
    pairs = (
        dict(reference)
        if isinstance(reference, dict)
        else {name: reference for name in sorted(by_run, key=order.index) if name != reference}
    )
    missing = sorted({base for base in pairs.values() if not all(key in r for r in by_run.get(base, [{}]))})
    pairs = {name: base for name, base in pairs.items() if base not in missing}  # the pairs that can be compared
    if not pairs:
        return (
            ""
            if seen_removed
            else f"(no paired comparison: run(s) {missing} have no finished runs with per-user ranks)\n"
        )
    single = isinstance(reference, str)
    lines = [
        (f"Paired comparison with `{reference}`" if single else "Paired comparisons, each run with its reference,")
        + " on per-user test NDCG@10"
        + (", seen items removed" if seen_removed else "")
        + " (each user's value averaged over the run's seeds): the difference of the means (run minus "
        "reference), its 95% bootstrap interval over users, and a two-sided sign-flip permutation p-value "
        "(10,000 draws each).",
        "",
        f"| run | users | ΔNDCG@10 vs {reference} | 95% interval | p |" if single else
        "| run | reference | users | ΔNDCG@10 | 95% interval | p |",
        "|---|---|---|---|---|" + ("" if single else "---|"),
    ]  # fmt: skip
    for name, base in pairs.items():
        runs = by_run.get(name, [])
        if not runs or not all(key in r for r in runs):
            continue
        c = tests(name, base, key)
        cells = [name] + ([] if single else [base]) + [str(c.users), f"{c.difference:+.4f}",
                 f"[{c.low:+.4f}, {c.high:+.4f}]", f"{c.p_value:.4f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PROTOCOLS = (  # (results key of the test metrics, key of the per-user ranks, the protocol's name)
    ("test", "test_ranks", "seen items ranked"),
    ("test_seen_removed", "test_seen_removed_ranks", "seen items removed"),
)


def _margin_row(
    name: str,
    ref: list[float],
    other: list[float],
    runs: list[dict[str, Any]],
    ranks: str,
    reference_runs: list[dict[str, Any]],
    paired_test: Callable[[], PairedComparison],
) -> tuple[list[str], dict[str, bool]]:
    """One row of :func:`plain_reading`'s table: the reference's margin over run ``name`` (seed values
    ``ref`` and ``other``), the margin over the larger seed deviation, how the seed ranges lie, the
    paired test (``paired_test``: the reference minus the run, asked only when both have per-user
    ranks); and the verdicts (beyond the spread, paired p < 0.05, converged)."""
    margin = statistics.fmean(ref) - statistics.fmean(other)
    deviations = [statistics.stdev(v) for v in (ref, other) if len(v) > 1]
    ratio = f"{margin / max(deviations):.1f}" if deviations and max(deviations) > 0 else "-"
    if min(ref) > max(other):
        ranges = "apart: every seed above"
    elif max(ref) < min(other):
        ranges = "apart: every seed below"
    else:
        ranges = "overlap"
    paired, significant = "-", False
    if all(ranks in r for r in runs + reference_runs):
        c = paired_test()
        paired = f"{c.difference:+.4f} [{c.low:+.4f}, {c.high:+.4f}], p {c.p_value:.4f}"
        significant = c.p_value < 0.05 and c.low > 0  # the reference above the run, not only apart from it
    converged = _stopped_early(runs)
    stopped = ", ".join(sorted({r["stopped_by"].replace("_", " ") for r in runs}))
    cells = [f"`{name}`", str(len(other)), _seeds_cell(other), stopped, f"{margin:+.4f}", ratio, ranges, paired]
    return cells, {"apart": ranges == "apart: every seed above", "significant": significant, "converged": converged}


def _count(items: Any, noun: str = "seed") -> str:
    n = items if isinstance(items, int) else len(items)
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _seeds_cell(values: list[float]) -> str:
    mean, spread = _mean_spread(values)
    return f"{mean:.4f} ± {spread:.4f}" if len(values) > 1 else f"{mean:.4f}"


def _stopped_early(runs: list[dict[str, Any]]) -> bool:
    """Whether every seed ended by early stopping (or had nothing to learn: a popularity floor)."""
    return all(r["stopped_by"] in ("early_stopping", "nothing_to_learn") for r in runs)


def plain_reading(
    results: list[dict[str, Any]],
    reference: str,
    tests: PairedTests | None = None,
    alternatives: dict[str, str] | None = None,
) -> str:
    """The table read around the run ``reference`` on both protocols (seen items ranked, seen items
    removed), from test NDCG@10: which run leads, and for every other run the reference's margin, that
    margin over the larger of the two runs' seed deviations, whether the seed ranges overlap, and the
    paired per-user test (reference minus run); then one line saying whether the reference leads every
    run beyond the seed spread and by the paired test, naming the runs where it does not and the runs
    not stopped by early stopping. "" when the reference has no finished runs.

    ``alternatives`` ({run: row}, the plan's ``alternative_to``) are settings tried for another row and set
    aside on validation: their margins are shown, marked, but they neither lead nor count in the verdicts
    (choosing among a row's settings by test would be selection on the test set); a closing paragraph gives
    each one's validation beside its row's, and says so where the alternative validates higher."""
    tests = tests or PairedTests(results)
    by_run = tests.by_run
    alternatives = alternatives or {}
    if reference not in by_run:
        return ""
    sections = []
    for metrics, ranks, protocol in PROTOCOLS:
        values = {
            name: [r[metrics]["ndcg@10"] for r in runs]
            for name, runs in by_run.items()
            if all(r.get(metrics) for r in runs)
        }
        if reference not in values or len(values) < 2:
            continue
        rows = [name for name in values if name not in alternatives]
        leader = max(rows, key=lambda name: (statistics.fmean(values[name]), name == reference))
        ref = values[reference]
        lines = [
            f"**{protocol[0].upper() + protocol[1:]}.** "
            + (
                f"`{reference}` leads with test NDCG@10 {_seeds_cell(ref)} ({_count(ref)}). Its margin over each "
                "other run:"
                if leader == reference
                else f"`{leader}` leads with test NDCG@10 {_seeds_cell(values[leader])} ({_count(values[leader])}), "
                f"not `{reference}` ({_seeds_cell(ref)}). The margin of `{reference}` over each other run:"
            ),
            "",
            "| run | seeds | NDCG@10 | stopped by | margin | margin / larger sd | seed ranges | paired Δ [95%], p |",
            "|---|---|---|---|---|---|---|---|",
        ]
        verdicts = {}
        others = sorted((n for n in values if n != reference), key=lambda n: -statistics.fmean(values[n]))
        for name in others:
            cells, verdicts[name] = _margin_row(
                name, ref, values[name], by_run[name], ranks, by_run[reference],
                lambda name=name, ranks=ranks: tests(reference, name, ranks),
            )  # fmt: skip
            if name in alternatives:
                cells[0] += " (set aside)"
            lines.append("| " + " | ".join(cells) + " |")
        counted = {name: verdict for name, verdict in verdicts.items() if name not in alternatives}
        lines += [
            "",
            _verdict(reference, counted, _stopped_early(by_run[reference])),
        ]
        sections.append("\n".join(lines))
    if not sections:
        return ""
    head = (
        "How the table reads (test NDCG@10; margin: the reference's mean minus the run's; seed ranges: whether "
        "every seed of one lies above every seed of the other; paired Δ: the per-user paired comparison of the "
        "report's tables, its 95% bootstrap interval and permutation p):"
    )
    set_aside = _set_aside(by_run, alternatives)
    return head + "\n\n" + "\n\n".join(sections + ([set_aside] if set_aside else [])) + "\n"


def _best_validation(runs: list[dict[str, Any]], seeds: set[int]) -> float:
    """The mean over ``seeds`` of the runs' best validation score (the metric early stopping watched)."""
    return statistics.fmean(r["best_valid"][r["valid_metric"]] for r in runs if r["seed"] in seeds)


def _set_aside(by_run: dict[str, list[dict[str, Any]]], alternatives: dict[str, str]) -> str:
    """The closing paragraph of :func:`plain_reading` on the alternatives that have finished runs."""
    notes = []
    for name, row in alternatives.items():
        if name not in by_run:
            continue
        seeds = {r["seed"] for r in by_run[name]} & {r["seed"] for r in by_run.get(row, [])}
        if not seeds:
            notes.append(f"`{name}` for `{row}` (no finished run of `{row}` at its seeds yet)")
            continue
        metric = by_run[name][0]["valid_metric"]
        if {r["valid_metric"] for r in by_run[name] + by_run[row]} != {metric}:
            notes.append(f"`{name}` for `{row}` (validated on different metrics: not compared)")
            continue
        mine, theirs = _best_validation(by_run[name], seeds), _best_validation(by_run[row], seeds)
        at = "seed " + ", ".join(map(str, sorted(seeds)))
        note = f"`{name}` for `{row}` (best validation {metric} {mine:.4f} against {theirs:.4f}, {at})"
        if mine > theirs:
            note += ": it validates higher, so by this rule its setting should be the row's"
        notes.append(note)
    if not notes:
        return ""
    return (
        "Set aside on validation (a setting tried for another run's row and not taken; shown above, not counted "
        "in the verdicts): " + "; ".join(notes) + "."
    )


def _verdict(reference: str, verdicts: dict[str, dict[str, bool]], reference_converged: bool) -> str:
    """The one-line summary of :func:`plain_reading` for one protocol."""
    if not verdicts:
        return f"No other row to compare `{reference}` with."
    not_beaten = [n for n, v in verdicts.items() if not (v["apart"] and v["significant"])]
    unconverged = [n for n, v in verdicts.items() if not v["converged"]]
    line = (
        f"`{reference}` is above every run beyond the seed spread and by the paired test (p < 0.05)."
        if not not_beaten
        else f"`{reference}` is not above "
        + ", ".join(f"`{n}`" for n in not_beaten)
        + " both beyond the seed spread and by the paired test (p < 0.05)"
        + (
            f"; it is above the other {_count(len(verdicts) - len(not_beaten), 'run')} that way."
            if len(verdicts) > len(not_beaten)
            else "."
        )
    )
    if unconverged:
        line += (
            " Not stopped by early stopping (their figures may still rise): "
            + ", ".join(f"`{n}`" for n in unconverged)
            + "."
        )
    if not reference_converged:
        line += f" `{reference}` itself was not stopped by early stopping."
    return line


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
    for partial in [r for r in results if not complete_under_plan(plan, r)]:
        log(f"{partial['_run']} seed {partial['seed']}: stopped short of the plan (resume it); left out of the tables")
        results.remove(partial)
    if not results:
        return "no finished runs yet"
    order = list(plan["runs"])
    target = plan.get("time_to")
    summary = sorted(summarise(results, target), key=lambda row: order.index(row.pop("plan_run")))
    text = markdown(summary, plan.get("title", f"Quality on {plan['dataset']}"), plan["dataset"], target)
    tests = PairedTests(results)  # shared by the comparison tables and the reading
    compare_to = plan.get("compare_to")
    if compare_to:
        text += "\n" + comparisons(results, compare_to, order, tests=tests)
    if plan.get("not_run"):
        text += "\n" + not_run_list(plan["not_run"])
    removed = seen_removed_table(summary)
    if removed:
        text += "\n" + removed
        paired = comparisons(results, compare_to, order, seen_removed=True, tests=tests) if compare_to else ""
        if paired:
            text += "\n" + paired
    reading = plain_reading(results, compare_to, tests, alternatives(plan)) if isinstance(compare_to, str) else ""
    if reading:
        text += "\n" + reading
    if plan.get("anchors"):
        text += "\n" + anchors_table(plan["anchors"])
    text += "\n" + commands_block(plan, results, order)
    (output / "quality.md").write_text(text)
    if reading:  # for a page that quotes the reading alone (README.md: <!-- include: .../reading.md -->)
        (output / "reading.md").write_text(reading)
    else:  # a reading of an earlier report must not outlive the plan's compare_to
        (output / "reading.md").unlink(missing_ok=True)
    keys = list(dict.fromkeys(key for row in summary for key in row))  # rows differ: seen-removed figures
    with open(output / "quality.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        for row in summary:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    plot_validation(results, output / "quality_valid_ndcg.png")
    write_json_atomic({"plan": plan, "summary": summary}, output / "quality.json")
    return text
