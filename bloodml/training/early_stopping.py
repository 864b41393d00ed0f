"""Early stopping on validation loss, remembering the best epoch (Keras' EarlyStopping + ModelCheckpoint)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field


@dataclass
class EarlyStopping:
    patience: int  # 0: never stop early (still remembers the best epoch)
    min_delta: float = 0.0
    best_loss: float = float("inf")
    best_epoch: int = 0
    best_state: dict | None = field(default=None, repr=False)
    bad_epochs: int = 0

    def step(self, epoch: int, val_loss: float, state: dict | None = None) -> bool:
        """Record one epoch (1-based). Returns True when training should stop after it. Without validation
        (``val_loss`` NaN) every epoch is the best so far and training runs its epochs: the last one is kept."""
        if val_loss != val_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            self.best_state = copy.deepcopy(state) if state is not None else None
            return False
        if val_loss < self.best_loss - self.min_delta or self.best_state is None and epoch == 1:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            self.best_state = copy.deepcopy(state) if state is not None else None
            return False
        self.bad_epochs += 1
        return bool(self.patience) and self.bad_epochs >= self.patience
