"""cluster: grain calls between silo processes over NATS, and failover after a SIGKILL.

Every silo, the caller and the floor's two ends are processes of their own
(``_cluster_proc.py``) on one nats-server started here (JetStream on, data in a temporary
directory). The parent only orchestrates: it sends JSON commands on the children's stdin,
reads their JSON answers, and kills every child in a ``finally``.

* ``calls``: a caller silo (which does not host ``EchoGrain``) makes N calls
  ``echo(<64 bytes>)`` with 100 in flight (100 tasks, one grain each) on grains that all
  live on a second silo process. Floor: our NATS connection (``trio_grains_nats``) doing
  raw request/reply between two processes, 100 requests in flight, 64-byte payloads, the
  responder echoing each request. calls/s, target ratio >= 0.7.
* ``activations``: new grains activated per second across a 2-silo cluster: one of two
  silo processes, both hosting ``EchoGrain``, makes N first calls on new keys (100 in
  flight), so random placement spreads the activations over both, each registering in the
  cluster's grain directory (the NATS clustering provider's default directory). Floor: one
  silo's local activation rate, as the ``local-calls`` mode ``activation-rate`` measures it
  (N first calls one after another on a silo of its own, no clustering), in a child process
  of the same kind. activations/s, target ratio >= 0.25.
* ``failover``: seconds from SIGKILL of a silo process to the first successful call on one
  of its grains from a surviving caller silo (default ``heartbeat_interval`` /
  ``dead_after``). ``ours`` = seconds (median of the rounds), ``floor`` = the configured
  ``dead_after``, so ``ratio`` = failover time in units of ``dead_after`` (lower is better).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any

import trio
from _runner import Emit, Options, benchmark, best_of, log, result
from _usage import cpu_seconds, default_grain_directory, msg_counts, server_pid
from trio_grains_nats.testing import free_port, run_nats_server

PROC_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_cluster_proc.py")
IN_FLIGHT = 100
CALLS = (20_000, 1_000)  # (full, quick)
WARM_CALLS = (5_000, 500)
FAILOVER_ROUNDS = (3, 1)
ACTIVATIONS = (20_000, 500)  # (full, quick): per round, ours and the floor
WARM_ACTIVATIONS = (1_000, 100)


class Child:
    """A ``_cluster_proc.py`` process: JSON commands in, JSON lines out."""

    def __init__(self, role: str, *args: str) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, PROC_SCRIPT, role, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        self.ready = self.read(60)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float = 120) -> dict[str, Any]:
        assert self.proc.stdout is not None
        if not self._sel.select(timeout):
            raise TimeoutError(f"{self.role} (pid {self.pid}) said nothing for {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.role} (pid {self.pid}) exited: {self.proc.wait()}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.role}: {answer['error']}")
        return answer

    def ask(self, timeout: float = 120, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.read(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._sel.close()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()

    def stop(self) -> None:
        """End of stdin: the child leaves its silo cleanly; killed if it takes too long."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                pass
        self.kill()


def _start(stack: ExitStack, role: str, *args: str) -> Child:
    child = Child(role, *args)
    stack.callback(child.kill)  # runs even if a later step fails
    return child


async def _in_thread(fn: Callable[[], float]) -> float:
    return await trio.to_thread.run_sync(fn)


def _best_of(
    opts: Options, ours: Callable[[], float], floor: Callable[[], float], label: str = "calls"
) -> tuple[float, float]:
    """The runner's alternating best-of, for blocking functions."""

    def wrap(fn: Callable[[], float]) -> Callable[[], Awaitable[float]]:
        return lambda: _in_thread(fn)

    return trio.run(best_of, opts.rounds, wrap(ours), wrap(floor), label)


# --- calls ----------------------------------------------------------------------------------


