"""The cluster-transport conformance kit: every rule of :class:`~trio_grains.Transport`.

Each check takes ``open_backend``, a callable returning an async context manager that
yields a :class:`~trio_grains.ClusterBackend`, opens endpoints on it and raises
:class:`AssertionError` naming the broken rule. Every call of ``open_backend`` must yield a
backend of the *same* cluster (as two silos of one cluster would get): one check sends
between two backends. Endpoint ids carry a random tag, so checks do not see each other's
messages, even on a shared server.

Times: the checks wait up to :data:`WAIT` seconds for a message that must come and watch
:data:`QUIET` seconds for one that must not (Trio's clock).

May import: every layer below, the ``trio_grains`` package and ``_kit_helpers``. Not the
silo or the client: a kit checks a provider on its own.
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TypeAlias

import trio

from .._cluster.transport import (
    ClusterBackend,
    MessageTooLargeError,
    Transport,
    TransportClosedError,
)
from ._kit_helpers import expect_success, new_tag, show, show_exc

__all__ = [
    "ORDERED_MESSAGES",
    "QUIET",
    "TRANSPORT_CHECKS",
    "WAIT",
    "ClusterBackendOpener",
    "TransportCheck",
    "check_transport",
]

ClusterBackendOpener: TypeAlias = Callable[[], AbstractAsyncContextManager[ClusterBackend]]
"""``open_backend()``: a backend of the cluster under test (the same cluster every call)."""

TransportCheck: TypeAlias = Callable[[ClusterBackendOpener], Awaitable[None]]
"""One conformance check: ``await check(open_backend)``; AssertionError when it fails."""

WAIT = 10.0
QUIET = 0.3
ORDERED_MESSAGES = 5000

# Endpoint ids a subject- or path-based transport must escape.
ODD_IDS: tuple[str, ...] = (
    "with.dots",
    "with spaces\tand\nlines",
    "*",
    ">",
    "a.*.>",
    "=2E",
    "%2E",
    "10.0.0.1:11111@42",
    "unicode ünïcødé 🍕",
    "x" * 200,
)


def _ids(*names: str) -> list[str]:
    tag = new_tag()
    return [f"kit-{tag}-{name}" for name in names]


@contextlib.asynccontextmanager
async def _endpoint(backend: ClusterBackend, endpoint_id: str) -> AsyncIterator[Transport]:
    async with contextlib.AsyncExitStack() as stack:
        try:
            transport = await stack.enter_async_context(backend.open_endpoint(endpoint_id))
        except Exception as exc:
            raise AssertionError(
                f"open_endpoint({endpoint_id!r}) must succeed; it raised {show_exc(exc)}"
            ) from exc
        if not isinstance(transport, Transport):
            raise AssertionError(
                f"open_endpoint must yield a Transport; it yielded {show(transport)}"
            )
        if not isinstance(transport.address, str) or not transport.address:
            raise AssertionError(
                f"Transport.address must be a non-empty str; it is {show(transport.address)}"
            )
        yield transport


async def _send(sender: Transport, to: Transport | str, message: bytes) -> None:
    address = to if isinstance(to, str) else to.address
    await expect_success(
        f"send of {len(message)} bytes from {sender.address!r} to {address!r}",
        lambda: sender.send(address, message),
    )


async def _receive(transport: Transport, rule: str, within: float = WAIT) -> bytes:
    with trio.move_on_after(within):
        try:
            message = await transport.receive()
        except Exception as exc:
            raise AssertionError(f"{rule}; receive raised {show_exc(exc)}") from exc
        if not isinstance(message, bytes):
            raise AssertionError(f"receive must return bytes; it returned {show(message)}")
        return message
    raise AssertionError(f"{rule}; nothing arrived at {transport.address!r} within {within} s")


async def _expect(transport: Transport, expected: Sequence[bytes], rule: str) -> None:
    for n, want in enumerate(expected):
        got = await _receive(transport, f"{rule} (message {n} of {len(expected)})")
        if got != want:
            raise AssertionError(
                f"{rule}; message {n} arrived as {show(got)}, expected {show(want)}"
            )


async def _quiet(transport: Transport, rule: str) -> None:
    with trio.move_on_after(QUIET):
        try:
            message = await transport.receive()
        except Exception as exc:
            raise AssertionError(f"{rule}; receive raised {show_exc(exc)}") from exc
        raise AssertionError(f"{rule}; {transport.address!r} received {show(message)}")


async def _expect_raises(
    rule: str, error: type[Exception], op: Callable[[], Awaitable[object]]
) -> None:
    try:
        result = await op()
    except error:
        return
    except Exception as exc:
        raise AssertionError(
            f"{rule} must raise {error.__name__}; it raised {show_exc(exc)}"
        ) from exc
    raise AssertionError(f"{rule} must raise {error.__name__}; it returned {show(result)}")


# --- the checks -----------------------------------------------------------------------------


async def check_exchange_and_order(open_backend: ClusterBackendOpener) -> None:
    """Two endpoints exchange messages both ways; one sender's messages keep their order."""
    a_id, b_id = _ids("a", "b")
    async with (
        open_backend() as backend,
        _endpoint(backend, a_id) as a,
        _endpoint(backend, b_id) as b,
    ):
        if a.address == b.address:
            raise AssertionError(f"endpoints {a_id!r} and {b_id!r} share the address {a.address!r}")
        await _send(a, b, b"ping")
        await _expect(b, [b"ping"], "a message sent to an endpoint's address must arrive")
        await _send(b, a, b"pong")
        await _expect(a, [b"pong"], "a reply sent back must arrive")
        expected = [b"%d" % i for i in range(ORDERED_MESSAGES)]
        errors: list[str] = []
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:

            async def produce() -> None:
                try:
                    for message in expected:
                        await a.send(b.address, message)
                except Exception as exc:
                    errors.append(f"send raised {show_exc(exc)}")
                    nursery.cancel_scope.cancel()

            nursery.start_soon(produce)
            with trio.move_on_after(WAIT):
                try:
                    while len(got) < len(expected):
                        got.append(await b.receive())
                except Exception as exc:
                    errors.append(f"receive raised {show_exc(exc)}")
        rule = f"{ORDERED_MESSAGES} messages of one sender must arrive in order"
        if errors:
            raise AssertionError(f"{rule}; {errors[0]}")
        if got != expected:
            pairs = enumerate(zip(got, expected, strict=False))
            first = next((n for n, (g, e) in pairs if g != e), len(got))
            raise AssertionError(
                f"{rule}; {len(got)} arrived within {WAIT} s, the first wrong or missing "
                f"one is message {first}: {show(got[first : first + 3])}"
            )


