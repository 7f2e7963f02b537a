"""Evaluation: full-ranking metrics (:func:`full_ranking_metrics`) and the model evaluator."""

from tim4rec.evaluation.evaluator import evaluate, evaluate_saved_model, load_for_evaluation
from tim4rec.evaluation.metrics import full_ranking_metrics, metrics_from_ranks, target_ranks

__all__ = [
    "evaluate",
    "evaluate_saved_model",
    "full_ranking_metrics",
    "load_for_evaluation",
    "metrics_from_ranks",
    "target_ranks",
]
