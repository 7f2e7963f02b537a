"""Evaluate a model on validation or test samples by full ranking over all items."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tim4rec.config import Config
from tim4rec.data.batches import SampleSet, SequenceData
from tim4rec.data.description import DataDescription
from tim4rec.errors import Tim4RecError
from tim4rec.evaluation.metrics import metrics_from_ranks
from tim4rec.evaluation.scoring import ITEM_BLOCK, blocked_target_ranks
from tim4rec.io import load_saved_model
from tim4rec.ops.precision import mixed_precision as autocast


def _device_of(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: SequenceData,
    samples: SampleSet,
    *,
    batch_size: int = 1024,
    ks: Sequence[int] = (10, 20, 50),
    metric_names: Sequence[str] = ("hit", "ndcg", "mrr"),
    mask_history: bool = False,
    ranks_out: list | None = None,
    item_block: int = ITEM_BLOCK,
    mixed_precision: str = "off",
    target_time: bool = True,
) -> dict[str, float]:
    """Rank each sample's target among all items 1..n_items with the model's scores.

    ``ranks_out``: a list that receives the targets' ranks (one int per sample, in sample order).

    Batches go to the model's device. The padding id 0 is never ranked; with ``mask_history`` every
    item the user met before the target (other than the target itself) scores -inf. Scores are
    computed ``item_block`` items at a time (:mod:`tim4rec.evaluation.scoring`): the ranks equal
    those of the whole (users x items) matrix, which never exists at once. ``mixed_precision``
    (``bf16``, ``fp16``): the model's forward under autocast; the scores and ranks are float32 either way,
    so ties mean what they mean in float32. ``target_time``: a model that reads the request time
    (:attr:`~tim4rec.models.base.SequentialRecommender.reads_request_time`) is told the held-out event's
    time (the protocol SS4Rec reports); False: the last event's (a gap of 0).
    """
    was_training = model.training
    model.eval()
    device = _device_of(model)
    ranks = []
    try:
        for begin in range(0, len(samples), batch_size):
            rows = torch.arange(begin, min(begin + batch_size, len(samples)))
            batch = data.batch(samples, rows).to(device)
            history = (batch.item_seq, batch.item_seq_len, batch.timestamps)
            if target_time and getattr(model, "reads_request_time", False):
                history += (batch.target_time,)  # the request time: the held-out event's
            with autocast(mixed_precision, device.type):
                hidden = model.predict_hidden(*history)
            hidden = hidden.float()
            masked = None
            if mask_history:
                row_index, item_index = data.history_mask_indices(samples, rows)
                masked = (row_index.to(device), item_index.to(device))
            weight, bias = model.output_layer()
            target_ranks = blocked_target_ranks(hidden, weight, bias, batch.target, block=item_block, masked=masked)
            ranks.append(target_ranks.cpu())
    finally:
        model.train(was_training)
    all_ranks = torch.cat(ranks)
    if ranks_out is not None:
        ranks_out.extend(all_ranks.tolist())
    return metrics_from_ranks(all_ranks, ks, metric_names)


@torch.no_grad()
def evaluate_streaming(
    model: torch.nn.Module,
    data: SequenceData,
    samples: SampleSet,
    *,
    ks: Sequence[int] = (10, 20, 50),
    metric_names: Sequence[str] = ("hit", "ndcg", "mrr"),
    batch_size: int = 4096,
    item_block: int = ITEM_BLOCK,
) -> dict[str, float]:
    """As :func:`evaluate`, with each user's history fed one event at a time through the model's
    streaming state (``step_hidden``); the model must stream.

    A recurrent model sees the whole history; a fixed-length one (SASRec, TiSASRec: position tables of
    ``max_seq_length`` rows) sees the most recent ``max_seq_length`` events, as the serving path
    gives it. Users are stepped together: at step t, the rows of users with more than t events. A
    model that reads the request time is told the held-out event's time, as :func:`evaluate` tells it.
    """
    if not getattr(model, "streaming", False):
        raise Tim4RecError("streaming evaluation needs a streaming model (a causal model that implements step)")
    was_training = model.training
    model.eval()
    device = _device_of(model)
    offsets = data.interactions.offsets
    items, times = torch.from_numpy(data.interactions.items), torch.from_numpy(data.interactions.timestamps)
    ranks = []
    steps = _streaming_steps(offsets, samples, model)
    progress = tqdm(total=steps, desc="streaming evaluation", unit="event", disable=None, leave=False)  # terminals only
    try:
        for begin in range(0, len(samples), batch_size):
            rows = np.arange(begin, min(begin + batch_size, len(samples)))
            targets_at = torch.from_numpy(samples.targets[rows])
            starts = torch.from_numpy(offsets[samples.users[rows] - 1])  # every event before the target
            if model.fixed_length:
                starts = torch.maximum(starts, targets_at - model.max_seq_length)
            lengths = targets_at - starts
            state = model.init_state(len(rows))
            hidden = torch.zeros(len(rows), model.output_layer()[0].shape[1], device=device)
            for t in range(int(lengths.max()) if len(rows) else 0):
                active = torch.nonzero(lengths > t).squeeze(1)
                step_hidden, part = model.step_hidden(
                    state.gather(active), items[starts[active] + t].to(device), times[starts[active] + t].to(device)
                )
                state = state.scatter(active, part)
                hidden[active.to(device)] = step_hidden
                progress.update(len(active))
            if getattr(model, "reads_request_time", False):
                gaps = times[targets_at] - times[targets_at - 1]  # from the last event to the held-out one
                hidden = model.at_request(hidden, gaps.to(device))
            targets = torch.from_numpy(data.interactions.items[samples.targets[rows]]).to(device)
            ranks.append(blocked_target_ranks(hidden, *model.output_layer(), targets, block=item_block).cpu())
    finally:
        progress.close()
        model.train(was_training)
    return metrics_from_ranks(torch.cat(ranks), ks, metric_names)


def _streaming_steps(offsets: np.ndarray, samples: SampleSet, model: torch.nn.Module) -> int:
    """How many (user, event) steps :func:`evaluate_streaming` takes."""
    lengths = samples.targets - offsets[samples.users - 1]
    if model.fixed_length:
        lengths = np.minimum(lengths, model.max_seq_length)
    return int(lengths.sum())


DATA_ORDER_SETTINGS = ("time_order", "time_values")  # may differ from training's at evaluation: same events, same ids


def load_for_evaluation(
    path: str | Path, data_order: dict[str, str] | None = None
) -> tuple[torch.nn.Module, Config, SequenceData, int]:
    """A saved model (``best.pt``), its config, its dataset (checked to have the item ids the model
    was trained on) and the epoch it was saved at: what evaluating it needs, read once. ``data_order``:
    ``time_order`` / ``time_values`` to read the dataset with instead of the training run's (which events
    are held out, and the times the model reads)."""
    saved = load_saved_model(path)
    unknown = set(data_order or {}) - set(DATA_ORDER_SETTINGS)
    if unknown:
        raise Tim4RecError(f"only {', '.join(DATA_ORDER_SETTINGS)} may change at evaluation, not {sorted(unknown)}")
    settings = {**saved.config, **(data_order or {})}
    config = Config.from_dict(settings)
    data = DataDescription.from_settings(settings).load()
    if data.interactions.item_tokens.tolist() != saved.item_tokens:
        raise Tim4RecError(f"{path}: the dataset's item ids differ from the ones the model was trained on")
    return saved.build(), config, data, saved.epoch


def evaluate_saved_model(
    path: str | Path,
    *,
    split: str = "test",
    mask_history: bool | None = None,
    streaming: bool = False,
    data_order: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate a saved model (``best.pt``) on its dataset's ``split`` (``valid`` or ``test``).

    ``streaming``: every user's history through the streaming state (:func:`evaluate_streaming`: the whole
    history for a recurrent model, the last ``max_seq_length`` events for a fixed-length one). Returns
    ``{"metrics", "config", "epoch"}``; the dataset must have the item ids the model was trained on. The
    forward runs in the precision the model was trained in (its ``mixed_precision``). ``data_order``: the
    dataset read with another ``time_order`` / ``time_values`` than training's (:func:`load_for_evaluation`).
    """
    model, config, data, epoch = load_for_evaluation(path, data_order)
    samples = data.evaluation_samples(split)
    if streaming:
        metrics = evaluate_streaming(model, data, samples, ks=config.topk, metric_names=config.metric_names)
    else:
        metrics = evaluate(
            model, data, samples, batch_size=config.eval_batch_size, ks=config.topk, metric_names=config.metric_names,
            mask_history=config.mask_history if mask_history is None else mask_history,
            mixed_precision=config.mixed_precision,
        )  # fmt: skip
    return {"metrics": metrics, "config": config, "epoch": epoch}
