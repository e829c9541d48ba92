"""How a job stops: signals become KeyboardInterrupt in the main process only, and no child outlives it."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

log = logging.getLogger(__name__)
_owner_pid: int | None = None  # the process whose handlers are installed; None outside a run
_stop_signal: int | None = None  # the signal that asked the run to stop, once one did


def _reset_in_child() -> None:
    """After fork: a worker must not inherit the run's handlers (it would raise KeyboardInterrupt
    inside multiprocessing's own exit code and never exit). SIGTERM kills it; Ctrl-C at the terminal
    reaches the whole process group, and the main process, not each worker, handles it."""
    if _owner_pid is not None and os.getpid() != _owner_pid:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


os.register_at_fork(after_in_child=_reset_in_child)


# SIGTERM: kill, scancel, a scheduler's time limit. SIGUSR2: what Slurm sends before a time limit or
# a preemption under submitit (its --signal); submitit's own handler would requeue the job from the
# start, into a folder that already holds this run's state.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


@contextmanager
def stop_signals_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM and SIGUSR2 like Ctrl-C in this process, so a stopped job still ends its MLflow
    run as KILLED, with its last checkpoint."""
    global _owner_pid, _stop_signal
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        global _stop_signal
        _stop_signal = signum
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, interrupt) for s in STOP_SIGNALS}
    _owner_pid, _stop_signal = os.getpid(), None
    try:
        yield
    finally:
        _owner_pid, _stop_signal = None, None
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def raise_if_stopped() -> None:
    """Raise the stop again if a signal asked for one: Python drops a KeyboardInterrupt raised inside a
    finalizer (a tf.data iterator's __del__, say), and a job under Slurm then trained on, seen."""
    if _stop_signal is not None:
        raise KeyboardInterrupt(f"signal {_stop_signal}")


def child_pids() -> set[int]:
    """The pids of this process's descendants now."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


def stop_children(keep: set[int] = frozenset(), grace_s: float = 5.0) -> list[int]:
    """Terminate this process's descendants except `keep` (then kill what remains); return their pids.

    multiprocessing's resource tracker is left alone: it exits by itself with this process, and
    killing it makes a later pool in the same process warn.
    """
    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid not in keep and "resource_tracker" not in " ".join(child.cmdline()):
                children.append(child)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=grace_s)
    return [c.pid for c in children]


def terminate_pools(started_after: set[int], timeout_s: float = 10.0) -> None:
    """Terminate the process pools whose workers started in the run, as multiprocessing expects.

    Keras does not stop a PyDataset's pool when fit is interrupted. Killing its workers from outside
    can leave the pool's queue lock held by a dead worker, and the pool's exit handler then waits on
    that lock forever (CPython's Pool.terminate). Each terminate runs in a thread with a deadline.
    """
    import gc
    from multiprocessing.pool import Pool, ThreadPool

    for obj in gc.get_objects():
        if isinstance(obj, Pool) and not isinstance(obj, ThreadPool):
            workers = getattr(obj, "_pool", [])  # its worker processes
            if any(getattr(w, "pid", None) not in started_after for w in workers):
                thread = threading.Thread(target=obj.terminate, name="pool-terminate", daemon=True)
                thread.start()
                thread.join(timeout_s)


@contextmanager
def no_child_left() -> Iterator[None]:
    """On the way out, however it goes, end the processes started inside (PyDataset workers, say)."""
    before = child_pids()
    try:
        yield
    finally:
        terminate_pools(started_after=before)
        stopped: list[int] = []
        for _ in range(5):  # again, in case a pool forked a replacement while we stopped the others
            if not (left := stop_children(keep=before)):
                break
            stopped += left
        if stopped:
            log.info("Stopped %d process(es) the run left: %s", len(stopped), stopped)


def stop_resource_tracker() -> None:
    """At the exit of a command: end multiprocessing's resource tracker and wait for it, so that no
    process of the command outlives it (left alone, it exits only once it sees this process gone)."""
    from multiprocessing import resource_tracker

    resource_tracker._resource_tracker._stop()  # CPython's own exit path for it (3.8+); no public API
