"""A three-stage pipeline over cases: read (+ preprocess) -> compute (the network) -> write (export + files).

While the compute stage runs case k on the calling thread (the one that owns the device), a reader thread reads
and preprocesses case k+1 and a writer thread exports and writes case k-1. The stages talk through bounded
queues (``queue_size`` items each), so a slow disk or a slow reader never piles cases up in RAM: a full queue
makes the stage before it wait (back-pressure).

Any stage may end a case early by returning :class:`Finished` (a failed or skipped case): it is passed along
untouched, so one bad case never stops the others. An unexpected error (a bug, not a bad case) in any stage stops
the whole pipeline and is raised in the caller. Results come back in input order.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

R = TypeVar("R")
_DONE = object()


@dataclass(frozen=True)
class Finished(Generic[R]):
    """A case that needs no further stage: its final result."""

    result: R


@dataclass
class StageTimes:
    """Busy seconds per stage (summed over cases) and the wall time: the overlap the pipeline achieved is
    ``1 - wall / (read + compute + write)``; ``compute / wall`` is how busy the device was kept."""

    read_s: float = 0.0
    compute_s: float = 0.0
    write_s: float = 0.0
    wall_s: float = 0.0
    n_cases: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, stage: str, seconds: float) -> None:
        with self.lock:
            setattr(self, f"{stage}_s", getattr(self, f"{stage}_s") + seconds)

    def to_json(self) -> dict[str, float]:
        total = self.read_s + self.compute_s + self.write_s
        return {"read_s": round(self.read_s, 3), "compute_s": round(self.compute_s, 3),
                "write_s": round(self.write_s, 3), "sum_of_stages_s": round(total, 3), "wall_s": round(self.wall_s, 3),
                "compute_busy_fraction": round(self.compute_s / self.wall_s, 3) if self.wall_s else 0.0,
                "n_cases": self.n_cases}


def _put(q: queue.Queue[Any], item: object, stop: threading.Event, consumer: Future[Any] | None = None) -> bool:
    """Put with back-pressure; gives up (False) once ``stop`` is set or the ``consumer`` thread has ended, so that
    no thread blocks forever."""
    while not stop.is_set() and not (consumer is not None and consumer.done()):
        try:
            q.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue[Any], watch: Future[Any]) -> Any:
    """Get, but surface the error of the producing thread instead of waiting forever on a dead producer."""
    while True:
        try:
            return q.get(timeout=0.2)
        except queue.Empty:
            if watch.done():
                watch.result()  # raises the producer's error, if any
                try:
                    return q.get_nowait()
                except queue.Empty:
                    return _DONE


def run_pipelined(items: Sequence[Any], read: Callable[[Any], Any], compute: Callable[[Any], Any],
                  write: Callable[[Any], Any], *, queue_size: int = 2,
                  on_result: Callable[[Any, int, int], None] | None = None) -> tuple[list[Any], StageTimes]:
    """Run ``write(compute(read(item)))`` for every item, the three stages overlapping across items (see the
    module docstring). ``on_result(result, i, n)`` is called from the writer thread as results complete."""
    n = len(items)
    times = StageTimes(n_cases=n)
    results: list[Any] = [None] * n
    done_count = [0]
    to_compute: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
    to_write: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
    stop = threading.Event()

    def timed(stage: str, fn: Callable[[Any], Any], x: Any) -> Any:
        if isinstance(x, Finished):
            return x
        t = time.perf_counter()
        try:
            return fn(x)
        finally:
            times.add(stage, time.perf_counter() - t)

    def reader() -> None:
        try:
            for i, item in enumerate(items):
                if not _put(to_compute, (i, timed("read", read, item)), stop):
                    return
        finally:
            _put(to_compute, _DONE, stop)

    def writer(source: Future[Any]) -> None:
        while (got := _get(to_write, source)) is not _DONE:
            i, x = got
            out = timed("write", write, x)
            results[i] = out.result if isinstance(out, Finished) else out
            done_count[0] += 1
            if on_result is not None:
                on_result(results[i], done_count[0], n)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="medpipe-pipeline") as pool:
        read_future = pool.submit(reader)
        compute_future: Future[None] = Future()
        write_future = pool.submit(writer, compute_future)
        try:
            while (got := _get(to_compute, read_future)) is not _DONE:
                i, x = got
                if not _put(to_write, (i, timed("compute", compute, x)), stop, write_future):
                    break
            compute_future.set_result(None)
            _put(to_write, _DONE, stop, write_future)
            write_future.result()  # the writer's error, if any
            read_future.result()  # the reader's error, if any
        finally:  # on any error: release every thread (the writer drains what is queued), then re-raise
            if not compute_future.done():
                compute_future.set_result(None)
            stop.set()
    times.wall_s = time.perf_counter() - t0
    return results, times
