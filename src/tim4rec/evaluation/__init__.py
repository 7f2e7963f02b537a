"""Evaluation: full-ranking metrics (:func:`full_ranking_metrics`) and the model evaluator."""

from tim4rec.evaluation.metrics import full_ranking_metrics, metrics_from_ranks, target_ranks

__all__ = ["full_ranking_metrics", "metrics_from_ranks", "target_ranks"]
