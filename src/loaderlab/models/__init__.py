"""Models; each is one module here plus one yaml in conf/model/. They take uint8 images.
(losses.py holds the losses a saved model may name.)"""

from __future__ import annotations

import importlib
import pkgutil


def register_all() -> None:
    """Import every model module, so Keras can load the custom layers they register (FamilyPreprocess).

    Keras 3.9+ no longer imports a saved layer's module itself, so whoever loads a model file calls this.
    """
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