def _calls(opts: Options, emit: Emit, url: str, cluster_id: str) -> None:
    n = CALLS[1 if opts.quick else 0]
    warm = WARM_CALLS[1 if opts.quick else 0]
    with ExitStack() as stack:
        host = _start(stack, "host", url, cluster_id, "host")
        caller = _start(stack, "caller", url, cluster_id, "caller")
        host_id = host.ready["ready"]
        caller.ask(silo=host_id, cmd="wait_silo")
        where = caller.ask(cmd="warm", prefix="e", keys=IN_FLIGHT)["where"]
        assert where == {host_id: IN_FLIGHT}, f"grains must all live on the host: {where}"
        responder = _start(stack, "responder", url)
        requester = _start(stack, "requester", url)
        # warm-up of both, then the measured rounds
        caller.ask(cmd="calls", prefix="e", n=warm, in_flight=IN_FLIGHT)
        requester.ask(cmd="requests", n=warm, in_flight=IN_FLIGHT)
        crossed = 0

        def ours() -> float:
            nonlocal crossed
            host_cpu = host.ask(cmd="stats")["cpu"]
            answer = caller.ask(cmd="calls", prefix="e", n=n, in_flight=IN_FLIGHT)
            host_cpu = host.ask(cmd="stats")["cpu"] - host_cpu
            crossed += answer["sent"]
            log(
                f"    cpu per call: caller {answer['cpu'] / n * 1e6:.1f} us, "
                f"host {host_cpu / n * 1e6:.1f} us"
            )
            return float(answer["seconds"])

        def floor() -> float:
            answer = requester.ask(cmd="requests", n=n, in_flight=IN_FLIGHT)
            log(f"    cpu per request: requester {answer['cpu'] / n * 1e6:.1f} us")
            return float(answer["seconds"])

        t_ours, t_floor = _best_of(opts, ours, floor)
        # the calls really crossed: every one was a message, and none activated here
        assert crossed >= n * opts.rounds, (crossed, n * opts.rounds)
        caller_stats = caller.ask(cmd="stats")
        host_stats = host.ask(cmd="stats")
        assert caller_stats["activations_created"] == 0, caller_stats
        assert host_stats["activations_created"] == IN_FLIGHT, host_stats
        log(f"  caller {caller_stats}, host {host_stats}")
        emit(
            result(
                "cluster",
                "calls",
                n / t_ours,
                n / t_floor,
                unit="calls/s",
                target=">= 0.7 (ratio)",
                n=n,
                in_flight=IN_FLIGHT,
                payload_bytes=64,
            )
        )
        for child in (requester, responder, caller, host):
            child.stop()


# --- activations ----------------------------------------------------------------------------


def _activations(opts: Options, emit: Emit, url: str, monitor_port: int, cluster_id: str) -> None:
    n = ACTIVATIONS[1 if opts.quick else 0]
    warm = WARM_ACTIVATIONS[1 if opts.quick else 0]
    with ExitStack() as stack:
        caller = _start(stack, "host", url, cluster_id, "silo-a")
        other = _start(stack, "host", url, cluster_id, "silo-b")
        caller_id, other_id = caller.ready["ready"], other.ready["ready"]
        caller.ask(silo=other_id, cmd="wait_silo")
        other.ask(silo=caller_id, cmd="wait_silo")
        local = _start(stack, "local", url)
        # warm-up of both (code paths, the directory's bucket), then the measured rounds
        where = caller.ask(cmd="activate", prefix="w-", n=warm, in_flight=IN_FLIGHT)["where"]
        assert set(where) == {caller_id, other_id}, f"placement must use both silos: {where}"
        local.ask(cmd="activate", prefix="w-", n=warm, in_flight=1)
        nats_pid = server_pid()
        rounds = 0
        spread: dict[str, int] = {}
        msgs = [0, 0]
        # seconds of a round -> its CPU per activation (ours, floor)
        cpu_us: dict[float, dict[str, float]] = {}
        floor_cpu_us: dict[float, dict[str, float]] = {}

        def ours() -> float:
            nonlocal rounds
            rounds += 1
            other_cpu = other.ask(cmd="stats")["cpu"]
            server_cpu = cpu_seconds(nats_pid) if nats_pid else 0.0
            in0, out0 = msg_counts(monitor_port)
            answer = caller.ask(cmd="activate", prefix=f"r{rounds}-", n=n, in_flight=IN_FLIGHT)
            in1, out1 = msg_counts(monitor_port)
            server_cpu = (cpu_seconds(nats_pid) if nats_pid else 0.0) - server_cpu
            other_cpu = other.ask(cmd="stats")["cpu"] - other_cpu
            assert sum(answer["where"].values()) == n, answer
            for silo, count in answer["where"].items():
                spread[silo] = spread.get(silo, 0) + count
            msgs[0] += in1 - in0
            msgs[1] += out1 - out0
            cpu = {
                "caller_silo": answer["cpu"],
                "other_silo": other_cpu,
                "nats_server": server_cpu,
            }
            cpu["total"] = sum(cpu.values())
            cpu_us[answer["seconds"]] = {k: round(v / n * 1e6, 1) for k, v in cpu.items()}
            log(
                f"    cpu per activation: caller silo {answer['cpu'] / n * 1e6:.1f} us, "
                f"other silo {other_cpu / n * 1e6:.1f} us, nats-server "
                f"{server_cpu / n * 1e6:.1f} us; on the caller's silo "
                f"{answer['where'].get(caller_id, 0)} of {n}; nats msgs per activation in "
                f"{(in1 - in0) / n:.2f}, out {(out1 - out0) / n:.2f}"
            )
            return float(answer["seconds"])

        floor_round = 0

        def floor() -> float:
            nonlocal floor_round
            floor_round += 1
            answer = local.ask(cmd="activate", prefix=f"r{floor_round}-", n=n, in_flight=1)
            floor_cpu_us[answer["seconds"]] = {"local_silo": round(answer["cpu"] / n * 1e6, 1)}
            log(f"    cpu per activation: local silo {answer['cpu'] / n * 1e6:.1f} us")
            return float(answer["seconds"])

        t_ours, t_floor = _best_of(opts, ours, floor, "activations")
        created = caller.ask(cmd="stats")["activations_created"]
        created += other.ask(cmd="stats")["activations_created"]
        assert created == warm + n * rounds, (created, warm + n * rounds)
        emit(
            result(
                "cluster",
                "activations",
                n / t_ours,
                n / t_floor,
                unit="activations/s",
                target=">= 0.25 (ratio)",
                n=n,
                in_flight=IN_FLIGHT,
                silos=2,
                on_caller_silo=round(spread.get(caller_id, 0) / (n * rounds), 3),
                cpu_us_per_activation=cpu_us[t_ours],
                floor_cpu_us_per_activation=floor_cpu_us[t_floor],
                msgs_in_per_activation=round(msgs[0] / (n * rounds), 3),
                msgs_out_per_activation=round(msgs[1] / (n * rounds), 3),
                floor_in_flight=1,
                grain_directory=default_grain_directory(),
            )
        )
        # (no clean stop: leaving would unregister every activation; the server goes next)


