"""trainer.mixed_precision and trainer.jit_compile: the Keras dtype policy a model is built under."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import keras

from loaderlab.utils.errors import ConfigError

POLICIES = ("mixed_float16", "mixed_bfloat16")
JIT = {"auto": "auto", True: True, False: False}


def visible_gpu() -> bool:
    """Whether TensorFlow sees a GPU."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def cpu_has_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512_BF16 or AMX), read from /proc/cpuinfo."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def dtype_policy_for(setting: bool | str | None, gpu: bool) -> str:
    """The Keras dtype policy trainer.mixed_precision asks for on this device; a ConfigError where
    the device cannot run it. true: mixed_float16 on a GPU, mixed_bfloat16 on a CPU with bfloat16."""
    if setting in (None, False, "float32"):
        return "float32"
    if setting is True:
        setting = "mixed_float16" if gpu else "mixed_bfloat16"
    if setting not in POLICIES:
        raise ConfigError(
            "trainer.mixed_precision must be true, false, mixed_float16 or mixed_bfloat16. "
            f"Received: mixed_precision={setting!r}"
        )
    if not gpu and setting == "mixed_float16":
        raise ConfigError(
            "trainer.mixed_precision=mixed_float16 needs a GPU: a CPU computes float16 in software, "
            "slower than float32. Set trainer.mixed_precision=true (bfloat16 on a CPU that has it) or false."
        )
    if not gpu and not cpu_has_bfloat16():
        raise ConfigError(
            "trainer.mixed_precision needs a GPU, or a CPU with bfloat16 instructions (AVX512_BF16 or "
            "AMX), and this machine has neither. Set trainer.mixed_precision=false."
        )
    return setting


def jit_compile_for(setting: bool | str) -> bool | str:
    """model.compile's jit_compile for trainer.jit_compile: auto (Keras decides), true or false."""
    if setting not in JIT:
        raise ConfigError(
            f"trainer.jit_compile must be auto, true or false. Received: jit_compile={setting!r}"
        )
    return JIT[setting]


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Keras' global dtype policy set to `name` while a model is built, then restored: the layers keep
    theirs, and the next job in this process starts from what it found."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)