async def check_across_backends(open_backend: ClusterBackendOpener) -> None:
    """Endpoints of two backends of one cluster (two silos) reach each other."""
    a_id, b_id = _ids("a", "b")
    async with (
        open_backend() as one,
        open_backend() as two,
        _endpoint(one, a_id) as a,
        _endpoint(two, b_id) as b,
    ):
        await _send(a, b, b"to two")
        await _expect(b, [b"to two"], "a message to an endpoint of another backend must arrive")
        await _send(b, a, b"to one")
        await _expect(a, [b"to one"], "the reply from another backend must arrive")


async def check_no_listener_drops(open_backend: ClusterBackendOpener) -> None:
    """A message to an address nobody listens on is dropped, without an error."""
    a_id, gone_id, b_id = _ids("a", "gone", "b")
    async with open_backend() as backend, _endpoint(backend, a_id) as a:
        async with _endpoint(backend, gone_id) as gone:
            address = gone.address
        await _send(a, address, b"nobody hears this")
        async with _endpoint(backend, b_id) as b:
            await _send(a, b, b"marker")
            await _expect(b, [b"marker"], "after a dropped message, sending must still work")
            await _quiet(b, "a message for another address must not arrive")
        async with _endpoint(backend, gone_id) as again:
            if again.address != address:
                raise AssertionError(
                    f"re-opening endpoint {gone_id!r} must give the same address {address!r}; "
                    f"it gave {again.address!r}"
                )
            await _send(a, again, b"now heard")
            await _expect(
                again,
                [b"now heard"],
                "a re-opened endpoint must receive, and not what was sent while it was closed",
            )


