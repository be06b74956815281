"""Calls in flight (``trio_grains/_calls.py``), alone: a :class:`Call`, the caller's
:func:`wait_reply`, and the :class:`TimeoutWheel` that expires calls nobody answered.

The contract: an outcome wakes the waiting caller once; a cancelled caller abandons its
call (a queued call is skipped, a running turn cancelled) and later outcomes are ignored;
the wheel fails a call no earlier than its timeout and at most one bucket later, and
forgets a call that finished or was abandoned.
"""

from __future__ import annotations

import math
from typing import Any

import outcome
import pytest
import trio
import trio.testing

from trio_grains import Grain, SiloConfig, SiloUnavailableError, open_silo
from trio_grains._calls import ABANDONED, DONE, RUNNING, WAITING, Call, TimeoutWheel, wait_reply


def make_call(label: str = "cart/a.add()") -> Call:
    return Call(None, (), {}, label=label)


def timeout_error(call: Call, timeout: float) -> Exception:
    return TimeoutError(f"{call.describe()} had no reply in {timeout} s")


async def wait_into(call: Call, results: list[Any]) -> None:
    """Wait for *call*; append its value, or the exception it raised."""
    try:
        results.append(await wait_reply(call))
    except Exception as exc:
        results.append(exc)


# -- Call and wait_reply ----------------------------------------------------------------------


def test_a_call_describes_itself_by_label_or_target_and_method() -> None:
    assert make_call("cart/a timer t").describe() == "cart/a timer t"
    assert Call(None, (), {}, target="cart/b").describe() == "cart/b.?()"


async def test_an_outcome_that_came_first_is_returned_at_once() -> None:
    call = make_call()
    call.finish(outcome.Value(7))  # e.g. a reply that came while the caller was sending
    assert call.state == DONE
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await wait_reply(call)  # still a checkpoint
    assert await wait_reply(call) == 7


async def test_an_outcome_wakes_the_waiter_once() -> None:
    call = make_call()
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_into, call, results)
        await trio.testing.wait_all_tasks_blocked()
        assert call.state == WAITING
        assert call.task is not None
        call.finish(outcome.Value("first"))
        call.finish(outcome.Value("second"))  # a duplicate reply: no second reschedule
        assert call.task is None
    assert results == ["first"]
    assert call.state == DONE


async def test_an_error_outcome_is_raised_in_the_waiter() -> None:
    call = make_call()
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_into, call, results)
        await trio.testing.wait_all_tasks_blocked()
        call.finish(outcome.Error(KeyError("k")))
    assert [type(r) for r in results] == [KeyError]


async def test_without_a_waiter_the_outcome_goes_to_on_done() -> None:
    call = make_call()
    seen: list[outcome.Outcome[Any]] = []
    call.on_done = seen.append
    call.finish(outcome.Value(1))
    assert [r.unwrap() for r in seen] == [1]
    assert call.result is None  # handed on, not kept


async def test_a_cancelled_waiter_abandons_the_call_and_later_outcomes_are_ignored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    call = make_call()
    seen: list[outcome.Outcome[Any]] = []
    with trio.move_on_after(1) as scope:
        await wait_reply(call)
    assert scope.cancelled_caught
    assert call.state == ABANDONED
    assert call.task is None
    call.on_done = seen.append
    call.finish(outcome.Value("late"))  # e.g. a reply that crossed the cancel
    assert call.state == ABANDONED
    assert call.result is None
    assert seen == []


async def test_abandoning_a_running_call_cancels_its_turn() -> None:
    call = make_call()
    with trio.CancelScope() as turn:
        call.scope = turn
        call.state = RUNNING
        call.abandon()
        await trio.sleep_forever()
    assert turn.cancelled_caught
    assert call.state == ABANDONED


async def test_abandoning_a_queued_call_skips_it_without_touching_a_scope() -> None:
    call = make_call()
    call.scope = trio.CancelScope()  # (a queued call has none; this one must not be used)
    call.abandon()
    assert call.state == ABANDONED
    assert not call.scope.cancel_called
    call.abandon()  # twice is harmless
    assert call.state == ABANDONED


async def test_fail_wakes_the_waiter_with_the_error_and_abandons_the_call() -> None:
    call = make_call()
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_into, call, results)
        await trio.testing.wait_all_tasks_blocked()
        call.fail(SiloUnavailableError("stopping"))
    assert [str(r) for r in results] == ["stopping"]
    assert call.state == ABANDONED


async def test_fail_before_anyone_waits_is_raised_by_the_first_wait() -> None:
    call = make_call()
    call.fail(SiloUnavailableError("stopping"))
    with pytest.raises(SiloUnavailableError, match="stopping"):
        await wait_reply(call)


def test_fail_without_a_waiter_goes_to_on_done() -> None:
    call = make_call()
    seen: list[outcome.Outcome[Any]] = []
    call.on_done = seen.append
    call.fail(SiloUnavailableError("stopping"))
    assert len(seen) == 1
    assert isinstance(seen[0], outcome.Error)
    assert isinstance(seen[0].error, SiloUnavailableError)


def test_fail_tells_nobody_once_the_call_is_done_or_abandoned() -> None:
    done, abandoned = make_call(), make_call()
    seen: list[outcome.Outcome[Any]] = []
    done.on_done = abandoned.on_done = seen.append
    done.finish(outcome.Value(1))
    abandoned.abandon()  # its (remote) caller cancelled: no reply is wanted any more
    done.fail(SiloUnavailableError("stopping"))
    abandoned.fail(SiloUnavailableError("stopping"))
    assert seen == [outcome.Value(1)]
    assert [done.state, abandoned.state] == [DONE, ABANDONED]


