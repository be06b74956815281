"""The harness itself works: a raw request gets its reply, the victims answer."""

from __future__ import annotations

from _hostile import OK, HostileClient, HostileEnv
from _hostile_grains import CounterGrain, VaultGrain

from trio_grains import Client


async def test_a_raw_request_is_answered_like_a_call(
    env: HostileEnv, hostile: HostileClient, victim_client: Client
) -> None:
    answer = await hostile.call(env.silo_subject(), "hcounter/raw", "add", {"n": 2})
    assert answer.status == OK
    assert answer.value == 2
    assert answer.silo_id == env.silo.silo_id
    assert await victim_client.get_grain(CounterGrain, "raw").get() == 2
    await env.silo.get_grain(VaultGrain, "v").put("s3cret")
    assert await env.stored(env.state_subject("hvault/v", "vault")) != b""
    await env.publish_items("k", range(3))
    assert await env.stream_messages() == 3
    await env.assert_all_answer()
