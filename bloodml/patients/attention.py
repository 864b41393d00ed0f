"""Gated attention pooling of a patient's cells (Ilse, Tomczak & Welling, ICML 2018): each cell's frozen-backbone
feature gets a weight a_i = softmax_i(w . (tanh(V h_i) * sigmoid(U h_i))); the patient's embedding is sum a_i h_i and
a linear layer makes it the patient's logit (positive class). Trained on the training patients' bags with a
patient-level loss; each epoch a cell shows one of its augmented views.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


@dataclass(frozen=True)
class AttentionSettings:
    # Small on purpose: 30-odd training patients. On lymphocytosis-dev (5-fold CV of one split's features, 2
    # repeats) hidden 128 / 40 epochs gave patient ROC-AUC 0.60, hidden 32 / 20 epochs 0.74 (docs/results.md).
    hidden: int = 32  # the cells' projected size and the attention's hidden size
    epochs: int = 20
    lr: float = 5e-4
    weight_decay: float = 1e-3
    dropout: float = 0.25
    seed: int = 0


class GatedAttentionPooling(nn.Module):
    def __init__(self, features: int, hidden: int = 128, dropout: float = 0.25):
        super().__init__()
        self.features, self.hidden = features, hidden
        self.project = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Linear(hidden, hidden)
        self.attention_u = nn.Linear(hidden, hidden)
        self.attention_w = nn.Linear(hidden, 1)
        self.classify = nn.Linear(hidden, 1)

    def forward(self, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One bag (N, D) -> (the patient's logit (), the cells' attention weights (N,))."""
        h = self.project(cells)
        gate = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
        weights = torch.softmax(self.attention_w(gate).squeeze(-1), dim=0)
        return self.classify((weights[:, None] * h).sum(0)).squeeze(-1), weights


def fit_attention(bags: list[torch.Tensor], positive: np.ndarray,
                  settings: AttentionSettings = AttentionSettings()) -> GatedAttentionPooling:
    """Train on ``bags`` (each (views, N_i, D): a patient's cells, one or several augmented views of each) with
    labels ``positive`` (1: the positive class); positives and negatives weigh the same in the loss."""
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    model = GatedAttentionPooling(bags[0].shape[-1], settings.hidden, settings.dropout)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    labels = torch.as_tensor(np.asarray(positive), dtype=torch.float32)
    n_pos = float(labels.sum())
    weight = torch.where(labels > 0, len(labels) / max(2 * n_pos, 1.0), len(labels) / max(2 * (len(labels) - n_pos), 1.0))
    model.train()
    for _ in range(settings.epochs):
        for i in torch.randperm(len(bags), generator=generator).tolist():
            bag = bags[i]
            view = torch.randint(0, bag.shape[0], (bag.shape[1],), generator=generator)
            logit, _ = model(bag[view, torch.arange(bag.shape[1])])
            loss = weight[i] * F.binary_cross_entropy_with_logits(logit, labels[i])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


@torch.no_grad()
def attend(model: GatedAttentionPooling, bags: list[torch.Tensor]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each bag's (N_i, D) patient logit, and its cells' attention weights."""
    model.eval()
    logits, weights = [], []
    for bag in bags:
        logit, w = model(bag.float())
        logits.append(float(logit))
        weights.append(w.numpy())
    return np.array(logits), weights
