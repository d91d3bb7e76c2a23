"""Group commit: writes queued while the database thread is busy go to it together, in one
transaction, each in a savepoint of its own, and are answered after its one COMMIT."""
import asyncio
import functools
from concurrent.futures import Executor
from typing import Any, Callable

from storage.db import database, write_transaction

Call = Callable[[], Any]


class Together:
    """Sends queued writes to the database thread in batches, one batch at a time."""

    def __init__(self, executor: Executor, translated: Callable[[Call], Any]):
        self._executor = executor
        self._translated = translated  # the Store's: what a failure means (disk full, server away)
        self._queued: list[tuple[Call, asyncio.Future]] = []
        self._sending = False

    async def run(self, call: Call) -> Any:
        """call's answer once the transaction it ran in committed; its own failure (rolled
        back to its savepoint, the others' writes kept), or the COMMIT's (nothing kept)."""
        answer = asyncio.get_running_loop().create_future()
        self._queued.append((call, answer))
        if not self._sending:
            self._send()
        return await answer

    def _send(self) -> None:
        batch, self._queued = self._queued, []
        self._sending = True
        loop = asyncio.get_running_loop()
        try:
            done = loop.run_in_executor(self._executor, self._translated,
                                        functools.partial(_run_all, [call for call, _ in batch],
                                                          self._translated))
        except RuntimeError as e:  # the store is closed: nothing of the batch was written
            self._sending = False
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(e)
            return
        done.add_done_callback(functools.partial(self._answer, batch))

    def _answer(self, batch: list[tuple[Call, asyncio.Future]], done: asyncio.Future) -> None:
        self._sending = False
        if self._queued:  # arrived while this batch was written: the next batch goes now
            self._send()
        failure = done.exception()
        outcomes = [(failure, None)] * len(batch) if failure else done.result()
        for (_, answer), (error, result) in zip(batch, outcomes):
            if answer.done():  # its caller was cancelled: the write stands, nobody to tell
                continue
            if error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(result)


def _run_all(calls: list[Call], translated: Callable[[Call], Any]) -> list[tuple]:
    """On the database thread: every call in one write transaction, each in a savepoint;
    (error, result) of each."""
    if len(calls) == 1:  # alone: its own transaction is enough, no savepoint around it
        try:
            return [(None, translated(calls[0]))]
        except Exception as e:
            return [(e, None)]
    outcomes = []
    with write_transaction():
        for call in calls:
            try:
                with database.atomic():  # nested: a savepoint
                    outcomes.append((None, translated(call)))
            except Exception as e:  # that call's own, rolled back alone
                outcomes.append((e, None))
    return outcomes
