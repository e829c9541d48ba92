"""The isolated launcher: Hydra's own launcher test suite, light plugin discovery, and its process groups."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite

from hydra_plugins.loaderlab_launcher._core import run_in_own_session


def test_discovery_finds_it_without_importing_loaderlab_or_cloudpickle() -> None:
    code = textwrap.dedent(
        """
        import sys
        from hydra.core.plugins import Plugins
        from hydra.plugins.launcher import Launcher
        names = [p.__name__ for p in Plugins.instance().discover(Launcher)]
        assert "IsolatedLauncher" in names, names
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("loaderlab", "cloudpickle", "keras"))
        print("HEAVY", heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


# chdir=True: the suite checks each job's log in its working directory (Hydra's pre-1.2 default,
# which the version_base="1.3" our other tests set would otherwise turn off for the session).
@pytest.mark.parametrize("launcher_name, overrides", [("isolated", ["hydra.job.chdir=True"])])
class TestIsolatedLauncher(LauncherTestSuite):
    """Hydra's own launcher checks: sweeps of 1 and 2 jobs, overrides, bad keys."""


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [({}, ["-m", "hydra/launcher=isolated"])],
)
class TestIsolatedLauncherIntegration(IntegrationTestSuite):
    """Hydra's integration checks: a real app's multirun through the launcher."""


def _group_alive(pgid: int) -> list[psutil.Process]:
    alive = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != "zombie":
                alive.append(proc)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    return alive


def _gone(pid: int, timeout_s: float = 30) -> bool:
    """Whether the process has exited (a zombie holds nothing), waited for up to timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_a_job_that_hangs_after_its_result_is_ended_with_its_group(tmp_path: Path, caplog) -> None:
    """A job whose process never exits once its result is written (a stuck worker), and a grandchild."""
    result = tmp_path / "result"
    pids = tmp_path / "pids"
    script = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
        open({str(result)!r}, "w").write("done")
        time.sleep(600)
        """
    )
    start = time.monotonic()
    code = run_in_own_session([sys.executable, "-c", script], result, grace_s=2.0, name="job #0")
    assert time.monotonic() - start < 60
    assert code != 0
    main_pid, child_pid = map(int, pids.read_text().split())
    assert _gone(child_pid)  # SIGKILLed with its group; the kernel may take a moment on a busy machine
    assert "did not exit 2 s after it ended" in caplog.text
    assert not _group_alive(main_pid)
