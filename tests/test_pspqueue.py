"""The PSP queue: one command at a time, in arrival order, a failing command's error to its caller."""

import threading
import time

import pytest

from sevd.daemon.pspqueue import PspQueue


def test_commands_run_one_at_a_time_in_arrival_order():
    queue = PspQueue()
    running, ran = [], []
    overlap = threading.Event()
    first_started = threading.Event()

    def command(n):
        if running:
            overlap.set()
        running.append(n)
        first_started.set()
        time.sleep(0.02)
        ran.append(n)
        running.remove(n)
        return n * 10

    results = {}
    first = threading.Thread(target=lambda: results.setdefault(0, queue.call(command, 0)))
    first.start()
    first_started.wait(5)
    threads = []
    for n in range(1, 6):  # queued behind the first, each after the one before
        t = threading.Thread(target=lambda n=n: results.setdefault(n, queue.call(command, n)))
        t.start()
        threads.append(t)
        time.sleep(0.002)
    for t in (first, *threads):
        t.join(10)
    assert not overlap.is_set() and ran == list(range(6))
    assert results == {n: n * 10 for n in range(6)} and queue.commands == 6


def test_a_failing_command_raises_in_its_caller_and_frees_the_mailbox():
    queue = PspQueue()

    def fail():
        raise OSError(16, "busy")

    with pytest.raises(OSError):
        queue.call(fail)
    assert queue.call(lambda: "next") == "next"
