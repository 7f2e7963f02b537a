"""``tim4rec export best.pt --format onnx``: the scoring path of a saved model as an ONNX graph.

Inputs (model ids, the padding id 0 after each history's events, as training and serving give them):
``item_seq`` (B, L) int64, ``item_seq_len`` (B,) int64 and ``timestamps`` (B, L) int64 unix seconds; output
``scores`` (B, n_items + 1) float32, column i the score of item id i (column 0, the padding id, is never a
recommendation). Batch and length are both dynamic: any (B, T) of right-padded histories. Inside the graph
each history is fitted to the model's ``max_seq_length`` L (:func:`last_events`: its last L events, padded to
L), because the SSD's blocks of chunks and the recurrent steps unroll over L when the graph is traced; so
the graph computes at L whatever T is, and a model that serves whole histories (TiM4Rec ``causal``,
GRU4Rec) reads only the last L events of a longer one here. Beside ``model.onnx``, ``model.items.json``
maps model ids to the dataset's item ids.

Exported: TiM4Rec (``causal``, ``paper`` and ``none`` time modes), SASRec and GRU4Rec; other models, and
models that read the request time, are refused. Every export is checked: onnxruntime's scores on random
histories must equal the eager model's to 1e-4, and both are timed on a batch of 256.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from tim4rec.errors import Tim4RecError

EXPORTABLE = ("tim4rec", "sasrec", "gru4rec")
TOLERANCE = 1e-4


def last_events(
    item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded histories of any length T -> their last ``length`` events, right-padded to ``length``.

    item_seq, timestamps (B, T), item_seq_len (B,) -> (B, length), (B,), (B, length). Written with shapes that
    do not depend on T's value (one concatenation and one gather), so an exported graph keeps T dynamic."""
    zeros = item_seq.new_zeros(item_seq.shape[0], length)
    start = (item_seq_len - length).clamp(min=0)  # (B,) the first event kept
    index = start[:, None] + torch.arange(length, device=item_seq.device)[None, :]  # (B, length), < T + length
    items = torch.cat([item_seq, zeros], dim=1).gather(1, index)
    times = torch.cat([timestamps, zeros.to(timestamps.dtype)], dim=1).gather(1, index)
    return items, item_seq_len.clamp(max=length), times


class Scoring(torch.nn.Module):
    """A model's histories-to-scores path: ``scores = item_scores(readout(last_events(...)))`` (B, n_items + 1)
    for right-padded histories (B, T) of any length T."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        fitted = last_events(item_seq, item_seq_len, timestamps, self.model.max_seq_length)
        return self.model.item_scores(self.model.readout(*fitted))


def random_histories(n_items: int, batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(item_seq, item_seq_len, timestamps) of ``batch`` right-padded histories of 1..length events."""
    generator = torch.Generator().manual_seed(seed)
    items = torch.randint(1, n_items + 1, (batch, length), generator=generator)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length  # one full history
    items[torch.arange(length)[None, :] >= lengths[:, None]] = 0
    times = torch.cumsum(torch.randint(0, 100_000, (batch, length), generator=generator), dim=1) + 1_000_000_000
    return items, lengths, times


INPUTS = ("item_seq", "item_seq_len", "timestamps")


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise Tim4RecError(
            "tim4rec export needs onnx, onnxscript and onnxruntime: pip install 'tim4rec[export]'"
        ) from None
    return onnxruntime


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session of the graph at ``path`` (``threads``: its intra-op threads; None: its default)."""
    onnxruntime = _onnxruntime()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its notes on folding constants are not the user's business
    if threads is not None:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """The graph's named inputs of (item_seq, item_seq_len, timestamps)."""
    return {name: tensor.numpy() for name, tensor in zip(INPUTS, inputs)}


