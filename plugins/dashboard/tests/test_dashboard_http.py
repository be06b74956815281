"""The dashboard service over real HTTP, beside real silos: /metrics, /api/stats, the page,
the token, and the options' errors."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import trio
from _dashboard_http import http_get
from trio_grains_dashboard import CONTENT_TYPE, Dashboard, DashboardOptions, open_dashboard

from trio_grains import ConfigError, Grain, ProviderConfig, Silo, SiloConfig, open_silo
from trio_grains.hookspecs import ServiceContext
from trio_grains.testing import open_test_cluster


class CartGrain(Grain):
    async def add(self, item: str) -> int:
        return len(item)

    async def fail(self) -> None:
        raise ValueError("no")


def config(**options: Any) -> SiloConfig:
    dashboard = ProviderConfig(provider="dashboard", options={"port": 0, **options})
    memory = ProviderConfig(provider="memory", options={"partitions": 2})
    return SiloConfig(
        name="silo-a", metrics=True, services={"dash": dashboard}, streams={"default": memory}
    )


@contextlib.asynccontextmanager
async def serving(
    caplog: pytest.LogCaptureFixture, **options: Any
) -> AsyncIterator[tuple[Silo, int]]:
    """A silo started with the dashboard in its configuration; its port from the log."""
    caplog.set_level(logging.INFO, logger="trio_grains.dashboard")
    async with open_silo(config(**options), grains=[CartGrain]) as silo:
        (url,) = [
            r.args[2]
            for r in caplog.records
            if r.name == "trio_grains.dashboard" and isinstance(r.args, tuple)
        ]
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/", str(url))
        assert match, url
        yield silo, int(match[1])


async def make_calls(silo: Silo) -> None:
    for i in range(40):
        await silo.get_grain(CartGrain, f"c{i % 4}").add("apple")
    with pytest.raises(ValueError, match="no"):
        await silo.get_grain(CartGrain, "c0").fail()


async def test_metrics_serve_the_silo_figures_in_the_text_format(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving(caplog) as (silo, port):
        await make_calls(silo)
        reply = await http_get(port, "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"] == CONTENT_TYPE
    assert reply.headers["cache-control"] == "no-store"
    lines = reply.text.splitlines()
    assert 'trio_grains_activations{silo="silo-a"} 4' in lines
    assert 'trio_grains_grain_activations{silo="silo-a",grain_type="cart"} 4' in lines
    labels = 'silo="silo-a",grain_type="cart"'
    assert f'trio_grains_grain_calls_total{{{labels},method="add"}} 40' in lines
    assert f'trio_grains_grain_call_errors_total{{{labels},method="fail"}} 1' in lines
    # calls 1 and 17 and 33 of `add` are timed (one in 16), and `fail`'s first
    assert f'trio_grains_grain_call_duration_seconds_count{{{labels},method="add"}} 3' in lines
    inf = 'le="+Inf"'
    assert (
        f'trio_grains_grain_call_duration_seconds_bucket{{{labels},method="add",{inf}}} 3' in lines
    )
    assert 'trio_grains_stream_owned_partitions{silo="silo-a",provider="default"} 2' in lines
    assert 'trio_grains_membership_changes_total{silo="silo-a"} 0' in lines


async def test_api_stats_serves_the_figures_as_json(caplog: pytest.LogCaptureFixture) -> None:
    async with serving(caplog) as (silo, port):
        await make_calls(silo)
        reply = await http_get(port, "/api/stats")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    stats = reply.json()
    assert stats["silo"]["name"] == "silo-a"
    assert stats["silo"]["activations_by_type"] == {"cart": 4}
    assert stats["membership"] is None  # a silo that runs alone
    methods = {(m["grain_type"], m["method"]): m for m in stats["metrics"]["methods"]}
    add = methods["cart", "add"]
    assert (add["calls"], add["errors"], add["latency"]["count"]) == (40, 0, 3)
    assert 0 < add["latency"]["p50"] <= add["latency"]["p99"]
    assert methods["cart", "fail"]["errors"] == 1
    (stream,) = stats["streams"]
    assert stream["provider"] == "default"
    assert stream["owned_partitions"] == [0, 1]
    assert stream["lag"] == {"0": None, "1": None}  # the memory adapter reports none


async def test_the_page_is_served_and_needs_nothing_from_elsewhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving(caplog) as (_, port):
        reply = await http_get(port, "/")
        missing = await http_get(port, "/nope")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/html")
    assert "trio-grains dashboard" in reply.text
    assert 'fetch("api/stats"' in reply.text
    # no CDN, no download: nothing is loaded from another origin
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", reply.text)
    assert missing.status == 404


async def test_with_a_token_every_request_needs_it(caplog: pytest.LogCaptureFixture) -> None:
    async with serving(caplog, token="s3cret") as (_, port):
        refused = [await http_get(port, path) for path in ("/", "/metrics", "/api/stats")]
        wrong = await http_get(port, "/metrics", {"Authorization": "Bearer nope"})
        wrong_query = await http_get(port, "/metrics?token=nope")
        by_header = await http_get(port, "/metrics", {"Authorization": "Bearer s3cret"})
        by_query = await http_get(port, "/api/stats?token=s3cret")
        page = await http_get(port, "/?token=s3cret")
    assert [r.status for r in refused] == [401, 401, 401]
    assert refused[0].headers["www-authenticate"].startswith("Bearer")
    assert "token" in refused[0].text
    assert (wrong.status, wrong_query.status) == (401, 401)
    assert (by_header.status, by_query.status, page.status) == (200, 200, 200)
    assert "trio_grains_activations" in by_header.text
    # the page passes the token on to its API calls
    assert '"Bearer " + token' in page.text


async def _status_for_host(port: int, host: str | None) -> tuple[int, str]:
    """``GET /api/stats`` with this ``Host`` header (None: no Host at all, in HTTP/1.0,
    which allows that: HTTP/1.1 servers refuse such requests themselves)."""
    lines = [f"GET /api/stats HTTP/1.{0 if host is None else 1}", "Connection: close"]
    if host is not None:
        lines.insert(1, f"Host: {host}")
    with trio.fail_after(10):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
            data = bytearray()
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body.decode("utf-8", "replace")


async def test_without_a_token_only_loopback_host_names_are_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Against DNS rebinding: a page of evil.example whose name now points at 127.0.0.1
    reaches the dashboard with ``Host: evil.example``, and gets nothing."""
    async with serving(caplog) as (_, port):
        answered = {
            host: await _status_for_host(port, host)
            for host in (
                f"127.0.0.1:{port}",
                "127.0.0.1",
                f"localhost:{port}",
                "LocalHost",
                f"[::1]:{port}",
                "[::1]",
                "127.0.0.2:80",
            )
        }
        refused = {
            host: await _status_for_host(port, host)
            for host in (
                f"evil.example:{port}",
                "evil.example",
                "localhost.evil.example",
                "127.0.0.1.nip.io",
                f"10.0.0.1:{port}",
                "[::ffff:1.2.3.4]",
                "localhost:evil",
                "[::1]x",
                "",
                None,
            )
        }
    assert {host: status for host, (status, _) in answered.items()} == dict.fromkeys(answered, 200)
    assert {host: status for host, (status, _) in refused.items()} == dict.fromkeys(refused, 421)
    assert "localhost, 127.0.0.1 or [::1]" in refused[f"evil.example:{port}"][1]
    assert "give it a token" in refused["evil.example"][1]


