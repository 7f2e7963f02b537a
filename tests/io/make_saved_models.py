"""Write tiny saved models of every model (and every TiM4Rec time mode) and their scores on one fixed batch.

Run once, with the code whose saved models later code must keep loading:
``python -m tests.io.make_saved_models``. The files (a few KiB each, random weights, synthetic item
ids) are committed; ``test_saved_models.py`` loads them with today's code and checks the scores.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.models.helpers import perturbed, random_history
from tim4rec.config import Config
from tim4rec.io.saved_model import save_model
from tim4rec.models import available, create, model_defaults

FOLDER = Path(__file__).with_name("saved_models")
N_ITEMS, L = 30, 12
SIZES = {"hidden_size": 16, "inner_size": 32, "n_heads": 2, "head_dim": 8, "d_state": 8, "chunk_size": 4,
         "embedding_size": 16, "nv": 2, "nh": 2}  # fmt: skip
VARIANTS = {name: (name, {}) for name in available()} | {
    f"tim4rec-{mode}": ("tim4rec", {"time_mode": mode}) for mode in ("paper", "none")
}


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four histories of lengths 12, 5, 1 and 9 (times with gaps of 1 s to about 3 h)."""
    return random_history(N_ITEMS, L, (L, 5, 1, 9), min_gap=1, max_gap=10_000)


def main() -> None:
    FOLDER.mkdir(exist_ok=True)
    expected = {}
    for variant, (name, extra) in VARIANTS.items():
        defaults = model_defaults(name)
        hyperparameters = {**{k: v for k, v in SIZES.items() if k in defaults}, **extra}
        torch.manual_seed(0)
        model = create(name, N_ITEMS, L, **hyperparameters).eval()
        if list(model.parameters()):
            model = perturbed(model)  # weights away from their initial values (biases, norms)
        else:  # MostPop: counts instead of weights
            model.counts.copy_(torch.randint(0, 50, model.counts.shape, generator=torch.Generator().manual_seed(0)))
        config = Config.from_dict({"model": name, "dataset": "synthetic", "MAX_ITEM_LIST_LENGTH": L,
                                   **hyperparameters}).to_dict()  # fmt: skip
        tokens = ["[PAD]"] + [f"i{n}" for n in range(1, N_ITEMS + 1)]
        save_model(FOLDER / f"{variant}.pt", model, name=name, n_items=N_ITEMS, max_seq_length=L,
                   hyperparameters=hyperparameters, config=config, item_tokens=tokens, epoch=1,
                   valid={"ndcg@10": 0.1})  # fmt: skip
        with torch.no_grad():
            expected[variant] = model.full_sort_predict(*batch())
    torch.save(expected, FOLDER / "scores.pt")


if __name__ == "__main__":
    main()
