"""A tracking server that goes away mid-run costs no metric: a real `mlflow server`, stopped and restarted
on the same port and store while `python src/train.py` trains against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import ADMIN, ADMIN_PASSWORD, create_user, train_command
from helpers import free_ports
from loaderlab import PROJECT_ROOT
from mlflow_server import Server

pytestmark = pytest.mark.slow
EPOCHS = 6
# MLflow's own retries off: only the project's journal can carry metrics across the outage.
NO_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class Job:
    """python src/train.py against the server, its output read line by line."""

    def __init__(self, tmp_path: Path, tiny_root: Path, uri: str, *overrides: str):
        self.folder = tmp_path / "run"
        command = train_command(
            tmp_path,
            tiny_root,
            f"tracking.uri={uri}",
            "tracking.artifact_location=null",
            f"trainer.epochs={EPOCHS}",
            "~callbacks.early_stopping",
            "batch.train=8",
            f"hydra.run.dir={self.folder}",
            *overrides,
        )
        env = {**os.environ, **NO_RETRIES, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output:
            assert self.proc.poll() is None or text in self.output, self.output[-3000:]
            assert time.monotonic() < deadline, f"no {text!r} in time:\n{self.output[-3000:]}"
            time.sleep(0.2)

    def finish(self, timeout_s: float = 600) -> int:
        code = self.proc.wait(timeout=timeout_s)
        time.sleep(0.5)  # the reader thread drains the last lines
        return code


def assert_every_epoch_delivered(uri: str, experiment: str) -> None:
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED"
    for key in ("val_loss", "loss", "epoch_time_s"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(EPOCHS)), f"{key}: {steps}"
    assert {"peak_rss_mb", "best_val_loss", "images_per_sec"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"train.log", "checkpoints", ".hydra"} <= artifacts


def test_an_outage_mid_run_loses_no_metric(tmp_path: Path, tiny_root: Path, server: Server) -> None:
    job = Job(tmp_path, tiny_root, server.uri, "tracking.experiment=outage-mid-run")
    try:
        job.wait_for("Epoch 2/")
        down_at = time.monotonic()
        server.stop()
        job.wait_for("does not answer")  # the job noticed, and trains on
        job.wait_for(f"Epoch {EPOCHS - 2}/")
        server.start()
        print(f"\nOUTAGE server down for {time.monotonic() - down_at:.0f} s, across epochs 2..{EPOCHS - 2}")
        assert job.finish() == 0, job.output[-3000:]
    finally:
        job.proc.kill()
    assert "is back after" in job.output
    assert not list(job.folder.glob("mlflow-journal-*"))  # all delivered: nothing kept
    assert_every_epoch_delivered(server.uri, "outage-mid-run")


# The journal against each fault a team server really has, through RunLog itself: a job's records
# written while the fault lasts, then the server's record of the run counted point by point.


@pytest.fixture(autouse=True)
def no_mlflow_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's own retries off (a 5xx would sit minutes in them): the journal's waiting is under test."""
    for key, value in NO_RETRIES.items():
        monkeypatch.setenv(key, value)


def new_run(uri: str, experiment: str, parent: bool = False) -> tuple[str, str | None]:
    """(run id, parent run id): a RUNNING run in a new experiment, nested under a sweep parent if asked."""
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(experiment)
    parent_id = client.create_run(experiment_id, tags={"role": "sweep"}).info.run_id if parent else None
    tags = {"mlflow.parentRunId": parent_id} if parent else {}
    return client.create_run(experiment_id, tags=tags).info.run_id, parent_id


def log_epochs(run_log, epochs: range) -> None:
    for epoch in epochs:
        run_log.metrics({"val_loss": 1.0 / (epoch + 1), "loss": 2.0 / (epoch + 1)}, step=epoch)


