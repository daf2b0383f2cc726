"""One queue in front of the PSP: it is a single mailbox, so commands run one at a time, in arrival order.

A launch submits one item per command (each LAUNCH_UPDATE_DATA range is its own item), so a large
image never holds the mailbox for more than one range while status reads and other guests' small
commands wait behind it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class PspQueue:
    def __init__(self) -> None:
        self._items: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="psp-queue", daemon=True)
        self._thread.start()
        self.commands = 0

    def _run(self) -> None:
        while (item := self._items.get()) is not None:
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)
            self.commands += 1

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        future: Future[T] = Future()
        self._items.put((future, lambda: fn(*args, **kwargs)))
        return future.result()

    def stop(self) -> None:
        self._items.put(None)
        self._thread.join(timeout=10)
