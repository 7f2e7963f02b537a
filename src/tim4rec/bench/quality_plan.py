"""A quality plan read and checked, and what the runner and the report both take from it: each run's seeds,
config keys and ``tim4rec train`` command, the finished runs found under the plan's output folder, and
whether a finished run trained all the plan asks of it.

The plan format is described in :mod:`tim4rec.bench.quality` (the runner); the tables are
:mod:`tim4rec.bench.quality_report`'s.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tim4rec.errors import ConfigError

if TYPE_CHECKING:
    from tim4rec.config import Config

PLAN_KEYS = {"dataset", "seeds", "common", "runs", "title", "time_to", "compare_to", "anchors", "not_run"}
ANCHOR_KEYS = {"model", "source", "hit@10", "ndcg@10", "seen_items"}
SEEN_ITEMS = ("ranked", "removed", "not stated")
#: a run's keys that are the plan's, not config keys: its own seeds, and the row whose setting it was tried for
RUN_PLAN_KEYS = ("seeds", "alternative_to")


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
    from tim4rec.config import read_yaml

    plan = read_yaml(path)
    unknown = set(plan) - PLAN_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown plan keys {sorted(unknown)}; a plan has {sorted(PLAN_KEYS)}")
    if not isinstance(plan.get("runs"), dict) or not plan["runs"]:
        raise ConfigError(f"{path}: 'runs' must map run names to config dicts")
    for name, run in plan["runs"].items():
        if not isinstance(run, dict) or "model" not in run:
            raise ConfigError(f"{path}: run '{name}' needs a 'model' key")
    for name, row in alternatives(plan).items():
        if row == name or row not in plan["runs"] or "alternative_to" in plan["runs"][row]:
            raise ConfigError(
                f"{path}: runs.{name}.alternative_to: expected another run of the plan that is not itself an "
                f"alternative, got {row!r}"
            )
        if plan.get("compare_to") == name:
            raise ConfigError(f"{path}: compare_to: {name!r} is set aside (alternative_to: {row}); compare to a row")
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


def alternatives(plan: dict[str, Any]) -> dict[str, str]:
    """{run: row} for the runs that tried a setting for another run's row and were set aside on validation
    (``alternative_to: ROW``): the report shows them and leaves them out of its reading's verdicts."""
    return {name: run["alternative_to"] for name, run in plan["runs"].items() if "alternative_to" in run}


def run_seeds(plan: dict[str, Any], name: str) -> list[int]:
    """The run's own ``seeds`` if it gives them, else the plan's."""
    return list(plan["runs"][name].get("seeds", plan["seeds"]))


def run_keys(plan: dict[str, Any], name: str) -> dict[str, Any]:
    """The config keys the plan sets for run ``name``: its ``common`` keys, then the run's own."""
    own = {key: value for key, value in plan["runs"][name].items() if key not in RUN_PLAN_KEYS}
    return {**plan["common"], **own}


def run_config(plan: dict[str, Any], name: str, seed: int) -> dict[str, Any]:
    """The config overrides that train the plan's run ``name`` at ``seed``."""
    return {"dataset": plan["dataset"], **run_keys(plan, name), "seed": seed, "show_progress": False}


def unfinished(results: dict[str, Any], config: Config) -> bool:
    """Whether the run of ``results`` has more to train under ``config``: it did not finish, or a budget or
    an epoch count lower than ``config``'s stopped it (a budget spent to within 2% counts as spent)."""
    budget = config.time_budget
    return (
        results.get("status") != "finished"
        or (results.get("stopped_by") == "time_budget" and bool(budget) and results["elapsed_seconds"] < budget * 0.98)
        or (results.get("stopped_by") == "epochs" and config.epochs > results["epochs_run"])
    )


def complete_under_plan(plan: dict[str, Any], results: dict[str, Any]) -> bool:
    """Whether a finished run (a :func:`collect` row) trained all the plan asks of it: the tables leave out
    a run that a cut budget (``--deadline``) stopped short, until it is resumed."""
    from tim4rec.config import load_config

    config, _ = load_config(overrides=run_config(plan, results["_run"], results["seed"]))
    return not unfinished(results, config)


def collect(output: str | Path) -> list[dict[str, Any]]:
    """Every finished results.json under OUTPUT/runs/<run>/seed*/, with its run name."""
    rows = []
    for path in sorted(Path(output).glob("runs/*/seed*/results.json")):
        results = json.loads(path.read_text())
        if results.get("status") == "finished":
            results["_run"] = path.parent.parent.name
            rows.append(results)
    return rows


def _set_value(value: Any) -> str:
    """A config value as ``--set key=VALUE`` reads it back (YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:  # a plan's `key: null` (a setting switched off, as lr_decay_patience)
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def train_command(plan: dict[str, Any], name: str, results: dict[str, Any]) -> str:
    """The ``tim4rec train`` command that trains what the plan's (run, seed) trained into ``results``.

    The settings are the plan's keys for the run; their values are the ones the run recorded (a run
    whose budget was changed for a session shows the budget it ran under). ``--output`` is relative
    to the plan's output folder.
    """
    keys = run_keys(plan, name)
    model = keys.pop("model")
    recorded = results["config"]
    parts = ["tim4rec", "train", "--model", model, "--dataset", str(plan["dataset"])]
    for key in keys:
        parts += ["--set", f"{key}={_set_value(recorded.get(key, keys[key]))}"]
    parts += ["--set", f"seed={results['seed']}", "--output", f"runs/{name}/seed{results['seed']}"]
    return shlex.join(parts)
