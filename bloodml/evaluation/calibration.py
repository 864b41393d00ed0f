"""Calibration: expected calibration error, reliability bins, and temperature scaling fitted on validation data."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def reliability_bins(y_true: np.ndarray, probabilities: np.ndarray, n_bins: int = 10):
    """Per equal-width confidence bin: (lower edge, upper edge, count, mean confidence, accuracy)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0, 1, n_bins + 1)
    rows = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high) if low > 0 else (confidence >= low) & (confidence <= high)
        count = int(inside.sum())
        rows.append((float(low), float(high), count, float(confidence[inside].mean()) if count else float("nan"),
                     float(correct[inside].mean()) if count else float("nan")))
    return rows


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, n_bins: int = 10) -> float:
    """sum over bins of |accuracy - confidence| weighted by the bin's share of samples."""
    n = len(y_true)
    if n == 0:
        return float("nan")
    return float(sum(count / n * abs(acc - conf) for _, _, count, conf, acc in reliability_bins(y_true, probabilities,
                                                                                                n_bins) if count))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The temperature T > 0 minimising the validation NLL of softmax(logits / T) (Guo et al. 2017)."""
    log_t = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))
