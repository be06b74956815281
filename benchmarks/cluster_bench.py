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
* ``activations``: new grains activated per second across a 2-silo cluster: both silo
  processes make first calls on new keys at the same time, each on its own half of N (100
  in flight per silo), on ``LocalEchoGrain`` (prefer-local placement), so every activation
  is on the silo that made its first call and registers in the grain directory (the
  default: in-cluster, about half of the entries owned by the other silo). ours = N / the
  parent's wall time from sending the first command to reading the second answer. Floor:
  one silo's local activation rate, as the ``local-calls`` mode ``activation-rate``
  measures it (N first calls one after another on a silo of its own, no clustering), in a
  child process of the same kind. activations/s, target ratio >= 0.25.
* ``activations-spread``: one of the two silos makes all N first calls on ``EchoGrain``
  (random placement), so about half of them are also cross-silo calls; the same floor.
  activations/s, reported (no target).
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


def _local_floor(
    local: Child, n: int, cpu_us: dict[float, dict[str, float]]
) -> Callable[[], float]:
    """The floor of both activations modes: *n* first calls one after another on the
    ``local`` child (a silo of its own); its CPU per activation goes to *cpu_us*."""
    rounds = 0

    def floor() -> float:
        nonlocal rounds
        rounds += 1
        answer = local.ask(cmd="activate", prefix=f"r{rounds}-", n=n, in_flight=1)
        cpu_us[answer["seconds"]] = {"local_silo": round(answer["cpu"] / n * 1e6, 1)}
        log(f"    cpu per activation: local silo {answer['cpu'] / n * 1e6:.1f} us")
        return float(answer["seconds"])

    return floor


def _dump_profiles(*children: Child) -> None:
    """With ``CLUSTER_BENCH_PROFILE``: each child writes its profile now (for children that
    are killed, not stopped)."""
    if os.environ.get("CLUSTER_BENCH_PROFILE"):
        for child in children:
            log(f"  profile of {child.role}: {child.ask(cmd='profile')['profile']}")