async def check_message_too_large(open_backend: ClusterBackendOpener) -> None:
    """Larger than ``max_message_size``: MessageTooLargeError, and nothing is sent."""
    a_id, b_id = _ids("a", "b")
    async with (
        open_backend() as backend,
        _endpoint(backend, a_id) as a,
        _endpoint(backend, b_id) as b,
    ):
        limit = a.max_message_size
        if not isinstance(limit, int) or limit < 1024:
            raise AssertionError(f"max_message_size must be an int >= 1024; it is {show(limit)}")
        too_large = b"x" * (limit + 1)
        for name, send in (("send", a.send), ("send_nowait", _async(a.send_nowait))):
            await _expect_raises(
                f"{name} of max_message_size + 1 bytes",
                MessageTooLargeError,
                lambda: send(b.address, too_large),  # noqa: B023 - awaited at once
            )
        largest = os.urandom(limit)
        await _send(a, b, largest)
        await _expect(
            b,
            [largest],
            "a message of max_message_size bytes must arrive (and an oversized one must not)",
        )


async def check_send_nowait(open_backend: ClusterBackendOpener) -> None:
    """``send_nowait`` delivers, in order with ``send``."""
    a_id, b_id = _ids("a", "b")
    async with (
        open_backend() as backend,
        _endpoint(backend, a_id) as a,
        _endpoint(backend, b_id) as b,
    ):
        expected = [b"nowait %d" % i for i in range(10)] + [b"awaited"]
        for message in expected[:-1]:
            try:
                a.send_nowait(b.address, message)
            except Exception as exc:  # trio.WouldBlock included: nothing else is queued
                raise AssertionError(
                    f"send_nowait of a few small messages must succeed; it raised {show_exc(exc)}"
                ) from exc
        await _send(a, b, expected[-1])
        await _expect(b, expected, "messages of send_nowait must arrive, in order with send's")


async def check_send_to_self(open_backend: ClusterBackendOpener) -> None:
    """An endpoint can send to its own address."""
    (a_id,) = _ids("self")
    async with open_backend() as backend, _endpoint(backend, a_id) as a:
        await _send(a, a, b"note to self")
        await _expect(a, [b"note to self"], "a message to the sender's own address must arrive")


async def check_arbitrary_bytes(open_backend: ClusterBackendOpener) -> None:
    """Messages are opaque bytes: empty, every byte value, protocol look-alikes."""
    a_id, b_id = _ids("a", "b")
    payloads = [
        b"",
        bytes(range(256)),
        bytes(range(255, -1, -1)) * 3,
        b"\r\n",
        b"PUB x 1\r\nX\r\n",
        b"\x00" * 100,
        "ünïcødé 🍕".encode(),
    ]
    async with (
        open_backend() as backend,
        _endpoint(backend, a_id) as a,
        _endpoint(backend, b_id) as b,
    ):
        payloads.append(os.urandom(min(10_000, a.max_message_size)))
        for payload in payloads:
            await _send(a, b, payload)
        await _expect(b, payloads, "every payload must arrive byte for byte")


async def check_odd_endpoint_ids(open_backend: ClusterBackendOpener) -> None:
    """Any endpoint id string works, and distinct ids get distinct addresses."""
    tag = new_tag()
    ids = [f"{name} {tag}" for name in ODD_IDS]
    async with open_backend() as backend, contextlib.AsyncExitStack() as stack:
        endpoints = [await stack.enter_async_context(_endpoint(backend, i)) for i in ids]
        addresses = {e.address for e in endpoints}
        if len(addresses) != len(endpoints):
            raise AssertionError(f"distinct endpoint ids must get distinct addresses: {addresses}")
        sender = endpoints[0]
        for endpoint_id, endpoint in zip(ids, endpoints, strict=True):
            await _send(sender, endpoint, endpoint_id.encode())
        for endpoint_id, endpoint in zip(ids, endpoints, strict=True):
            await _expect(
                endpoint,
                [endpoint_id.encode()],
                f"endpoint {endpoint_id!r} must get exactly the message sent to its address",
            )


# Addresses a silo must never reply to: the backend's other subjects, wildcards, junk.
NOT_ENDPOINTS: tuple[str, ...] = (
    "",
    "*",
    ">",
    "a b",
    "$JS.API.STREAM.PURGE.ORDERS",
    "$KV.grains-directory-dev.x",
    "_INBOX.x",
    "\x00",
)


