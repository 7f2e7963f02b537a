"""``tim4rec tune``: a hyper-parameter search on Optuna, chosen on validation only.

A search space is a YAML file of settings, each a range or a list::

    learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    hidden_dropout_prob: {type: float, low: 0.1, high: 0.5}
    num_layers: {type: int, low: 1, high: 3}
    d_state: {type: categorical, choices: [16, 32, 64]}

Every trial is one training run (its own folder under ``<study>/trials``) that never reads the test
users (``evaluate_test: false``); a trial whose validation score after an epoch falls below the median of
earlier trials at that epoch is pruned. The study lives in ``<study>/study.db`` (SQLite), so a killed
tuning resumes where it stopped (a trial that was running when it was killed is marked failed once its
heartbeat is stale) and several worker processes share it. When the study has its number of finished
trials, the best trial's model is evaluated on test once (``best.json``), and the trials are written as a
table and a plot (``trials.csv``, ``trials.md``, ``trials.png``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tim4rec.config import load_config
from tim4rec.errors import ConfigError
from tim4rec.io.tables import markdown_table, write_csv
from tim4rec.log import log

SPACE_TYPES = ("float", "int", "categorical")
STUDY_NAME = "tim4rec"


@dataclass(frozen=True)
class TuneOptions:
    model: str
    dataset: str
    space: str  #: the search space's YAML file
    trials: int  #: finished trials (complete or pruned) the study should have
    study_dir: str
    workers: int = 1  #: processes sharing the study (this one and workers - 1 more)
    set_args: tuple[str, ...] = ()  #: fixed settings for every trial ("key=value", as --set)
    config_files: tuple[str, ...] = ()
    prune: bool = True
    heartbeat: float = 30.0  #: seconds; a running trial silent for twice this long was killed
    seed: int = 2020


def load_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """The search space of a YAML file, checked: a :class:`ConfigError` names the file and the setting."""
    try:
        space = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the search space ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{path}: expected a mapping of settings to ranges, got {type(space).__name__}")
    for name, spec in space.items():
        where = f"{path}: {name}"
        if not isinstance(spec, dict) or spec.get("type") not in SPACE_TYPES:
            raise ConfigError(f"{where}: expected {{type: float|int|categorical, ...}}, got {spec!r}")
        if spec["type"] == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                raise ConfigError(f"{where}: a categorical setting needs a non-empty list of choices")
            continue
        low, high = spec.get("low"), spec.get("high")
        number = int if spec["type"] == "int" else (int, float)
        if not (isinstance(low, number) and isinstance(high, number)) or isinstance(low, bool) or low > high:
            raise ConfigError(f"{where}: expected numbers low <= high, got low={low!r}, high={high!r}")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got {low!r}")
    return space


def suggest(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One value per setting of ``space`` from an Optuna trial."""
    values = {}
    for name, spec in space.items():
        if spec["type"] == "categorical":
            values[name] = trial.suggest_categorical(name, spec["choices"])
        elif spec["type"] == "int":
            values[name] = trial.suggest_int(name, spec["low"], spec["high"], log=bool(spec.get("log")))
        else:
            values[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return values


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("tim4rec tune needs Optuna: pip install 'tim4rec[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_study(options: TuneOptions, worker: int = 0):
    """The study in ``<study_dir>/study.db``, created on first use; a resumed study must be the same search."""
    optuna = _optuna()
    folder = Path(options.study_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the heartbeat is marked experimental; it is what makes a killed trial end
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{folder.resolve() / 'study.db'}",
            heartbeat_interval=max(1, int(options.heartbeat)),
            grace_period=max(2, int(2 * options.heartbeat)),
            engine_kwargs={"connect_args": {"timeout": 120}},
        )
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1) if options.prune else None
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=options.seed + worker), pruner=pruner or optuna.pruners.NopPruner(),
    )  # fmt: skip
    space = load_space(options.space)
    fixed = {argument.split("=", 1)[0].strip() for argument in options.set_args}
    if fixed & set(space):
        raise ConfigError(f"--set {sorted(fixed & set(space))[0]}: that setting is searched ({options.space})")
    search = {"model": options.model, "dataset": options.dataset, "space": space, "settings": list(options.set_args),
              "config_files": list(options.config_files)}  # fmt: skip
    known = study.user_attrs.get("search")
    if known is None:
        study.set_user_attr("search", search)
    elif known != json.loads(json.dumps(search)):
        raise ConfigError(
            f"{folder}: holds a study of another search ({known['model']} on {known['dataset']}, its own space and "
            "settings); choose another --study-dir"
        )
    return study, space