# -- TimeoutWheel -----------------------------------------------------------------------------


async def test_the_wheel_fails_an_unanswered_call_within_one_bucket_of_its_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wheel = TimeoutWheel(10, timeout_error)
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wheel.run)
        await trio.sleep(3.3)  # the wheel parked on an empty table; add() must wake it
        call = make_call()
        start = trio.current_time()
        wheel.add(call)
        assert wheel.pending() == 1
        await wait_into(call, results)
        waited = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert [str(r) for r in results] == ["cart/a.add() had no reply in 10 s"]
    assert isinstance(results[0], TimeoutError)
    assert 10 - 1e-9 <= waited <= 10 + 10 / 16 + 1e-9  # rounded up to a bucket of timeout/16
    assert wheel.pending() == 0
    assert call.wheel is None


async def test_the_wheel_expires_calls_in_deadline_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wheel = TimeoutWheel(10, timeout_error)
    expired: list[tuple[str, float]] = []

    async def caller(label: str) -> None:
        call = make_call(label)
        wheel.add(call)
        with pytest.raises(TimeoutError):
            await wait_reply(call)
        expired.append((label, trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wheel.run)
        nursery.start_soon(caller, "a")
        await trio.sleep(4)
        nursery.start_soon(caller, "b")
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert [label for label, _ in expired] == ["a", "b"]
    assert expired[1][1] - expired[0][1] == pytest.approx(4, abs=10 / 16)


async def test_a_finished_call_leaves_the_wheel_and_is_not_failed_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wheel = TimeoutWheel(10, timeout_error)
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wheel.run)
        call = make_call()
        wheel.add(call)
        nursery.start_soon(wait_into, call, results)
        await trio.sleep(5)
        call.finish(outcome.Value("in time"))
        assert wheel.pending() == 0
        assert call.wheel is None
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert results == ["in time"]


async def test_a_call_added_again_waits_its_whole_timeout_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wheel = TimeoutWheel(10, timeout_error)
    expired: dict[str, float] = {}

    async def wait(call: Call) -> None:
        with pytest.raises(TimeoutError):
            await wait_reply(call)
        expired[call.describe()] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wheel.run)
        first, again = make_call("first"), make_call("again")
        wheel.add(again)
        wheel.add(first)
        nursery.start_soon(wait, first)
        nursery.start_soon(wait, again)
        await trio.sleep(6)
        wheel.add(again)  # behind first now, with a new deadline
        assert wheel.pending() == 2
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert list(expired) == ["first", "again"]
    assert 10 <= expired["first"] <= 10 + 10 / 16
    assert 16 <= expired["again"] <= 16 + 10 / 16
    assert wheel.pending() == 0


async def test_a_cancelled_caller_leaves_the_wheel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wheel = TimeoutWheel(10, timeout_error)
    call = make_call()
    wheel.add(call)
    with trio.move_on_after(2):
        await wait_reply(call)
    assert call.state == ABANDONED
    assert wheel.pending() == 0


async def test_fail_all_wakes_every_waiting_caller_with_its_own_error() -> None:
    wheel = TimeoutWheel(1000, timeout_error)
    calls = [make_call(f"cart/{key}.add()") for key in "abc"]
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        for call in calls:
            wheel.add(call)
            nursery.start_soon(wait_into, call, results)
        await trio.testing.wait_all_tasks_blocked()
        calls[1].finish(outcome.Value("answered"))  # no longer in the wheel: not failed
        assert wheel.pending() == 2
        wheel.fail_all(lambda call: SiloUnavailableError(f"{call.describe()}: silo stopped"))
        assert wheel.pending() == 0
    assert sorted(map(str, results)) == [
        "answered",
        "cart/a.add(): silo stopped",
        "cart/c.add(): silo stopped",
    ]
    assert [c.state for c in calls] == [ABANDONED, DONE, ABANDONED]


def test_an_infinite_response_timeout_never_expires() -> None:
    # A sync test around trio.run, so that the error is not wrapped in pytest-trio's group.
    async def main() -> object:
        wheel = TimeoutWheel(math.inf, timeout_error)
        call = make_call()
        wheel.add(call)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wheel.run)
            await trio.sleep(10**9)
            call.finish(outcome.Value("at last"))
            nursery.cancel_scope.cancel()
        return await wait_reply(call)

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == "at last"


async def test_calls_that_never_expire_are_counted_and_failed_when_the_silo_stops() -> None:
    wheel = TimeoutWheel(math.inf, timeout_error)
    first, second = make_call(), make_call()
    wheel.add(first)
    wheel.add(second)
    assert wheel.pending() == 2
    wheel.discard(first)
    assert wheel.pending() == 1
    wheel.fail_all(lambda call: SiloUnavailableError("stopped"))
    assert wheel.pending() == 0
    with pytest.raises(SiloUnavailableError, match="stopped"):
        await wait_reply(second)


class SlowGrain(Grain):
    async def work(self) -> int:
        await trio.sleep(1)
        return 1


async def test_a_silo_with_an_infinite_response_timeout_queues_calls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(SiloConfig(response_timeout=math.inf), grains=[SlowGrain]) as silo:
        ref = silo.get_grain(SlowGrain, "g")
        results: list[int] = []

        async def call() -> None:
            results.append(await ref.work())

        async with trio.open_nursery() as nursery:
            for _ in range(3):  # two of them wait in the mailbox, in the wheel
                nursery.start_soon(call)
            await trio.sleep(0.5)
            assert silo.statistics().waiting_callers == 2
        assert results == [1, 1, 1]
