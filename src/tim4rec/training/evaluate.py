"""Evaluate a saved model (``best.pt``) on its dataset's validation or test users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tim4rec.config import metric_names
from tim4rec.data import SequenceData, interactions_from_config
from tim4rec.errors import Tim4RecError
from tim4rec.evaluation.evaluator import evaluate
from tim4rec.models import create
from tim4rec.training.checkpoint import load_checkpoint


def load_model(path: str | Path):
    """Rebuild the model saved in ``best.pt``; returns (model, saved dict)."""
    path = Path(path)
    if not path.is_file():
        raise Tim4RecError(f"{path}: no such checkpoint")
    try:
        saved = load_checkpoint(path)
    except Exception as error:  # torch raises many types for a bad file
        raise Tim4RecError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(saved, dict) or saved.get("format") != "tim4rec-model-1":
        raise Tim4RecError(f"{path}: not a tim4rec model file (best.pt)")
    model = create(saved["model"], saved["n_items"], saved["max_seq_length"], **saved["hyperparameters"])
    model.load_state_dict(saved["model_state"])
    model.eval()
    return model, saved


def evaluate_checkpoint(path: str | Path, *, split: str = "test", mask_history: bool | None = None) -> dict[str, Any]:
    model, saved = load_model(path)
    config = saved["config"]
    interactions = interactions_from_config(config)
    if interactions.item_tokens.tolist() != saved["item_tokens"]:
        raise Tim4RecError(f"{path}: the dataset's item ids differ from the ones the model was trained on")
    data = SequenceData(interactions, saved["max_seq_length"])
    metrics = evaluate(
        model,
        data,
        data.evaluation_samples(split),
        batch_size=config["eval_batch_size"],
        ks=config["topk"],
        metric_names=metric_names(config),
        mask_history=config["mask_history"] if mask_history is None else mask_history,
    )
    return {"metrics": metrics, "config": config, "epoch": saved["epoch"]}