async def test_with_a_token_any_host_name_may_be_used(caplog: pytest.LogCaptureFixture) -> None:
    """The token is what a rebinding page cannot know: a proxy's name is fine with it."""
    async with serving(caplog, token="s3cret") as (_, port):
        by_name = await http_get(port, "/api/stats?token=s3cret")
        status, _ = await _status_for_host(port, "dashboard.example")
    assert by_name.status == 200
    assert status == 401  # the token is still needed, whatever the name


def test_the_token_is_never_printed() -> None:
    options = DashboardOptions.from_options("dash", {"token": "s3cret-token"})
    assert options.token == "s3cret-token"
    assert "s3cret-token" not in repr(options)
    assert "token='***'" in repr(options)
    assert "token=None" in repr(DashboardOptions())
    with pytest.raises(ConfigError, match="got a value of type int") as info:
        DashboardOptions.from_options("dash", {"token": 918273645})
    assert "918273645" not in str(info.value)


async def test_a_non_loopback_host_without_token_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match=r"services\.dash.*0\.0\.0\.0.*without a token.*token ="):
        async with open_silo(config(host="0.0.0.0"), grains=[CartGrain]):
            pass


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"port": 70000}, r"port must be an integer from 0 to 65535"),
        ({"port": "8080"}, r"port must be an integer"),
        ({"host": ""}, r"host must be a host name"),
        ({"token": ""}, r"token must be a non-empty string"),
        ({"prot": 1}, r"unknown option\(s\) 'prot'.*host, port, token"),
    ],
)
async def test_bad_options_are_config_errors_naming_the_key(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        async with open_silo(config(**options), grains=[CartGrain]):
            pass


async def test_a_port_in_use_is_one_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    async with serving(caplog) as (_, port):
        with pytest.raises(ConfigError, match=rf"cannot listen on 127\.0\.0\.1:{port}.*port"):
            async with open_silo(
                SiloConfig(
                    services={"dash": ProviderConfig(provider="dashboard", options={"port": port})}
                ),
                grains=[CartGrain],
            ):
                pass


async def test_stopping_the_silo_stops_the_server(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(5):
        async with serving(caplog) as (_, port):
            assert (await http_get(port, "/metrics")).status == 200
    with pytest.raises(OSError, match="connect"):
        await trio.open_tcp_stream("127.0.0.1", port)


@contextlib.asynccontextmanager
async def dashboard_of(silo: Silo, **options: Any) -> AsyncIterator[Dashboard]:
    opts: Mapping[str, Any] = {"port": 0, **options}
    async with open_dashboard(ServiceContext(name="dashboard", silo=silo), opts) as dashboard:
        yield dashboard


async def test_a_clustered_silo_shows_the_membership_view() -> None:
    async with (
        open_test_cluster(2, grains=[CartGrain], config=SiloConfig(metrics=True)) as cluster,
        dashboard_of(cluster.silos[0]) as dashboard,
    ):
        assert dashboard.url == f"http://127.0.0.1:{dashboard.port}/"
        for i in range(8):
            await cluster.get_grain(CartGrain, f"k{i}").add("x")
        stats = (await http_get(dashboard.port, "/api/stats")).json()
        metrics = (await http_get(dashboard.port, "/metrics")).text
        silo_ids = sorted(s.silo_id for s in cluster.silos)
    silos = stats["membership"]["silos"]
    assert sorted(s["silo_id"] for s in silos) == silo_ids
    assert {s["status"] for s in silos} == {"active"}
    assert all(s["address"] for s in silos)
    assert stats["silo"]["active_silos"] == 2
    assert 'trio_grains_active_silos{silo="silo-0"} 2' in metrics.splitlines()
