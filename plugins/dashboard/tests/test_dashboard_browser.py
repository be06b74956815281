"""The page in a real (headless) browser: its JavaScript polls /api/stats, with the token
from its own URL, and draws the silo and its activations. Skipped without chromium
(``bash scripts/chromium.sh install`` installs Debian's).

The first test is a one-shot ``--dump-dom`` under virtual time. The others drive a live
chromium over the Chrome DevTools Protocol (a WebSocket, from Trio, with trio-websocket):
they watch the page redraw after grain calls, without reloading it, and see the token
refused and accepted."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_grains_dashboard import open_dashboard
from trio_websocket import WebSocketConnection, open_websocket_url

from trio_grains import (
    Grain,
    PreferLocalPlacement,
    ProviderConfig,
    SiloConfig,
    open_silo,
    placement,
)
from trio_grains.hookspecs import ServiceContext
from trio_grains.testing import open_test_cluster

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH: `bash scripts/chromium.sh install` (apt-get install chromium)",
)


# prefer-local: a cart called from a silo activates on that silo, so the per-silo count
# the page shows is deterministic in a cluster
@placement(PreferLocalPlacement())
class CartGrain(Grain):
    async def add(self, item: str) -> None:
        pass


async def chromium(tmp_path: Path, *args: str) -> str:
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        # virtual time: the page's timers run (several polls) without waiting for real
        "--virtual-time-budget=3000",
        "--window-size=1280,900",
        *args,
    ]
    with trio.fail_after(60):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
    return done.stdout.decode()


async def test_the_page_shows_the_silo_and_its_activations(tmp_path: Path) -> None:
    memory = ProviderConfig(provider="memory", options={"partitions": 2})
    config = SiloConfig(name="silo-a", metrics=True, streams={"default": memory})
    async with open_silo(config, grains=[CartGrain]) as silo:
        for i in range(30):
            await silo.get_grain(CartGrain, f"c{i % 3}").add("apple")
        context = ServiceContext(name="dashboard", silo=silo)
        options = {"port": 0, "token": "s3cret"}
        async with open_dashboard(context, options) as dashboard:
            url = f"{dashboard.url}?token=s3cret"
            dom = await chromium(tmp_path, "--dump-dom", url)
            shot = tmp_path / "dashboard.png"
            await chromium(tmp_path, f"--screenshot={shot}", url)
    assert 'id="state" class="pill live"' in dom, dom[:2000]
    assert re.search(r'<tr data-silo="silo-a">.*?\(this\)', dom)
    assert re.search(
        r'<tr data-grain-type="cart"><td class="mono">cart</td><td class="num">3</td>', dom
    )
    assert '<tr data-method="cart.add">' in dom
    assert '<table data-provider="default">' in dom
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- a live chromium, driven over the Chrome DevTools Protocol ------------------------------

WAIT = 60  # seconds: generous, for a slow shared machine
POLL = 0.2


class CDPError(Exception):
    """A CDP command answered with an error."""


class CDP:
    """A minimal CDP client on the browser's WebSocket: one command at a time, each with
    the next id; the answer with that id is its result, events in between are ignored."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._next_id = 0

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await self._ws.send_message(json.dumps(message))
        while True:
            reply = json.loads(await self._ws.get_message())
            if reply.get("id") != self._next_id:
                continue  # an event (or a late answer): not ours
            if "error" in reply:
                raise CDPError(f"{method}: {reply['error']}")
            result: dict[str, Any] = reply["result"]
            return result

    async def open_page(self, url: str) -> str:
        """A new tab on *url*, attached (flattened): its session id."""
        target = await self.send("Target.createTarget", {"url": url})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        session: str = attached["sessionId"]
        return session

    async def evaluate(self, session: str, expression: str) -> Any:
        """*expression*'s value in the page (JSON-able values only)."""
        answer = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True},
            session=session,
        )
        if "exceptionDetails" in answer:
            raise CDPError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")


