"""Forged error replies naming exceptions that end a process (issue 13).

A silo process (``_hostile_silo.py``) hosts :class:`RelayGrain`, whose ``relay`` calls a
:class:`SlowGrain` on the test's silo: a call pending in that process. The attacker
sends error replies naming ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit``
to the process's subject, for guessed call ids and (learnt from the traffic, which a real
attacker would have to guess) for the real one, as if from the silo the call went to.
Even the one that reaches the pending call must not end the process: it is alive and
answers a call afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from _hostile import (
    ERROR,
    OK,
    HostileClient,
    HostileEnv,
    Reply,
    error_payload,
    open_sniffer,
    reply,
    silo_subject,
    wait_until,
)
from _processes import Processes, processes, read_if_exists

HERE = Path(__file__).parent
SILO_SCRIPT = HERE / "_hostile_silo.py"

DEADLY = ["builtins:KeyboardInterrupt", "builtins:SystemExit", "builtins:GeneratorExit"]


async def _start_silo_process(procs: Processes, env: HostileEnv, label: str) -> str:
    settings = {"url": env.url, "cluster": env.cluster_id, "dir": str(procs.dir)}
    await procs.start(label, SILO_SCRIPT, {**settings, "label": label, "silos": 2})
    ready = procs.dir / f"{label}.ready"
    with trio.fail_after(30):
        while (silo_id := read_if_exists(ready)) is None:
            procs.check_running()
            await trio.sleep(0.05)
    await wait_until(lambda: env.silo.statistics().active_silos == 2, within=20)
    return silo_id


def _dropped_in(procs: Processes, label: str, reason: str) -> int:
    text = read_if_exists(procs.dir / f"{label}.stats.json")
    if text is None:
        return 0
    dropped = json.loads(text)["dropped_messages"]
    assert dropped is not None, "the silo process has no statistics().dropped_messages"
    return int(dropped.get(reason, 0))


async def _relay(hostile: HostileClient, target: str, key: str, into: list[Reply]) -> None:
    args = {"key": key, "seconds": 3.0}
    into.append(await hostile.call(target, "hrelay/r", "relay", args, within=20))


async def test_forged_exit_exceptions_do_not_end_a_silo_process(
    env: HostileEnv, hostile: HostileClient, tmp_path: Path
) -> None:
    async with processes(tmp_path) as procs:
        silo_id = await _start_silo_process(procs, env, "p")
        target = silo_subject(env.cluster_id, silo_id)
        assert (await hostile.call(target, "hrelay/probe", "where")).value == silo_id
        guessed = 0
        for n, name in enumerate(DEADLY):
            relayed: list[Reply] = []
            async with (
                open_sniffer(env.admin, env.cluster_id) as sniffer,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(_relay, hostile, target, f"slow-{n}", relayed)
                subject, fields = await sniffer.next_request("sleep")
                assert subject == env.silo_subject()  # the process calls the test's silo
                real_id, reply_to = fields[1], fields[2]
                assert reply_to == target
                payload = error_payload(name, "forged", [0] if "SystemExit" in name else [])
                forged = [reply(i, ERROR, payload, env.silo.silo_id) for i in range(1, 1001)]
                guessed += len(forged)  # (none is the real call id, unless ids are guessable)
                forged.append(reply(real_id, ERROR, payload, env.silo.silo_id))
                await hostile.send_many(target, forged)
            # the relay call ended: with the real result, or with the forged error as a
            # RemoteGrainError (never as the exception it names)
            (answer,) = relayed
            if answer.status == OK:
                assert answer.value == "done"
            else:
                error = answer.error
                assert error["type"].endswith("RemoteGrainError"), error
                assert name.rpartition(":")[2] in error["message"], error
            # the process is alive and answers an ordinary call afterwards
            procs.check_running()
            assert (await hostile.call(target, "hrelay/probe", "where")).value == silo_id
            assert (await hostile.call(target, "hcounter/after", "add", {"n": 1})).value == n + 1
            procs.check_running()
        await wait_until(
            lambda: _dropped_in(procs, "p", "unexpected_reply") >= guessed,
            what="the guessed replies counted by the silo process",
        )
        procs.assert_clean_logs("p")


@pytest.mark.parametrize("name", DEADLY)
async def test_a_forged_exit_exception_reaching_a_caller_in_this_process_arrives_remote(
    nats_url: str, name: str
) -> None:
    """In-process: the same forged reply, delivered to a pending call of a silo in the
    test's own run, raises RemoteGrainError in the caller (not the exception it names)."""
    from _hostile import open_hostile_client, open_hostile_env
    from _hostile_grains import SlowGrain

    import trio_grains

    async with open_hostile_env(nats_url, silos=2) as env:
        caller, callee = env.silos
        for i in range(200):
            if await caller.get_grain(SlowGrain, f"k{i}").where() == callee.silo_id:
                key = f"k{i}"
                break
        else:
            raise AssertionError("no key placed on the callee")
        outcome: list[Any] = []

        async def call() -> None:
            try:
                outcome.append(await caller.get_grain(SlowGrain, key).sleep(3.0))
            except trio_grains.GrainsError as exc:
                outcome.append(exc)

        async with (
            open_hostile_client(env.url, env.cluster_id) as hostile,
            open_sniffer(env.admin, env.cluster_id) as sniffer,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(call)
            _, fields = await sniffer.next_request("sleep")
            payload = error_payload(name, "forged", [0] if "SystemExit" in name else [])
            await hostile.send(fields[2], reply(fields[1], ERROR, payload, callee.silo_id))
        (result,) = outcome
        assert isinstance(result, trio_grains.RemoteGrainError), result
        assert name.rpartition(":")[2] in str(result)
        await env.assert_all_answer()
