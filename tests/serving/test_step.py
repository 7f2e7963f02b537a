"""The compiled streaming step (AOTInductor, or torch.compile) equals the eager one, falls back where compiling
fails, keeps its library between starts, and a server compiles it once at start."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.serving.conftest import Server
from tim4rec.models.base import StreamState
from tim4rec.serving import Recommender
from tim4rec.serving.step import StreamingStep
from tim4rec.version import __version__


@pytest.fixture(scope="module")
def recommender(trained) -> Recommender:
    return Recommender.load(trained["tim4rec"], with_dataset=False)


@pytest.fixture(scope="module")
def library_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("steps")


@pytest.fixture(scope="module")
def ahead_of_time(recommender: Recommender, library_cache: Path) -> StreamingStep:
    """AOTInductor's step, compiled once for the module (about 25 s) and kept in ``library_cache``."""
    step = StreamingStep(recommender.model, compile=True, library_cache=library_cache, key="test-model")
    step.warm_up()
    return step


@pytest.fixture(scope="module")
def just_in_time(recommender: Recommender) -> StreamingStep:
    step = StreamingStep(recommender.model, compile=True, ahead_of_time=False)
    step.warm_up()
    return step


@pytest.fixture(params=["AOTInductor", "torch.compile"])
def compiled(request) -> StreamingStep:
    step = request.getfixturevalue("ahead_of_time" if request.param == "AOTInductor" else "just_in_time")
    assert step.compiler == request.param, step.notice  # not a fallback
    return step


def step_beside_eager(step: StreamingStep, model, events: list[tuple[int, int]]) -> tuple[StreamState, StreamState]:
    """Step a fresh user through ``events`` (item id, time) with ``step`` and with the eager step, the hidden
    states agreeing after each; returns both final states (``step``'s, the eager one's)."""
    eager = StreamingStep(model, compile=False)
    mine = expected = model.init_state(1)
    with torch.no_grad():
        for item, when in events:
            want, expected = eager(expected, torch.tensor([item]), torch.tensor([when]))
            got, mine = step(mine, torch.tensor([item]), torch.tensor([when]))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    return mine, expected


def test_each_compiler_makes_the_step_it_says(ahead_of_time: StreamingStep, just_in_time: StreamingStep):
    assert ahead_of_time.compiler == "AOTInductor" and ahead_of_time.library_source == "compiled"
    assert just_in_time.compiler == "torch.compile" and just_in_time.library is None
    for step in (ahead_of_time, just_in_time):
        assert step.mode == "compiled" and step.compile_seconds > 0 and step.notice is None
        assert step.describe().startswith(f"compiled by {step.compiler} in ")


def test_the_compiled_step_equals_the_eager_step(recommender: Recommender, compiled: StreamingStep, monkeypatch):
    eager = StreamingStep(recommender.model, compile=False)
    events = [(torch.tensor([n % 40 + 1]), torch.tensor([10**9 + 3600 * min(n, 20)])) for n in range(25)]
    expected, state = [], recommender.model.init_state(1)  # gaps of an hour, then a burst within the same second
    with torch.no_grad():
        for item, when in events:
            hidden, state = eager(state, item, when)
            expected.append(hidden)
    if compiled.compiler == "AOTInductor":  # its library runs every event: the eager step is never called
        monkeypatch.setattr(recommender.model, "step_hidden", lambda *args: pytest.fail("ran eagerly"))
    mine = recommender.model.init_state(1)
    with torch.no_grad():
        for (item, when), hidden in zip(events, expected):
            got, mine = compiled(mine, item, when)
            torch.testing.assert_close(got, hidden, rtol=1e-5, atol=1e-6)
    for name in state.tensors:
        torch.testing.assert_close(mine[name], state[name], rtol=1e-5, atol=1e-6)


def test_states_of_several_users_stay_apart(recommender: Recommender, compiled: StreamingStep, monkeypatch):
    """AOTInductor's library hands out the same output buffers from call to call (seen with the ML-1M model;
    stood in for here by a wrapper that does so): a user's state must not change when another user's event
    is stepped, nor when the state is fed back in."""
    if compiled.compiler == "AOTInductor":
        library, buffers = compiled.library, []

        def reusing(*inputs):
            outputs = library(*inputs)
            if not buffers:
                buffers.extend(torch.empty_like(output) for output in outputs)
            return tuple(buffer.copy_(output) for buffer, output in zip(buffers, outputs))

        monkeypatch.setattr(compiled, "library", reusing)
    eager = StreamingStep(recommender.model, compile=False)
    states = {user: recommender.model.init_state(1) for user in "ab"}
    expected = dict(states)
    with torch.no_grad():
        for n in range(6):
            for user, offset in (("a", 1), ("b", 7)):
                item, when = torch.tensor([n + offset]), torch.tensor([10**9 + 600 * n])
                _, states[user] = compiled(states[user], item, when)
                _, expected[user] = eager(expected[user], item, when)
    for user in "ab":
        for name in expected[user].tensors:
            torch.testing.assert_close(states[user][name], expected[user][name], rtol=1e-5, atol=1e-6)


