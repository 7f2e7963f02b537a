"""Training on several processes with PyTorch's distributed data parallel, launched by ``torchrun``.

``torchrun --nproc_per_node N -m tim4rec train ...`` (and multi-node with torchrun's rendezvous
options) starts N processes with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`context`
then joins the process group (gloo on a CPU, NCCL on a GPU) and everything else follows from it:

- every rank builds the same model from the same seed; the loss module is wrapped in
  ``DistributedDataParallel``, which averages gradients over ranks;
- each epoch's batches come in the same (seed, epoch) order on every rank; step t of rank r takes
  batch ``t * world + r``, so a step covers ``world`` consecutive batches (the global batch is
  ``train_batch_size`` x ranks) and every rank takes the same number of steps;
- the loss is the summed loss over the target count summed over all ranks, times the number of
  ranks (which DDP's averaging divides away): a step equals the single-process step on the
  global batch;
- validation and test samples are split across ranks and every target's rank is gathered, so the
  metrics equal a single-process evaluation of the same weights;
- only rank 0 fetches data (the others wait for it), writes checkpoints and results; stopping
  decisions (limits, a NaN loss) are agreed across ranks, so no rank waits for another forever;
  a rank that dies ends the others within ``timeout_seconds`` with a clear error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist

from tim4rec.errors import Tim4RecError

TIMEOUT_SECONDS = 60

# DDP compares a gradient's strides with its bucket's, including those of size-1 dimensions (a depthwise
# convolution's (channels, 1, kernel) weight), where any stride describes the same memory: not a problem
warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a distributed run (a single process is rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def sum(self, value: float | int, device: torch.device | str = "cpu") -> float:
        """The sum of ``value`` over ranks (every rank gets it)."""
        if not self.active:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def any(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        """True on every rank if ``flag`` is True on any."""
        return self.any_each(flag, device=device)[0]

    def any_each(self, *flags: bool, device: torch.device | str = "cpu") -> tuple[bool, ...]:
        """For each of ``flags``, True on every rank if it is True on any: one all-reduce for all of them."""
        if not self.active:
            return tuple(bool(flag) for flag in flags)
        tensor = torch.tensor([1.0 if flag else 0.0 for flag in flags], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tuple(bool(value > 0) for value in tensor.tolist())

    def gather(self, values: list) -> list:
        """Every rank's list, concatenated in rank order (every rank gets it)."""
        if not self.active:
            return list(values)
        gathered: list[list] = [None] * self.world  # type: ignore[list-item]
        dist.all_gather_object(gathered, list(values))
        return [value for part in gathered for value in part]

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_weights(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers copied into ``module`` on every rank, in place."""
        if self.active:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (fetching a dataset); the others run it after."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()


SINGLE = Distributed()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: torch.device) -> Distributed:
    """Join the process group torchrun prepared (gloo on a CPU, NCCL on CUDA); a single process if none."""
    if not launched_by_torchrun():
        return SINGLE
    backend = "nccl" if device.type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)  # one GPU per process; NCCL's collectives use the current one
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=TIMEOUT_SECONDS))
        except (RuntimeError, ValueError) as error:
            raise Tim4RecError(f"could not join the distributed run ({backend}): {error}") from None
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank)


PEER_LOST_MARKERS = ("Connection reset", "Connection closed", "connection", "timed out", "Timed out", "gloo", "NCCL")


def peer_lost(error: BaseException) -> bool:
    """Whether ``error`` is a collective operation failing because another rank died or hung."""
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and any(marker in str(error) for marker in PEER_LOST_MARKERS)
    )


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def end_worker(status: int) -> NoReturn:
    """End a torchrun worker process with ``status`` once its command is done, without the interpreter's
    and the C++ runtime's teardown.

    ``DistributedDataParallel`` keeps its gloo process group, and with it the group's worker and socket
    threads, alive after :func:`leave`; an ordinary exit tears the process down around those running
    threads and can abort it (SIGABRT) after its results are written. Everything the command wrote is
    already on disk (checkpoints and results are written atomically), so the streams are flushed and
    the process leaves at once. (``tim4rec`` under torchrun only: a script that calls
    :func:`tim4rec.train` under torchrun ends its processes itself.)"""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken pipe must not stop the exit
            stream.flush()
    logging.shutdown()
    os._exit(status)
