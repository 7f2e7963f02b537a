"""The one-event streaming step of a served model, compiled once at start where ``torch.compile`` works.

An eager step of TiM4Rec is about 190 small PyTorch operations on (1, d)-sized tensors, so its time
is the operations' fixed costs, not arithmetic; ``torch.compile`` fuses them into a few loops. The
compiled function takes and returns the state as a flat tuple of tensors (in the order of
``names``), so the :class:`~tim4rec.models.base.StreamState` is rebuilt outside it. Compiling
happens in :meth:`StreamingStep.warm_up` (on a fresh state, for one user at a time), its seconds
are kept in ``compile_seconds``; where it fails, ``notice`` says why and the eager step runs.

Each call of a compiled function first checks its guards (shapes, dtypes, grad mode, the module's
flags) in Python: for a (1, d) step that is a good share of the time. A call whose inputs match the
warm-up's in everything the graph was specialised on (our own check of shapes, dtypes, devices, grad
mode and train/eval) runs with guard evaluation skipped; any other call goes through the guards.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch

from tim4rec.models.base import SequentialRecommender, StreamState

# Inductor's generated wrapper checks every input's and intermediate's size and stride on each call (73 checks
# a TiM4Rec step); the inputs here are checked once per call by ``_signature`` against the warm-up's, so those
# checks are dropped: -54 us of a 321 us step (in-process A/B of 2,800 steps, 1 thread).
UNCHECKED = {"size_asserts": False, "scalar_asserts": False, "alignment_asserts": False}


class StreamingStep:
    """``step(state, item_ids, timestamps) -> (hidden (B, d), state)``: the model's ``step_hidden``, compiled
    when ``compile`` and compiling works here, eager otherwise (same numbers up to float32 rounding). A
    model that does not stream has no step: nothing is compiled for it."""

    def __init__(self, model: SequentialRecommender, *, compile: bool):
        self.model = model
        self.names = sorted(model.init_state(1).tensors) if model.streaming else []
        self.compiled: Callable | None = None
        self.compile_seconds: float | None = None
        self.notice: str | None = None
        self._warm_signature: tuple | None = None  # the inputs the warm-up compiled for (see _signature)
        if compile and model.streaming:
            self.compiled = torch.compile(self._flat_step, dynamic=False, options=UNCHECKED)

    @property
    def mode(self) -> str:
        return "compiled" if self.compiled is not None else "eager"

    def _flat_step(
        self, item_ids: torch.Tensor, timestamps: torch.Tensor, *tensors: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        hidden, state = self.model.step_hidden(StreamState(dict(zip(self.names, tensors))), item_ids, timestamps)
        return (hidden, *(state[name] for name in self.names))

    def warm_up(self) -> None:
        """Compile now (one user, a fresh state then a second event), timing it; fall back to the eager
        step with a notice on stderr when compiling fails."""
        if self.compiled is None:
            return
        started = time.perf_counter()
        try:
            with torch.no_grad():
                state = self.model.init_state(1)
                one, when = torch.ones(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
                for _ in range(2):
                    _, state = self(state, one, when)
                self._warm_signature = self._signature(self._inputs(state, one, when))
        except Exception as error:  # noqa: BLE001 -- a missing compiler or an unsupported operation
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            self.compiled, self.notice = None, f"{type(error).__name__}: {first[:200]}"
            print(f"tim4rec: the streaming step could not be compiled ({self.notice}); it runs eagerly",
                  file=sys.stderr, flush=True)  # fmt: skip
            return
        self.compile_seconds = time.perf_counter() - started

    def __call__(
        self, state: StreamState, item_ids: torch.Tensor, timestamps: torch.Tensor
    ) -> tuple[torch.Tensor, StreamState]:
        if self.compiled is None:
            return self.model.step_hidden(state, item_ids, timestamps)
        self.model.check_events(item_ids, timestamps)
        inputs = self._inputs(state, item_ids, timestamps)
        if self._warm_signature is not None and self._signature(inputs) == self._warm_signature:
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                hidden, *tensors = self.compiled(*inputs)
        else:
            hidden, *tensors = self.compiled(*inputs)
        return hidden, StreamState(dict(zip(self.names, tensors)))

    def _inputs(self, state: StreamState, item_ids: torch.Tensor, timestamps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (item_ids, timestamps, *(state[name] for name in self.names))

    def _signature(self, inputs: tuple[torch.Tensor, ...]) -> tuple:
        """What the compiled graph is specialised on besides the weights: grad mode, train/eval, and each
        input's shape, strides, dtype and device."""
        tensors = tuple((t.shape, t.stride(), t.dtype, t.device) for t in inputs)
        return torch.is_grad_enabled(), self.model.training, tensors
