"""The one-event streaming step of a served model, compiled once at start where the compilers work.

An eager step of TiM4Rec is about 190 small PyTorch operations on (1, d)-sized tensors, so its time
is the operations' fixed costs, not arithmetic; compiling fuses them into a few loops. The compiled
function takes and returns the state as a flat tuple of tensors (in the order of ``names``), so the
:class:`~tim4rec.models.base.StreamState` is rebuilt outside it. Compiling happens in
:meth:`StreamingStep.warm_up` (for one user at a time); its seconds are kept in ``compile_seconds``.

Two compilers, tried in this order:

1. AOTInductor (``ahead_of_time``): ``torch.export`` of the step for one user without gradients, compiled
   to a shared library whose C++ wrapper calls the kernels, so a call runs no Python besides its entry:
   about half the time of the ``torch.compile`` step (in-process A/B below). The model's weights are
   copied into the library: the step serves the weights the model had at warm-up. Its output buffers
   belong to the library and are reused by the next call, so every output is cloned before it becomes a
   user's state. Calls unlike the warm-up's (several users, gradients on, training mode) run eagerly.
2. ``torch.compile`` (where AOTInductor is off or failed): each call first checks dynamo's guards in
   Python, a good share of a (1, d) step; a call whose inputs match the warm-up's in everything the graph
   was specialised on (our own check of shapes, dtypes, devices, grad mode and train/eval) runs with guard
   evaluation skipped; any other call goes through the guards.

Where compiling fails, ``notice`` says why (also on stderr) and the next option runs, down to the eager
step. Each compiled step is checked against the eager one on its warm-up events before it is used.

AOTInductor takes about 25 s for a TiM4Rec step here. Given a ``library_cache`` folder (a server's is
:func:`library_cache`) and a ``key`` (the saved model's fingerprint), a library that passed its check is
kept there, named by the key, the machine and device it was built for and torch's and tim4rec's versions;
a later start loads it and checks it again, and one that fails is compiled again. Writing a model's new
library removes that model's libraries for the same target built by other torch or tim4rec versions, so
upgrading does not leave a copy of the weights behind per version.
"""

from __future__ import annotations

import contextlib
import glob
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from tim4rec.models.base import SequentialRecommender, StreamState
from tim4rec.version import __version__

# Inductor's generated wrapper checks every input's and intermediate's size and stride on each call (73 checks
# a TiM4Rec step); the inputs here are checked once per call by ``_signature`` against the warm-up's, so those
# checks are dropped: -54 us of a 321 us step (in-process A/B of 2,800 steps, 1 thread).
UNCHECKED = {"size_asserts": False, "scalar_asserts": False, "alignment_asserts": False}
WARM_UP_EVENTS = 3  # a fresh state, then events an hour apart: both branches of the first-event gap
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # compiled against eager on the warm-up events (float32 reordering)


class _FlatStep(torch.nn.Module):
    """``step_hidden`` with the state as a flat tuple (``names`` order), as ``torch.export`` takes it."""

    def __init__(self, model: SequentialRecommender, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, item_ids: torch.Tensor, timestamps: torch.Tensor, *tensors: torch.Tensor) -> tuple:
        hidden, state = self.model.step_hidden(StreamState(dict(zip(self.names, tensors))), item_ids, timestamps)
        return (hidden, *(state[name] for name in self.names))


