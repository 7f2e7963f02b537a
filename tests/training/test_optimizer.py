"""The training optimiser: Adam, fused on a CPU, the same updates as PyTorch's looped Adam."""

import torch

from tim4rec.models import create
from tim4rec.training.optimizer import adam


def _trained_copy(model: torch.nn.Module, make_optimizer, steps: int = 5) -> list[torch.Tensor]:
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    optimizer = make_optimizer(params)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator) * 1e-2
        optimizer.step()
    return params


def test_adam_is_fused_on_cpu_and_matches_the_looped_update():
    model = create("tim4rec", 50, 20)
    optimizer = adam(list(model.parameters()), lr=1e-3, weight_decay=1e-4)
    assert optimizer.defaults["fused"] is True
    fused = _trained_copy(model, lambda ps: adam(ps, lr=1e-3, weight_decay=1e-4))
    looped = _trained_copy(model, lambda ps: torch.optim.Adam(ps, lr=1e-3, weight_decay=1e-4, foreach=False))
    start = list(model.parameters())
    assert any((f - s).abs().max() > 1e-4 for f, s in zip(fused, start))  # the step moved the parameters
    for f, loop in zip(fused, looped):
        torch.testing.assert_close(f, loop, rtol=1e-5, atol=1e-7)


def test_a_looped_adam_checkpoint_resumes_in_the_fused_one():
    model = create("sasrec", 30, 10)
    looped = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=False)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    looped.step()
    resumed = adam(list(model.parameters()), lr=1e-3)
    resumed.load_state_dict(looped.state_dict())
    resumed.step()  # runs with the state (step 1, both moments) of the looped optimiser
    assert all(float(state["step"]) == 2 for state in resumed.state.values())
