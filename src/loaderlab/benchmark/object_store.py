"""A real S3 API on 127.0.0.1 for tests and the store benchmark: moto's server, each request delayed.

moto (`pip install -e '.[dev]'`) answers S3 over HTTP as S3 or MinIO would; the wrapper adds a fixed
latency to every request, as a remote store would, and counts the requests in flight at once.

`python -m loaderlab.benchmark.object_store --latency-ms 50` measures tfdata from a local folder and
from the same files in that server, in interleaved rounds of fresh processes.
"""

from __future__ import annotations

import collections
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
        self.gets: collections.Counter[str] = collections.Counter()  # object GETs by /bucket/key
        self.methods: collections.Counter[str] = collections.Counter()  # requests by HTTP method
        self.puts: list[str] = []  # object PUTs by /bucket/key, in order
        self.failures: list[tuple[int, str]] = []  # (status, S3 error code) answered to the next requests
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
            self.gets.clear()
            self.methods.clear()
            self.puts.clear()

    def fail_next(self, count: int, status: int = 503, code: str = "SlowDown") -> None:
        """Answer the next `count` requests with an S3 error, as a throttled or failing store does."""
        with self._lock:
            self.failures += [(status, code)] * count

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
                self.methods[environ["REQUEST_METHOD"]] += 1
                if environ["REQUEST_METHOD"] == "GET" and not environ.get("QUERY_STRING"):
                    self.gets[environ.get("PATH_INFO", "")] += 1
                if environ["REQUEST_METHOD"] == "PUT" and not environ.get("QUERY_STRING"):
                    self.puts.append(environ.get("PATH_INFO", ""))
                failure = self.failures.pop(0) if self.failures else None
            if failure is not None:
                with self._lock:
                    self.in_flight -= 1
                status, code = failure
                body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
                start_response(f"{status} {code}", [("Content-Type", "application/xml"),
                                                    ("Content-Length", str(len(body)))])  # fmt: skip
                return [body]
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


def main(argv: list[str] | None = None) -> None:
    """Local folder against the same files in the store, with and without the latency; prints a table."""
    import argparse
    import os
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path
    from statistics import median

    import boto3

    from loaderlab.benchmark.dataset import prepare_dataset
    from loaderlab.benchmark.runner import BenchmarkConfig, run_child
    from loaderlab.utils.system import usable_cores

    parser = argparse.ArgumentParser(prog="python -m loaderlab.benchmark.object_store")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="added to every request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--entry", default="tfdata", help="a benchmark entry, with overrides if any")
    parser.add_argument("--num-images", type=int, default=BenchmarkConfig.num_images)
    args = parser.parse_args(argv)
    cfg = BenchmarkConfig(num_images=args.num_images)
    local = Path(prepare_dataset(cfg).root)
    cores = usable_cores()
    saved = {k: os.environ.get(k) for k in [*DUMMY_CREDENTIALS, "AWS_ENDPOINT_URL"]}
    with LatencyS3Server() as server:
        os.environ.update(DUMMY_CREDENTIALS, AWS_ENDPOINT_URL=server.endpoint_url)  # for the children
        try:
            client = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1")
            client.create_bucket(Bucket="bench")
            files = sorted(local.rglob("*.jpg"))
            with ThreadPoolExecutor(16) as pool:
                keys = [p.relative_to(local).as_posix() for p in files]
                list(pool.map(lambda p, key: client.upload_file(str(p), "bench", key), files, keys))
            delay = args.latency_ms / 1000
            if args.entry.split()[0] == "packed":  # the sources local; the pack local, or in the store
                # A new prefix each invocation: the first round pays the copy into the cache, once.
                in_store = f"{args.entry} loader.root=s3://bench/packs-{int(time.time())}"
                runs = {"local pack": (str(local), 0.0, args.entry),
                        f"store pack, {args.latency_ms:g} ms": (str(local), delay, in_store),
                        "  streamed": (str(local), delay, f"{in_store} loader.cache_gb=0")}  # fmt: skip
            else:
                runs = {"local folder": (str(local), 0.0, args.entry),
                        "store, 0 ms": ("s3://bench", 0.0, args.entry),
                        f"store, {args.latency_ms:g} ms": ("s3://bench", delay, args.entry)}  # fmt: skip
            rates: dict[str, list[float]] = {name: [] for name in runs}
            for number in range(args.rounds):
                for name, (root, latency, entry) in runs.items():
                    server.latency_s = latency
                    server.reset_counts()
                    result = run_child(entry, cfg, root, cores)
                    rates[name].append(result.images_per_sec)
                    fetch = result.extra_metrics.get("pack_fetch_s")
                    print(f"round {number + 1}: {name:<14} {rates[name][-1]:7.0f} img/s, "
                          f"{server.max_in_flight} requests in flight at most"
                          + (f", {fetch:.1f} s copying the pack into the cache" if fetch else ""),
                          flush=True)  # fmt: skip
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    base = next(iter(rates.values()))
    print(f"\n{args.entry}, {len(files)} images of {local.name}, {cores} cores, {args.rounds} rounds:")
    for name, values in rates.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        print(f"  {name:<14} {median(values):7.0f} img/s   x{median(ratios):.2f} of local "
              f"({min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