class StreamingStep:
    """``step(state, item_ids, timestamps) -> (hidden (B, d), state)``: the model's ``step_hidden``, compiled
    when ``compile`` and compiling works here (AOTInductor first when ``ahead_of_time``, else or after its
    failure ``torch.compile``), eager otherwise; the same numbers up to float32 rounding. A model that does
    not stream has no step: nothing is compiled for it."""

    def __init__(
        self,
        model: SequentialRecommender,
        *,
        compile: bool,
        ahead_of_time: bool = True,
        library_cache: Path | None = None,
        key: str | None = None,
    ):
        self.model = model
        fresh = model.init_state(1).tensors if model.streaming else {}
        self.names = sorted(fresh)
        self.device = next(iter(fresh.values())).device if fresh else torch.device("cpu")
        self.key = None if key is None else key[:32]  # the model's part of a library's name
        self.library_path = None if library_cache is None or self.key is None else (
            Path(library_cache) / f"{self.key}-{_target(self.device)}-torch{torch.__version__}-tim4rec{__version__}.pt2"
        )  # fmt: skip
        self.library_source: str | None = None  # "compiled" or "cached" once AOTInductor's step is in use
        self.flat = _FlatStep(model, self.names)
        self.compiled: Callable | None = None  # torch.compile's step
        self.library: Callable | None = None  # AOTInductor's step
        self.compile_seconds: float | None = None
        self.notice: str | None = None
        self.eager_calls = 0  # calls a compiled step ran eagerly (inputs unlike the warm-up's)
        self._ahead_of_time = compile and ahead_of_time and model.streaming
        self._warm_signature: tuple | None = None  # the inputs the warm-up compiled for (see _signature)
        if compile and model.streaming:
            self.compiled = torch.compile(self.flat, dynamic=False, options=UNCHECKED)

    @property
    def mode(self) -> str:
        return "compiled" if self.library is not None or self.compiled is not None else "eager"

    @property
    def compiler(self) -> str | None:
        """Which compiler made the step: "AOTInductor", "torch.compile", or None (eager)."""
        return "AOTInductor" if self.library is not None else "torch.compile" if self.compiled is not None else None

    def describe(self) -> str:
        """How the step runs, to follow "the step": "compiled by AOTInductor in 24.1 s", "loaded from the
        cache of AOTInductor libraries in 0.3 s", "compiled by torch.compile in 5.0 s" or "run eagerly"."""
        if self.mode == "eager":
            return f"run eagerly ({self.notice})" if self.notice else "run eagerly"
        if self.compile_seconds is None:
            return f"to be compiled by {self.compiler} (not warmed up)"
        if self.library_source == "cached":
            return f"loaded from the cache of AOTInductor libraries in {self.compile_seconds:.1f} s"
        return f"compiled by {self.compiler} in {self.compile_seconds:.1f} s"

    def warm_up(self) -> None:
        """Compile now and check the compiled step against the eager one on a few events of a fresh user,
        timing it; fall back (AOTInductor -> torch.compile -> eager) with a notice on stderr where it fails."""
        started = time.perf_counter()
        if self._ahead_of_time:
            try:
                self._load_or_compile_library()
            except Exception as error:  # noqa: BLE001 -- no C++ compiler, an unsupported operation, a mismatch
                self.library = self.library_source = None
                self._fall_back(error, "with AOTInductor", "torch.compile" if self.compiled is not None else "eagerly")
        if self.library is None and self.compiled is not None:
            try:
                self._check_against_eager()
            except Exception as error:  # noqa: BLE001 -- as above
                self.compiled = None
                self._fall_back(error, "", "eagerly")
        if self.mode == "compiled":
            self.compile_seconds = time.perf_counter() - started

    def _fall_back(self, error: Exception, how: str, instead: str) -> None:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        self.notice = f"{type(error).__name__}: {first[:200]}"
        print(f"tim4rec: the streaming step could not be compiled{' ' + how if how else ''} ({self.notice}); "
              f"it runs {instead}", file=sys.stderr, flush=True)  # fmt: skip

    def _warm_up_events(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            (
                torch.tensor([n % self.model.n_items + 1], device=self.device),
                torch.tensor([3600 * n], device=self.device),
            )
            for n in range(WARM_UP_EVENTS)
        ]

    def _load_or_compile_library(self) -> None:
        """The cached library when there is one and it agrees with the eager step, else a new one, kept in
        the cache (when there is one and it can be written) only once it has agreed too. Raises when
        compiling fails or the new library disagrees."""
        if self.library_path is not None and self.library_path.is_file():
            try:
                self.library, self.library_source = self._load(self.library_path), "cached"
                self._check_against_eager()
                return
            except Exception as error:  # noqa: BLE001 -- unreadable or stale: compile it again
                self.library = self.library_source = None
                print(f"tim4rec: the cached streaming step {self.library_path} is not usable ({type(error).__name__}: "
                      f"{str(error)[:200]}); compiling it again", file=sys.stderr, flush=True)  # fmt: skip
        with self._scratch_folder() as scratch:
            package = scratch / "step.pt2"
            self.library, self.library_source = self._compile_ahead_of_time(package), "compiled"
            self._check_against_eager()
            if self.library_path is not None and package.is_file():
                try:
                    os.replace(package, self.library_path)
                except OSError:  # a cache that cannot be written: the library still serves this process
                    return
                self._remove_stale_libraries()

    def _remove_stale_libraries(self) -> None:
        """Delete the cache's libraries of this model for this target built by other torch or tim4rec versions
        (keys are fixed-length fingerprints, so no other model's name starts with this one's). Libraries for
        other targets stay: servers on a CPU and a GPU, or on hosts of different vector instructions, may
        share a cache folder."""
        assert self.library_path is not None
        model_and_target = glob.escape(f"{self.key}-{_target(self.device)}")
        for stale in self.library_path.parent.glob(f"{model_and_target}-torch*-tim4rec*.pt2"):
            if stale != self.library_path:
                with contextlib.suppress(OSError):  # in use elsewhere or not ours to delete: leave it
                    stale.unlink()

    @contextlib.contextmanager
    def _scratch_folder(self) -> Iterator[Path]:
        """A temporary folder beside the cache (so the finished library moves into it atomically), or the
        system's when there is no cache or it cannot be written."""
        beside = None if self.library_path is None else self.library_path.parent
        try:
            if beside is not None:
                beside.mkdir(parents=True, exist_ok=True)
            folder = tempfile.TemporaryDirectory(prefix="tim4rec-step-", dir=beside)
        except OSError:
            folder = tempfile.TemporaryDirectory(prefix="tim4rec-step-")
        with folder as path:
            yield Path(path)

    def _load(self, package: Path) -> Callable:
        with _quiet():
            index = self.device.index if self.device.type == "cuda" and self.device.index is not None else -1
            return torch._inductor.aoti_load_package(str(package), device_index=index)

    def _compile_ahead_of_time(self, package: Path) -> Callable:
        """``torch.export`` of the flat step for one user, compiled by AOTInductor into ``package``, loaded."""
        item, when = self._warm_up_events()[0]
        with _quiet(), torch.no_grad():
            program = torch.export.export(self.flat, self._inputs(self.model.init_state(1), item, when), strict=False)
        with _quiet():
            torch._inductor.aoti_compile_and_package(program, package_path=str(package), inductor_configs=UNCHECKED)
        return self._load(package)

    def _check_against_eager(self) -> None:
        """Step a fresh user through the warm-up events both ways and raise unless the hidden states and the
        final states agree; then keep the inputs' signature (that of every later call of one user without
        gradients)."""
        eager = mine = self.model.init_state(1)
        signatures, self._warm_signature = [], None  # (torch.compile checks its guards until the end)
        with torch.no_grad():
            for item, when in self._warm_up_events():
                expected, eager = self.model.step_hidden(eager, item, when)
                signatures.append(self._signature(self._inputs(mine, item, when)))
                if self.library is not None:  # the library runs only for its own signature
                    self._warm_signature = signatures[0]
                got, mine = self(mine, item, when)
                _agree("hidden state", got, expected)
        for name in self.names:
            _agree(f"state {name!r}", mine[name], eager[name])
        if self.library is not None and len(set(signatures)) > 1:  # later calls would all run eagerly
            raise ValueError("the library's states are laid out unlike a fresh state")
        self._warm_signature = signatures[-1]

    def __call__(
        self, state: StreamState, item_ids: torch.Tensor, timestamps: torch.Tensor
    ) -> tuple[torch.Tensor, StreamState]:
        if self.mode == "eager":
            return self.model.step_hidden(state, item_ids, timestamps)
        self.model.check_events(item_ids, timestamps)
        inputs = self._inputs(state, item_ids, timestamps)
        if self.library is not None:
            # dense inputs: a state saved by the eager step (GRU4Rec's comes out transposed) runs in the library too
            inputs = tuple(t if t.is_contiguous() else t.contiguous() for t in inputs)
            if self._signature(inputs) != self._warm_signature:  # the library is for one user without gradients
                self.eager_calls += 1
                return self.model.step_hidden(state, item_ids, timestamps)
            # copies (the library reuses its output buffers), dense like a fresh state's
            hidden, *tensors = (output.clone(memory_format=torch.contiguous_format) for output in self.library(*inputs))
        elif self._warm_signature is not None and self._signature(inputs) == self._warm_signature:
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                hidden, *tensors = self.compiled(*inputs)
        else:
            hidden, *tensors = self.compiled(*inputs)
        return hidden, StreamState(dict(zip(self.names, tensors)))

    def _inputs(self, state: StreamState, item_ids: torch.Tensor, timestamps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (item_ids, timestamps, *(state[name] for name in self.names))

    def _signature(self, inputs: tuple[torch.Tensor, ...]) -> tuple:
        """What the compiled graph is specialised on besides the weights: grad mode, train/eval, and each
        input's shape, dtype and device, and its strides (torch.compile) or whether it is dense (the library,
        whose inputs are made dense first: strides of size-1 dimensions do not matter to it)."""
        if self.library is not None:
            tensors = tuple((t.shape, t.is_contiguous(), t.dtype, t.device) for t in inputs)
        else:
            tensors = tuple((t.shape, t.stride(), t.dtype, t.device) for t in inputs)
        return torch.is_grad_enabled(), self.model.training, tensors


def library_cache() -> Path:
    """Where servers and ``bench serve`` keep compiled step libraries: ``steps/`` in tim4rec's cache folder."""
    from tim4rec.data.datasets import cache_dir

    return cache_dir() / "steps"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Torch's own warnings that say nothing to a user silenced: the FutureWarning about its pickled tree specs
    (export, package load), and export's about ``nn.GRU``'s flat weights, which torch's GRU itself assigns
    (GRU4Rec; the exported step is checked against the eager one either way)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights.* were assigned during")
        yield


def _agree(what: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    if got.shape != expected.shape or not torch.allclose(got.float(), expected.float(), **TOLERANCE):
        error = (got.float() - expected.float()).abs().max().item() if got.shape == expected.shape else "shape"
        raise ValueError(f"the compiled step's {what} differs from the eager one ({error})")


def _target(device: torch.device) -> str:
    """What a compiled library is built for: the machine, its vector instructions (inductor builds for the
    host's), the device type and a GPU's compute capability."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda-sm{major}{minor}"
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        isa = str(pick_vec_isa()).replace(" ", "+") or "scalar"  # "avx512 avx512_vnni amx_tile": no spaces
    except Exception:  # noqa: BLE001 -- an older or newer inductor: the machine alone
        isa = "unknown"
    return f"{platform.machine()}-{isa}-{device.type}"
