"""The wire, attacked by a client that speaks raw bytes (issue 13).

Every test sends what an attacker with client credentials can send to a silo's request
subject, then checks that the harm did not happen (the stream still holds its messages,
the victim's stored and in-memory state is unchanged, every silo answers) and that the
event was counted in ``statistics().dropped_messages``.

Ordering: messages from one connection reach a silo in the order they were published,
and a silo handles them in that order. So once a raw call sent after an attack has been
answered (:func:`barrier`), the silo has handled the attack too.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from typing import Any

import msgpack
import pytest
import trio
from _hostile import (
    ERROR,
    OK,
    REPLY,
    HostileClient,
    HostileEnv,
    Reply,
    cancel,
    client_subject,
    open_hostile_client,
    open_hostile_env,
    open_sniffer,
    pack,
    reply,
    request,
    wait_until,
)
from _hostile_grains import SINK_ITEMS, SLEEPING, CounterGrain, SlowGrain, TypedGrain, VaultGrain

import trio_grains
from trio_grains import Client, GrainIdError, open_client


async def barrier(env: HostileEnv, hostile: HostileClient) -> None:
    """A raw call on the attacker's connection, answered: everything it sent before has
    been handled by the silo."""
    answer = await hostile.call(env.silo_subject(), "hcounter/barrier", "get")
    assert answer.status == OK, answer


def short_type(reply: Reply) -> str:
    """``SerializationError`` of ``trio_grains._exceptions:SerializationError``."""
    return reply.error_type.rpartition(":")[2].rpartition(".")[2]


# --- 1. reply addresses ------------------------------------------------------------------------


async def _victims(env: HostileEnv) -> dict[str, Any]:
    """Things to harm: a stream holding items, a stored state, an in-memory counter."""
    await env.silo.get_grain(VaultGrain, "victim").put("the-real-secret")
    await env.publish_items("victim", range(5))
    await wait_until(lambda: SINK_ITEMS.get("victim") == list(range(5)), what="items delivered")
    await env.silo.get_grain(CounterGrain, "victim").add(7)
    state_subject = env.state_subject("hvault/victim", "vault")
    return {
        "state_subject": state_subject,
        "stored": await env.stored(state_subject),
        "messages": await env.stream_messages(),
    }


async def _assert_unharmed(env: HostileEnv, before: dict[str, Any]) -> None:
    assert await env.stream_messages() == before["messages"], "the stream lost or gained items"
    assert await env.stored(before["state_subject"]) == before["stored"], "state overwritten"
    assert await env.silo.get_grain(VaultGrain, "victim").reread() == "the-real-secret"
    assert await env.silo.get_grain(CounterGrain, "victim").get() == 7
    assert SINK_ITEMS.get("victim") == list(range(5)), "a stream item was injected"
    await env.assert_all_answer()


HARMFUL_TARGETS = {
    "stream-purge": lambda env: f"$JS.API.STREAM.PURGE.{env.stream_name}",
    "stream-delete": lambda env: f"$JS.API.STREAM.DELETE.{env.stream_name}",
    "kv-state": lambda env: env.state_subject("hvault/victim", "vault"),
    "membership-row": lambda env: env.membership_subject(),
    "stream-subject": lambda env: env.stream_subject("victim"),
}


@pytest.mark.parametrize("target", sorted(HARMFUL_TARGETS))
async def test_a_reply_address_outside_the_reply_namespace_is_never_published_to(
    env: HostileEnv, hostile: HostileClient, target: str
) -> None:
    before = await _victims(env)
    address = HARMFUL_TARGETS[target](env)
    dropped = env.dropped("reply_address")
    # a valid call to a real grain method: only the reply address is wrong
    await hostile.send(
        env.silo_subject(), request("hcounter/victim", "get", reply_to=address, timeout=5.0)
    )
    # the same address as the NATS reply subject, too (what nats request/reply would use)
    await hostile.nc.publish(
        env.silo_subject(),
        request("hcounter/victim", "get", reply_to=address, timeout=5.0),
        reply=address,
    )
    await barrier(env, hostile)
    await _assert_unharmed(env, before)
    assert env.dropped("reply_address") == dropped + 2


def _malformed_addresses(env: HostileEnv) -> dict[str, str]:
    prefix = f"grains.{env.cluster_id}"
    return {
        "5000 characters": f"{prefix}.client.x." + "a" * 5000,
        "over max_subject_length": f"{prefix}.client.x." + "a" * 300,
        "spaces": f"{prefix}.client.x y.z",
        "tab": f"{prefix}.client.x\ty.z",
        "newline": f"{prefix}.client.x.y\r\nPUB evil 0",
        "wildcard *": f"{prefix}.silo.*",
        "wildcard >": f"{prefix}.>",
        "empty tokens": f"{prefix}..silo.",
        "leading dot": f".{prefix}.silo.x",
        "inbox": "_INBOX.x",
        "other cluster": client_subject("someone-else", "x"),
        "silo address with a suffix": f"{env.silo_subject()}.more",
        "client address missing a token": f"{prefix}.client.x",
        "another namespace": f"{prefix}.admin.x",
        "a membership bucket api": f"$JS.API.STREAM.INFO.KV_{env.membership_bucket}",
        "the directory": f"$KV.{env.directory_bucket}.hcounter/victim",
        "system account": "$SYS.REQ.SERVER.PING",
    }


async def test_malformed_reply_addresses_are_dropped_and_counted(
    env: HostileEnv, hostile: HostileClient
) -> None:
    before = await _victims(env)
    addresses = _malformed_addresses(env)
    dropped = env.dropped("reply_address") + env.dropped("malformed")
    async with open_sniffer(env.admin, env.cluster_id) as sniffer:
        for address in addresses.values():
            await hostile.send(
                env.silo_subject(),
                request("hcounter/victim", "add", {"n": 1000}, reply_to=address, timeout=5.0),
            )
        await barrier(env, hostile)
        # nothing was sent anywhere on the cluster's subjects but the barrier's reply
        replies = [s for s, _, f in sniffer.seen if f[:1] == [REPLY]]
        assert len(replies) <= 1, replies
    await _assert_unharmed(env, before)  # (add(1000) never ran: the count is still 7)
    counted = env.dropped("reply_address") + env.dropped("malformed") - dropped
    assert counted == len(addresses)
    assert env.dropped("reply_address") >= dropped + len(addresses) - 2  # (\r\n, \t: either)


async def test_a_reply_address_of_the_reply_namespace_is_answered(
    env: HostileEnv, hostile: HostileClient
) -> None:
    """The control: the same request with a client address gets its reply."""
    address = client_subject(env.cluster_id, "someone", "a" * 100)
    assert len(address) <= 256
    sub = await hostile.nc.subscribe(address)
    await hostile.nc.flush()
    await hostile.send(
        env.silo_subject(), request("hcounter/c", "add", {"n": 3}, call_id=42, reply_to=address)
    )
    with trio.fail_after(10):
        msg = await sub.__anext__()
    fields = msgpack.unpackb(msg.data, raw=False)
    assert fields[:3] == [REPLY, 42, OK]
    assert msgpack.unpackb(fields[3]) == 3
    await sub.unsubscribe()


# --- 2. replies and cancels bound to their call ------------------------------------------------


def _forged_replies(silo_ids: list[str]) -> list[bytes]:
    """Replies an attacker might send: small ids, random ids, values and errors. (The
    real call id is not left out: if it is among them, call ids can be guessed.)"""
    ids = [*range(1, 1001), *(secrets.randbits(64) or 1 for _ in range(200))]
    forged = []
    for n, call_id in enumerate(ids):
        silo = silo_ids[n % len(silo_ids)]
        if n % 2:
            forged.append(reply(call_id, OK, pack("forged"), silo))
        else:
            forged.append(reply(call_id, ERROR, _error("builtins:ValueError"), silo))
    return forged


def _error(type_name: str) -> bytes:
    return pack({"type": type_name, "args": ["forged"], "message": "forged", "traceback": ""})


async def _slow_call_on(nursery: trio.Nursery, call: Any, results: list[Any], *args: Any) -> None:
    async def run() -> None:
        try:
            results.append(await call(*args))
        except Exception as exc:
            results.append(exc)

    nursery.start_soon(run)


async def test_forged_replies_to_a_client_never_reach_its_caller(
    env: HostileEnv, hostile: HostileClient, victim_client: Client
) -> None:
    slow = victim_client.get_grain(SlowGrain, "s")
    assert await slow.where() == env.silo.silo_id  # active and located: no LOCATE call
    results: list[Any] = []
    async with open_sniffer(env.admin, env.cluster_id) as sniffer, trio.open_nursery() as n:
        await _slow_call_on(n, slow.sleep, results, 2.0)
        _, fields = await sniffer.next_request("sleep")
        real_id, caller = fields[1], fields[2]
        assert caller.startswith(f"grains.{env.cluster_id}.client.")
        forged = _forged_replies([env.silo.silo_id, "not-a-silo"])
        # the real call id, but not from the silo the call went to
        forged.append(reply(real_id, OK, pack("forged"), "not-a-silo"))
        forged.append(reply(real_id, ERROR, _error("builtins:ValueError"), "not-a-silo"))
        await hostile.send_many(caller, forged)
        await wait_until(
            lambda: (
                victim_client.statistics().dropped_messages.get("unexpected_reply", 0)
                >= len(forged)
            ),
            what="the forged replies counted by the client",
        )
        assert results == []  # still waiting for the real one
    assert results == ["done"]
    assert await slow.done() == 1
    assert victim_client.statistics().dropped_messages["unexpected_reply"] == len(forged)


async def test_forged_replies_to_a_silo_never_reach_its_caller(nats_url: str) -> None:
    async with open_hostile_env(nats_url, silos=2) as env:
        caller, callee = env.silos
        key = await _key_on(caller, callee.silo_id)
        slow = caller.get_grain(SlowGrain, key)
        results: list[Any] = []
        async with (
            open_hostile_client(env.url, env.cluster_id) as hostile,
            open_sniffer(env.admin, env.cluster_id) as sniffer,
            trio.open_nursery() as n,
        ):
            await _slow_call_on(n, slow.sleep, results, 2.0)
            subject, fields = await sniffer.next_request("sleep")
            assert subject == env.silo_subject(callee)
            real_id, reply_to = fields[1], fields[2]
            assert reply_to == env.silo_subject(caller)
            before = env.dropped("unexpected_reply", caller)
            forged = _forged_replies([callee.silo_id, caller.silo_id, "x"])
            forged.append(reply(real_id, OK, pack("forged"), "not-a-silo"))
            await hostile.send_many(reply_to, forged)
            await wait_until(
                lambda: env.dropped("unexpected_reply", caller) >= before + len(forged),
                what="the forged replies counted by the calling silo",
            )
            assert results == []
        assert results == ["done"]
        assert env.dropped("unexpected_reply", caller) == before + len(forged)
        await env.assert_all_answer()


async def _key_on(caller: trio_grains.Silo, silo_id: str) -> str:
    """A key of a SlowGrain that *caller* finds activated on *silo_id*."""
    for i in range(200):
        key = f"on-{i}"
        if await caller.get_grain(SlowGrain, key).where() == silo_id:
            return key
    raise AssertionError(f"no SlowGrain key landed on {silo_id}")


async def test_forged_cancels_cancel_nothing(
    env: HostileEnv, hostile: HostileClient, victim_client: Client
) -> None:
    slow = victim_client.get_grain(SlowGrain, "c")
    assert await slow.where() == env.silo.silo_id
    results: list[Any] = []
    async with open_sniffer(env.admin, env.cluster_id) as sniffer, trio.open_nursery() as n:
        await _slow_call_on(n, slow.sleep, results, 2.0)
        _, fields = await sniffer.next_request("sleep")
        real_id, caller = fields[1], fields[2]
        # guessed call ids, with the caller's real address and with others
        others = [caller, client_subject(env.cluster_id, "x"), env.silo_subject()]
        ids = [*range(1, 1001), *(secrets.randbits(64) or 1 for _ in range(200))]
        forged = [cancel(i, caller) for i in ids]  # (the real id is among them only if
        forged += [cancel(i, others[i % 3]) for i in ids[:300]]  # ids can be guessed)
        # the real call id from an address that is not the caller's
        forged += [cancel(real_id, address) for address in others[1:]]
        await hostile.send_many(env.silo_subject(), forged)
        await barrier(env, hostile)
        assert results == []
    assert results == ["done"]
    assert await slow.done() == 1


# --- 4. malformed envelopes --------------------------------------------------------------------


def _malformed(env: HostileEnv, reply_to: str) -> dict[str, bytes]:
    """Messages that are not envelopes a silo may act on; each asks add(n=1000)."""
    grain, args = "hcounter/victim", pack({"n": 1000})
    good = [0, 77, reply_to, grain, "add", args, 5.0, 0, 0, None]

    def req(**changes: Any) -> bytes:
        fields = list(good)
        names = ["kind", "call_id", "reply_to", "grain_id", "method", "args"]
        names += ["timeout", "hops", "flags", "trace"]
        for name, value in changes.items():
            fields[names.index(name)] = value
        return pack(fields)

    valid = pack(good)
    return {
        "kind False": req(kind=False),
        "kind True": req(kind=True),
        "kind 0.0": req(kind=0.0),
        "kind '0'": req(kind="0"),
        "kind None": req(kind=None),
        "kind 7": req(kind=7),
        "9 fields": pack(good[:9]),
        "11 fields": pack([*good, None]),
        "call id str": req(call_id="77"),
        "call id float": req(call_id=77.0),
        "call id bool": req(call_id=True),
        "call id negative": req(call_id=-5),
        "call id zero": req(call_id=0),
        "reply_to int": req(reply_to=5),
        "reply_to bytes": req(reply_to=reply_to.encode()),
        "grain id int": req(grain_id=7),
        "grain id empty": req(grain_id=""),
        "grain key of 5000 characters": req(grain_id="hcounter/" + "k" * 5000),
        "method None": req(method=None),
        "method of 5000 characters": req(method="m" * 5000),
        "args str": req(args="{}"),
        "args list": req(args=[1, 2]),
        "args map": req(args={"n": 1000}),
        "timeout NaN": req(timeout=math.nan),
        "timeout inf": req(timeout=math.inf),
        "timeout -inf": req(timeout=-math.inf),
        "timeout negative": req(timeout=-1.0),
        "timeout str": req(timeout="5"),
        "timeout bool": req(timeout=True),
        "hops str": req(hops="0"),
        "hops negative": req(hops=-1),
        "hops huge": req(hops=2**40),
        "flags unknown": req(flags=1 << 7),
        "flags bool": req(flags=True),
        "trace str": req(trace="x"),
        "trace with int values": req(trace={"traceparent": 1}),
        "trace huge": req(trace={f"k{i}": "v" * 100 for i in range(1000)}),
        "truncated": valid[:-7],
        "trailing garbage": valid + b"\xc1\xc1",
        "deep nesting": b"\x91" * 100_000 + b"\xc0",
        "deep nesting in a field": req(trace=None)[:-1] + b"\x91" * 100_000 + b"\xc0",
        "1 MB of garbage": os.urandom(1_000_000),
        "empty": b"",
        "a map": pack({"kind": 0}),
        "an int": pack(0),
        "an empty array": pack([]),
        "invalid msgpack byte": b"\xc1",
        "reply with str id": pack([1, "77", 0, b"", "s"]),
        "reply with bad status": pack([1, 77, 9, b"", "s"]),
        "reply with str payload": pack([1, 77, 0, "x", "s"]),
        "reply with int silo": pack([1, 77, 0, b"", 5]),
        "cancel with str id": pack([2, "77", reply_to]),
        "cancel with int reply_to": pack([2, 77, 5]),
    }


async def test_malformed_envelopes_cost_only_themselves(
    env: HostileEnv, hostile: HostileClient
) -> None:
    counter = env.silo.get_grain(CounterGrain, "victim")
    assert await counter.add(7) == 7
    async with hostile.inbox() as (inbox, sub):
        bad = _malformed(env, inbox)
        before = {r: env.dropped(r) for r in ("malformed", "reply_address")}
        for name, data in bad.items():
            try:
                await hostile.send(env.silo_subject(), data)
            except ValueError as exc:  # (our own client refuses nothing but subjects)
                raise AssertionError(f"{name}: {exc}") from None
        await barrier(env, hostile)  # (its reply came after any reply to those)
        assert sub.statistics().delivered == 0, "a malformed message was answered"
    assert await counter.get() == 7  # never ran, and the activation kept its state
    assert env.dropped("malformed") == before["malformed"] + len(bad)
    assert env.dropped("reply_address") == before["reply_address"]
    await env.assert_all_answer()


async def test_a_huge_timeout_costs_at_most_that_message(
    env: HostileEnv, hostile: HostileClient
) -> None:
    """1e300 s is finite and not negative: answered or dropped, never harmful."""
    counter = env.silo.get_grain(CounterGrain, "victim")
    assert await counter.add(7) == 7
    for timeout in (1e300, 2**63, 1.7976931348623157e308):
        answer_or_none = await _call_or_drop(
            env, hostile, "hcounter/victim", "add", {"n": 1}, call_timeout=timeout
        )
        assert answer_or_none is None or answer_or_none.status == OK
    assert await counter.get() in range(7, 11)
    await env.assert_all_answer()


async def _call_or_drop(
    env: HostileEnv, hostile: HostileClient, grain: str, method: str, args: Any, **kw: Any
) -> Reply | None:
    """The reply to a raw call, or ``None`` if the silo dropped it (and counted it)."""
    dropped = env.dropped("malformed")
    async with hostile.inbox() as (inbox, sub):
        call_id = secrets.randbits(63) + 1
        await hostile.send(
            env.silo_subject(),
            request(
                grain, method, args, call_id=call_id, reply_to=inbox, timeout=kw.get("call_timeout")
            ),
        )
        with trio.fail_after(10):
            while True:
                with trio.move_on_after(0.05):
                    msg = await sub.__anext__()
                    fields = msgpack.unpackb(msg.data, raw=False)
                    if fields[1] == call_id:
                        return Reply(*fields[1:])
                if env.dropped("malformed") > dropped:
                    return None


@pytest.mark.parametrize(
    ("method", "why"),
    [
        ("nonexistent", "not a grain method"),
        ("_x", "a private method"),
        ("undeclared", "a public method outside the declared interface ICounter"),
        ("__init__", "a dunder"),
        ("on_activate", "a lifecycle method"),
        ("get_grain", "a Grain helper"),
    ],
)
async def test_only_declared_methods_are_callable_from_outside(
    env: HostileEnv, hostile: HostileClient, method: str, why: str
) -> None:
    counter = env.silo.get_grain(CounterGrain, "victim")
    assert await counter.add(7) == 7
    answer = await hostile.call(env.silo_subject(), "hcounter/victim", method)
    assert answer.status == ERROR, why
    assert short_type(answer) == "GrainMethodError", answer.error
    assert await counter.get() == 7, f"{why} ran"
    await env.assert_all_answer()


async def test_200_calls_during_a_flood_of_oversized_messages_are_all_answered(
    env: HostileEnv, hostile: HostileClient, victim_client: Client
) -> None:
    counters = [victim_client.get_grain(CounterGrain, f"f{i}") for i in range(200)]
    for ref in counters[:10]:
        await ref.add(0)  # a few activated before
    prefix = f"grains.{env.cluster_id}"
    flood = [
        request("hcounter/f0", "add", {"n": 1}, reply_to=f"{prefix}.client.x." + "a" * 5000)
        if i % 2
        else request(
            "hcounter/" + "k" * 5000, "add", {"n": 1}, reply_to=client_subject(env.cluster_id, "x")
        )
        for i in range(20)
    ]
    before = env.dropped("malformed") + env.dropped("reply_address")
    answers: list[Any] = []

    async def call(ref: CounterGrain) -> None:
        try:
            answers.append(await ref.add(1))
        except Exception as exc:
            answers.append(exc)

    async with trio.open_nursery() as nursery:
        for i, ref in enumerate(counters):
            nursery.start_soon(call, ref)
            if i % 10 == 0:
                await hostile.send(env.silo_subject(), flood[i // 10])
        await hostile.nc.flush()
    lost = [a for a in answers if not isinstance(a, int)]
    assert not lost, f"{len(lost)} of 200 calls failed: {lost[:3]}"
    assert answers.count(1) == 200
    await barrier(env, hostile)
    assert env.dropped("malformed") + env.dropped("reply_address") == before + 20
    await env.assert_all_answer()


async def test_ten_thousand_malformed_messages_log_a_handful_of_lines(
    env: HostileEnv, hostile: HostileClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_grains")
    before = env.dropped("malformed")
    await hostile.send_many(env.silo_subject(), (pack([0, i]) for i in range(10_000)))
    await wait_until(
        lambda: env.dropped("malformed") >= before + 10_000, within=60, what="10,000 counted"
    )
    assert env.dropped("malformed") == before + 10_000
    noisy = [r for r in caplog.records if r.name.startswith("trio_grains")]
    assert 1 <= len(noisy) <= 5, [r.getMessage() for r in noisy[:10]]
    await env.assert_all_answer()


# --- 5. limits ---------------------------------------------------------------------------------


async def test_get_grain_refuses_an_over_long_key_at_once(
    env: HostileEnv, victim_client: Client
) -> None:
    limit = env.silo_config("x").max_key_length
    assert limit == 1024
    with pytest.raises(GrainIdError):
        env.silo.get_grain(CounterGrain, "k" * (limit + 1))
    with pytest.raises(GrainIdError):
        victim_client.get_grain(CounterGrain, "k" * (limit + 1))
    # the longest allowed key works, across the wire too
    assert await victim_client.get_grain(CounterGrain, "k" * limit).add(2) == 2
    assert await env.silo.get_grain(CounterGrain, "k" * limit).get() == 2


@pytest.mark.parametrize("length", [1025, 1280, 5000])
async def test_a_raw_request_for_an_over_long_key_is_refused(
    env: HostileEnv, hostile: HostileClient, length: int
) -> None:
    created = env.silo.statistics().activations_created
    answer = await _call_or_drop(env, hostile, "hcounter/" + "k" * length, "add", {"n": 1})
    if answer is not None:
        assert answer.status == ERROR
        assert short_type(answer) == "GrainIdError", answer.error
    assert env.silo.statistics().activations_created == created  # nothing activated
    await env.assert_all_answer()


async def test_a_full_mailbox_answers_overloaded(nats_url: str) -> None:
    overloaded = trio_grains.ActivationOverloadedError
    async with (
        open_hostile_env(nats_url, max_queued_calls=20) as env,
        open_client(env.client_config()) as client,
    ):
        slow = client.get_grain(SlowGrain, "busy")
        assert await slow.where() == env.silo.silo_id
        results: list[Any] = []

        async def one(call: Any, *args: Any) -> None:
            try:
                results.append(await call(*args))
            except Exception as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, slow.sleep, 1.0)
            await wait_until(lambda: "busy" in SLEEPING, what="the slow call running")
            for _ in range(100):
                nursery.start_soon(one, slow.done)
            await wait_until(
                lambda: sum(isinstance(r, overloaded) for r in results) >= 75,
                what="calls past max_queued_calls refused",
            )
            assert env.silo.statistics().queued_calls <= 20
        refused = [r for r in results if isinstance(r, overloaded)]
        answered = [r for r in results if isinstance(r, int) or r == "done"]
        others = [r for r in results if r not in answered and r not in refused]
        assert not others
        assert len(results) == 101
        assert "done" in answered
        assert 75 <= len(refused) <= 81, len(refused)
        assert await slow.done() == 1  # the mailbox works again
        await env.assert_all_answer()


# --- 6. strict argument decoding ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "value"),
    [
        ("text", 123),
        ("text", b"bytes"),
        ("text", [1, 2]),
        ("text", None),
        ("number", "5"),
        ("number", True),
        ("number", 1.9),
        ("number", None),
    ],
    ids=repr,
)
async def test_an_argument_of_the_wrong_type_is_refused_by_name(
    env: HostileEnv, hostile: HostileClient, method: str, value: Any
) -> None:
    answer = await hostile.call(env.silo_subject(), "htyped/t", method, {"value": value})
    assert answer.status == ERROR, f"{method}({value!r}) ran and returned {answer.value!r}"
    assert short_type(answer) == "SerializationError", answer.error
    assert "value" in answer.error["message"], answer.error["message"]
    assert await env.silo.get_grain(TypedGrain, "t").runs() == 0  # the grain never ran


async def test_arguments_of_the_right_type_are_accepted(
    env: HostileEnv, hostile: HostileClient
) -> None:
    """The control for the test above."""
    text = await hostile.call(env.silo_subject(), "htyped/t", "text", {"value": "123"})
    number = await hostile.call(env.silo_subject(), "htyped/t", "number", {"value": 5})
    assert (text.value, number.value) == ("123", 5)
    assert await env.silo.get_grain(TypedGrain, "t").runs() == 2


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ({"value": "x", "extra": 1}, "an unknown parameter"),
        ({}, "a missing parameter"),
        ({1: "x"}, "a non-string parameter name"),
    ],
)
async def test_arguments_that_do_not_fit_the_signature_are_refused(
    env: HostileEnv, hostile: HostileClient, args: dict[Any, Any], why: str
) -> None:
    answer = await hostile.call(env.silo_subject(), "htyped/t", "text", args)
    assert answer.status == ERROR, why
    assert await env.silo.get_grain(TypedGrain, "t").runs() == 0, why
    await env.assert_all_answer()