# --- failover -------------------------------------------------------------------------------


def _failover(opts: Options, emit: Emit, url: str, cluster_id: str) -> None:
    rounds = FAILOVER_ROUNDS[1 if opts.quick else 0]
    times: list[float] = []
    with ExitStack() as stack:
        survivor = _start(stack, "host", url, cluster_id, "survivor")
        caller = _start(stack, "caller", url, cluster_id, "caller")
        caller.ask(silo=survivor.ready["ready"], cmd="wait_silo")
        heartbeat_interval = caller.ready["heartbeat_interval"]
        dead_after = caller.ready["dead_after"]
        for r in range(rounds):
            victim = _start(stack, "host", url, cluster_id, f"victim{r}")
            victim_id = victim.ready["ready"]
            caller.ask(silo=victim_id, cmd="wait_silo")
            key = caller.ask(cmd="find", prefix=f"f{r}-", victim=victim_id)["key"]
            assert key is not None, "no grain was placed on the victim"
            caller.send(cmd="failover", key=key, victim=victim_id)
            assert caller.read()["calling"]
            time.sleep(0.2)  # calls go on to the victim
            killed_at = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)
            answer = caller.read(timeout=dead_after * 10)
            seconds = answer["recovered_at"] - killed_at
            assert answer["silo"] == survivor.ready["ready"], answer
            log(f"  failover round {r + 1}/{rounds}: {seconds:.3f} s (errors {answer['errors']})")
            times.append(seconds)
            victim.kill()
        emit(
            result(
                "cluster",
                "failover",
                statistics.median(times),
                dead_after,
                unit="seconds (median; ratio = seconds / dead_after, lower is better)",
                target="(none: reported)",
                n=rounds,
                runs=[round(t, 3) for t in times],
                heartbeat_interval=heartbeat_interval,
                dead_after=dead_after,
            )
        )
        for child in (caller, survivor):
            child.stop()


@benchmark("cluster", modes=("calls", "activations", "failover"))
def cluster_bench(opts: Options, emit: Emit) -> None:
    """cross-silo grain calls, activations across silos, and failover after SIGKILL"""
    monitor_port = free_port()
    with (
        tempfile.TemporaryDirectory() as tmp,
        run_nats_server(tmp, monitor_port=monitor_port) as url,
    ):
        log(f"nats-server at {url}")
        if opts.wants("calls"):
            _calls(opts, emit, url, "bc" + uuid.uuid4().hex[:8])
        if opts.wants("activations"):
            _activations(opts, emit, url, monitor_port, "ba" + uuid.uuid4().hex[:8])
        if opts.wants("failover"):
            _failover(opts, emit, url, "bf" + uuid.uuid4().hex[:8])
