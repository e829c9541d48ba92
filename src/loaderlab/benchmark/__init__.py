"""The loader benchmark: each input pipeline alone, no model, against this machine's decode limit.

entries.py says what can be measured, measure.py measures one entry in its own process (started
as `python -m loaderlab.benchmark._child`), runner.py runs an invocation and logs it to MLflow.
The command line is src/benchmark.py.
"""

from loaderlab.benchmark.entries import DECODE_LIMIT, default_entries
from loaderlab.benchmark.measure import EntryResult
from loaderlab.benchmark.peers import KERAS_FROM_DIRECTORY
from loaderlab.benchmark.runner import (
    EXPERIMENT,
    BenchmarkConfig,
    BenchmarkReport,
    EntryFailedError,
    format_table,
    merge_limits,
    run_benchmark,
)

__all__ = [
    "DECODE_LIMIT", "EXPERIMENT", "KERAS_FROM_DIRECTORY", "BenchmarkConfig", "BenchmarkReport",
    "EntryFailedError", "EntryResult", "default_entries", "format_table", "merge_limits", "run_benchmark",
]  # fmt: skip
