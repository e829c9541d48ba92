"""The benchmark's child process: measure one entry and print it as one JSON line (run by the runner)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from loaderlab.benchmark.measure import measure_entry
from loaderlab.benchmark.peers import PeerUnavailableError

RESULT_PREFIX = "BENCHMARK_RESULT "  # marks the JSON line among any library output
SKIP_PREFIX = "BENCHMARK_SKIPPED "  # a peer that cannot run here, and why


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m loaderlab.benchmark._child --entry X ...`: measure, print, exit."""
    parser = argparse.ArgumentParser(description="Measure one benchmark entry (started by src/benchmark.py).")
    for flag in ("--entry", "--root", "--conf-dir", "--augment"):
        parser.add_argument(flag, required=True)
    for flag in ("--input-size", "--batch-size", "--passes", "--cores"):
        parser.add_argument(flag, type=int, required=True)
    args = parser.parse_args(argv)
    try:
        result = measure_entry(
            args.entry,
            args.root,
            args.input_size,
            args.batch_size,
            args.passes,
            args.cores,
            Path(args.conf_dir),
            args.augment,
        )
        print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)
    except PeerUnavailableError as e:
        print(SKIP_PREFIX + str(e), flush=True)
    # Skip interpreter teardown: TF's from_generator threads can abort it after the result is out.
    os._exit(0)


if __name__ == "__main__":
    main()
