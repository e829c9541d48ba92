"""TensorFlow's start-up lines, held back from the console of a first run.

TensorFlow 2.21 writes its C++ banner (oneDNN, CPU features, "Could not find cuda drivers", and on a
machine without a GPU "failed call to cuInit") to stderr before its logging is set up, so
TF_CPP_MIN_LOG_LEVEL=2 does not hide it, and 3 would hide real errors too. The import and the first
device probe therefore write into a file of ours; every line but those known banner lines is then
written to stderr as it came. LOADERLAB_TF_STARTUP_LOG=1 shows everything. No variable is set.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

SHOW_VARIABLE = "LOADERLAB_TF_STARTUP_LOG"
BANNER = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
    r"Could not find cuda drivers|cpu_feature_guard|To enable the following instructions|"
    r"rebuild TensorFlow with the appropriate compiler flags|failed call to cuInit|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|TF-TRT Warning"
)


@contextlib.contextmanager
def _banner_held() -> Iterator[None]:
    """stderr (file descriptor 2) into a temporary file for the block, then its lines but the banner's."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not BANNER.search(line)))
            sys.stderr.flush()


def start_tensorflow() -> None:
    """Import TensorFlow and probe for GPUs with the C++ banner held back (see the module); nothing
    to do where TensorFlow is already imported, or where LOADERLAB_TF_STARTUP_LOG=1 asks for it."""
    if "tensorflow" in sys.modules or os.environ.get(SHOW_VARIABLE) == "1":
        return
    with _banner_held():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # the CUDA probe, whose error on a CPU machine is banner