def export_scoring(model: torch.nn.Module, output: Path, *, name: str, threads: int | None = None):
    """Export ``model``'s (float32, eval) scoring path to ``output`` and check onnxruntime's scores against the
    eager model's on random histories of 1 to 2L + 5 events; returns (scoring module, session, export
    seconds, largest absolute difference). Raises :class:`Tim4RecError` for a model it cannot export, and
    removes the file when the check fails."""
    if name not in EXPORTABLE:
        raise Tim4RecError(f"{name} cannot be exported to ONNX here; exported: {', '.join(EXPORTABLE)}")
    if model.reads_request_time:
        raise Tim4RecError("a model that reads the request time cannot be exported (the graph has no request-time "
                           "input)")  # fmt: skip
    _onnxruntime()
    scoring, length, n_items = Scoring(model).eval(), model.max_seq_length, model.n_items
    example = random_histories(n_items, 4, length + 3)  # traced longer than L: no guard at T = L
    batch, events = torch.export.Dim("batch", min=1), torch.export.Dim("events", min=1)
    dynamic = {0: batch, 1: events}
    started = time.perf_counter()
    # torch.export's tracing notes (deprecations inside its own graph code, GRU weights seen as attributes,
    # axis names merged) are about torch, not the user's model; the graph is checked below instead
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="The tensor attributes", category=UserWarning)
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        torch.onnx.export(
            scoring, example, str(output), dynamo=True, optimize=False, external_data=False,
            input_names=list(INPUTS), output_names=["scores"],
            dynamic_shapes={"item_seq": dynamic, "item_seq_len": {0: batch}, "timestamps": dynamic},
        )  # fmt: skip
    seconds = time.perf_counter() - started
    session = onnx_session(output, threads)
    worst = 0.0
    for seed, size, events in ((1, 1, 1), (2, 7, length), (3, 64, 2 * length + 5), (4, 3, max(length // 2, 1))):
        inputs = random_histories(n_items, size, events, seed)
        with torch.no_grad():
            eager = scoring(*inputs).numpy()
        worst = max(worst, float(abs(session.run(None, feeds(inputs))[0] - eager).max()))
    if not worst <= TOLERANCE:
        output.unlink(missing_ok=True)
        raise Tim4RecError(f"the ONNX scores differ from the model's by {worst:.3g} (> {TOLERANCE}); nothing written")
    return scoring, session, seconds, worst


def export_onnx(checkpoint: str | Path, output: str | Path) -> dict[str, Any]:
    """Export ``checkpoint``'s scoring path to ``output`` (and its id map beside it), check it against the eager
    model with onnxruntime and time both; returns what it measured."""
    _onnxruntime()
    from tim4rec.serving.recommender import Recommender

    recommender = Recommender.load(checkpoint)
    model, name = recommender.model.float().eval(), recommender.saved.model
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        scoring, session, seconds, worst = export_scoring(model, output, name=name)
    except Tim4RecError as error:
        raise Tim4RecError(f"{checkpoint}: {error}") from None
    length = model.max_seq_length
    items_file = output.with_suffix(".items.json")
    items_file.write_text(json.dumps({"model": name, "max_seq_length": length, "item_tokens": recommender.item_tokens}))
    timing = _time_both(scoring, session, random_histories(recommender.n_items, 256, length, 4))
    return {"model": name, "output": str(output), "items": str(items_file), "export_seconds": seconds,
            "max_abs_difference": worst, "max_seq_length": length, **timing}  # fmt: skip


def _time_both(
    scoring: torch.nn.Module, session, inputs: tuple[torch.Tensor, ...], repeats: int = 5
) -> dict[str, float]:
    """Median seconds of one batch through the eager model and through onnxruntime."""
    named = feeds(inputs)
    eager, runtime = [], []
    with torch.no_grad():
        for _ in range(repeats + 1):
            started = time.perf_counter()
            scoring(*inputs)
            eager.append(time.perf_counter() - started)
            started = time.perf_counter()
            session.run(None, named)
            runtime.append(time.perf_counter() - started)
    median = sorted(eager[1:])[repeats // 2], sorted(runtime[1:])[repeats // 2]
    return {"batch": len(inputs[0]), "eager_seconds": median[0], "onnxruntime_seconds": median[1]}
