"""A real S3 API on 127.0.0.1 for tests and the store benchmark: moto's server, each request delayed.

moto (`pip install -e '.[dev]'`) answers S3 over HTTP as S3 or MinIO would; the wrapper adds a fixed
latency to every request, as a remote store would, and counts the requests in flight at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def _keep_alive_handler() -> type:
    from werkzeug.serving import WSGIRequestHandler

    class Handler(WSGIRequestHandler):
        protocol_version = "HTTP/1.1"  # connections reused, as S3 allows: not one TCP handshake per GET

    return Handler


class LatencyS3Server:
    """moto's S3 server on 127.0.0.1:<port>, `latency_s` added to each request; a context manager."""

    def __init__(self, port: int = 0, latency_s: float = 0.0):
        self.latency_s = latency_s
        self.in_flight = self.max_in_flight = self.requests = 0
        self._lock = threading.Lock()
        self._port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def reset_counts(self) -> None:
        """Start counting requests and the most in flight at once afresh."""
        with self._lock:
            self.max_in_flight = self.in_flight
            self.requests = 0

    @contextlib.contextmanager
    def checking_credentials(self) -> Iterator[None]:
        """Within: the server checks each request's keys (moto's IAM), so unknown ones are refused."""
        before = self._reset_auth("0")  # checks from the first request on
        try:
            yield
        finally:
            self._reset_auth(before)

    def _reset_auth(self, count: str) -> str:
        """Set moto's count of requests let through unchecked; returns the one it replaced."""
        request = urllib.request.Request(  # text/plain: a form body would reach moto empty
            f"{self.endpoint_url}/moto-api/reset-auth", count.encode(), {"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read())["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]

    def start(self) -> LatencyS3Server:
        """Serve in a thread; returns once the socket listens."""
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        # S3's own app: moto's dispatcher would look up the service of every request among all of
        # moto's backends, two thirds of the server's time per GET.
        s3, moto_api = create_backend_app("s3"), DomainDispatcherApplication(create_backend_app)

        def delayed(environ: dict, start_response: Any) -> Any:
            with self._lock:
                self.in_flight += 1
                self.requests += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if self.latency_s:
                    time.sleep(self.latency_s)
                app = moto_api if environ.get("PATH_INFO", "").startswith("/moto-api/") else s3
                return app(environ, start_response)
            finally:
                with self._lock:
                    self.in_flight -= 1

        self._server = make_server(
            "127.0.0.1", self._port, delayed, threaded=True, request_handler=_keep_alive_handler()
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> LatencyS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
