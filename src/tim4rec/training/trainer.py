"""The training loop: Adam on the model's loss, early stopping on validation, atomic checkpoints.

Files in the output folder:

- ``checkpoint.pt``: everything needed to continue (model, optimiser, RNG states, loop state),
  rewritten atomically after every epoch; ``--resume`` continues from it and reaches the same
  metrics as an uninterrupted run (the data order of epoch e depends only on (seed, e)).
- ``best.pt``: the weights of the best validation epoch, with what is needed to rebuild the
  model and map ids back (``tim4rec evaluate`` and serving load it).
- ``results.json``: config, dataset statistics, per-epoch history, best epoch and test metrics,
  rewritten atomically after every epoch (status ``running`` / ``interrupted`` / ``finished``).
"""

from __future__ import annotations

import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tim4rec
from tim4rec.config import metric_names, valid_metric_key
from tim4rec.data import SequenceData, interactions_from_config
from tim4rec.errors import ConfigError, Tim4RecError
from tim4rec.evaluation.evaluator import evaluate
from tim4rec.models import create, model_class
from tim4rec.training.checkpoint import load_checkpoint, save_atomic, write_json_atomic

#: config keys that may change when a run is resumed (limits, not the experiment)
RESUMABLE_CHANGES = {
    "epochs",
    "max_steps",
    "time_budget",
    "threads",
    "flush_denormal",
    "show_progress",
    "eval_batch_size",
    "output_dir",
    "data_cache",
    "_config_files",
}


def log(message: str) -> None:
    print(f"tim4rec: {message}", file=sys.stderr, flush=True)


def set_flush_denormal(enabled: bool) -> bool:
    """Turn the CPU's flush-to-zero of denormal numbers on or off (process-wide); True if it is now on.

    Denormal numbers (float32 below 1.2e-38, float64 below 2.2e-308) take a slow path in the CPU's
    arithmetic. The SSD models' gradients decay through the state towards old positions and pass
    through that range: flushing them (FTZ/DAZ) made TiM4Rec's training step at L = 3200 3.4x
    faster on one CPU thread (docs/benchmarks/denormals), changing no normal number. Where the CPU cannot
    flush, this reports False.
    """
    accepted = torch.set_flush_denormal(enabled)
    return enabled and accepted


def resolve_threads(threads: int | None) -> int:
    if threads:
        return int(threads)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_output_dir(config: dict[str, Any]) -> Path:
    dataset = Path(str(config["dataset"])).name.replace(".", "_")
    return Path("runs") / f"{config['model']}-{dataset}-seed{config['seed']}"


def versions() -> dict[str, str]:
    import pandas

    return {
        "tim4rec": tim4rec.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "python": platform.python_version(),
    }


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load],
    }


