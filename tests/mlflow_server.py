"""`mlflow server` on 127.0.0.1 that tests stop and start again on the same port and store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from helpers import free_ports, wait_for_health


class Server:
    """`mlflow server` on 127.0.0.1 that can be stopped and started again on the same port and store."""

    def __init__(self, folder: Path):
        [self.port] = free_ports(1)
        self.uri = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.folder}/server.db",
            "--artifacts-destination", str(self.folder / "server-artifacts"), "--workers", "1",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_for_health(self.uri, timeout_s=120)

    def ensure_up(self) -> None:
        """Start the server again where an earlier test left it down (a failure mid-outage)."""
        if not _answers(self.uri):
            self.stop()  # what is left of the old process group, if anything
            self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        deadline = time.monotonic() + 60
        while _answers(self.uri) and time.monotonic() < deadline:  # its workers too
            time.sleep(0.2)


def _answers(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2):
            return True
    except OSError:
        return False
