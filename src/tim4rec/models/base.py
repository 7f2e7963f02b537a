"""The model contract shared by every recommender.

A model is created by :func:`tim4rec.models.create` as
``Model(n_items, max_seq_length, hp)`` (``hp``: its ``Hyperparameters`` dataclass) and provides:

- ``regime``: the training regime it uses by default (:class:`~tim4rec.data.batches.Regime`);
- ``causal``: True when its output at position t depends only on events <= t (such a model may
  also be trained in the causal regime);
- ``forward(item_seq, item_seq_len, timestamps) -> (B, L, d)`` hidden states;
- ``full_sort_predict(item_seq, item_seq_len, timestamps) -> (B, n_items + 1)`` scores at the
  read-out position ``item_seq_len - 1`` (column 0 is the padding item);
- ``target_states(batch) -> (hidden (T, d), targets (T,))``: the hidden states of the positions
  that carry a training loss and their target ids (one per row for a prefix
  :class:`~tim4rec.data.batches.Batch`, every position with a target for a causal one);
- ``calculate_loss(batch) -> scalar``: the mean cross-entropy over all items at those positions
  (:func:`cross_entropy_terms` divided by the number of targets), plus ``regularization()``.

Models with their own objective override ``target_states`` (BERT4Rec's cloze positions, drawn by
its ``prepare_training_batch``) or ``regularization`` (Caser's weight norms).

Streaming (:class:`StreamingRecommender`): a model whose ``streaming`` is True also provides
``init_state(batch_size) -> StreamState`` and ``step(state, item_ids, timestamps) -> (scores, state)``,
which feeds one new event per user and gives the scores ``full_sort_predict`` would give on the
whole history so far. A :class:`StreamState` is a set of named tensors whose first axis is the
user, so that a server can gather the rows of the users in a request, step them together and
scatter them back.

Inputs are right-padded: ``item_seq`` (B, L) long with ids 1..n_items and 0 at padding,
``item_seq_len`` (B,) long, ``timestamps`` (B, L) long seconds with 0 at padding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from tim4rec.data.batches import CAUSAL, PREFIX, Batch, Regime
from tim4rec.models.hyperparameters import Hyperparameters
from tim4rec.ops.cross_entropy import linear_cross_entropy
from tim4rec.ops.sampled_softmax import sampled_softmax_loss


class StreamState:
    """Per-user streaming state: named tensors, each with the user (batch) axis first.

    Rows can be gathered (the users of a request), scattered back, concatenated and moved;
    a model's layers keep their parts under prefixed names (:meth:`merge`, :meth:`part`).
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self.tensors = dict(tensors)
        sizes = {tensor.shape[0] for tensor in self.tensors.values()}
        if len(sizes) > 1:
            raise ValueError(f"every tensor of a StreamState needs the same first (user) axis, got sizes {sizes}")

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0] if self.tensors else 0

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name}: {tuple(t.shape)}" for name, t in self.tensors.items())
        return f"StreamState({shapes})"

    @staticmethod
    def merge(**parts: Mapping[str, torch.Tensor] | torch.Tensor) -> StreamState:
        """``merge(a=tensor, layers_0={"conv": ...})`` -> names ``a``, ``layers_0.conv``."""
        tensors: dict[str, torch.Tensor] = {}
        for prefix, part in parts.items():
            if isinstance(part, torch.Tensor):
                tensors[prefix] = part
            else:
                tensors.update({f"{prefix}.{name}": tensor for name, tensor in part.items()})
        return StreamState(tensors)

    def part(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors named ``prefix.*``, with the prefix taken off."""
        start = prefix + "."
        return {name[len(start) :]: tensor for name, tensor in self.tensors.items() if name.startswith(start)}

    def gather(self, rows: torch.Tensor | Sequence[int]) -> StreamState:
        """The state of the users at ``rows`` (a copy)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return StreamState({name: t.index_select(0, rows.to(t.device)) for name, t in self.tensors.items()})

    def scatter(self, rows: torch.Tensor | Sequence[int], update: StreamState) -> StreamState:
        """A copy with the users at ``rows`` replaced by the rows of ``update``."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return StreamState(
            {name: t.index_copy(0, rows.to(t.device), update[name].to(t.dtype)) for name, t in self.tensors.items()}
        )

    @staticmethod
    def concat(states: Iterable[StreamState]) -> StreamState:
        states = list(states)
        return StreamState({name: torch.cat([s[name] for s in states]) for name in states[0].tensors})

    def to(self, device: torch.device | str) -> StreamState:
        return StreamState({name: t.to(device) for name, t in self.tensors.items()})


@runtime_checkable
class StreamingRecommender(Protocol):
    """A model that takes one event per user at a time (``streaming`` True)."""

    streaming: bool

    def init_state(self, batch_size: int) -> StreamState:
        """The state of ``batch_size`` users with no events yet."""
        ...

    def step(
        self, state: StreamState, item_ids: torch.Tensor, timestamps: torch.Tensor
    ) -> tuple[torch.Tensor, StreamState]:
        """Feed one event per user (item_ids, timestamps (B,)) -> (scores (B, n_items + 1), new state)."""
        ...

    def step_hidden(
        self, state: StreamState, item_ids: torch.Tensor, timestamps: torch.Tensor
    ) -> tuple[torch.Tensor, StreamState]:
        """As ``step``, returning the read-out state (B, d) instead of the scores (``item_scores`` of it)."""
        ...


class SequentialRecommender(nn.Module):
    """Base class: read-out, scoring against the item embedding table, and the CE loss."""

    name: ClassVar[str] = ""
    regime: ClassVar[Regime] = PREFIX
    causal: ClassVar[bool] = False
    #: the model's hyper-parameters (:mod:`tim4rec.models.hyperparameters`): the model is built as
    #: ``Model(n_items, max_seq_length, Model.Hyperparameters.parse(values, name))``
    Hyperparameters: ClassVar[type[Hyperparameters]] = Hyperparameters
    #: their names (as in RecBole / the reference YAML files) and defaults, derived from the dataclass
    hyperparameters: ClassVar[dict[str, Any]] = {}
    #: True when the model implements ``init_state`` / ``step`` (see :class:`StreamingRecommender`)
    streaming: bool = False
    #: True when a table or layer limits histories to ``max_seq_length`` positions; recurrent models
    #: run at any length
    fixed_length: bool = True
    #: True when the training objective draws its own targets inside a window (BERT4Rec's cloze), so
    #: the model trains on windows of L events (the ``causal`` regime's batches) without being causal
    window_objective: ClassVar[bool] = False
    #: how many events the output at a position reads (Caser: the last L); None: every earlier event of its
    #: window. A causal model with a span takes causal windows of ``stride + span - 1`` positions, so that
    #: each target sees the whole history the prefix regime gives it
    history_span: int | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.hyperparameters = cls.Hyperparameters.defaults()

    @classmethod
    def translate_config(cls, layer: dict[str, Any], notices: list[str]) -> dict[str, Any]:
        """Map keys of another code base's YAML (one config layer) onto this model's keys."""
        return layer

    def __init__(self, n_items: int, max_seq_length: int):
        super().__init__()
        self.n_items = n_items
        self.max_seq_length = max_seq_length
        #: the read-out's request-time path (:class:`~tim4rec.models.blocks.RequestGap`: the gap from the last
        #: event to the time the prediction is for), or None for a model that does not read that time
        self.request_gap: nn.Module | None = None

    # -- input checks: a clear ValueError instead of an IndexError from an embedding ------------
    def check_history(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> None:
        """Raise ``ValueError`` unless the inputs are right-padded (B, L) histories this model can take."""
        if item_seq.dim() != 2 or item_seq_len.shape != item_seq.shape[:1] or timestamps.shape != item_seq.shape:
            raise ValueError(
                "expected item_seq (B, L), item_seq_len (B,) and timestamps (B, L); got shapes "
                f"{tuple(item_seq.shape)}, {tuple(item_seq_len.shape)}, {tuple(timestamps.shape)}"
            )
        if item_seq.is_floating_point() or item_seq.is_complex() or item_seq_len.is_floating_point():
            raise ValueError(f"item ids and lengths must be integers, got {item_seq.dtype} and {item_seq_len.dtype}")
        length = item_seq.shape[1]
        if self.fixed_length and length > self.max_seq_length:
            raise ValueError(
                f"{self.name} takes histories of at most max_seq_length = {self.max_seq_length} positions, "
                f"got {length}; keep the most recent events"
            )
        self._check_ids(item_seq, allow_padding=True)
        require((item_seq_len >= 0) & (item_seq_len <= length), f"item_seq_len must be in 0..{length}")

    def check_events(self, item_ids: torch.Tensor, timestamps: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``step`` can take these events: item ids (B,) in 1..n_items, timestamps (B,)."""
        if item_ids.dim() != 1 or timestamps.shape != item_ids.shape:
            raise ValueError(
                f"expected item_ids (B,) and timestamps (B,), got {tuple(item_ids.shape)}, {tuple(timestamps.shape)}"
            )
        self._check_ids(item_ids, allow_padding=False)

    def _check_ids(self, ids: torch.Tensor, allow_padding: bool) -> None:
        """Ids in range (a data-dependent check: skipped while torch.compile traces, whose callers check first)."""
        low = 0 if allow_padding else 1
        if torch.compiler.is_compiling():
            return
        if ids.device.type != "meta" and ids.numel() and not bool(((ids >= low) & (ids <= self.n_items)).all()):
            bad = ids[(ids < low) | (ids > self.n_items)][0].item()
            raise ValueError(
                f"item id {bad} is out of range: item ids run {low}..{self.n_items}"
                + (" (0 = padding)" if allow_padding else "")
            )

    # -- subclasses provide forward() and item_embedding (or override item_scores) ------------
    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight (n_items + 1, d), bias (n_items + 1,) or None): scores are ``hidden @ weight.T + bias``."""
        return self.item_embedding.weight, None

    def item_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores (..., n_items + 1) of every item id for hidden states (..., d)."""
        return F.linear(hidden, *self.output_layer())

    @staticmethod
    def gather_last(hidden: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """The hidden state (B, d) at position ``item_seq_len - 1`` of hidden (B, L, d)."""
        index = (item_seq_len - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        return hidden.gather(1, index).squeeze(1)

    def readout(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """The hidden state (B, d) at position ``item_seq_len - 1``.

        Models may override it to skip work that only positions other than the read-out need.
        """
        return self.gather_last(self.forward(item_seq, item_seq_len, timestamps), item_seq_len)

    @property
    def reads_request_time(self) -> bool:
        """True when the read-out takes the time the prediction is for (``request_gap``)."""
        return self.request_gap is not None

    def at_request(self, hidden: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """Read-out states (..., d) for predictions ``gaps`` (...) seconds after their last event (unchanged
        for a model that does not read the request time)."""
        return hidden if self.request_gap is None else self.request_gap(hidden, gaps)

    def predict_hidden(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        timestamps: torch.Tensor,
        request_time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The checked histories' hidden states (B, d) whose scores through the output layer rank the
        next item: what :meth:`full_sort_predict` scores, for callers that score in blocks of items.
        ``request_time`` (B,): the time the prediction is for (None: the last event's, a gap of 0); read
        only by a model that reads it."""
        self.check_history(item_seq, item_seq_len, timestamps)
        hidden = self.readout(item_seq, item_seq_len, timestamps)
        if not self.reads_request_time:
            return hidden
        last = timestamps.gather(1, (item_seq_len - 1).clamp(min=0)[:, None]).squeeze(1)
        return self.at_request(hidden, torch.zeros_like(last) if request_time is None else request_time - last)

    def full_sort_predict(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        timestamps: torch.Tensor,
        request_time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores (B, n_items + 1) of every item id as the next item (the padding id 0 included)."""
        return self.item_scores(self.predict_hidden(item_seq, item_seq_len, timestamps, request_time))

    # -- training objective -------------------------------------------------------------------
    def fit_data(self, data: Any) -> None:
        """Take what the model computes from its training data rather than learns (MostPop's counts)."""

    def prepare_training_batch(self, batch: Batch) -> Batch:
        """Add what the training objective draws at random (on the CPU, before the batch moves to a device)."""
        return batch

    def target_states(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (T, d) of the positions that carry a loss, and their targets (T,)."""
        self.check_history(batch.item_seq, batch.item_seq_len, batch.timestamps)
        if batch.regime is PREFIX:  # one target per row, read at len - 1
            request = batch.target_time if self.reads_request_time else None
            return self.predict_hidden(batch.item_seq, batch.item_seq_len, batch.timestamps, request), batch.target
        if batch.regime is CAUSAL:  # every position with a target
            hidden = self.forward(batch.item_seq, batch.item_seq_len, batch.timestamps)
            index = batch.target_index
            selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
            if self.reads_request_time:  # each position's prediction is for its target's time
                gaps = (batch.target_time - batch.timestamps).reshape(-1).index_select(0, index)
                selected = self.at_request(selected, gaps)
            return selected, batch.target.reshape(-1)[index]
        raise ValueError(f"unknown batch regime {batch.regime!r}")

    def regularization(self) -> torch.Tensor | None:
        """A term added to the mean loss (None: none)."""
        return None

    def calculate_loss(self, batch: Batch) -> torch.Tensor:
        total, count = cross_entropy_terms(self, batch)
        return total / max(count, 1)

    def step(
        self, state: StreamState, item_ids: torch.Tensor, timestamps: torch.Tensor
    ) -> tuple[torch.Tensor, StreamState]:
        """Feed one event per user (streaming models): item_ids, timestamps (B,) -> (scores (B, n_items + 1), state)."""
        hidden, state = self.step_hidden(state, item_ids, timestamps)
        return self.item_scores(hidden), state

    def extra_repr(self) -> str:
        return f"n_items={self.n_items}, max_seq_length={self.max_seq_length}"


def require(condition: torch.Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` unless every element of ``condition`` holds.

    Skipped for tensors on the ``meta`` device (shapes only, no values): the device tests run there; and while
    the model is exported (an exported graph holds no checks on values: its caller checks the histories).
    """
    if condition.device.type == "meta" or torch.compiler.is_exporting():
        return
    if not bool(condition.all()):
        raise ValueError(message)


def cross_entropy_terms(
    model: SequentialRecommender,
    batch: Batch,
    *,
    fused: bool = False,
    negatives: tuple[torch.Tensor, torch.Tensor] | None = None,
    autocast: contextlib.AbstractContextManager | None = None,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, int]:
    """(summed loss, number of targets) of ``batch``: cross-entropy over all items at the model's
    target positions, plus ``regularization()`` once per target (so that the mean is CE + reg).

    The sum and the count, not the mean: a data-parallel run divides by the count over all ranks.
    ``fused``: the output layer and the loss in one pass (:func:`tim4rec.ops.linear_cross_entropy`,
    the same value without materialising the logits twice); otherwise the plain reference form.
    ``negatives``: (ids (K,), log expected counts (K,)) for the sampled softmax over the target and
    those negatives instead (:func:`tim4rec.ops.sampled_softmax.sampled_softmax_loss`).
    ``autocast``: a mixed-precision context for the model's forward (its hidden states come back in
    float32). ``compute_dtype``: the dtype of the fused output layer's products (its softmax
    statistics and the loss stay float32).
    """
    if autocast is None:
        hidden, targets = model.target_states(batch)
    else:
        with autocast:
            hidden, targets = model.target_states(batch)
        hidden = hidden.float()
    count = targets.shape[0]
    if negatives is not None:
        total = sampled_softmax_loss(hidden, *model.output_layer(), targets, *negatives)
    elif fused:
        weight, bias = model.output_layer()
        total = linear_cross_entropy(hidden, weight, targets, bias, compute_dtype=compute_dtype)
    else:
        total = F.cross_entropy(model.item_scores(hidden), targets, reduction="sum")
    extra = model.regularization()
    if extra is not None:
        total = total + extra * count
    return total, count