def _objective(options: TuneOptions, space: dict[str, dict[str, Any]]):
    optuna = _optuna()
    from tim4rec.training.api import run

    def objective(trial) -> float:
        values = suggest(trial, space)
        config, notices = load_config(
            model=options.model, dataset=options.dataset, config_files=list(options.config_files),
            overrides=values, set_args=list(options.set_args),
        )  # fmt: skip
        config = dataclasses.replace(config, evaluate_test=False, show_progress=False)
        folder = Path(options.study_dir) / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("folder", str(folder))

        def report(epoch: int, score: float) -> None:
            trial.report(score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: validation {score:.4f} below the median of earlier trials")

        results = run(config, output_dir=folder, notices=notices, on_epoch=report)
        trial.set_user_attr("epochs", results["epochs_run"])
        trial.set_user_attr("best_epoch", results["best_epoch"])
        score = results["best_valid"][config.valid_key]
        log(f"trial {trial.number}: validation {config.valid_key} {score:.4f} with {values}")
        return score

    return objective


def _finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def tune(options: TuneOptions, *, worker: int = 0) -> dict[str, Any] | None:
    """Run the study until it has ``options.trials`` finished trials; the first worker then evaluates the best
    trial on test and writes the report (returned); other workers return None."""
    if options.trials < 1 or options.workers < 1:
        raise ConfigError(f"--trials and --workers: expected positive numbers, got {options.trials}, {options.workers}")
    optuna = _optuna()
    from tim4rec.training.trainer import Diverged

    study, space = open_study(options, worker)
    helpers = [_start_worker(options, index) for index in range(1, options.workers)] if worker == 0 else []
    stop = optuna.study.MaxTrialsCallback(
        options.trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )
    try:
        if _finished(study) < options.trials:
            study.optimize(_objective(options, space), callbacks=[stop], catch=(Diverged,), gc_after_trial=True)
    finally:
        for helper in helpers:
            helper.wait()
    if worker != 0:
        return None
    return report(study, Path(options.study_dir))


def _start_worker(options: TuneOptions, index: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "tim4rec", "tune", "--model", options.model, "--dataset", options.dataset,
               "--space", options.space, "--trials", str(options.trials), "--study-dir", options.study_dir,
               "--heartbeat", str(options.heartbeat), "--seed", str(options.seed), "--worker", str(index)]  # fmt: skip
    command += [arg for setting in options.set_args for arg in ("--set", setting)]
    command += [arg for path in options.config_files for arg in ("--config", path)]
    command += [] if options.prune else ["--no-prune"]
    return subprocess.Popen(command)


def report(study, folder: Path) -> dict[str, Any]:
    """Test metrics of the best trial's model (evaluated once: kept in ``best.json``), and the trials' table
    and plot."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    rows = [{"trial": t.number, "state": t.state.name.lower(), "value": t.value if t.value is not None else math.nan,
             "epochs": t.user_attrs.get("epochs", len(t.intermediate_values)),
             "seconds": t.duration.total_seconds() if t.duration else math.nan,
             **{f"param {k}": v for k, v in t.params.items()}} for t in trials]  # fmt: skip
    write_csv(rows, folder / "trials.csv")
    _plot(trials, folder / "trials.png")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise ConfigError(f"{folder}: no trial completed, so there is no best model to test")
    best = study.best_trial
    best_file = folder / "best.json"
    saved = json.loads(best_file.read_text()) if best_file.exists() else None
    if saved is None or saved.get("trial") != best.number:
        from tim4rec.evaluation import evaluate_saved_model

        model_file = Path(best.user_attrs["folder"]) / "best.pt"
        test = evaluate_saved_model(model_file, split="test")["metrics"]
        saved = {"trial": best.number, "params": best.params, "valid": best.value, "model": str(model_file),
                 "test": test}  # fmt: skip
        best_file.write_text(json.dumps(saved, indent=2))
    parameters = [(key, key.removeprefix("param ")) for key in rows[0] if key.startswith("param ")]
    columns = [("trial", "trial"), ("state", "state"), ("value", "valid score"), ("epochs", "epochs"),
               ("seconds", "s"), *parameters]  # fmt: skip
    text = (
        f"# Tuning: {len(complete)} complete of {len(trials)} trials\n\n"
        f"Best: trial {best.number}, validation {best.value:.4f}, {best.params}; test (read once): "
        + ", ".join(f"{k} {v:.4f}" for k, v in saved["test"].items())
        + "\n\n"
        + markdown_table(rows, columns)
    )
    (folder / "trials.md").write_text(text)
    return saved


def _plot(trials, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    done = [t for t in trials if t.value is not None]
    axis.plot([t.number for t in done], [t.value for t in done], "o", label="trial (validation)")
    best = itertools.accumulate((t.value for t in done), max)
    axis.plot([t.number for t in done], list(best), "-", label="best so far")
    for t in trials:
        if t.intermediate_values and t.value is None:
            axis.plot([t.number], [max(t.intermediate_values.values())], "x", color="grey")
    axis.set_xlabel("trial")
    axis.set_ylabel("validation score")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
