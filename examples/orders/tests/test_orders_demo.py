"""End to end, as a user runs it: ``trio-grains demo orders`` (with a silo killed mid-run,
and interrupted with Ctrl-C), and silo and client as separate processes driven by the
``trio-grains`` command line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import trio
from trio_grains_nats.testing import free_port
from trio_grains_orders._processes import ClusterLayout, run_silos

DEMO = [sys.executable, "-m", "trio_grains.cli", "demo", "orders"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of ours would still answer; the silos are children of the demo, not ours
    return True


def test_demo_with_a_silo_killed_processes_every_order_once_in_effect() -> None:
    out = subprocess.run(
        [*DEMO, "--orders", "1500", "--customers", "30", "--partitions", "4", "--kill-silo"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert re.search(r"killed silo-2 \(pid \d+\) at [\d,]+ processed with SIGKILL", text), text
    once = "exactly once in effect: 1,500/1,500 orders processed, 0 missing, 0 counted twice"
    assert once in text
    assert re.search(r"latency, publish to processed: p50 [\d,]+ ms, p90 .* max [\d,]+ ms", text)
    # --rate auto: the first half unpaced measures the capacity, the rest runs at half of it
    assert re.search(
        r"capacity: [\d,]+ orders/s sustained \(750 orders unpaced\); the other 750 at half "
        r"of it, [\d,]+ orders/s",
        text,
    )
    assert re.search(
        r"paced at [\d,]+ orders/s \(half the capacity\): 750/750 orders processed in [\d.]+ "
        r"s: [\d,]+ orders/s",
        text,
    )
    cpu = r"cpu per order: ([\d,]+ us \(silos [\d,]+, client|client [\d,]+ us \(silos and nats)"
    assert len(re.findall(cpu, text)) == 2, text  # one per phase
    assert "dead letter bad-amount: amount 99 is not the sum of the lines" in text
    assert "dead letter bad-customer: no customer" in text
    assert re.search(r"OK: .* although silo-2 \(pid \d+\) was killed$", text.rstrip()), text
    workdir = re.search(r"temporary files in (\S+)\)", text)
    assert workdir is not None
    assert not Path(workdir.group(1)).exists()


def test_ctrl_c_stops_every_process_and_removes_the_temporary_files() -> None:
    demo = subprocess.Popen(
        [*DEMO, "--orders", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # our SIGINT goes to the demo alone, as a terminal's would
    )
    try:
        assert demo.stdout is not None
        lines = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            lines.append(line)
            if " active" in line or not line:
                break
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", lines[-1])]
        assert len(pids) == 2, lines
        workdir = Path(re.findall(r"temporary files in (\S+)\)", lines[0])[0])
        assert workdir.exists()
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=120)
        assert demo.returncode == 130, "".join(lines) + out + err
        assert "interrupted: every process stopped, temporary files removed" in err
        assert not workdir.exists()
        assert not any(_alive(pid) for pid in pids)
    finally:
        if demo.poll() is None:  # a failed assertion above: still let it clean up
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                demo.kill()  # leaves its children: they run in sessions of their own
                demo.wait()


def test_demo_with_the_dashboard_serves_metrics_until_ctrl_c() -> None:
    port = free_port()
    demo = subprocess.Popen(
        # --rate 200: one paced phase (no capacity run), 1.5 s
        [*DEMO, "--orders", "300", "--customers", "10", "--rate", "200", "--dashboard", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert demo.stdout is not None
        lines = []
        while not lines or "keeps running" not in lines[-1]:
            line = demo.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        text = "".join(lines)
        assert f"dashboard: http://127.0.0.1:{port}/" in text
        assert "OK: every order was processed exactly once in effect" in text
        assert "capacity:" not in text
        assert re.search(r"paced at 200 orders/s: 300/300 orders processed in [\d.]+ s", text)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        calls = re.findall(
            r'trio_grains_grain_calls_total\{silo="silo-1",grain_type="order",'
            r'method="on_stream_item"\} (\d+)',
            metrics,
        )
        assert calls, metrics[:2000]
        assert int(calls[0]) > 0  # silo-1 processed some of the orders
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=60)
        assert demo.returncode == 130, err
    finally:
        if demo.poll() is None:
            demo.kill()
        demo.communicate()


def test_demo_options_are_checked_with_one_clear_line() -> None:
    out = subprocess.run(
        [*DEMO, "--kill-silo", "--silos", "1"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 2
    assert "--kill-silo needs --silos 2 or more" in out.stderr
    assert "Traceback" not in out.stderr


async def _cli(workdir: Path, *args: str) -> str:
    """Run ``trio-grains client --config client.toml ARGS`` as a process; its stdout."""
    done = await trio.run_process(
        [sys.executable, "-m", "trio_grains.cli", "client", "--config", "client.toml", *args],
        cwd=workdir,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def test_silo_and_client_processes_through_the_command_line(
    nats_url: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    layout = ClusterLayout(
        servers=nats_url,
        cluster_id=f"e2e{tag}",
        stream=f"ORDERS{tag}",
        prefix=f"o{tag}",
        bucket=f"state{tag}",
        partitions=2,
    )
    (tmp_path / "client.toml").write_text(layout.client_toml())
    order = {
        "id": "o1",
        "customer": "ann",
        "lines": [{"sku": "tea", "quantity": 2, "price": 350}],
        "amount": 700,
        "created": "2026-11-22T12:00:00+00:00",
    }
    bad = {**order, "id": "o2", "amount": -1}
    async with run_silos(layout, tmp_path, 1):
        assert "active" in await _cli(tmp_path, "--wait", "30", "silos")
        await _cli(tmp_path, "publish", "orders", "o1", json.dumps(order))
        await _cli(tmp_path, "publish", "orders", "o2", json.dumps(bad))
        with trio.fail_after(30):
            while True:
                status = json.loads(await _cli(tmp_path, "call", "order/o1", "status"))
                letters = json.loads(await _cli(tmp_path, "call", "deadletter/o2", "reasons"))
                if status["status"] == "processed" and letters:
                    break
                await trio.sleep(0.2)
        assert status["customer"] == "ann"
        assert status["amount"] == 700
        assert status["deliveries"] == 1
        totals = json.loads(await _cli(tmp_path, "call", "customer/ann", "totals"))
        assert totals == {"orders": 1, "total": 700, "order_ids": ["o1"]}
        assert "amount -1 is not positive" in letters[0]
