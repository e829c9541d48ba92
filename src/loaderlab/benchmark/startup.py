"""What a run pays before its first step, at a file count of your choosing: the listing and the bad-file
pass, in a first run (no kept verdicts) and a second one (verdicts kept under outputs/verdicts).

`python -m loaderlab.benchmark.startup --files 200000` builds <outputs>/startup/<n>/ of hard links to
the synthetic set's JPEGs (no extra disk), then times each run in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from loaderlab.utils.paths import OUTPUTS

_CHILD = """
import json, sys, time
from pathlib import Path
from loaderlab.data.folder import folder_manifest
from loaderlab.validate import drop_bad_images
start = time.perf_counter()
manifest = folder_manifest(sys.argv[1])
listed = time.perf_counter()
drop_bad_images(manifest, "error", Path(sys.argv[2]))
done = time.perf_counter()
print(json.dumps({"manifest_s": listed - start, "bad_file_pass_s": done - listed}))
"""


def linked_dataset(files: int, source: Path, root: Path) -> Path:
    """root/<class>/<i>.jpg: `files` hard links cycling over source's JPEGs, made once."""
    folder = root / str(files)
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    originals = sorted(source.rglob("*.jpg"))
    for i in range(files):
        original = originals[i % len(originals)]
        target = folder / original.parent.name / f"{i:07d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(original, target)
    (folder / ".complete").touch()
    return folder


def timed_run(root: Path, verdicts: Path) -> dict[str, float]:
    """One run's listing and bad-file pass, in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), str(verdicts)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    """Build the linked dataset, then time a first and a second run."""
    from loaderlab.benchmark.dataset import prepare_dataset
    from loaderlab.benchmark.runner import BenchmarkConfig

    parser = argparse.ArgumentParser(prog="python -m loaderlab.benchmark.startup")
    parser.add_argument("--files", type=int, default=200_000)
    args = parser.parse_args(argv)
    source = Path(prepare_dataset(BenchmarkConfig()).root)
    start = time.perf_counter()
    root = linked_dataset(args.files, source, OUTPUTS / "startup")
    print(f"{args.files} files under {root} ({time.perf_counter() - start:.0f} s to link)", flush=True)
    verdicts = OUTPUTS / "startup" / f"verdicts-{args.files}"
    shutil.rmtree(verdicts, ignore_errors=True)  # the first run keeps nothing from before
    first, second = timed_run(root, verdicts), timed_run(root, verdicts)
    totals = [run["manifest_s"] + run["bad_file_pass_s"] for run in (first, second)]
    for name, run, total in (("first run", first, totals[0]), ("second run", second, totals[1])):
        print(
            f"{name:<11} manifest {run['manifest_s']:6.1f} s  bad-file pass {run['bad_file_pass_s']:6.1f} s  "
            f"total {total:6.1f} s"
        )
    print(f"second run / first run: {totals[1] / totals[0]:.3f}")


if __name__ == "__main__":
    main()
