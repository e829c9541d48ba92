"""Checkpoints that a crash mid-write cannot corrupt: write to a temporary file, then rename."""

from __future__ import annotations

import math
import os
from pathlib import Path

import keras


def save_atomic(model: keras.Model, path: Path) -> None:
    """Save the model to path via a temporary file in the same folder and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    model.save(tmp)
    os.replace(tmp, path)


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the model whenever val_loss improves on the best so far (across resumes)."""

    def __init__(self, path: Path, best: float = math.inf):
        super().__init__()
        self.path, self.best = Path(path), best

    def on_epoch_end(self, epoch, logs=None):
        val_loss = (logs or {}).get("val_loss")
        if val_loss is not None and val_loss < self.best:
            self.best = float(val_loss)
            save_atomic(self.model, self.path)
