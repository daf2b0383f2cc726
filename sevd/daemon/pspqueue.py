"""One queue in front of the PSP: it is a single mailbox, so commands run one at a time, in arrival order.

A launch submits one item per command (each LAUNCH_UPDATE_DATA range is its own item), so a large
image never holds the mailbox for more than one range while status reads and other guests' small
commands wait behind it.

The queue is one of callers, not of work: each caller waits for its turn and runs its command in its
own thread, and hands the mailbox straight to the next in line.  Same order and exclusion as a
dedicated PSP thread, without two thread switches per command.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class PspQueue:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = False  # someone holds the mailbox
        self._waiting: collections.deque[threading.Event] = collections.deque()
        self.commands = 0

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._lock:
            turn = None
            if self._busy:
                turn = threading.Event()
                self._waiting.append(turn)
            else:
                self._busy = True
        if turn is not None:
            turn.wait()  # set by the caller before us, who hands the mailbox over still busy
        try:
            return fn(*args, **kwargs)
        finally:
            self.commands += 1
            with self._lock:
                if self._waiting:
                    self._waiting.popleft().set()
                else:
                    self._busy = False
