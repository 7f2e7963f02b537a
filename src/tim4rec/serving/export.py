"""``tim4rec export best.pt --format onnx``: the scoring path of a saved model as an ONNX graph.

Inputs (model ids, the padding id 0 after each history's events, as training and serving give them):
``item_seq`` (B, L) int64, ``item_seq_len`` (B,) int64 and ``timestamps`` (B, L) int64 unix seconds; output
``scores`` (B, n_items + 1) float32, column i the score of item id i (column 0, the padding id, is never a
recommendation). The batch is dynamic; the length is the model's ``max_seq_length`` L (shorter histories
are padded, longer ones keep their last L events): the SSD's chunks and the recurrent steps unroll over L
when the graph is traced. Beside ``model.onnx``, ``model.items.json`` maps model ids to the dataset's item ids.

Exported: TiM4Rec (``causal``, ``paper`` and ``none`` time modes), SASRec and GRU4Rec; other models, and
models that read the request time, are refused. Every export is checked: onnxruntime's scores on random
histories must equal the eager model's to 1e-4, and both are timed on a batch of 256.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from tim4rec.errors import Tim4RecError

EXPORTABLE = ("tim4rec", "sasrec", "gru4rec")
TOLERANCE = 1e-4


class Scoring(torch.nn.Module):
    """A model's histories-to-scores path: ``scores = item_scores(readout(...))`` (B, n_items + 1)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        return self.model.item_scores(self.model.readout(item_seq, item_seq_len, timestamps))


def random_histories(n_items: int, batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(item_seq, item_seq_len, timestamps) of ``batch`` right-padded histories of 1..length events."""
    generator = torch.Generator().manual_seed(seed)
    items = torch.randint(1, n_items + 1, (batch, length), generator=generator)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length  # one full history
    items[torch.arange(length)[None, :] >= lengths[:, None]] = 0
    times = torch.cumsum(torch.randint(0, 100_000, (batch, length), generator=generator), dim=1) + 1_000_000_000
    return items, lengths, times


def export_onnx(checkpoint: str | Path, output: str | Path) -> dict[str, Any]:
    """Export ``checkpoint``'s scoring path to ``output`` (and its id map beside it), check it against the eager
    model with onnxruntime and time both; returns what it measured."""
    try:
        import onnxruntime
    except ImportError:
        raise Tim4RecError(
            "tim4rec export needs onnx, onnxscript and onnxruntime: pip install 'tim4rec[export]'"
        ) from None
    from tim4rec.serving.recommender import Recommender

    recommender = Recommender.load(checkpoint)
    model, name = recommender.model.float().eval(), recommender.saved.model
    if name not in EXPORTABLE:
        raise Tim4RecError(f"{checkpoint}: {name} cannot be exported to ONNX here; exported: {', '.join(EXPORTABLE)}")
    if model.reads_request_time:
        raise Tim4RecError(f"{checkpoint}: a model that reads the request time cannot be exported (the graph has no "
                           "request-time input)")  # fmt: skip
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    scoring, length = Scoring(model).eval(), model.max_seq_length
    example = random_histories(recommender.n_items, 4, length)
    batch = torch.export.Dim("batch", min=1)
    started = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            scoring, example, str(output), dynamo=True, optimize=False, external_data=False,
            input_names=["item_seq", "item_seq_len", "timestamps"], output_names=["scores"],
            dynamic_shapes={"item_seq": {0: batch}, "item_seq_len": {0: batch}, "timestamps": {0: batch}},
        )  # fmt: skip
    seconds = time.perf_counter() - started
    items_file = output.with_suffix(".items.json")
    items_file.write_text(json.dumps({"model": name, "max_seq_length": length, "item_tokens": recommender.item_tokens}))
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its notes on folding constants are not the user's business
    session = onnxruntime.InferenceSession(str(output), options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for seed, size in ((1, 1), (2, 7), (3, 64)):
        inputs = random_histories(recommender.n_items, size, length, seed)
        with torch.no_grad():
            eager = scoring(*inputs).numpy()
        exported = session.run(None, dict(zip(("item_seq", "item_seq_len", "timestamps"), (t.numpy() for t in inputs))))
        worst = max(worst, float(abs(exported[0] - eager).max()))
    if not worst <= TOLERANCE:
        output.unlink(missing_ok=True)
        raise Tim4RecError(f"{checkpoint}: the ONNX scores differ from the model's by {worst:.3g} (> {TOLERANCE}); "
                           "nothing written")  # fmt: skip
    timing = _time_both(scoring, session, random_histories(recommender.n_items, 256, length, 4))
    return {"model": name, "output": str(output), "items": str(items_file), "export_seconds": seconds,
            "max_abs_difference": worst, "max_seq_length": length, **timing}  # fmt: skip


def _time_both(
    scoring: torch.nn.Module, session, inputs: tuple[torch.Tensor, ...], repeats: int = 5
) -> dict[str, float]:
    """Median seconds of one batch through the eager model and through onnxruntime."""
    feeds = dict(zip(("item_seq", "item_seq_len", "timestamps"), (t.numpy() for t in inputs)))
    eager, runtime = [], []
    with torch.no_grad():
        for _ in range(repeats + 1):
            started = time.perf_counter()
            scoring(*inputs)
            eager.append(time.perf_counter() - started)
            started = time.perf_counter()
            session.run(None, feeds)
            runtime.append(time.perf_counter() - started)
    median = sorted(eager[1:])[repeats // 2], sorted(runtime[1:])[repeats // 2]
    return {"batch": len(inputs[0]), "eager_seconds": median[0], "onnxruntime_seconds": median[1]}