def test_calls_unlike_the_warm_up_get_the_eager_steps_numbers(recommender: Recommender, compiled: StreamingStep):
    """The compiled step is for one user without gradients in eval mode: a batch of three users, or grad
    mode on, must still get the eager step's numbers (torch.compile through its guards, AOTInductor's step
    by running eagerly)."""
    eager = StreamingStep(recommender.model, compile=False)
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


def test_a_later_start_loads_the_library_from_the_cache(
    recommender: Recommender, ahead_of_time: StreamingStep, library_cache: Path
):
    assert ahead_of_time.library_path.parent == library_cache and ahead_of_time.library_path.is_file()
    again = StreamingStep(recommender.model, compile=True, library_cache=library_cache, key="test-model")
    again.warm_up()
    assert again.library_source == "cached" and again.compile_seconds < ahead_of_time.compile_seconds / 3
    assert again.describe().startswith("loaded from the cache of AOTInductor libraries in ")
    step_beside_eager(again, recommender.model, [(n + 2, 86_400 * n) for n in range(4)])


@pytest.mark.parametrize("case", ["unreadable", "disagrees"])
def test_a_cached_library_that_fails_is_compiled_again(
    recommender: Recommender, ahead_of_time: StreamingStep, tmp_path: Path, monkeypatch, case: str
):
    """An unreadable file under the model's key, or a cached library that disagrees with the eager step,
    leads to a new compile (stood in for here by loading the module's good library)."""
    good = ahead_of_time.library_path
    step = StreamingStep(recommender.model, compile=True, library_cache=tmp_path, key="test-model")
    step.library_path.write_bytes(b"not a library" if case == "unreadable" else good.read_bytes())
    compiles, checks = [], []

    def compile_stand_in(package: Path):
        compiles.append(1)
        package.write_bytes(good.read_bytes())
        return torch._inductor.aoti_load_package(str(package))

    monkeypatch.setattr(step, "_compile_ahead_of_time", compile_stand_in)
    real_check = step._check_against_eager

    def check_fails_once_when_it_disagrees():
        checks.append(1)
        if case == "disagrees" and len(checks) == 1:
            raise ValueError("the compiled step's hidden state differs from the eager one by 0.5")
        real_check()

    monkeypatch.setattr(step, "_check_against_eager", check_fails_once_when_it_disagrees)
    step.warm_up()
    assert compiles == [1] and step.library_source == "compiled" and step.compiler == "AOTInductor"
    assert step.notice is None and len(checks) == (2 if case == "disagrees" else 1)
    assert step.library_path.read_bytes() == good.read_bytes()  # the new library replaced the cached file


def test_a_new_library_replaces_the_models_libraries_for_other_versions(
    recommender: Recommender, ahead_of_time: StreamingStep, tmp_path: Path, monkeypatch
):
    """Compiling a model's library deletes that model's libraries for the same target built by other torch or
    tim4rec versions, and leaves its libraries for other targets, other models' and other files alone."""
    good = ahead_of_time.library_path
    step = StreamingStep(recommender.model, compile=True, library_cache=tmp_path, key="test-model")
    name = step.library_path.name  # test-model-<machine>-<isa>-cpu-torch<version>-tim4rec<version>.pt2
    older_torch = name.replace(f"-torch{torch.__version__}-", "-torch2.12.0-")
    stale = [tmp_path / older_torch, tmp_path / older_torch.replace(f"-tim4rec{__version__}", "-tim4rec0.9")]
    kept = [
        tmp_path / "test-model-cuda-sm90-torch2.12.0-tim4rec0.9.pt2",  # another target: a GPU server's
        tmp_path / "other-model-x86_64-cpu-torch2.12.0-tim4rec0.9.pt2",
        tmp_path / "test-model-notes.txt",
    ]
    for path in stale + kept:
        path.write_bytes(b"old")

    def compile_stand_in(package: Path):
        package.write_bytes(good.read_bytes())
        return torch._inductor.aoti_load_package(str(package))

    monkeypatch.setattr(step, "_compile_ahead_of_time", compile_stand_in)
    step.warm_up()
    assert step.library_source == "compiled" and step.library_path.is_file()
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)