def assert_on_server(uri: str, run_id: str, epochs: int, status: str = "FINISHED") -> None:
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == status
    for key in ("val_loss", "loss"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == list(range(epochs)), f"{key}: {steps}"  # each point once: no duplicate


def wait_until(condition, timeout_s: float = 300, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not in {timeout_s} s: {what}"
        time.sleep(0.2)


def deliver_py(*folders: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(PROJECT_ROOT / "src" / "deliver.py"), *map(str, folders)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def test_a_refused_connection_is_no_answer_and_a_refused_login_is_not(auth_server: str) -> None:
    """Judged from real errors: MLflow's client against a closed port, and against a server that
    wants a login it was not given."""
    from mlflow.exceptions import MlflowException

    from loaderlab.run_log import CREDENTIALS_HINT, outage
    from loaderlab.utils.errors import is_no_answer

    [port] = free_ports(1)
    closed = f"http://127.0.0.1:{port}"
    with pytest.raises(MlflowException) as refused:
        MlflowClient(closed).search_experiments()
    assert is_no_answer(refused.value)
    assert outage(closed, refused.value) == f"The tracking server {closed} does not answer."
    with pytest.raises(MlflowException) as unauthorised:
        MlflowClient(auth_server).search_experiments()  # no credentials in the environment
    assert not is_no_answer(unauthorised.value)
    assert "does not take records now" in outage(auth_server, unauthorised.value)
    assert CREDENTIALS_HINT in outage(auth_server, unauthorised.value)


def test_an_outage_between_the_probe_and_the_send_is_told_as_no_answer(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The window forced every time: the server stops right after the delivery thread's probe said
    yes, so the send itself meets a refused connection. The job says "does not answer" (no
    credentials hint), keeps every record, and delivers them all once the server is back."""
    import loaderlab.run_log as run_log_module
    from loaderlab.run_log import CREDENTIALS_HINT, RunLog

    run_id, _ = new_run(server.uri, "probe-then-gone")
    run_log = RunLog(server.uri, run_id, tmp_path, retry_s=0.2)
    log_epochs(run_log, range(2))
    wait_until(lambda: run_log.pending == 0, what="the first epochs delivered")
    real_probe, real_deliver = run_log_module.server_answers, run_log_module.deliver_record
    armed, send_errors = threading.Event(), []

    def probe_then_stop(uri: str, timeout_s: float = 5.0) -> bool:
        answered = real_probe(uri, timeout_s)
        if answered and armed.is_set():
            armed.clear()
            server.stop()  # after the probe's yes, before the send
        return answered

    def deliver_and_keep_its_error(*args) -> None:
        try:
            real_deliver(*args)
        except Exception as e:
            send_errors.append(e)
            raise

    monkeypatch.setattr(run_log_module, "server_answers", probe_then_stop)
    monkeypatch.setattr(run_log_module, "deliver_record", deliver_and_keep_its_error)
    armed.set()
    log_epochs(run_log, range(2, 4))
    wait_until(lambda: server_log_has_waited(run_log), what="the journal waiting for the server")
    assert not armed.is_set() and send_errors, "the send after the probe did not fail"
    assert "does not answer" in caplog.text
    assert "does not take records" not in caplog.text and CREDENTIALS_HINT not in caplog.text
    server.start()
    assert run_log.close("FINISHED", 120) == 0
    assert_on_server(server.uri, run_id, 4)


def test_an_unwritable_store_behind_a_healthy_server_costs_nothing(server: Server, tmp_path: Path) -> None:
    """The store's folder made immutable mid-run: /health answers OK while every write fails."""
    import shutil

    from loaderlab.run_log import RunLog

    chattr = shutil.which("chattr")
    if chattr is None or os.geteuid() != 0:
        pytest.skip("needs root and chattr (e2fsprogs) to make the store's folder immutable")
    run_id, _ = new_run(server.uri, "store-unwritable")
    run_log = RunLog(server.uri, run_id, tmp_path, retry_s=0.5)
    log_epochs(run_log, range(0, 3))
    wait_until(lambda: run_log.pending == 0, what="the first epochs delivered")
    if subprocess.run([chattr, "+i", str(server.folder)], capture_output=True).returncode != 0:
        run_log.close("FINISHED", 60)
        pytest.skip("this file system has no immutable flag")
    try:
        log_epochs(run_log, range(3, 6))
        run_log.params({"during": "the fault"})
        wait_until(lambda: server_log_has_waited(run_log), what="the journal waiting for the store")
    finally:
        subprocess.run([chattr, "-i", str(server.folder)], check=True)
    assert run_log.close("FINISHED", 120) == 0
    assert_on_server(server.uri, run_id, 6)
    assert MlflowClient(server.uri).get_run(run_id).data.params["during"] == "the fault"


def server_log_has_waited(run_log) -> bool:
    return run_log._outage_since is not None and run_log.pending > 0


def test_a_slow_upload_at_the_end_is_waited_for_not_taken_for_an_outage(server: Server, tmp_path) -> None:
    from loaderlab.run_log import RunLog

    run_id, _ = new_run(server.uri, "slow-upload")
    run_log = RunLog(server.uri, run_id, tmp_path)
    big = tmp_path / "model.bin"
    big.write_bytes(os.urandom(64 * 2**20))
    run_log.artifact(big)
    log_epochs(run_log, range(2))
    started = time.monotonic()
    assert run_log.close("FINISHED", wait_s=0.01) == 0  # the server answered throughout
    print(f"\nSLOW UPLOAD 64 MB delivered in {time.monotonic() - started:.1f} s with wait_s=0.01")
    assert_on_server(server.uri, run_id, 2)
    assert [a.path for a in MlflowClient(server.uri).list_artifacts(run_id)] == ["model.bin"]


def test_a_torn_last_line_is_dropped_and_the_run_resumes(server: Server, tmp_path: Path) -> None:
    """A job SIGKILLed mid-append: its journal ends in half a record. The next job of the run (as
    trainer.resume starts it) reads the journal, delivers what waited, and loses nothing written."""
    run_id, _ = new_run(server.uri, "torn-line")
    killed = (
        "import os, signal, sys\n"
        "from loaderlab.run_log import RunLog\n"
        "run_log = RunLog(sys.argv[1], sys.argv[2], sys.argv[3], retry_s=0.2)\n"
        "for epoch in range(3):\n"
        "    run_log.metrics({'val_loss': 1.0 / (epoch + 1), 'loss': 2.0 / (epoch + 1)}, step=epoch)\n"
        "with open(run_log.path, 'a') as journal:\n"
        '    journal.write(\'{"metrics": {"val_loss": 0.1\')  # the crash, mid-append\n'
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", killed, server.uri, run_id, str(tmp_path)], timeout=300)
    assert done.returncode == -signal.SIGKILL
    from loaderlab.journal import journal_path
    from loaderlab.run_log import RunLog

    assert not journal_path(tmp_path, run_id).read_text().endswith("\n")  # torn
    run_log = RunLog(server.uri, run_id, tmp_path, retry_s=0.2)  # the resumed job
    log_epochs(run_log, range(3, 5))
    assert run_log.close("FINISHED", 120) == 0
    assert_on_server(server.uri, run_id, 5)
    assert run_log.lowest("val_loss") == pytest.approx(1 / 5)


def test_an_earlier_jobs_end_status_does_not_end_the_resumed_run(server: Server, tmp_path: Path) -> None:
    from loaderlab.journal import journal_path
    from loaderlab.run_log import RunLog

    run_id, _ = new_run(server.uri, "leftover-status")
    journal = journal_path(tmp_path, run_id)
    earlier = [{"uri": server.uri, "run_id": run_id}, {"tags": {"job": "1"}}]
    earlier.append({"status": "KILLED", "end_time": 1})
    journal.write_text("".join(json.dumps(r) + "\n" for r in earlier))  # an earlier job that ended offline
    run_log = RunLog(server.uri, run_id, tmp_path, retry_s=0.2)
    wait_until(lambda: run_log.pending == 0, what="the earlier job's records delivered")
    client = MlflowClient(server.uri)
    assert client.get_run(run_id).data.tags["job"] == "1"
    assert client.get_run(run_id).info.status == "RUNNING"  # training again
    before_close = int(time.time() * 1000)
    assert run_log.close("FINISHED", 60) == 0
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time >= before_close


def test_deliver_py_leaves_a_live_journal_to_its_job(server: Server, tmp_path: Path) -> None:
    from loaderlab.run_log import RunLog

    run_id, _ = new_run(server.uri, "live-journal")
    run_log = RunLog(server.uri, run_id, tmp_path, retry_s=0.2)
    log_epochs(run_log, range(3))
    result = deliver_py(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped, a job that is still running holds it" in result.stdout
    assert run_log.path.exists()
    log_epochs(run_log, range(3, 6))
    assert run_log.close("FINISHED", 60) == 0
    assert_on_server(server.uri, run_id, 6)


def test_a_rejected_record_is_kept_aside_and_the_rest_delivered_late(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A param that conflicts with the server, in a journal left by a run that ended during an outage:
    deliver.py delivers every other record, with the job's own end time, keeps the bad one aside and
    names it, and settles the sweep's parent."""
    from loaderlab.journal import rejected_path
    from loaderlab.run_log import RunLog

    run_id, parent_id = new_run(server.uri, "rejected-record", parent=True)
    run_log = RunLog(server.uri, run_id, tmp_path, retry_s=0.2, parent_run_id=parent_id)
    run_log.params({"lr": "0.1"})
    log_epochs(run_log, range(2))
    wait_until(lambda: run_log.pending == 0, what="the first records delivered")
    server.stop()
    try:
        run_log.params({"lr": "0.2"})  # conflicts with what the server holds
        log_epochs(run_log, range(2, 4))
        ended_at = int(time.time() * 1000)
        assert run_log.close("FINISHED", wait_s=1) > 0  # kept for deliver.py
    finally:
        server.start()
    assert f"python src/deliver.py {tmp_path}" in caplog.text  # the log names the command
    result = deliver_py(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr  # something was rejected
    rejected = rejected_path(run_log.path)
    assert f"1 record(s) rejected by the server, kept in {rejected}" in result.stdout
    [kept] = [json.loads(line) for line in rejected.read_text().splitlines()]
    assert kept["record"] == {"params": {"lr": "0.2"}} and "INVALID_PARAMETER_VALUE" in kept["error"]
    assert not run_log.path.exists()
    assert_on_server(server.uri, run_id, 4)
    client = MlflowClient(server.uri)
    run = client.get_run(run_id)
    assert run.data.params["lr"] == "0.1" and ended_at <= run.info.end_time < ended_at + 5000
    assert client.get_run(parent_id).info.status == "FINISHED"  # settled when the child's status arrived


def test_a_changed_password_keeps_the_records_until_deliver_py_has_the_new_one(
    auth_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import requests

    from loaderlab.run_log import RunLog

    user, password = "bob", "bob-password-4e8a"  # a user of its own: the server is the session's
    create_user(auth_server, user, password)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    run_id, _ = new_run(auth_server, "password-changed")
    run_log = RunLog(auth_server, run_id, tmp_path, retry_s=0.2)
    log_epochs(run_log, range(2))
    wait_until(lambda: run_log.pending == 0, what="the first epochs delivered")
    changed = requests.patch(
        f"{auth_server}/api/2.0/mlflow/users/update-password",
        json={"username": user, "password": "a-new-password-5d1e"},
        auth=(ADMIN, ADMIN_PASSWORD),
        timeout=30,
    )
    assert changed.ok, changed.text
    log_epochs(run_log, range(2, 4))
    assert run_log.close("FINISHED", wait_s=2) > 0  # refused (401): an outage, not a rejection
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in caplog.text
    assert run_log.path.exists()
    env = {**os.environ, "MLFLOW_TRACKING_PASSWORD": "a-new-password-5d1e"}
    result = deliver_py(tmp_path, env=env)
    assert result.returncode == 0 and "delivered" in result.stdout, result.stdout + result.stderr
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "a-new-password-5d1e")
    assert_on_server(auth_server, run_id, 4)
