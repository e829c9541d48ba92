"""Progress of long work on stderr, in the style of Keras' Progbar: one writer for packing a folder, the
bad-file pass, a store's listing, delivering a journal and generating the synthetic set.

    Packing 4000 images, shorter side 96 px, into outputs/packed
    1200/4000 [=========>....................] 30% - 612.3 images/s - 4s left

Where no total is known (a store's listing) it shows the count and the rate: `12000 objects - 3400.5
objects/s - 3.5s`. It is shown only to someone watching:

- never where the caller passes progress=False (a training job under trainer.verbose=0,
  loader.progress=false, deliver.py --quiet);
- where stderr is a terminal: one line, redrawn in place;
- where stderr is not a terminal (a CI log, a file, pytest's capture): only when the environment sets
  LOADERLAB_PROGRESS=1, then as a line every LINE_EVERY_S seconds and one at the end.
  LOADERLAB_PROGRESS=0 hides it on a terminal too.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

ENV = "LOADERLAB_PROGRESS"  # "1": shown where stderr is not a terminal; "0": never shown
REDRAW_S = 0.1  # a terminal's line: redrawn at most this often
LINE_EVERY_S = 10.0  # a log's lines: one this often, so a CI log stays short
BAR_WIDTH = 30
T = TypeVar("T")


def shown(progress: bool = True, stream: TextIO | None = None) -> bool:
    """Whether progress on `stream` (stderr) is shown, by the rules of the module's docstring."""
    if not progress:
        return False
    forced = os.environ.get(ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return _isatty(stream if stream is not None else sys.stderr)


class Progress:
    """Items done toward `total` (None: not known), with their rate and the time left, drawn on stderr
    where shown() allows; a context manager, or call close(). `done` is where a resumed task starts:
    the rate counts only what is done from there. `heartbeat` (seconds) redraws while no count comes,
    as the elapsed time (a listing that answers all at once)."""

    def __init__(
        self,
        total: int | None,
        unit: str = "item",
        title: str = "",
        progress: bool = True,
        done: int = 0,
        heartbeat: float | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.unit = total, unit
        self.on = total != 0 and shown(progress, self.stream)
        self.tty = _isatty(self.stream)
        self.first = self.done = done
        self.started = time.monotonic()
        self.drawn_at = -math.inf if self.tty else self.started  # a log's first line after LINE_EVERY_S
        self.finished = False
        self._width = 0  # of the terminal line drawn last, to blank what a shorter one leaves
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if self.on and title:
            self._write(f"{title}\n")
        if self.on and heartbeat:
            threading.Thread(target=self._beat, args=(heartbeat,), daemon=True).start()

    def update(self, done: int) -> None:
        """Set the count of items done; drawn if it is time to, and finished when it reaches the total."""
        self.done = done
        if not self.on or self.finished:
            return
        if self.total is not None and done >= self.total:
            self.close()
        elif time.monotonic() - self.drawn_at >= (REDRAW_S if self.tty else LINE_EVERY_S):
            self._draw()

    def close(self) -> None:
        """Draw the last state and end its line (once; also after an error, so a traceback starts clean)."""
        self._stop.set()
        if self.on and not self.finished:
            self.finished = True
            self._draw(end="\n")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def line(self) -> str:
        """The current state: count (of total), rate, and time left, or elapsed once finished."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (self.done - self.first) / elapsed
        units = f"{self.unit}s"
        if self.total is None:
            return f"{self.done} {units} - {rate:.1f} {units}/s - {_duration(elapsed)}"
        fraction = min(1.0, self.done / self.total) if self.total else 1.0
        filled = int(BAR_WIDTH * fraction)
        bar = "=" * filled + (">" if filled < BAR_WIDTH else "") + "." * (BAR_WIDTH - filled - 1)
        if self.finished or self.done >= self.total:
            when = _duration(elapsed)
        else:
            when = f"{_duration((self.total - self.done) / rate)} left" if rate > 0 else "? left"
        return f"{self.done}/{self.total} {units} [{bar}] {fraction:.0%} - {rate:.1f} {units}/s - {when}"

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            if time.monotonic() - self.drawn_at >= (REDRAW_S if self.tty else LINE_EVERY_S):
                self._draw()

    def _draw(self, end: str = "") -> None:
        with self._lock:
            self.drawn_at = time.monotonic()
            text = self.line()
            if self.tty:  # redrawn in place: back to the line's start, blanking a longer earlier one
                blank = " " * max(0, self._width - len(text))
                self._width = len(text)
                self._write(f"\r{text}{blank}{end}")
            else:
                self._write(f"{text}\n")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: the work goes on without a bar
            self.on = False


def counted(
    items: Iterable[T], total: int | None, unit: str = "item", title: str = "", progress: bool = True
) -> Iterator[T]:
    """Each of `items`, counted on a Progress as it is taken."""
    with Progress(total, unit, title, progress) as bar:
        for done, item in enumerate(items, start=1):
            bar.update(done)  # before the yield: a consumer that stops at the last item still finishes it
            yield item


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = round(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
