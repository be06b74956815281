"""Property-based fuzzing of the envelope decoder: no input raises anything but the
documented :class:`SerializationError`, and what it accepts is within its limits."""

from __future__ import annotations

import math
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_grains import SerializationError
from trio_grains._cluster import envelope as env

LIMITS = env.Limits(lambda address: address.startswith("grains.dev.silo."), 256, 1280)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=300)
    | st.binary(max_size=300)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
reply_addresses = st.sampled_from(
    ["", "grains.dev.silo.a", "$JS.API.STREAM.PURGE.X", "x" * 300, "grains.dev.silo." + "y" * 300]
)
# Near-valid envelopes: the right kinds and lengths, any field values.
requests = st.tuples(
    st.sampled_from([env.REQUEST, True, 0.0]),
    values,
    reply_addresses | values,
    st.text(max_size=40) | values,
    st.text(max_size=40) | values,
    st.binary(max_size=40) | values,
    st.none() | st.floats() | values,
    st.integers(-5, 100) | values,
    st.integers(-5, 5) | values,
    st.none() | values,
).map(list)
replies = st.tuples(
    st.sampled_from([env.REPLY, 1.0]), values, values, st.binary(max_size=40) | values, values
).map(list)
cancels = st.tuples(st.sampled_from([env.CANCEL, "2"]), values, reply_addresses | values).map(list)


def _decode_or_refuse(data: bytes) -> env.Request | env.Reply | env.Cancel | None:
    try:
        return env.decode(data, LIMITS)
    except SerializationError:
        return None


def _check_accepted(message: env.Request | env.Reply | env.Cancel | None) -> None:
    if message is None:
        return
    assert type(message.call_id) is int
    assert 0 < message.call_id < 2**64
    if isinstance(message, env.Request):
        assert message.reply_to == "" or LIMITS.is_endpoint_address(message.reply_to)
        assert len(message.reply_to) <= LIMITS.max_subject_length
        assert isinstance(message.grain_id, str)
        assert 0 < len(message.grain_id) <= LIMITS.max_grain_id_length
        assert isinstance(message.args, bytes)
        assert message.timeout is None or (
            type(message.timeout) in (int, float)
            and math.isfinite(message.timeout)
            and message.timeout >= 0
        )
        assert type(message.hops) is int
        assert type(message.flags) is int
    elif isinstance(message, env.Reply):
        assert message.status in (env.OK, env.ERROR, env.REROUTE)
        assert type(message.status) is int
        assert isinstance(message.payload, bytes)
        assert isinstance(message.silo_id, str)
    else:
        assert LIMITS.is_endpoint_address(message.reply_to)


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_decode_or_raise_serialization_error(data: bytes) -> None:
    _check_accepted(_decode_or_refuse(data))


@FUZZ
@given(requests | replies | cancels | values)
def test_near_valid_envelopes_decode_or_raise_serialization_error(fields: Any) -> None:
    try:
        data = msgpack.packb(fields, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return  # not representable in msgpack: cannot arrive
    _check_accepted(_decode_or_refuse(data))


def test_deep_nesting_and_large_junk_raise_serialization_error() -> None:
    for data in (
        b"\x91" * 100_000 + b"\x90",  # [[[[...]]]] 100k deep
        b"\xdd\xff\xff\xff\xff",  # an array that claims 4 billion items
        bytes(1024 * 1024),  # 1 MiB of zeros: a valid msgpack 0, then trailing data
    ):
        assert _decode_or_refuse(data) is None


def test_a_valid_request_round_trips() -> None:
    data = env.encode_request(
        2**64 - 1, "grains.dev.silo.a", "cart/x", "add", b"\x80", 1.5, 3, env.LOCATE, None
    )
    request = env.decode(data, LIMITS)
    assert isinstance(request, env.Request)
    assert (request.call_id, request.timeout, request.hops, request.flags) == (
        2**64 - 1,
        1.5,
        3,
        env.LOCATE,
    )
