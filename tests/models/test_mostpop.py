"""MostPop ranks items by how often they are training targets, ignoring the history and the held-out events."""

from pathlib import Path

import numpy as np
import torch

import tim4rec
from tests.data.test_preprocess import frame
from tim4rec.data.batches import SequenceData
from tim4rec.data.preprocess import build_interactions
from tim4rec.data.split import LeaveOneOut
from tim4rec.models import create


def test_scores_are_training_target_counts():
    # user a: x y x z (targets y, (x valid), z test); user b: y x y y x (targets x, y; y valid, x test)
    rows = [("a", "x", 1), ("a", "y", 2), ("a", "x", 3), ("a", "z", 4), ("b", "y", 1), ("b", "x", 2), ("b", "y", 3),
            ("b", "y", 4), ("b", "x", 5)]  # fmt: skip
    data = build_interactions(frame(rows), user_inter_num_interval=None, item_inter_num_interval=None)
    sequences = SequenceData(data, LeaveOneOut()(data), max_seq_length=4)
    model = create("mostpop", data.n_items, 4)
    model.fit_data(sequences)
    ids = {token: index for index, token in enumerate(data.item_tokens)}
    scores = model.full_sort_predict(torch.zeros(2, 4, dtype=torch.long), torch.tensor([0, 3]), torch.zeros(2, 4))
    expected = np.zeros(data.n_items + 1)
    expected[ids["y"]], expected[ids["x"]] = 2, 1  # a's y; b's x and y (training targets only)
    assert scores.shape == (2, data.n_items + 1) and (scores == torch.tensor(expected, dtype=torch.float32)).all()
    assert list(model.parameters()) == []


def test_trains_in_one_epoch_without_steps(synthetic_inter: Path, tmp_path: Path):
    results = tim4rec.train(model="mostpop", dataset=synthetic_inter, output_dir=tmp_path / "run", threads=1,
                            show_progress=False)  # fmt: skip
    assert results["stopped_by"] == "nothing_to_learn" and results["epochs_run"] == 1 and results["steps"] == 0
