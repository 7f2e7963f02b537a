"""Scaffolding shared by the model tests: random histories, perturbed weights, streaming checks."""

from collections.abc import Sequence

import torch

T0 = 1_000_000_000  # the first timestamp (seconds): the gaps are added to it


def random_history(
    n_items: int,
    max_len: int,
    lengths: Sequence[int],
    *,
    seed: int = 0,
    max_gap: int = 200_000,
    min_gap: int = 0,
    gap_unit: int = 1,
    same_second_at: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A right-padded batch of ``len(lengths)`` histories: (items, lengths, timestamps).

    items (B, L) are uniform ids in 1..n_items; timestamps (B, L) are T0 plus the running sum of
    gaps drawn in [min_gap, max_gap) and multiplied by gap_unit. Both hold 0 at padding
    (position >= length). ``same_second_at=i`` forces a zero gap before position i, so that
    events i - 1 and i share their second.
    """
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.as_tensor(lengths)
    b = len(lengths)
    items = torch.randint(1, n_items + 1, (b, max_len), generator=generator)
    gaps = gap_unit * torch.randint(min_gap, max_gap, (b, max_len), generator=generator)
    if same_second_at is not None:
        gaps[:, same_second_at] = 0
    times = T0 + torch.cumsum(gaps, 1)
    padding = torch.arange(max_len)[None] >= lengths[:, None]
    return items.masked_fill(padding, 0), lengths, times.masked_fill(padding, 0)


def perturbed(
    model: torch.nn.Module, scale: float = 0.3, seed: int = 1, *, keep: tuple[str, ...] = ()
) -> torch.nn.Module:
    """Add ``scale`` * N(0, 1) noise to every parameter (except names ending with one of ``keep``,
    which draw no noise), so that every term matters; return the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.endswith(keep):
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return model.eval()


def assert_streaming_matches_full(
    model,
    items: torch.Tensor,
    timestamps: torch.Tensor,
    atol: float = 1e-4,
    *,
    rtol: float = 1e-4,
    lengths: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Feed the events one by one with ``model.step``; after k events the scores must equal
    ``model.full_sort_predict`` on the first k columns (length k, the rest zeroed).

    Only rows with length >= k are compared (``lengths``, by default the number of non-padding
    items of each right-padded row). Returns the streamed scores of every step.
    """
    b, max_len = items.shape
    lengths = (items > 0).sum(1) if lengths is None else lengths
    state = model.init_state(b)
    streamed = []
    with torch.no_grad():
        for t in range(max_len):
            # rows past their length step a real item too (step takes no padding id); they are not compared
            scores, state = model.step(state, items[:, t].clamp(min=1), timestamps[:, t])
            k = t + 1
            prefix = torch.arange(max_len) < k
            full = model.full_sort_predict(
                torch.where(prefix, items, 0), torch.full((b,), k), torch.where(prefix, timestamps, 0)
            )
            rows = lengths > t
            torch.testing.assert_close(scores[rows], full[rows], rtol=rtol, atol=atol)
            streamed.append(scores)
    return streamed
