"""Sampled softmax with the log-Q correction: cross-entropy over the target and K shared negatives.

With scores ``s = h W^T + b``, target ``y_t`` and negatives ``k_1..k_K`` drawn with replacement
from a distribution Q and shared by every row t:

    loss_t = -s_{t,y_t} + log( exp(s_{t,y_t}) + sum_i [k_i != y_t] exp(s_{t,k_i} - log(K Q(k_i))) )

``K Q(k)`` is how often k is drawn in expectation, so the sum over the negatives is an unbiased
(importance-sampling) estimate of ``sum_{j != y_t} exp(s_{t,j})`` and the bracket estimates the
full softmax's normaliser: subtracting ``log Q`` is what keeps popular negatives from dominating
(the "log-Q correction"; Bengio & Senecal 2008, Jean et al. 2015, Yi et al. 2019). Negatives equal
to the row's target (accidental hits) are left out. Drawing every item exactly once (``K Q = 1``)
gives the full cross-entropy exactly. The (T, K) scores replace the (T, V) ones: memory and time
grow with K, not with the catalogue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sampled_softmax_loss"]


def sampled_softmax_loss(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    negatives: Tensor,
    log_expected: Tensor,
) -> Tensor:
    """Summed sampled-softmax loss.

    Args:
        hidden: (T, d) hidden states.   weight: (V, d) item weights.   bias: (V,) or None.
        targets: (T,) target ids.   negatives: (K,) negative ids shared by the rows.
        log_expected: (K,) ``log(K Q(k))``, the log of each negative's expected count.
    Returns:
        The loss summed over the T rows (a 0-d tensor).
    """
    target_scores = (hidden * weight[targets]).sum(-1)  # (T,)
    negative_scores = hidden @ weight[negatives].t()  # (T, K)
    if bias is not None:
        target_scores = target_scores + bias[targets]
        negative_scores = negative_scores + bias[negatives]
    corrected = negative_scores - log_expected.to(negative_scores.dtype)  # (T, K)
    corrected = corrected.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))  # accidental hits
    logits = torch.cat([target_scores[:, None], corrected], dim=1)  # (T, 1 + K), the target in column 0
    return F.cross_entropy(logits, targets.new_zeros(targets.shape[0]), reduction="sum")
