"""python src/train.py --help: loaderlab's own help page (conf/hydra/help/loaderlab.yaml)."""

from __future__ import annotations

import shlex
import subprocess
import sys

from hydra import compose, initialize_config_dir

from loaderlab import PROJECT_ROOT

TASKS = (
    "python src/train.py loader=generator",
    "python src/train.py -m loader=inmemory,generator,sequence,tfdata,packed",
    "python src/compare.py",
    "python src/benchmark.py",
    "python src/eval.py eval.run_id=<run id>",
    "mlflow models serve -m models:/shapes/1",
)


def test_help_lists_the_common_tasks_groups_and_config() -> None:
    # hydra/help=loaderlab on the command line: the same page whether conf/config.yaml picks it or not
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "src" / "train.py"), "--help", "hydra/help=loaderlab"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    page = result.stdout
    assert page.startswith("loaderlab: train image classifiers") and "Powered by Hydra" not in page
    assert [task for task in TASKS if task not in page] == []
    assert "loader: generator, inmemory, keras, packed, sequence, tfdata, tfdata_service" in page
    assert "== Config ==" in page and "\ntracking:\n" in page  # the composed config, every key
    assert page.rstrip().endswith("docs/runs.md: runs, sweeps and compare.py).")
    # Every single-run train.py line on the page composes.
    lines = [
        line.split("python src/train.py ", 1)[1]
        for line in page.splitlines()
        if "python src/train.py " in line
    ]
    runs = [rest.split("  ")[0] for rest in lines if not any(flag in rest for flag in ("-m", "--", "["))]
    overrides = [shlex.split(rest) for rest in runs]
    assert len(overrides) >= 4
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        for args in overrides:
            compose("config", overrides=args)
