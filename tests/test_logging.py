"""Log records name their silo and grain (``GrainsContextFilter``), without a per-call cost:
the ids ride on the runtime's tasks."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import trio

from trio_grains import Grain, GrainsContextFilter, SiloConfig, open_silo

app_log = logging.getLogger("tests.app")


class ChattyGrain(Grain):
    async def work(self) -> None:
        self.start_soon(self._later)

    async def _later(self) -> None:
        app_log.warning("background work done")

    async def slow(self) -> None:
        await trio.sleep(1)
        app_log.warning("slow turn done")


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(GrainsContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def capture() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def labels(capture: Capture, message: str) -> tuple[str, str, str]:
    (record,) = [r for r in capture.records if r.getMessage() == message]
    return record.silo_id, record.grain_id, record.trace_id  # type: ignore[attr-defined]


async def test_records_of_grain_tasks_name_the_silo_and_the_grain(
    capture: Capture, autojump_clock: trio.abc.Clock
) -> None:
    async with open_silo(SiloConfig(name="east"), grains=[ChattyGrain]) as silo:
        grain = silo.get_grain(ChattyGrain, "c1")
        await grain.work()  # a turn in this task; its background task runs in the grain's
        async with trio.open_nursery() as nursery:  # the second call is queued: worker task
            nursery.start_soon(grain.slow)
            nursery.start_soon(grain.slow)
        await trio.sleep(0.1)
        app_log.warning("from the block")
    assert labels(capture, "background work done") == ("east", "chatty/c1", "-")
    slow = [r for r in capture.records if r.getMessage() == "slow turn done"]
    assert [r.grain_id for r in slow][-1] == "chatty/c1"  # type: ignore[attr-defined]
    assert labels(capture, "from the block") == ("east", "-", "-")


async def test_records_outside_any_silo_carry_placeholders(capture: Capture) -> None:
    app_log.warning("no silo here")
    assert labels(capture, "no silo here") == ("-", "-", "-")