class Trainer:
    """Runs one experiment described by a merged config (see :mod:`tim4rec.config`)."""

    def __init__(
        self, config: dict[str, Any], output_dir: str | Path | None = None, *, notices: list[str] | None = None
    ):
        self.config = dict(config)
        self.output_dir = Path(output_dir or config.get("output_dir") or default_output_dir(config))
        self.notices = list(notices or [])
        self.epoch_end_hook: Callable[[int], None] | None = None  # tests use it to simulate a kill

    # ------------------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        config = self.config
        self.threads = resolve_threads(config.get("threads"))
        torch.set_num_threads(self.threads)
        self.flush_denormal = set_flush_denormal(self.config["flush_denormal"])  # for the duration of fit
        cls = model_class(config["model"])
        self.interactions = interactions_from_config(config)
        self.hyperparameters = {key: config[key] for key in cls.hyperparameters}
        self._seed_everything(config["seed"])
        self.model = create(cls.name, self.interactions.n_items, config["MAX_ITEM_LIST_LENGTH"], **self.hyperparameters)
        self.regime = config.get("train_regime") or self.model.regime
        if self.regime == "causal" and not self.model.causal:
            raise ConfigError(
                f"train_regime: model '{cls.name}' (as configured) is not causal, "
                "so it trains only in the prefix regime"
            )
        self.data = SequenceData(self.interactions, config["MAX_ITEM_LIST_LENGTH"])
        self.train_samples = self.data.train_samples(self.regime)
        self.target_counts = {
            regime: self.data.n_targets(
                self.data.train_samples(regime) if regime != self.regime else self.train_samples
            )
            for regime in ("prefix", "causal")
        }
        # train_batch_size counts training targets: a causal batch holds about as many targets
        # (windows x L) as a prefix batch holds samples, so both regimes take similar steps.
        self.batch_rows = (
            config["train_batch_size"]
            if self.regime == "prefix"
            else max(1, round(config["train_batch_size"] / config["MAX_ITEM_LIST_LENGTH"]))
        )
        self.valid_samples = self.data.evaluation_samples("valid")
        self.test_samples = self.data.evaluation_samples("test")
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"]
        )
        self.ks = list(config["topk"])
        self.metric_names = metric_names(config)
        self.valid_key = valid_metric_key(config)
        self.state: dict[str, Any] = {
            "epoch": 0,
            "step": 0,
            "elapsed": 0.0,
            "best_score": -math.inf,
            "best_epoch": None,
            "best_valid": None,
            "epochs_since_best": 0,
            "history": [],
            "stopped_by": None,
        }

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _rng_state(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}

    def _restore_rng(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])

    # ------------------------------------------------------------------------------ files
    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / "checkpoint.pt"

    @property
    def best_path(self) -> Path:
        return self.output_dir / "best.pt"

    @property
    def results_path(self) -> Path:
        return self.output_dir / "results.json"

    def _save_checkpoint(self) -> None:
        save_atomic(
            {
                "format": "tim4rec-checkpoint-1",
                "config": self.config,
                "model_state": self.model.state_dict(),
                "optimizer_state": self.optimizer.state_dict(),
                "rng": self._rng_state(),
                "state": self.state,
            },
            self.checkpoint_path,
        )

    def _save_best(self) -> None:
        save_atomic(
            {
                "format": "tim4rec-model-1",
                "model": self.config["model"],
                "n_items": self.interactions.n_items,
                "max_seq_length": self.config["MAX_ITEM_LIST_LENGTH"],
                "hyperparameters": self.hyperparameters,
                "model_state": self.model.state_dict(),
                "config": self.config,
                "item_tokens": self.interactions.item_tokens.tolist(),
                "epoch": self.state["best_epoch"],
                "valid": self.state["best_valid"],
            },
            self.best_path,
        )

    def _resume(self) -> None:
        if not self.checkpoint_path.exists():
            raise Tim4RecError(f"{self.checkpoint_path}: no checkpoint to resume from")
        checkpoint = load_checkpoint(self.checkpoint_path)
        saved = checkpoint["config"]
        changed = sorted(
            key
            for key in set(saved) | set(self.config)
            if key not in RESUMABLE_CHANGES and saved.get(key) != self.config.get(key)
        )
        if changed:
            details = ", ".join(f"{key}: {saved.get(key)!r} -> {self.config.get(key)!r}" for key in changed)
            raise ConfigError(f"--resume: the config differs from the checkpoint's in {details}")
        self.model.load_state_dict(checkpoint["model_state"])
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        self._restore_rng(checkpoint["rng"])
        self.state = checkpoint["state"]
        self.state["stopped_by"] = None
        log(f"resumed {self.output_dir} after epoch {self.state['epoch']} (step {self.state['step']})")

    def results(self, status: str, test: dict[str, float] | None = None) -> dict[str, Any]:
        history = self.state["history"]
        full_epochs = [entry for entry in history if not entry["partial"]]
        return {
            "status": status,
            "model": self.config["model"],
            "dataset": str(self.config["dataset"]),
            "config": {k: v for k, v in self.config.items() if not k.startswith("_")},
            "config_files": self.config.get("_config_files", []),
            "notices": self.notices,
            "dataset_stats": self.interactions.stats(),
            "data_order": self.interactions.time_order,
            "regime": self.regime,
            "train_targets": self.target_counts,
            "train_samples": len(self.train_samples),
            "rows_per_batch": self.batch_rows,
            "evaluated_users": len(self.test_samples),
            "seed": self.config["seed"],
            "threads": self.threads,
            "flush_denormal": self.flush_denormal,
            "n_parameters": sum(p.numel() for p in self.model.parameters()),
            "epochs": history,
            "epochs_run": len(history),
            "steps": self.state["step"],
            "seconds_per_epoch": float(np.mean([e["train_seconds"] for e in full_epochs])) if full_epochs else None,
            "elapsed_seconds": self.state["elapsed"],
            "best_epoch": self.state["best_epoch"],
            "best_valid": self.state["best_valid"],
            "valid_metric": self.valid_key,
            "stopped_by": self.state["stopped_by"],
            "test": test,
            "versions": versions(),
            "machine": self.machine,
            "output_dir": str(self.output_dir),
        }

    # ------------------------------------------------------------------------------ loop
    def _limit_reached(self, started: float) -> str | None:
        config = self.config
        if config.get("max_steps") and self.state["step"] >= config["max_steps"]:
            return "max_steps"
        if (
            config.get("time_budget")
            and self.state["elapsed"] + (time.perf_counter() - started) >= config["time_budget"]
        ):
            return "time_budget"
        return None

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        from tqdm import tqdm

        config = self.config
        generator = torch.Generator().manual_seed(config["seed"] * 1_000_003 + epoch)
        n_batches = math.ceil(len(self.train_samples) / self.batch_rows)
        batches = self.data.iterate(self.train_samples, self.batch_rows, generator=generator)
        progress = tqdm(
            batches,
            total=n_batches,
            desc=f"epoch {epoch}",
            unit="batch",
            leave=False,
            dynamic_ncols=True,
            disable=not config.get("show_progress", True) or None,
            file=sys.stderr,
        )
        self.model.train()
        started = time.perf_counter()
        total_loss, n_steps, n_samples, partial = 0.0, 0, 0, False
        for batch in progress:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.model.calculate_loss(batch)
            loss.backward()
            self.optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise Tim4RecError(
                    f"epoch {epoch}, step {self.state['step'] + 1}: the loss is {value}; lower learning_rate"
                )
            total_loss += value
            n_steps += 1
            n_samples += len(batch["item_seq"])
            self.state["step"] += 1
            progress.set_postfix(
                loss=f"{total_loss / n_steps:.4f}", samples_s=f"{n_samples / (time.perf_counter() - started):.0f}"
            )
            limit = self._limit_reached(started)
            if limit:
                self.state["stopped_by"] = limit
                partial = n_steps < n_batches
                break
        progress.close()
        seconds = time.perf_counter() - started
        self.state["elapsed"] += seconds
        return {
            "epoch": epoch,
            "loss": total_loss / max(1, n_steps),
            "steps": n_steps,
            "train_seconds": seconds,
            "samples_per_second": n_samples / seconds if seconds else None,
            "partial": partial,
            "fraction": n_steps / n_batches,
        }

    def _evaluate(self, samples) -> dict[str, float]:
        return evaluate(
            self.model,
            self.data,
            samples,
            batch_size=self.config["eval_batch_size"],
            ks=self.ks,
            metric_names=self.metric_names,
            mask_history=bool(self.config.get("mask_history")),
        )

    def fit(self, *, resume: bool = False) -> dict[str, Any]:
        """Train (or continue), then evaluate the best epoch on test; returns the results dict."""
        try:
            return self._fit(resume)
        finally:
            set_flush_denormal(False)  # PyTorch's default again (set by _setup for this run)

    def _fit(self, resume: bool) -> dict[str, Any]:
        self.machine = machine()
        self._setup()
        if resume:
            self._resume()
        elif self.checkpoint_path.exists() or self.results_path.exists():
            raise Tim4RecError(
                f"{self.output_dir} already holds a run; pass --resume to continue it or choose another --output"
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        config = self.config
        log(
            f"{config['model']} on {self.interactions.source}: {self.interactions.n_users} users, "
            f"{self.interactions.n_items} items, {self.interactions.n_interactions} interactions; "
            f"regime {self.regime} ({self.target_counts[self.regime]} targets in {len(self.train_samples)} samples); "
            f"{self.threads} threads; output {self.output_dir}"
        )
        for notice in self.notices:
            log(notice)
        try:
            while self.state["stopped_by"] is None:
                limit = self._limit_reached(time.perf_counter()) if self.state["step"] else None
                if limit:  # a resumed run whose limit is already spent: evaluate, train no further
                    self.state["stopped_by"] = limit
                    break
                if self.state["epoch"] >= config["epochs"]:
                    self.state["stopped_by"] = "epochs"
                    break
                if self.state["epochs_since_best"] >= config["stopping_step"]:
                    self.state["stopped_by"] = "early_stopping"
                    break
                epoch = self.state["epoch"] + 1
                entry = self._train_epoch(epoch)
                started = time.perf_counter()
                valid = self._evaluate(self.valid_samples)
                entry["valid_seconds"] = time.perf_counter() - started
                self.state["elapsed"] += entry["valid_seconds"]
                entry["valid"] = valid
                score = valid[self.valid_key]
                improved = score > self.state["best_score"]
                if improved:
                    self.state.update(best_score=score, best_epoch=epoch, best_valid=valid, epochs_since_best=0)
                else:
                    self.state["epochs_since_best"] += 1
                self.state["epoch"] = epoch
                self.state["history"].append(entry)
                if improved:
                    self._save_best()
                self._save_checkpoint()
                write_json_atomic(self.results("running"), self.results_path)
                log(
                    f"epoch {epoch}: loss {entry['loss']:.4f}, {entry['train_seconds']:.1f} s train "
                    f"({entry['samples_per_second']:.0f} samples/s), valid {self.valid_key} {score:.4f}"
                    + (
                        " (best)"
                        if improved
                        else f" (best {self.state['best_score']:.4f} at epoch {self.state['best_epoch']})"
                    )
                    + (f"; stopped by {self.state['stopped_by']}" if self.state["stopped_by"] else "")
                )
                if self.epoch_end_hook is not None:
                    self.epoch_end_hook(epoch)
        except KeyboardInterrupt:
            if self.results_path.exists():
                write_json_atomic({**self.results("interrupted")}, self.results_path)
            log(f"interrupted; the last complete epoch is saved in {self.checkpoint_path}; continue with --resume")
            raise
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Evaluate the best epoch's weights on the test users and write the final results."""
        if not self.best_path.exists():
            raise Tim4RecError("no epoch finished, so there is no model to evaluate; raise the limits")
        best = load_checkpoint(self.best_path)
        self.model.load_state_dict(best["model_state"])
        test = self._evaluate(self.test_samples)
        results = self.results("finished", test)
        write_json_atomic(results, self.results_path)
        log(
            f"best epoch {self.state['best_epoch']} of {self.state['epoch']} ({self.state['stopped_by']}); "
            f"results in {self.results_path}"
        )
        return results
