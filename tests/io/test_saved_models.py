"""Saved models written by earlier code (tests/io/saved_models, made by make_saved_models.py) load and
score as they did: the model files of every model and TiM4Rec time mode are a format users keep."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.io.make_saved_models import VARIANTS, batch
from tim4rec.io import load_saved_model

FOLDER = Path(__file__).with_name("saved_models")


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_saved_model_of_earlier_code_loads_and_scores_the_same(variant: str):
    expected = torch.load(FOLDER / "scores.pt", weights_only=True)[variant]
    model = load_saved_model(FOLDER / f"{variant}.pt").build()
    with torch.no_grad():
        scores = model.full_sort_predict(*batch())
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=1e-6)
