"""The isolated launcher: Hydra's own launcher test suite, light plugin discovery, and its process groups."""

from __future__ import annotations

import json
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


# A sweep app whose job waits, once it runs, until the test has read its pickle; then says what it saw.
SECRET_APP = """
import json, os, sys, time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg):
    folder, number = Path(cfg.folder), HydraConfig.get().job.num
    (folder / f"running-{number}").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not (folder / f"go-{number}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = {
        "secret": cfg.data.storage_options.secret,
        "region": cfg.data.storage_options.region_name,
        "token": cfg.db.token,
        "pin": cfg.db.password,
        "overrides": list(HydraConfig.get().overrides.task),
        "env": sorted(k for k in os.environ if k.startswith("LOADERLAB_JOB")),
    }
    (folder / f"seen-{number}.json").write_text(json.dumps(seen))
    return seen["token"]


if __name__ == "__main__":
    main()
"""
SECRETS = ("S3CR3T-abc", "tokA-123", "tokB-456", "987654")


def _wait_for(path: Path, app: subprocess.Popen, timeout_s: float = 300) -> None:
    """Until path exists; fails at once if the sweep ended first."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if app.poll() is not None:
            pytest.fail(
                f"the sweep ended ({app.returncode}) before {path.name}:\n{app.communicate()[1][-3000:]}"
            )
        assert time.monotonic() < deadline, f"no {path.name} after {timeout_s} s"
        time.sleep(0.05)


def test_a_running_jobs_pickle_holds_no_credential_and_the_job_still_sees_it(tmp_path: Path) -> None:
    """Credentials in overrides (storage_options, token/password keys, a swept one) stay out of the
    job's pickle on disk and out of its argv; the job's config and overrides still hold them."""
    app = tmp_path / "app.py"
    app.write_text(SECRET_APP)
    sweep_dir = tmp_path / "sweep"
    overrides = [
        "+data.storage_options.secret=S3CR3T-abc",
        "+data.storage_options.region_name=eu-west-1",
        "+db.token=tokA-123,tokB-456",
        "+db.password=987654",
    ]
    command = [sys.executable, str(app), "-m", "hydra/launcher=isolated", f"hydra.sweep.dir={sweep_dir}"]
    sweep = subprocess.Popen(
        [*command, f"+folder={tmp_path}", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for number in (0, 1):
            _wait_for(tmp_path / f"running-{number}", sweep)
            job_file = sweep_dir / ".jobs" / f"{number}.pkl"
            data = job_file.read_bytes()  # the job runs: its pickle is there until it ends
            assert len(data) > 1000 and b"eu-west-1" in data  # a safe option stays as it is
            assert [s for s in SECRETS if s.encode() in data] == []
            pid = int((tmp_path / f"running-{number}").read_text())
            argv = " ".join(psutil.Process(pid).cmdline())
            assert [s for s in SECRETS if s in argv] == [], argv
            (tmp_path / f"go-{number}").touch()
        _, err = sweep.communicate(timeout=300)
    finally:  # a failed check: release the jobs, so that the sweep ends with them
        for number in (0, 1):
            (tmp_path / f"go-{number}").touch()
        if sweep.poll() is None:
            try:
                sweep.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                sweep.kill()
                sweep.communicate()
    assert sweep.returncode == 0, err[-3000:]
    for number, token in enumerate(("tokA-123", "tokB-456")):
        seen = json.loads((tmp_path / f"seen-{number}.json").read_text())
        assert (seen["secret"], seen["region"], seen["token"], seen["pin"]) == (
            "S3CR3T-abc",
            "eu-west-1",
            token,
            987654,
        )
        assert f"+db.token={token}" in seen["overrides"]
        assert seen["env"] == []  # taken out of the job's environment once read
    assert not list((sweep_dir / ".jobs").iterdir())


def test_the_masker_round_trips_what_it_hides() -> None:
    from omegaconf import OmegaConf

    from hydra_plugins.loaderlab_launcher._secrets import Masker, secrets_in

    cfg = OmegaConf.create(
        {
            "data": {"storage_options": {"key": "AK", "secret": "AKS", "region_name": "eu", "client_kwargs": {
                "endpoint_url": "http://me:pw@host:9000"}}},
            "db": {"api_key": 12345, "name": "AK-public"},
            "hydra": {"overrides": {"task": ["+data.storage_options.token=t1,t2", "trainer.seed=1"]}},
        }
    )  # fmt: skip
    secrets = secrets_in([cfg])
    assert set(secrets) == {"AK", "AKS", "me:pw", "12345", "t1,t2"}
    masker = Masker(secrets)
    payload = {"cfg": cfg, "texts": ["AKS and AK", "me:pw@", 12345, True, 1], "safe": "eu"}
    data = masker.dumps(payload)
    assert not [s for s in secrets if s.encode() in data]
    back = masker.loads(data)
    assert back["texts"] == payload["texts"] and back["safe"] == "eu" and back["cfg"] == cfg
    assert type(back["cfg"].db.api_key) is int
    environ = masker.env()
    assert Masker.from_env(environ).loads(data) == back and environ == {}  # popped


def test_a_secret_found_in_the_masks_own_words_does_not_loop() -> None:
    """Secrets as short as 's', '0' or 'secret' (Hydra's own example password): masked, restored."""
    from hydra_plugins.loaderlab_launcher._secrets import Masker

    masker = Masker(["secret", "s", "0", "1"])
    payload = {"password": "secret", "words": ["sis", "a0b1"], "numbers": [0, 1, 2, True], ("s", 1): b"s"}
    data = masker.dumps(payload)
    assert b"secret" not in data and masker.loads(data) == payload
