"""The compiled streaming step equals the eager one, and a server compiles it once at start."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.serving.conftest import Server
from tim4rec.serving import Recommender
from tim4rec.serving.step import StreamingStep


@pytest.fixture(scope="module")
def recommender(trained) -> Recommender:
    return Recommender.load(trained["tim4rec"], with_dataset=False)


def test_the_compiled_step_equals_the_eager_step(recommender: Recommender):
    eager, compiled = StreamingStep(recommender.model, compile=False), StreamingStep(recommender.model, compile=True)
    compiled.warm_up()
    assert compiled.mode == "compiled" and compiled.compile_seconds > 0 and compiled.notice is None
    first = second = recommender.model.init_state(1)
    with torch.no_grad():
        for n in range(25):  # gaps of an hour, then a burst within the same second
            item, when = torch.tensor([n % 40 + 1]), torch.tensor([10**9 + 3600 * min(n, 20)])
            expected, first = eager(first, item, when)
            got, second = compiled(second, item, when)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for name in first.tensors:
        torch.testing.assert_close(second[name], first[name], rtol=1e-5, atol=1e-6)


def test_calls_unlike_the_warm_up_go_through_the_guards(recommender: Recommender):
    """Guard evaluation is skipped only for inputs like the warm-up's (one user, no grad, eval mode): a batch
    of three users, or grad mode on, must still get their own graph and the eager step's numbers."""
    eager, compiled = StreamingStep(recommender.model, compile=False), StreamingStep(recommender.model, compile=True)
    compiled.warm_up()
    items, times = torch.tensor([3, 17, 29]), torch.tensor([10**9, 10**9 + 60, 10**9 + 7200])
    for grad in (False, True):
        first = second = recommender.model.init_state(3)
        with torch.set_grad_enabled(grad):
            for n in range(3):
                expected, first = eager(first, items + n, times + 3600 * n)
                got, second = compiled(second, items + n, times + 3600 * n)
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    one = recommender.model.init_state(1)
    with torch.no_grad():
        expected, _ = eager(one, items[:1], times[:1])
        got, _ = compiled(one, items[:1], times[:1])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_step_that_cannot_compile_runs_eagerly_with_a_notice(recommender: Recommender, monkeypatch, capsys):
    step = StreamingStep(recommender.model, compile=True)

    def broken(*args):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(step, "compiled", broken)
    step.warm_up()
    assert step.mode == "eager" and "no C++ compiler" in step.notice
    assert "could not be compiled" in capsys.readouterr().err
    hidden, _ = step(recommender.model.init_state(1), torch.tensor([1]), torch.tensor([5]))
    assert hidden.shape == (1, recommender.model.output_layer()[0].shape[1])


def test_a_server_compiles_the_step_at_start(trained, tmp_path: Path):
    server = Server(trained["tim4rec"], tmp_path / "users.sqlite", compiled_step=True).start()
    try:
        with server.client() as client:
            assert client.get("/health").json()["step"] == "compiled"
            assert client.post("/users/c/events", json={"events": [{"item": "50", "time": 1}]}).status_code == 200
            assert client.get("/users/c/recommendations").status_code == 200
    finally:
        server.stop()
    assert "compiled the streaming step in" in server.stderr
