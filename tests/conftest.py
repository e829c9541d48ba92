"""Shared fixtures: tiny datasets, composed configs pointed at tmp_path, one MLflow store per session."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from helpers import free_ports, wait_for_health
from loaderlab import PROJECT_ROOT
from loaderlab.data.synthetic import generate
from mlflow_server import Server

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Every process the suite starts inherits this mark, so one left behind is found even once orphaned.
SUITE_MARK = ("LOADERLAB_TEST_SUITE", f"{os.getpid()}-{time.time_ns()}")
os.environ[SUITE_MARK[0]] = SUITE_MARK[1]
CONF_DIR = str(PROJECT_ROOT / "conf")

# Small enough to train in seconds, big enough for a stratified split and several batches.
TINY = {"num_images": 96, "image_size": 40, "num_classes": 4, "seed": 0}


def train_command(outputs: Path, data_root: Path, *overrides: str) -> list[str]:
    """`python src/train.py` on a tiny dataset, small and quick, writing under outputs; overrides win."""
    return [
        sys.executable,
        str(PROJECT_ROOT / "src" / "train.py"),
        f"paths.outputs={outputs}",
        f"data.root={data_root}",
        *(f"data.{k}={v}" for k, v in TINY.items()),
        "model.input_size=32",
        "trainer.verbose=2",
        "batch.train=16",
        "batch.val=16",
        "tracking.log_model=false",  # only the model tests need it: it costs seconds a run
        *overrides,
    ]


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose conf/config.yaml with overrides, as `python src/train.py ...` would."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides or []))


ADMIN, ADMIN_PASSWORD = "admin", "admin-password-7f3a"
USER, PASSWORD = "alice", "alice-password-91c2"


def create_user(uri: str, username: str, password: str) -> None:
    """A user of the basic-auth server, created by its admin."""
    import requests

    created = requests.post(
        f"{uri}/api/2.0/mlflow/users/create",
        json={"username": username, "password": password},
        auth=(ADMIN, ADMIN_PASSWORD),
        timeout=30,
    )
    assert created.ok, created.text


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory: pytest.TempPathFactory):
    """A real `mlflow server --app-name basic-auth` on 127.0.0.1 with one team user, alice."""
    folder = tmp_path_factory.mktemp("auth-server")
    (folder / "auth.ini").write_text(
        "[mlflow]\n"
        "default_permission = EDIT\n"
        f"database_uri = sqlite:///{folder}/users.db\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(folder / "auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-secret",
    }
    [port] = free_ports(1)
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
            "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{folder}/server.db",
            "--artifacts-destination", str(folder / "artifacts"),
            "--workers", "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the uvicorn worker goes with it
    )  # fmt: skip
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_for_health(uri, timeout_s=180)
        create_user(uri, USER, PASSWORD)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # a graceful stop waits ~30 s on idle keep-alive clients
        server.wait(timeout=60)


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory):
    """One server for the module; each test logs to its own experiment."""
    server = Server(tmp_path_factory.mktemp("server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server(module_server: Server) -> Server:
    """The module's server, up when the test starts, whatever an earlier test left behind."""
    module_server.ensure_up()
    return module_server


PACK_ROOT: list[Path] = []  # where tests' packed loaders write: the session's own folder


@pytest.fixture(scope="session", autouse=True)
def pack_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the packs tests write, never the project's outputs/."""
    PACK_ROOT[:] = [tmp_path_factory.mktemp("packed")]
    return PACK_ROOT[0]


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated synthetic dataset, shared by the session (read-only)."""
    root = tmp_path_factory.mktemp("datasets") / "tiny"
    generate(root, progress=False, **TINY)
    return root


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite MLflow store for the session (creating one costs a schema migration)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def make_cfg(tmp_path: Path, tiny_root: Path, tracking_uri: str):
    """Build a training config on the tiny dataset, with every output under tmp_path."""

    def make(*overrides: str, experiment: str = "tests") -> DictConfig:
        synthetic = not any(o.startswith("data=") for o in overrides)
        tiny_data = [f"data.root={tiny_root}", *(f"data.{k}={v}" for k, v in TINY.items())]
        cfg = compose_config(
            [
                f"paths.outputs={tmp_path}",
                *(tiny_data if synthetic else []),
                "model.input_size=32",
                "trainer.epochs=1",
                "trainer.verbose=0",
                "batch.train=16",
                "batch.val=16",
                f"tracking.uri={tracking_uri}",
                f"tracking.experiment={experiment}",
                "tracking.log_model=false",
                *overrides,
            ]
        )
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
        return cfg

    return make


def suite_processes() -> list[psutil.Process]:
    """Live processes, other than this one, started by this test session (however deep or orphaned)."""
    found = []
    for proc in psutil.process_iter():
        try:
            ours = proc.environ().get(SUITE_MARK[0]) == SUITE_MARK[1]
            # This process's own multiprocessing resource tracker exits with it.
            own_tracker = proc.ppid() == os.getpid() and "resource_tracker" in " ".join(proc.cmdline())
            if ours and proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE and not own_tracker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """After the whole suite: no process it started is still running (waited for, generously)."""
    yield
    deadline = time.monotonic() + 60
    while (left := suite_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        described = [(p.pid, " ".join(p.cmdline())[:200]) for p in left]
        for proc in left:
            proc.kill()
        pytest.fail(f"the test suite left {len(left)} process(es) running: {described}")


def _coverage_summary() -> list[tuple[str, str]]:
    """(title, text) of what the seams' cases and the docs' checks covered, when their modules ran here."""
    parts = []
    seams = sys.modules.get("test_seams")
    if seams is not None and seams.OUTCOMES:
        parts.append(("seams: pairwise cases", seams.case_table()))
    docs = sys.modules.get("test_docs")
    if docs is not None and docs.SUMMARY:
        parts.append(
            ("documented commands and links", "\n".join(line for ls in docs.SUMMARY.values() for line in ls))
        )
    return parts


def _summary_folder(controller_pid: int) -> Path:
    """Where xdist workers leave their summaries for the controller (their parent) to print."""
    return Path(tempfile.gettempdir()) / f"loaderlab-test-summary-{controller_pid}"


def pytest_sessionfinish(session) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # under xdist the controller prints, not a worker
    if worker and (parts := _coverage_summary()):
        folder = _summary_folder(os.getppid())
        folder.mkdir(exist_ok=True)
        (folder / f"{worker}.json").write_text(json.dumps(parts))


def pytest_terminal_summary(terminalreporter) -> None:
    """What the seams' cases and the docs' checks covered, whichever process ran their modules."""
    parts = _coverage_summary()
    folder = _summary_folder(os.getpid())
    for file in sorted(folder.glob("*.json")):
        parts += [tuple(part) for part in json.loads(file.read_text())]
    shutil.rmtree(folder, ignore_errors=True)
    for title, text in parts:
        terminalreporter.write_sep("=", title)
        terminalreporter.write_line(text)
