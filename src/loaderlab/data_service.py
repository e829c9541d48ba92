"""Start a tf.data service dispatcher or worker for loader=tfdata_service.

    python -m loaderlab.data_service dispatcher --port 5050
    python -m loaderlab.data_service worker --port 5051 --dispatcher 127.0.0.1:5050

Workers must see the image files at the same paths as the training process.
"""

from __future__ import annotations

import argparse

import tensorflow as tf


def start_dispatcher(port: int = 5050) -> tf.data.experimental.service.DispatchServer:
    """A dispatcher on the given port (0: any free port)."""
    return tf.data.experimental.service.DispatchServer(
        tf.data.experimental.service.DispatcherConfig(port=port)
    )


def start_worker(
    dispatcher: str, port: int = 0, host: str = "127.0.0.1"
) -> tf.data.experimental.service.WorkerServer:
    """A worker registered with the dispatcher; host is the address it tells the dispatcher."""
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=dispatcher.removeprefix("grpc://"), worker_address=f"{host}:%port%", port=port
    )
    return tf.data.experimental.service.WorkerServer(config)


def main(argv: list[str] | None = None) -> None:
    """Run one server until interrupted."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", choices=["dispatcher", "worker"])
    parser.add_argument("--port", type=int, default=None, help="default: 5050 (dispatcher), 5051 (worker)")
    parser.add_argument("--dispatcher", default="127.0.0.1:5050", help="worker: the dispatcher's address")
    parser.add_argument("--host", default="127.0.0.1", help="worker: the address clients reach it at")
    args = parser.parse_args(argv)
    if args.role == "dispatcher":
        port = args.port or 5050
        server = start_dispatcher(port)
    else:
        port = args.port or 5051
        server = start_worker(args.dispatcher, port, args.host)
    print(f"tf.data service {args.role} listening on port {port}", flush=True)
    server.join()


if __name__ == "__main__":
    main()