async def check_endpoint_addresses(open_backend: ClusterBackendOpener) -> None:
    """``is_endpoint_address`` says yes to every endpoint's address (silos' and clients',
    odd ids included) and no to other subjects: replies go only there."""
    tag = new_tag()
    async with open_backend() as backend, contextlib.AsyncExitStack() as stack:
        endpoints = [
            await stack.enter_async_context(_endpoint(backend, f"{name} {tag}"))
            for name in ODD_IDS[:4]
        ]
        client = await stack.enter_async_context(
            backend.open_client_endpoint("web app", f"web app {tag}")
        )
        if client.address in {e.address for e in endpoints}:
            raise AssertionError(f"a client endpoint shares a silo's address {client.address!r}")
        judge = endpoints[0]
        for endpoint in [*endpoints, client]:
            if not judge.is_endpoint_address(endpoint.address):
                raise AssertionError(
                    f"is_endpoint_address({endpoint.address!r}) must be True: it is an "
                    "endpoint of the cluster (replies to it would be dropped)"
                )
        for address in (*NOT_ENDPOINTS, judge.address + " x", judge.address + ".>"):
            if judge.is_endpoint_address(address):
                raise AssertionError(
                    f"is_endpoint_address({address!r}) must be False: a silo must never "
                    "reply to an address that is not an endpoint"
                )


async def check_receive_waits_and_cancels(open_backend: ClusterBackendOpener) -> None:
    """``receive`` waits for a message; a cancelled ``receive`` loses nothing."""
    a_id, b_id = _ids("a", "b")
    async with (
        open_backend() as backend,
        _endpoint(backend, a_id) as a,
        _endpoint(backend, b_id) as b,
    ):
        await _quiet(b, "receive must wait while nothing was sent")
        got: list[object] = []
        async with trio.open_nursery() as nursery:

            async def wait() -> None:
                with trio.move_on_after(WAIT):
                    try:
                        got.append(await b.receive())
                    except Exception as exc:
                        got.append(exc)

            nursery.start_soon(wait)
            await trio.sleep(QUIET / 3)
            await _send(a, b, b"late")
        if got != [b"late"]:
            raise AssertionError(f"a waiting receive must return the message; it got {show(got)}")
        await _send(a, b, b"after cancel")
        await _expect(b, [b"after cancel"], "a message after a cancelled receive must arrive")


async def check_closed_endpoint(open_backend: ClusterBackendOpener) -> None:
    """After its block is left, an endpoint's receive and sends raise TransportClosedError."""
    a_id, b_id = _ids("a", "b")
    async with open_backend() as backend, _endpoint(backend, b_id) as b:
        async with _endpoint(backend, a_id) as a:
            pass
        closed = TransportClosedError
        await _expect_raises("receive on a closed endpoint", closed, a.receive)
        await _expect_raises("send from a closed endpoint", closed, lambda: a.send(b.address, b"x"))
        nowait = _async(lambda: a.send_nowait(b.address, b"x"))
        await _expect_raises("send_nowait from a closed endpoint", closed, nowait)
        await _quiet(b, "nothing sent by a closed endpoint may arrive")


def _async(fn: Callable[..., None]) -> Callable[..., Awaitable[None]]:
    async def call(*args: object) -> None:
        await trio.lowlevel.checkpoint()
        fn(*args)

    return call


TRANSPORT_CHECKS: Mapping[str, TransportCheck] = types.MappingProxyType(
    {
        "exchange_and_order": check_exchange_and_order,
        "endpoint_addresses": check_endpoint_addresses,
        "across_backends": check_across_backends,
        "no_listener_drops": check_no_listener_drops,
        "message_too_large": check_message_too_large,
        "send_nowait": check_send_nowait,
        "send_to_self": check_send_to_self,
        "arbitrary_bytes": check_arbitrary_bytes,
        "odd_endpoint_ids": check_odd_endpoint_ids,
        "receive_waits_and_cancels": check_receive_waits_and_cancels,
        "closed_endpoint": check_closed_endpoint,
    }
)
"""Every check by name, to run alone or parametrize a test over."""


async def check_transport(open_backend: ClusterBackendOpener) -> None:
    """Check that a clustering backend's transport keeps every rule of
    :class:`~trio_grains.Transport`.

    *open_backend* is called at least once per check, and must yield a backend of the same
    cluster each time. Raises :class:`AssertionError` naming the first rule broken (with
    a note naming the check). Each check is also available alone in
    :data:`TRANSPORT_CHECKS`.
    """
    for name, check in TRANSPORT_CHECKS.items():
        try:
            await check(open_backend)
        except AssertionError as exc:
            exc.add_note(f"(trio_grains.testing transport check {name!r})")
            raise
