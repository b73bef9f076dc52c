"""A pool of daemon threads whose shutdown has a deadline.

``ThreadPoolExecutor`` joins its threads without a time limit, at shutdown and again at
interpreter exit, so one read stuck in the kernel (a hung network filesystem, a stalled endpoint)
would hang the loader's shutdown and the training script's exit. These threads are daemons:
:meth:`DaemonPool.shutdown` waits for them up to a deadline and then abandons what is still
running, with a warning, and nothing holds up the interpreter's exit.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_STOP = None
_live: weakref.WeakSet[DaemonPool] = weakref.WeakSet()  # pools not shut down yet
_exit_registered = False


def _shutdown_live_pools() -> None:
    """At interpreter exit: let reads in progress finish (up to the deadline) before the
    interpreter stops daemon threads, which must not happen in the middle of native code."""
    for pool in list(_live):
        pool.shutdown()


class DaemonPool:
    """Runs submitted calls in up to ``threads`` daemon threads named ``name_0``, ``name_1``..."""

    def __init__(self, threads: int, name: str) -> None:
        self._size, self._name = max(1, threads), name
        self._tasks: queue.SimpleQueue[tuple[Future, Callable, tuple] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a task
        self._queued = 0  # tasks no thread has taken yet
        self._lock = threading.Lock()
        self._closed = False
        global _exit_registered
        if not _exit_registered:
            atexit.register(_shutdown_live_pools)
            _exit_registered = True
        _live.add(self)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` in a pool thread; its result or exception arrives in the Future."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a pool that was shut down")
            self._tasks.put((future, fn, args))
            self._queued += 1
            if self._queued > self._idle and len(self._threads) < self._size:
                thread = threading.Thread(target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            task = self._tasks.get()
            with self._lock:
                self._idle -= 1
                self._queued -= task is not _STOP
            if task is _STOP:
                return
            future, fn, args = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as e:
                    future.set_exception(e)
            del task, future, fn, args

    def shutdown(self, timeout: float = 10.0) -> list[str]:
        """Cancel what has not started, let running calls finish for up to ``timeout`` seconds,
        and return the names of the threads abandoned still running (warning about them). Once
        shut down (at interpreter exit included, where an iterator closed later finds the
        modules' globals cleared), a pool shuts down no more."""
        if self._closed:
            return []
        _live.discard(self)
        with self._lock:
            self._closed = True
            pending = []
            while True:
                try:
                    pending.append(self._tasks.get_nowait())
                except queue.Empty:
                    break
            for task in pending:
                if task is not _STOP:
                    task[0].cancel()
            for _ in self._threads:
                self._tasks.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            warnings.warn(
                f"abandoned {len(stuck)} reading thread(s) still in a read after {timeout:g} s "
                f"({', '.join(stuck)}): the storage is not answering",
                stacklevel=3,
            )
        return stuck
