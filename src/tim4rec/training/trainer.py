"""The training loop: epochs of Adam steps, validation, early stopping, atomic checkpoints.

:class:`Trainer` receives an :class:`~tim4rec.training.experiment.Experiment` (data, model, loss,
optimiser) and owns only the loop. Files in the output folder:

- ``checkpoint.pt``: everything needed to continue (model, optimiser, RNG states, loop state),
  rewritten atomically after every epoch; ``--resume`` continues from it and reaches the same
  metrics as an uninterrupted run (the data order of epoch e depends only on (seed, e)). When a
  limit (``time_budget``, ``max_steps``) stops an epoch part-way, the partial epoch is validated and
  reported (``partial: true``), and the checkpoint also keeps where the epoch stood: a resumed run
  that may train on drops that validation and finishes the epoch from the step it stopped at, so
  a run cut any number of times trains exactly what an uninterrupted one does. Ctrl-C or SIGTERM
  during the training steps does the same without the validation (:mod:`tim4rec.training.interrupts`:
  the step finishes, the epoch's place is saved, then the run stops; a second signal stops it at once).
- ``best.pt``: the weights of the best validation epoch, with what is needed to rebuild the
  model and map ids back (:mod:`tim4rec.io.saved_model`; ``tim4rec evaluate`` and serving load it).
  While a part-way epoch holds the best score, the best complete epoch's file waits beside it as
  ``best-full-epochs.pt``; finishing that epoch puts back the one that is then best.
- ``results.json``: config, dataset statistics, per-epoch history, best epoch and test metrics,
  rewritten atomically after every epoch (status ``running`` / ``interrupted`` / ``finished``).
- ``tensorboard/``: the same epochs as TensorBoard event files (``tensorboard=false``: none), and an
  MLflow run with ``mlflow=true`` (:mod:`tim4rec.training.tracking`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tim4rec.config import Config
from tim4rec.data.batches import REGIMES, Batch, SampleSet
from tim4rec.errors import ConfigError, DataError, Tim4RecError
from tim4rec.evaluation.evaluator import evaluate
from tim4rec.evaluation.metrics import metrics_from_ranks
from tim4rec.io import load_saved_model, save_model
from tim4rec.io.files import write_bytes_atomic
from tim4rec.log import log
from tim4rec.ops.kernels import paths_taken
from tim4rec.runtime import RuntimeSettings, machine, peak_rss_mib, versions
from tim4rec.training.checkpoint import (
    data_difference,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from tim4rec.training.experiment import Experiment, causal_window_length
from tim4rec.training.interrupts import HeldInterrupt
from tim4rec.training.results import RunResults, TrainingState
from tim4rec.training.tracking import Trackers

RUN_FILES = ("checkpoint.pt", "best.pt", "results.json", "best-full-epochs.pt")
#: an epoch whose mean loss exceeds this many times ln(n_items) has diverged (cross-entropy starts near ln(n_items))
DIVERGENCE_FACTOR = 3.0


class Diverged(Tim4RecError):
    """The loss became NaN or infinite, or exploded: the run stops (``stopped_by`` says which)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def default_output_dir(config: Config) -> Path:
    dataset = Path(str(config.dataset)).name.replace(".", "_")
    return Path("runs") / f"{config.model}-{dataset}-seed{config.seed}"