async def _devtools_url(
    stderr: trio.abc.ReceiveStream, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Read chromium's stderr until ``DevTools listening on ws://...``, report the URL,
    then keep draining it (a full pipe would block chromium)."""
    seen = b""
    started = False
    async for chunk in stderr:
        if started:
            continue
        seen += chunk
        found = re.search(rb"DevTools listening on (ws://\S+)", seen)
        if found:
            started = True
            task_status.started(found.group(1).decode())
    if not started:
        raise RuntimeError(f"chromium exited before listening:\n{seen.decode(errors='replace')}")


@contextlib.asynccontextmanager
async def open_browser(tmp_path: Path) -> AsyncIterator[CDP]:
    """A headless chromium for the block, driven over CDP; killed (with its children, its
    own process group) when the block ends."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'cdp-profile'}",
        "--remote-debugging-port=0",
        "about:blank",
    ]
    process = await trio.lowlevel.open_process(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with trio.open_nursery() as nursery:
            assert process.stderr is not None
            with trio.fail_after(WAIT):
                url = await nursery.start(_devtools_url, process.stderr)
            async with open_websocket_url(url, max_message_size=16 * 1024 * 1024) as ws:
                yield CDP(ws)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            process.terminate()
            with trio.move_on_after(10):
                await process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever of its group is left
            await process.wait()


PAGE_STATE = """JSON.stringify({
  state: document.getElementById("state")?.className ?? null,
  silos: [...document.querySelectorAll("tr[data-silo]")].map(row => row.dataset.silo).sort(),
  carts: document.querySelector('tr[data-grain-type="cart"] td.num')?.textContent ?? null,
  text: document.body ? document.body.innerText : "",
})"""


async def wait_for_page(cdp: CDP, session: str, what: str, ok: Any) -> dict[str, Any]:
    """Poll the page's state until ``ok(state)``; fail with the last state seen."""
    state: dict[str, Any] = {}
    try:
        with trio.fail_after(WAIT):
            while True:
                with contextlib.suppress(CDPError):  # e.g. no document yet
                    value = await cdp.evaluate(session, PAGE_STATE)
                    if isinstance(value, str):
                        state = json.loads(value)
                        if ok(state):
                            return state
                await trio.sleep(POLL)
    except trio.TooSlowError:
        pytest.fail(f"the page never showed {what}; last seen: {state}")


async def test_the_live_page_updates_after_calls(tmp_path: Path) -> None:
    config = SiloConfig(metrics=True)
    async with open_test_cluster(2, grains=[CartGrain], config=config) as cluster:
        silo, other = cluster.silos
        both = sorted([silo.silo_id, other.silo_id])
        for i in range(3):
            await silo.get_grain(CartGrain, f"c{i}").add("apple")
        # the page shows the activations of the silo it runs beside
        assert silo.statistics().activations_by_type.get("cart") == 3
        context = ServiceContext(name="dashboard", silo=silo)
        options = {"port": 0, "token": "s3cret"}  # the page polls every second: no option
        async with open_dashboard(context, options) as dashboard, open_browser(tmp_path) as cdp:
            session = await cdp.open_page(f"{dashboard.url}?token=s3cret")
            shown = await wait_for_page(
                cdp,
                session,
                "both silos and 3 carts",
                lambda s: s["silos"] == both and s["carts"] == "3",
            )
            assert shown["state"] == "pill live"
            for i in range(3, 5):
                await silo.get_grain(CartGrain, f"c{i}").add("pear")
            assert silo.statistics().activations_by_type.get("cart") == 5
            # no reload: the page's own polling redraws it
            await wait_for_page(
                cdp, session, "5 carts", lambda s: s["silos"] == both and s["carts"] == "5"
            )


async def test_the_browser_needs_the_token_off_loopback(tmp_path: Path) -> None:
    async with open_silo(SiloConfig(name="silo-a"), grains=[CartGrain]) as silo:
        await silo.get_grain(CartGrain, "bob").add("apple")
        context = ServiceContext(name="dashboard", silo=silo)
        # 0.0.0.0 is not loopback, so the options must carry a token (checked against the
        # address it listens on); once set, every request needs it, 127.0.0.1's included
        options = {"host": "0.0.0.0", "port": 0, "token": "s3cret"}
        async with open_dashboard(context, options) as dashboard, open_browser(tmp_path) as cdp:
            url = f"http://127.0.0.1:{dashboard.port}/"
            session = await cdp.open_page(url)
            refused = await wait_for_page(
                cdp, session, "the refusal", lambda s: "401 Unauthorized" in s["text"]
            )
            assert "this dashboard needs its token" in refused["text"]
            assert refused["state"] is None  # not the dashboard page
            await cdp.send("Page.navigate", {"url": f"{url}?token=s3cret"}, session=session)
            # the same tab, sent to the URL with the token: the page and its polls get through
            await wait_for_page(
                cdp,
                session,
                "the dashboard, live",
                lambda s: s["state"] == "pill live" and s["carts"] == "1",
            )