def _activations(opts: Options, emit: Emit, url: str, monitor_port: int, cluster_id: str) -> None:
    """Both silos activate new ``LocalEchoGrain``s (prefer-local placement) at once, each
    its own half of N keys; every activation registers in the grain directory."""
    n = ACTIVATIONS[1 if opts.quick else 0]
    half = n // 2
    warm = WARM_ACTIVATIONS[1 if opts.quick else 0]
    with ExitStack() as stack:
        silo_a = _start(stack, "host", url, cluster_id, "silo-a")
        silo_b = _start(stack, "host", url, cluster_id, "silo-b")
        silos = {"a": silo_a, "b": silo_b}
        ids = {tag: child.ready["ready"] for tag, child in silos.items()}
        silo_a.ask(silo=ids["b"], cmd="wait_silo")
        silo_b.ask(silo=ids["a"], cmd="wait_silo")
        local = _start(stack, "local", url)

        def both(prefix: str, count: int) -> tuple[float, dict[str, dict[str, Any]]]:
            """Each silo activates *count* new grains ``<prefix><tag>-<i>``, both at once:
            the parent's wall time from sending the first command to reading the second
            answer, and the answers."""
            t0 = time.perf_counter()
            for tag, child in silos.items():
                child.send(
                    cmd="activate",
                    grain="local-echo",
                    prefix=f"{prefix}{tag}-",
                    n=count,
                    in_flight=IN_FLIGHT,
                )
            answers = {tag: child.read() for tag, child in silos.items()}
            seconds = time.perf_counter() - t0
            for tag, answer in answers.items():
                # each silo created exactly its own activations: none crossed
                assert answer["where"] == {ids[tag]: count}, (tag, answer)
                assert answer["created_here"] == count, (tag, answer)
            return seconds, answers

        # warm-up of both (code paths, the directory), then the measured rounds
        both("w-", warm // 2)
        local.ask(cmd="activate", prefix="w-", n=warm, in_flight=1)
        nats_pid = server_pid()
        rounds = 0
        msgs = [0, 0]
        # seconds of a round -> what it cost (ours, floor)
        cpu_us: dict[float, dict[str, float]] = {}
        floor_cpu_us: dict[float, dict[str, float]] = {}
        silo_seconds: dict[float, dict[str, float]] = {}
        directory_msgs = [0]

        def ours() -> float:
            nonlocal rounds
            rounds += 1
            before = {tag: child.ask(cmd="stats") for tag, child in silos.items()}
            server_cpu = cpu_seconds(nats_pid) if nats_pid else 0.0
            in0, out0 = msg_counts(monitor_port)
            seconds, answers = both(f"r{rounds}-", half)
            in1, out1 = msg_counts(monitor_port)
            server_cpu = (cpu_seconds(nats_pid) if nats_pid else 0.0) - server_cpu
            after = {tag: child.ask(cmd="stats") for tag, child in silos.items()}
            for tag in silos:  # no grain call crossed: only the directory's messages
                assert after[tag]["sent"] == before[tag]["sent"], (tag, before, after)
            total = half * len(silos)
            msgs[0] += in1 - in0
            msgs[1] += out1 - out0
            directory_msgs[0] += sum(
                (after[t]["directory_sent"] or 0) - (before[t]["directory_sent"] or 0)
                for t in silos
            )
            cpu = {f"silo_{t}": after[t]["cpu"] - before[t]["cpu"] for t in silos}
            cpu["nats_server"] = server_cpu
            cpu["total"] = sum(cpu.values())
            cpu_us[seconds] = {k: round(v / total * 1e6, 1) for k, v in cpu.items()}
            silo_seconds[seconds] = {
                f"silo_{t}": round(a["seconds"], 4) for t, a in answers.items()
            }
            log(
                f"    {total} activations in {seconds:.3f} s (silo a's own "
                f"{answers['a']['seconds']:.3f} s, b's {answers['b']['seconds']:.3f} s); cpu per "
                f"activation: silo a {cpu['silo_a'] / total * 1e6:.1f} us, silo b "
                f"{cpu['silo_b'] / total * 1e6:.1f} us, nats-server "
                f"{server_cpu / total * 1e6:.1f} us; nats msgs per activation in "
                f"{(in1 - in0) / total:.2f}, out {(out1 - out0) / total:.2f}"
            )
            return seconds

        floor = _local_floor(local, 2 * half, floor_cpu_us)
        t_ours, t_floor = _best_of(opts, ours, floor, "activations")
        total = 2 * half * rounds + 2 * (warm // 2)
        stats = {tag: child.ask(cmd="stats") for tag, child in silos.items()}
        directory = {tag: child.ask(cmd="directory") for tag, child in silos.items()}
        created = sum(s["activations_created"] for s in stats.values())
        assert created == total, (created, total)
        entries = [d["entries"] for d in directory.values()]
        # per silo: the share of its activations whose entry another silo holds
        registered_remotely: dict[str, float] | None = None
        if None not in entries:  # the in-cluster directory: it holds every activation
            assert sum(entries) == total, (directory, total)
            registered_remotely = {}
            for tag in silos:  # and each silo's activations are there
                held = {t: d["by_silo"].get(ids[tag], 0) for t, d in directory.items()}
                assert sum(held.values()) == stats[tag]["activations_created"], (tag, directory)
                remote = sum(count for t, count in held.items() if t != tag)
                registered_remotely[f"silo_{tag}"] = round(remote / sum(held.values()), 3)
        log(f"  directory: {directory}")
        ours_per_round = 2 * half
        emit(
            result(
                "cluster",
                "activations",
                ours_per_round / t_ours,
                ours_per_round / t_floor,
                unit="activations/s",
                target=">= 0.25 (ratio)",
                n=ours_per_round,
                in_flight=IN_FLIGHT,
                in_flight_per="silo",
                silos=2,
                placement="prefer-local",
                wall_time="parent: first command sent -> second answer read",
                silo_seconds=silo_seconds[t_ours],
                registered_remotely=registered_remotely,
                directory_entries=None if None in entries else sum(entries),
                cpu_us_per_activation=cpu_us[t_ours],
                floor_cpu_us_per_activation=floor_cpu_us[t_floor],
                msgs_in_per_activation=round(msgs[0] / (ours_per_round * rounds), 3),
                msgs_out_per_activation=round(msgs[1] / (ours_per_round * rounds), 3),
                directory_msgs_per_activation=round(
                    directory_msgs[0] / (ours_per_round * rounds), 3
                ),
                floor_in_flight=1,
                grain_directory=default_grain_directory(),
            )
        )
        _dump_profiles(silo_a, silo_b, local)
        # (no clean stop: leaving would unregister every activation; the server goes next)


def _activations_spread(
    opts: Options, emit: Emit, url: str, monitor_port: int, cluster_id: str
) -> None:
    """One silo makes the first calls; random placement puts about half on the other."""
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

        floor = _local_floor(local, n, floor_cpu_us)
        t_ours, t_floor = _best_of(opts, ours, floor, "activations-spread")
        created = caller.ask(cmd="stats")["activations_created"]
        created += other.ask(cmd="stats")["activations_created"]
        assert created == warm + n * rounds, (created, warm + n * rounds)
        emit(
            result(
                "cluster",
                "activations-spread",
                n / t_ours,
                n / t_floor,
                unit="activations/s",
                target="(none: reported)",
                n=n,
                in_flight=IN_FLIGHT,
                silos=2,
                placement="random",
                on_caller_silo=round(spread.get(caller_id, 0) / (n * rounds), 3),
                cpu_us_per_activation=cpu_us[t_ours],
                floor_cpu_us_per_activation=floor_cpu_us[t_floor],
                msgs_in_per_activation=round(msgs[0] / (n * rounds), 3),
                msgs_out_per_activation=round(msgs[1] / (n * rounds), 3),
                floor_in_flight=1,
                grain_directory=default_grain_directory(),
            )
        )
        _dump_profiles(caller, other, local)
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


@benchmark("cluster", modes=("calls", "activations", "activations-spread", "failover"))
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
        if opts.wants("activations-spread"):
            _activations_spread(opts, emit, url, monitor_port, "bs" + uuid.uuid4().hex[:8])
        if opts.wants("failover"):
            _failover(opts, emit, url, "bf" + uuid.uuid4().hex[:8])