def test_a_library_that_disagrees_falls_back_to_torch_compile(
    recommender: Recommender, ahead_of_time: StreamingStep, tmp_path: Path, monkeypatch, capsys
):
    """A library whose hidden states are wrong (here: doubled) is not used; torch.compile's step is, checked
    through its guards from scratch."""
    library = ahead_of_time.library

    def doubled(*inputs):
        hidden, *state = library(*inputs)
        return (2 * hidden, *state)

    step = StreamingStep(recommender.model, compile=True, library_cache=tmp_path, key="test-model")

    def compile_stand_in(package: Path):
        package.write_bytes(ahead_of_time.library_path.read_bytes())
        return doubled

    monkeypatch.setattr(step, "_compile_ahead_of_time", compile_stand_in)
    step.warm_up()
    assert step.compiler == "torch.compile" and "differs from the eager one" in step.notice
    assert not step.library_path.exists()  # a library that failed its check is not kept
    assert "could not be compiled with AOTInductor" in capsys.readouterr().err
    step_beside_eager(step, recommender.model, [(n + 5, 7200 * n) for n in range(4)])


def test_a_step_that_cannot_compile_falls_back_with_a_notice(recommender: Recommender, monkeypatch, capsys):
    def broken(*args):  # stands in for _compile_ahead_of_time(package) and for torch.compile's step
        raise RuntimeError("no C++ compiler")

    step = StreamingStep(recommender.model, compile=True)  # AOTInductor fails: torch.compile runs
    monkeypatch.setattr(step, "_compile_ahead_of_time", broken)
    step.warm_up()
    assert step.compiler == "torch.compile" and "no C++ compiler" in step.notice
    assert "could not be compiled with AOTInductor" in capsys.readouterr().err

    step = StreamingStep(recommender.model, compile=True, ahead_of_time=False)  # torch.compile fails: eager
    monkeypatch.setattr(step, "compiled", broken)
    step.warm_up()
    assert step.mode == "eager" and "no C++ compiler" in step.notice and step.describe().startswith("run eagerly")
    assert "could not be compiled" in capsys.readouterr().err
    hidden, _ = step(recommender.model.init_state(1), torch.tensor([1]), torch.tensor([5]))
    assert hidden.shape == (1, recommender.model.output_layer()[0].shape[1])


def test_a_server_compiles_the_step_at_start(trained, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TIM4REC_CACHE", str(tmp_path / "cache"))
    server = Server(trained["tim4rec"], tmp_path / "users.sqlite", compiled_step=True).start()
    try:
        with server.client() as client:
            assert client.get("/health").json()["step"] == "compiled"
            assert client.post("/users/c/events", json={"events": [{"item": "50", "time": 1}]}).status_code == 200
            assert client.get("/users/c/recommendations").status_code == 200
    finally:
        server.stop()
    assert "the streaming step compiled by AOTInductor in" in server.stderr
    assert len(list((tmp_path / "cache" / "steps").glob("*.pt2"))) == 1


def test_a_state_that_comes_out_transposed_still_runs_in_the_library(tmp_path: Path):
    """GRU4Rec's step returns its hidden state as a transposed view. The library's outputs are copied dense,
    and a state the eager step made (a replica that stepped eagerly, a saved state) is made dense on the way
    in: both run in the library. The cache folder here cannot be made (a file is in the way): the library is
    still compiled and used, just not kept."""
    from tests.models.test_contract import build

    (tmp_path / "file").write_text("")
    model = build("gru4rec", {}).eval()
    step = StreamingStep(model, compile=True, library_cache=tmp_path / "file" / "steps", key="gru")
    step.warm_up()
    assert step.compiler == "AOTInductor" and step.library_source == "compiled", step.notice
    library, calls = step.library, []
    step.library = lambda *inputs: calls.append(1) or library(*inputs)
    mine, expected = step_beside_eager(step, model, [(n + 1, 60 * n) for n in range(4)])
    assert len(calls) == 4
    assert not expected["hidden"].is_contiguous() or expected["hidden"].stride() != mine["hidden"].stride()
    eager = StreamingStep(model, compile=False)
    with torch.no_grad():
        want, _ = eager(expected, torch.tensor([9]), torch.tensor([600]))
        got, _ = step(expected, torch.tensor([9]), torch.tensor([600]))  # the eager step's state, in the library
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert len(calls) == 5
