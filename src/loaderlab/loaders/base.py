"""What every loader implements, and the Feed it hands to model.fit."""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from loaderlab.data.manifest import Split
from loaderlab.loaders.decode import ImageDecoder


@dataclass
class Feed:
    """One split in the form model.fit takes it."""

    x: Any
    y: np.ndarray | None = None
    batch_size: int | None = None  # set when x is an array that fit batches itself
    steps: int | None = None  # set when x is an endless stream
    on_close: Callable[[], None] | None = None  # stops what the loader started for this feed
    callbacks: list = field(default_factory=list)  # Keras callbacks the feed needs during fit
    metrics: dict[str, float] = field(default_factory=dict)  # one-time costs; a job sums its feeds'
    tags: dict[str, str] = field(default_factory=dict)  # facts about how the feed was made

    def __enter__(self) -> Feed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the feed's threads and free its buffers; the job calls it in every ending."""
        if self.on_close is not None:
            self.on_close()

    def fit_kwargs(self, class_weight: dict[int, float] | None = None) -> dict[str, Any]:
        """Arguments for model.fit's training data, weighted by class where class_weight is given."""
        if self.y is not None:
            return {
                "x": self.x,
                "y": self.y,
                "batch_size": self.batch_size,
                "shuffle": True,
                "class_weight": class_weight,
            }
        x = self.x
        if class_weight is not None and inspect.isgenerator(x):
            # Keras refuses class_weight for a Python generator (keras/src/trainers/data_adapters/__init__.py)
            x, class_weight = _with_sample_weights(x, class_weight), None
        return {"x": x, "steps_per_epoch": self.steps, "shuffle": False, "class_weight": class_weight}

    def evaluate_kwargs(self) -> dict[str, Any]:
        """Arguments for model.evaluate over this split once."""
        if self.y is not None:
            return {"x": self.x, "y": self.y, "batch_size": self.batch_size}
        return {"x": self.x, "steps": self.steps}

    def validation_kwargs(self) -> dict[str, Any]:
        """Arguments for model.fit's validation data."""
        if self.y is not None:
            return {"validation_data": (self.x, self.y), "validation_batch_size": self.batch_size}
        return {"validation_data": self.x, "validation_steps": self.steps}


class Loader(ABC):
    """A strategy that turns a Split into batches of uint8 images and int labels."""

    name: ClassVar[str]
    streaming: ClassVar[bool] = True  # False: holds every decoded image in memory
    needs_service: ClassVar[bool] = False  # True: servers must be started first (left out of default runs)

    @abstractmethod
    def feed(
        self, split: Split, decoder: ImageDecoder, batch_size: int, training: bool, seed: int = 0
    ) -> Feed:
        """Build the feed; training=True shuffles every epoch, False keeps manifest order."""


def _with_sample_weights(batches: Iterator, class_weight: dict[int, float]) -> Iterator:
    """(images, labels) batches as (images, labels, weights): class_weight as Keras applies it."""
    table = np.zeros(max(class_weight) + 1, np.float32)
    for label, weight in class_weight.items():
        table[label] = weight
    for images, labels in batches:
        yield images, labels, table[np.asarray(labels)]


def num_batches(num_items: int, batch_size: int) -> int:
    """Batches per pass, the last one partial."""
    return math.ceil(num_items / batch_size)
