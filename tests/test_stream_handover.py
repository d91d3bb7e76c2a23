"""runner.docker_backend._iterate: a blocking stream (the SDK's logs, a build's output) read on a
thread of its own and handed to the event loop, with back-pressure and an early way out."""
import contextlib
import threading

import pytest

from runner.docker_backend import _iterate


class Stream:
    """A blocking iterator that counts what was read of it and whether it was closed."""

    def __init__(self, items, fail: Exception | None = None):
        self.items, self.fail = list(items), fail
        self.read = 0
        self.closed = threading.Event()
        self.finished = threading.Event()  # the producer thread left the iterator

    def __iter__(self):
        try:
            for item in self.items:
                self.read += 1
                yield item
            if self.fail:
                raise self.fail
        finally:
            self.finished.set()

    def close(self) -> None:
        self.closed.set()


async def test_every_item_comes_in_order_and_an_ended_stream_is_left_alone():
    stream = Stream(range(10_000))
    assert [item async for item in _iterate(iter(stream), close=stream.close)] == list(
        range(10_000))
    # Read to its end: nothing to close, nobody to wake (waking a full queue's worth of
    # producers cost 9 ms of the loop's time per stream).
    assert not stream.closed.is_set()


async def test_the_producers_failure_is_raised_after_what_came_before():
    stream = Stream([1, 2], fail=OSError("engine went away"))
    got = []
    with pytest.raises(OSError, match="engine went away"):
        async for item in _iterate(iter(stream)):
            got.append(item)
    assert got == [1, 2]


async def test_leaving_early_closes_and_stops_a_producer_held_by_a_full_queue():
    stream = Stream(range(100))
    async with contextlib.aclosing(_iterate(iter(stream), close=stream.close,
                                            high_water=4)) as items:
        async for item in items:
            assert item == 0
            break
    assert stream.closed.is_set()
    assert stream.finished.wait(5)  # the thread is not left blocked on the queue
    assert stream.read <= 6  # the queue's room, the one handed over, the one it woke with