class Trainer:
    """Runs one experiment: train (or continue), validate each epoch, stop, test the best epoch."""

    def __init__(self, experiment: Experiment, output_dir: str | Path | None = None, *, runtime: RuntimeSettings):
        self.experiment = experiment
        self.distributed = experiment.distributed
        self.config = config = experiment.config
        self.model, self.data, self.optimizer = experiment.model, experiment.data, experiment.optimizer
        self.output_dir = Path(output_dir or config.output_dir or default_output_dir(config))
        self.runtime = runtime
        window_length = causal_window_length(config, self.model, experiment.regime)
        self.train_samples = self.data.train_samples(experiment.regime, config.window_stride, window_length)
        self.valid_samples = self.data.evaluation_samples("valid")
        self.test_samples = self.data.evaluation_samples("test")
        self.state = TrainingState()
        # set while a limit has stopped an epoch part-way: where it stood and the loop's state before it was
        # validated (position, state, lr_schedule_state, rng_by_rank), so that --resume can finish it exactly
        self._unfinished_epoch: dict[str, Any] | None = None
        self._interrupted_at: tuple[int, int] | None = None  # (epoch, steps) where an interrupt saved the run
        # the checkpoint's state while a reopened epoch trains: what an interrupted or failed run reports
        self._stopped_state: TrainingState | None = None
        self.trackers = Trackers([])  # opened by fit(), on the main process
        # fp16 gradients underflow without loss scaling (bf16 has float32's range and needs none)
        fp16 = config.mixed_precision == "fp16" and self.optimizer is not None
        self.scaler = torch.amp.GradScaler(experiment.device.type) if fp16 else None
        self.lr_schedule = self._lr_schedule()
        self.epoch_end_hook: Callable[[int], None] | None = None  # tests use it to simulate a kill
        self.machine = machine()

    def _lr_schedule(self) -> torch.optim.lr_scheduler.ReduceLROnPlateau | None:
        """The learning rate times ``lr_decay_factor`` once ``lr_decay_patience`` epochs in a row bring no better
        validation score (counted again from each decay); None without ``lr_decay_patience``."""
        patience = self.config.lr_decay_patience
        if patience is None or self.optimizer is None:
            return None
        # torch's patience counts the epochs it tolerates: it decays on the (patience + 1)-th bad epoch; threshold
        # 0 makes "better" the early stopping's strictly greater score
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max", factor=self.config.lr_decay_factor, patience=patience - 1,
            threshold=0.0, threshold_mode="abs",
        )  # fmt: skip

    def _log(self, message: str) -> None:
        if self.distributed.main:
            log(message)

    # ------------------------------------------------------------------------------ files
    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / "checkpoint.pt"

    @property
    def best_full_path(self) -> Path:
        """The best complete epoch's weights, set aside while a part-way epoch's are in ``best.pt``."""
        return self.output_dir / "best-full-epochs.pt"

    @property
    def best_path(self) -> Path:
        return self.output_dir / "best.pt"

    @property
    def results_path(self) -> Path:
        return self.output_dir / "results.json"

    @property
    def item_tokens(self) -> list[str]:
        return self.data.interactions.item_tokens.tolist()

    @functools.cached_property
    def data_fingerprint(self) -> dict[str, Any]:
        """The prepared data's fingerprint, computed once: each checkpoint stores it and ``--resume`` compares it."""
        return self.data.interactions.fingerprint()

    def _write_results(self, status: str) -> None:
        if self.distributed.main:
            self.results(status).write(self.results_path)

    def _save_checkpoint(self) -> None:
        # every rank's RNG state, so a resumed rank draws what it would have drawn (dropout differs by rank)
        rng_by_rank = self.distributed.gather([rng_state()])
        if not self.distributed.main:
            return
        save_checkpoint(
            self.checkpoint_path,
            config=self.config.to_dict(),
            item_tokens=self.item_tokens,
            data_fingerprint=self.data_fingerprint,
            model_state=self.model.state_dict(),
            optimizer_state=self.optimizer.state_dict() if self.optimizer else {},
            state=self.state.to_dict(),
            rng_by_rank=rng_by_rank,
            scaler_state=self.scaler.state_dict() if self.scaler else None,
            lr_schedule_state=self.lr_schedule.state_dict() if self.lr_schedule else None,
            unfinished_epoch=self._unfinished_epoch,
        )

    def _save_best(self, *, part_way: bool = False) -> None:
        """Write ``best.pt``; a ``part_way`` epoch's weights first set the best complete epoch's file aside."""
        if not self.distributed.main:
            return
        if part_way and self.best_path.exists() and not self.best_full_path.exists():  # copied: best.pt stays whole
            write_bytes_atomic(self.best_path.read_bytes(), self.best_full_path)
        save_model(
            self.best_path,
            self.model,
            name=self.config.model,
            n_items=self.data.interactions.n_items,
            max_seq_length=self.config.max_seq_length,
            hyperparameters=self.config.hyperparameters,
            config=self.config.to_dict(),
            item_tokens=self.item_tokens,
            epoch=self.state.best_epoch,
            valid=self.state.best_valid,
        )

    def _settle_best(self, improved: bool) -> None:
        """After an epoch that is not a part-way best: the best complete epoch's file, if set aside, is ``best.pt``
        again unless this epoch was better (then the set-aside file is stale)."""
        if not self.distributed.main or not self.best_full_path.exists():
            return
        if improved:
            self.best_full_path.unlink()
        else:
            os.replace(self.best_full_path, self.best_path)

    def _on_main(self, action: Callable[[], Any]) -> Any:
        """``action()`` run by rank 0 and its value (or its error) shared with every rank: the checkpoint
        lives beside rank 0 only, and no rank may wait for one that failed."""
        if not self.distributed.active:
            return action()
        outcome: tuple[str, Any] | None = None
        if self.distributed.main:
            try:
                outcome = ("value", action())
            except Tim4RecError as error:
                outcome = ("error", error)
        kind, value = self.distributed.broadcast(outcome)
        if kind == "error":
            raise value
        return value

    def _check_fresh_folder(self) -> None:
        if any((self.output_dir / name).exists() for name in RUN_FILES):
            raise Tim4RecError(
                f"{self.output_dir} already holds a run; pass --resume to continue it or choose another --output"
            )

    def _resume(self) -> None:
        checkpoint = self._on_main(lambda: load_checkpoint(self.checkpoint_path))
        if checkpoint["config"].get("model") != self.config.model:
            raise ConfigError(
                f"--resume: {self.checkpoint_path} holds a '{checkpoint['config'].get('model')}' run, "
                f"not '{self.config.model}'"
            )
        try:
            saved_config = Config.from_dict(checkpoint["config"])
        except ConfigError as error:
            raise Tim4RecError(f"{self.checkpoint_path}: its config is not valid ({error})") from None
        changed = self.config.changed_for_resume(saved_config)
        if changed:
            saved, mine = checkpoint["config"], self.config.to_dict()
            details = ", ".join(f"{key}: {saved.get(key)!r} -> {mine.get(key)!r}" for key in changed)
            raise ConfigError(f"--resume: the config differs from the checkpoint's in {details}")
        if checkpoint["item_tokens"] != self.item_tokens:
            raise Tim4RecError(
                f"{self.checkpoint_path}: the dataset's item ids differ from the ones this run was trained on; "
                "resume with the same data or start a new run"
            )
        self._check_same_data(checkpoint.get("data_fingerprint"))
        try:
            self.model.load_state_dict(checkpoint["model_state"])
            if self.optimizer is not None:
                self.optimizer.load_state_dict(checkpoint["optimizer_state"])
            if self.scaler is not None and checkpoint.get("scaler_state"):
                self.scaler.load_state_dict(checkpoint["scaler_state"])
            if self.lr_schedule is not None and checkpoint.get("lr_schedule_state"):
                self.lr_schedule.load_state_dict(checkpoint["lr_schedule_state"])
        except (RuntimeError, ValueError, KeyError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise Tim4RecError(f"{self.checkpoint_path}: the saved weights do not fit this model ({first})") from None
        by_rank = checkpoint.get("rng_by_rank") or [checkpoint["rng"]]
        if len(by_rank) != self.distributed.world:
            self._log(
                f"the run was checkpointed with {len(by_rank)} process(es) and continues with "
                f"{self.distributed.world}: the global batch changes from here on"
            )
        restore_rng_state(by_rank[self.distributed.rank] if len(by_rank) == self.distributed.world else by_rank[0])
        self.state = TrainingState.from_dict(checkpoint["state"])
        self.state.stopped_by = None
        self._unfinished_epoch = checkpoint.get("unfinished_epoch")
        if self._unfinished_epoch and len(self._unfinished_epoch["rng_by_rank"]) != self.distributed.world:
            self._log("the part-way epoch's batches were split for another number of processes: the next epoch starts")
            self._unfinished_epoch = None
        self._on_main(self._reconcile_best)
        self._log(f"resumed {self.output_dir} after epoch {self.state.epoch} (step {self.state.step})")

    def _reconcile_best(self) -> None:
        """Make ``best.pt`` the weights of the checkpoint's best epoch where a kill came between writing the
        checkpoint and settling the set-aside file (or the part-way record was dropped): of ``best.pt`` and
        ``best-full-epochs.pt``, the one whose epoch and validation are the state's becomes ``best.pt``; the
        set-aside file is kept only while a part-way epoch waits to be finished. A state with no best epoch
        (an interrupt in a reopened first epoch saves the state before any validation) leaves neither file: what
        they hold is the part that state does not count."""
        state = self.state
        if state.best_epoch is None:
            self.best_path.unlink(missing_ok=True)
            self.best_full_path.unlink(missing_ok=True)
            return
        if not self.best_full_path.exists():
            return

        def holds_best(path: Path) -> bool:
            saved = load_saved_model(path)
            return saved.epoch == state.best_epoch and saved.valid == state.best_valid

        if not (self.best_path.exists() and holds_best(self.best_path)) and holds_best(self.best_full_path):
            os.replace(self.best_full_path, self.best_path)
        elif self._unfinished_epoch is None:
            self.best_full_path.unlink()

    def _reopen_unfinished_epoch(self) -> dict[str, Any]:
        """Put the loop back where the epoch that a limit or an interrupt stopped stood before any validation of
        its part (state, learning-rate schedule and rates, RNG); returns its position for :meth:`_train_epoch`."""
        unfinished = self._unfinished_epoch
        elapsed = self.state.elapsed  # the seconds of the dropped validation were spent all the same
        self._stopped_state = self.state
        self.state = TrainingState.from_dict(copy.deepcopy(unfinished["state"]))
        self.state.elapsed, self.state.stopped_by = elapsed, None
        if self.lr_schedule is not None and unfinished["lr_schedule_state"] is not None:
            self.lr_schedule.load_state_dict(unfinished["lr_schedule_state"])
        for group, rate in zip(self.optimizer.param_groups, unfinished["learning_rates"]):
            group["lr"] = rate
        restore_rng_state(unfinished["rng_by_rank"][self.distributed.rank])
        position = dict(unfinished["position"])
        dropped = self._stopped_state.elapsed - unfinished["state"]["elapsed"]  # the partial validation's seconds
        position["dropped_valid_seconds"] = position.get("dropped_valid_seconds", 0.0) + dropped
        self._log(f"epoch {position['epoch']} continues at its step {position['steps'] + 1}, where it was stopped")
        return position

    def _check_same_data(self, saved: dict[str, Any] | None) -> None:
        """Refuse to resume on prepared data other than the checkpoint's (the same item ids may hide other
        events or times); a checkpoint written before fingerprints were stored is not checked."""
        if saved is None:
            self._log(f"{self.checkpoint_path} holds no data fingerprint: only the item ids are checked")
            return
        change = data_difference(saved, self.data_fingerprint)
        if change:
            raise DataError(
                f"--resume: the prepared data of {self.config.dataset} differ from the run's ({change}); "
                "resume with the same data or start a new run"
            )

    def results(self, status: str, test: dict[str, float] | None = None) -> RunResults:
        """The run's results as they stand, with ``status`` and the test metrics (None before the test)."""
        state, config, interactions = self.state, self.config, self.data.interactions
        full_epochs = [entry for entry in state.history if not entry["partial"]]
        return RunResults(
            status=status,
            model=config.model,
            dataset=str(config.dataset),
            config=config.to_dict(),
            config_files=list(config.config_files),
            notices=self.experiment.notices,
            dataset_stats=interactions.stats(),
            data_order=interactions.time_order,
            split=self.data.split.description,
            regime=self.experiment.regime,
            train_targets={regime: self.data.train_samples(regime).n_targets for regime in REGIMES},
            train_samples=len(self.train_samples),
            rows_per_batch=self.experiment.rows_per_batch,
            evaluated_users=len(self.test_samples),
            seed=config.seed,
            processes=self.distributed.world,
            device=str(self.experiment.device),
            threads=self.runtime.threads,
            flush_denormal=self.runtime.flush_denormal,
            reuse_memory=self.runtime.reuse_memory,
            compiled=self.runtime.compiled,
            kernels=paths_taken(),
            n_parameters=sum(p.numel() for p in self.model.parameters()),
            epochs=state.history,
            epochs_run=len(state.history),
            steps=state.step,
            seconds_per_epoch=float(np.mean([e["train_seconds"] for e in full_epochs])) if full_epochs else None,
            elapsed_seconds=state.elapsed,
            best_epoch=state.best_epoch,
            best_valid=state.best_valid,
            valid_metric=config.valid_key,
            stopped_by=state.stopped_by,
            test=test,
            peak_rss_mib=peak_rss_mib(),
            versions=versions(),
            machine=self.machine,
            output_dir=str(self.output_dir),
        )

    # ------------------------------------------------------------------------------ loop
    def _limit_or_interrupt(self, started: float, held: HeldInterrupt | None = None) -> tuple[str | None, bool]:
        """``max_steps`` or ``time_budget`` when one is reached, and whether ``held`` holds an interrupt, each on
        any rank (every rank stops together), agreed in one all-reduce."""
        config = self.config
        over = bool(config.time_budget) and self.state.elapsed + (time.perf_counter() - started) >= config.time_budget
        over, interrupted = self.distributed.any_each(over, held is not None and held.requested is not None)
        if config.max_steps and self.state.step >= config.max_steps:  # the same step on every rank
            return "max_steps", interrupted
        return ("time_budget" if over else None), interrupted

    def _train_epoch(
        self, epoch: int, resume_at: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None, HeldInterrupt | None]:
        """Train epoch ``epoch``, from its step ``resume_at["steps"] + 1`` when a limit stopped it there before
        (``resume_at`` also carries the loss, samples and seconds of the steps done). Returns its history entry;
        when a limit or an interrupt stops it part-way, its position (a later ``resume_at``; None otherwise); and
        the interrupt that stopped it (None otherwise)."""
        from tqdm import tqdm

        config, experiment = self.config, self.experiment
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        rows, world = experiment.rows_per_batch, self.distributed.world
        samples, draw = self.train_samples, config.samples_per_epoch
        if draw is not None and draw < len(samples):  # a subset drawn anew each epoch
            samples = samples.subset(torch.randperm(len(samples), generator=generator)[:draw].numpy())
        # step t of rank r takes batch t * world + r of the epoch's order: the same steps on every rank
        n_batches = math.ceil(len(samples) / rows) // world if world > 1 else math.ceil(len(samples) / rows)
        done = resume_at or {"steps": 0, "loss_sum": 0.0, "samples": 0, "seconds": 0.0}
        order = (
            self.data.iterate(samples, rows, generator=generator, skip=done["steps"] * world)
            if self.optimizer
            else iter(())
        )
        batches = itertools.islice(order, self.distributed.rank, (n_batches - done["steps"]) * world, world)
        progress = tqdm(
            batches, total=n_batches, initial=done["steps"], desc=f"epoch {epoch}", unit="batch", leave=False,
            dynamic_ncols=True, disable=not config.show_progress or None, file=sys.stderr,
        )  # fmt: skip
        self.model.train()
        started = time.perf_counter()
        total_loss, n_steps, n_samples, partial = done["loss_sum"], done["steps"], done["samples"], False
        held, interrupted, limit = HeldInterrupt(), False, None
        with held:  # Ctrl-C or SIGTERM waits for the step to end
            for batch in progress:
                value = self._step(batch)
                if not math.isfinite(value):
                    raise Diverged(
                        f"epoch {epoch}, step {self.state.step + 1}: the loss is {value}; lower learning_rate",
                        "nan_loss",
                    )
                total_loss += value
                n_steps += 1
                n_samples += len(batch) * world
                self.state.step += 1
                progress.set_postfix(
                    loss=f"{total_loss / n_steps:.4f}",
                    samples_s=f"{(n_samples - done['samples']) / (time.perf_counter() - started):.0f}",
                )
                limit, interrupted = self._limit_or_interrupt(started, held)
                if interrupted or limit:
                    break
            # a signal after the last step's check (or in an epoch with no step left) is held all the same
            interrupted = interrupted or self.distributed.any(held.requested is not None)
            held.taken = interrupted
        self.state.stopped_by = limit
        partial = bool(limit or interrupted) and n_steps < n_batches
        progress.close()
        seconds = time.perf_counter() - started
        self.state.elapsed += seconds
        train_seconds = done["seconds"] + seconds  # over the stretches of a continued epoch
        entry = {
            "epoch": epoch,
            "loss": total_loss / max(1, n_steps),
            "steps": n_steps,
            "train_seconds": train_seconds,
            "samples_per_second": n_samples / train_seconds if train_seconds else None,
            "partial": partial,
            "fraction": n_steps / n_batches,
        }
        if resume_at is not None:
            entry["continued_at_step"] = resume_at["steps"] + 1
            entry["dropped_valid_seconds"] = resume_at["dropped_valid_seconds"]
        position = {
            "epoch": epoch, "steps": n_steps, "loss_sum": total_loss, "samples": n_samples, "seconds": train_seconds,
            "dropped_valid_seconds": done.get("dropped_valid_seconds", 0.0),
        }  # fmt: skip
        # an interrupt alone saves the place even after the last step; with a limit, the limit's rule holds
        saved = partial or (interrupted and not limit)
        return entry, position if saved else None, held if interrupted else None

    def _step(self, batch: Batch) -> float:
        """One optimiser step on ``batch``; returns its mean loss.

        The batch goes through the model in pieces of at most ``micro_batch`` rows, each piece's
        summed loss divided by the whole batch's target count: the gradients add up to those of
        the whole batch (to float rounding) while peak memory depends on ``micro_batch`` only.
        """
        experiment, distributed = self.experiment, self.distributed
        batch = self.model.prepare_training_batch(batch)
        # over all ranks: DDP averages the gradients over ranks, so each rank's sum is scaled by their number
        total_targets = max(distributed.sum(batch.n_targets), 1)
        self.optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        parts = batch.split(self.config.micro_batch)
        for index, part in enumerate(parts):
            synchronise = index == len(parts) - 1 or not distributed.active
            with contextlib.nullcontext() if synchronise else experiment.loss.no_sync():
                summed, _ = experiment.loss(part.to(experiment.device))
                scaled = summed * distributed.world / total_targets
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss += float(summed.detach())
        if self.scaler:  # fp16: steps with inf/NaN gradients are skipped and the scale lowered
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return distributed.sum(loss) / total_targets

    def _evaluate(
        self,
        samples: SampleSet,
        ranks_out: list | None = None,
        *,
        mask_history: bool | None = None,
        target_time: bool = True,
    ) -> dict[str, float]:
        """Full-ranking metrics of ``samples``; under DDP each rank ranks every world-th sample and the
        targets' ranks are gathered, so the metrics equal one process's. ``mask_history`` overrides the
        config's ``mask_history`` (True: the items each user already met are not ranked); ``target_time``:
        a model that reads the request time reads the held-out event's time (False: a gap of 0)."""
        config, distributed = self.config, self.distributed
        if mask_history is None:
            mask_history = config.mask_history
        mine = (
            samples.subset(np.arange(distributed.rank, len(samples), distributed.world))
            if distributed.active
            else samples
        )
        ranks: list[int] = []
        metrics = evaluate(
            self.model, self.data, mine, batch_size=config.eval_batch_size, ks=config.topk,
            metric_names=config.metric_names, mask_history=mask_history, ranks_out=ranks,
            mixed_precision=config.mixed_precision, target_time=target_time,
        )  # fmt: skip
        if distributed.active:
            shares = distributed.gather([ranks])  # one list per rank, in rank order
            ranks = [shares[i % distributed.world][i // distributed.world] for i in range(len(samples))]
            metrics = metrics_from_ranks(torch.tensor(ranks), config.topk, config.metric_names)
        if ranks_out is not None:
            ranks_out.extend(ranks)
        return metrics

    def fit(self, *, resume: bool = False) -> dict[str, Any]:
        """Train (or continue), then evaluate the best epoch on test; returns the results
        (:meth:`RunResults.to_dict`, what ``results.json`` holds)."""
        if resume:
            self._resume()
        else:
            self._on_main(self._check_fresh_folder)
        config, interactions = self.config, self.data.interactions
        self._log(
            f"{config.model} on {interactions.source}: {interactions.n_users} users, {interactions.n_items} items, "
            f"{interactions.n_interactions} interactions; {self.data.split.description}; regime "
            f"{self.experiment.regime} ({self.train_samples.n_targets} targets in {len(self.train_samples)} samples); "
            f"{self.runtime.threads} threads on {self.experiment.device}; output {self.output_dir}"
        )
        for notice in self.experiment.notices:
            self._log(notice)
        if self.distributed.main:
            self.trackers = Trackers.for_run(self.output_dir, tensorboard=config.tensorboard, mlflow=config.mlflow,
                                             parameters=config.to_dict())  # fmt: skip
        try:
            while self.state.stopped_by is None:
                limit = self._limit_or_interrupt(time.perf_counter())[0] if self.state.step else None
                if limit:  # a resumed run whose limit is already spent: evaluate, train no further
                    self.state.stopped_by = limit
                    break
                # an epoch a limit stopped part-way is finished as if it never stopped, unless the run ends here:
                # then its partial validation (in self.state) stands
                unfinished = self._unfinished_epoch
                before = TrainingState.from_dict(unfinished["state"]) if unfinished else self.state
                reason = self._reason_to_stop(before)
                if reason:
                    self.state.stopped_by = reason
                    break
                resume_at = self._reopen_unfinished_epoch() if unfinished else None
                self._run_epoch(self.state.epoch + 1, resume_at)
        except Diverged as error:
            self._back_to_checkpoint_state()
            self.state.stopped_by = error.reason
            self._write_results("failed")
            self._log(f"stopped: {error}; the last complete epoch is in {self.checkpoint_path}")
            raise
        except KeyboardInterrupt:
            self._back_to_checkpoint_state()
            if self.results_path.exists():
                self._write_results("interrupted")
            saved = "the last complete epoch is saved"
            if self._interrupted_at is not None:
                saved = "epoch {} is saved after its step {}".format(*self._interrupted_at)
            self._log(f"interrupted; {saved} in {self.checkpoint_path}; continue with --resume")
            raise
        return self.finish()

    def _back_to_checkpoint_state(self) -> None:
        """Inside a reopened epoch, report the checkpoint's state (its partial epoch, the best files as they are):
        the run resumes from there."""
        if self._stopped_state is not None:
            self.state, self._stopped_state = self._stopped_state, None

    def _reason_to_stop(self, state: TrainingState) -> str | None:
        """Why no further epoch starts from ``state`` (``epochs``, ``early_stopping``, ``nothing_to_learn``); None."""
        if state.epoch >= self.config.epochs:
            return "epochs"
        if state.epochs_since_best >= self.config.stopping_step:
            return "early_stopping"
        if self.optimizer is None and state.epoch >= 1:  # nothing to learn: one epoch validates
            return "nothing_to_learn"
        return None

    def _place_record(self, position: dict[str, Any]) -> dict[str, Any]:
        """What --resume needs to finish an epoch stopped part-way as if it never stopped: its ``position``
        (:meth:`_train_epoch`), and the loop state, learning-rate schedule, rates and every rank's RNG as they
        are before any validation of the part."""
        return {
            "position": position,
            "state": copy.deepcopy(self.state.to_dict()),
            "lr_schedule_state": copy.deepcopy(self.lr_schedule.state_dict()) if self.lr_schedule else None,
            # the schedule's step after a partial validation may lower the optimiser's rates
            "learning_rates": [group["lr"] for group in self.optimizer.param_groups],
            "rng_by_rank": self.distributed.gather([rng_state()]),
        }

    def _save_place(self, position: dict[str, Any]) -> None:
        """Checkpoint an epoch an interrupt stopped after ``position["steps"]`` steps: no validation, so the
        state stays that of the last complete epoch (``best.pt`` is put back to its best epoch)."""
        if self.optimizer is None:  # nothing trains, nothing to save
            return
        self._unfinished_epoch = self._place_record(position)
        self._save_checkpoint()
        self._stopped_state = None  # the checkpoint now holds this state
        self._on_main(self._reconcile_best)
        self._interrupted_at = (position["epoch"], position["steps"])

    def _run_epoch(self, epoch: int, resume_at: dict[str, Any] | None = None) -> None:
        """Train one epoch (or the rest of one, from ``resume_at``), validate, keep the best weights, checkpoint,
        report."""
        entry, position, held = self._train_epoch(epoch, resume_at)
        if held is not None and not self.state.stopped_by:  # Ctrl-C or SIGTERM: save the place unvalidated, stop
            self._save_place(position)
            held.raise_requested()
        limit = DIVERGENCE_FACTOR * math.log(max(2, self.data.interactions.n_items))
        if entry["loss"] > limit:
            raise Diverged(
                f"epoch {epoch}: the mean loss {entry['loss']:.4g} exceeds {DIVERGENCE_FACTOR:g} ln(n_items) = "
                f"{limit:.4g}, so training diverged; lower learning_rate",
                "diverged",
            )
        state = self.state
        self._unfinished_epoch = self._place_record(position) if position is not None else None
        started = time.perf_counter()
        valid = self._evaluate(self.valid_samples)
        entry["valid_seconds"] = time.perf_counter() - started
        state.elapsed += entry["valid_seconds"]
        entry["valid"] = valid
        key = self.config.valid_key
        score = valid[key]
        improved = score > state.best_score
        if improved:
            state.best_score, state.best_epoch, state.best_valid, state.epochs_since_best = score, epoch, valid, 0
        else:
            state.epochs_since_best += 1
        if self.optimizer is not None:
            entry["learning_rate"] = self.optimizer.param_groups[0]["lr"]  # the rate this epoch trained at
        if self.lr_schedule is not None:
            self.lr_schedule.step(score)
        state.epoch = epoch
        state.history.append(entry)
        if improved:
            self._save_best(part_way=position is not None)
        self._save_checkpoint()
        self._stopped_state = None  # the checkpoint now holds this state
        # after the checkpoint: a kill in between leaves files that _reconcile_best sets right on --resume
        if position is None or not improved:
            self._settle_best(improved)
        self._write_results("running")
        self.trackers.epoch(epoch, entry, entry.get("learning_rate", 0.0))
        best = " (best)" if improved else f" (best {state.best_score:.4f} at epoch {state.best_epoch})"
        stopped = f"; stopped by {state.stopped_by}" if state.stopped_by else ""
        self._log(
            f"epoch {epoch}: loss {entry['loss']:.4f}, {entry['train_seconds']:.1f} s train "
            f"({entry['samples_per_second']:.0f} samples/s), valid {key} {score:.4f}{best}{stopped}"
        )
        if self.epoch_end_hook is not None:
            self.epoch_end_hook(epoch)
        if held is not None:  # an interrupt at the step a limit stopped: the limit's epoch is saved, then the run stops
            if position is not None:
                self._interrupted_at = (epoch, position["steps"])
            held.raise_requested()

    def _load_best(self) -> None:
        if not self.best_path.exists():
            raise Tim4RecError("no epoch finished, so there is no model to evaluate; raise the limits")
        self.model.load_state_dict(load_saved_model(self.best_path).model_state)

    def finish(self) -> dict[str, Any]:
        """Evaluate the best epoch's weights on the test users (unless ``evaluate_test`` is false: tuning reads
        test once, later, for the run it chooses on validation), write the final results and return them
        (:meth:`RunResults.to_dict`)."""
        if self.config.evaluate_test:
            results, test, untested = *self._tested_results(), ""
        else:
            results, test, untested = self.results("finished"), {}, "test not evaluated (evaluate_test: false); "
        if self.distributed.main:
            results.write(self.results_path)
        self.trackers.finish(self.state.best_epoch, test)
        self._log(
            f"best epoch {self.state.best_epoch} of {self.state.epoch} ({self.state.stopped_by}); "
            f"{untested}results in {self.results_path}"
        )
        return results.to_dict()

    def _tested_results(self) -> tuple[RunResults, dict[str, float]]:
        """The results with the best epoch's test metrics and per-user ranks, in every protocol that applies."""
        self._on_main(self._load_best)  # best.pt lies beside rank 0; the other ranks receive its weights
        self.distributed.broadcast_weights(self.model)
        ranks: list[int] = []
        test = self._evaluate(self.test_samples, ranks)
        results = self.results("finished", test)
        users = [str(u) for u in self.data.interactions.user_tokens[self.test_samples.users]]
        results.test_ranks = {"users": users, "ranks": ranks}  # per user: paired comparisons
        if not self.config.mask_history:  # also the protocol that never ranks an item the user already met
            removed_ranks: list[int] = []
            results.test_seen_removed = self._evaluate(self.test_samples, removed_ranks, mask_history=True)
            results.test_seen_removed_ranks = {"users": users, "ranks": removed_ranks}
        if self.model.reads_request_time:  # the same model not told when the held-out event happened
            gap0_ranks: list[int] = []
            results.test_gap0 = self._evaluate(self.test_samples, gap0_ranks, target_time=False)
            results.test_gap0_ranks = {"users": users, "ranks": gap0_ranks}
        return results, test
