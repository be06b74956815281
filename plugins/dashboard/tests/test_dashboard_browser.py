"""The page in a real (headless) browser: its JavaScript polls /api/stats, with the token
from its own URL, and draws the silo and its activations. Skipped without chromium
(``bash scripts/chromium.sh install`` installs Debian's)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import trio
from trio_grains_dashboard import open_dashboard

from trio_grains import Grain, ProviderConfig, SiloConfig, open_silo
from trio_grains.hookspecs import ServiceContext

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH: `bash scripts/chromium.sh install` (apt-get install chromium)",
)


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
