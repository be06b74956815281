"""The processes of ``benchmarks/run.py cluster``: silos, the caller, the raw NATS floor.

Run by ``cluster_bench.py``, one process per role::

    python benchmarks/_cluster_proc.py ROLE NATS_URL [CLUSTER_ID NAME]

Roles: ``host`` (a silo hosting :class:`EchoGrain` and :class:`LocalEchoGrain`),
``caller`` (a silo that hosts neither, so every call to an echo grain crosses to a hosting
silo), ``responder`` and ``requester`` (the floor: our NATS connection doing raw
request/reply), ``local`` (a silo of its own, no clustering: the floor of the
``activations`` modes).

Each process prints one JSON line ``{"ready": ...}`` once it runs, then reads one JSON
command per line on stdin and answers each with a JSON line on stdout (``failover``
answers twice). End of stdin stops it (the parent also kills it in a ``finally``).

With ``CLUSTER_BENCH_PROFILE=<dir>`` the process runs under cProfile (timer: the process's
CPU time, so that time spent preempted is charged to nothing) and writes
``<dir>/<role>[-<name>].prof`` when it exits and on the command ``{"cmd": "profile"}``
(any role; the parent sends it before it kills a child that it does not stop).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from typing import Any

import trio
import trio_grains_nats as tgn

from trio_grains import (
    Grain,
    PreferLocalPlacement,
    ProviderConfig,
    SiloConfig,
    open_silo,
    placement,
)

PAYLOAD = b"x" * 64
FLOOR_SUBJECT = "bench.cluster.rr"
#: the cProfile profiler of this process and where it writes (``CLUSTER_BENCH_PROFILE``)
PROFILER: Any = None
PROFILE_PATH = ""


class EchoGrain(Grain):
    async def echo(self, data: bytes) -> bytes:
        return data

    async def where(self) -> str:
        return self.runtime_identity


@placement(PreferLocalPlacement())
class LocalEchoGrain(Grain):
    """:class:`EchoGrain` placed on the silo that makes the first call, as the grains that
    a stream item or a reminder tick activates are."""

    async def echo(self, data: bytes) -> bytes:
        return data

    async def where(self) -> str:
        return self.runtime_identity


GRAINS: dict[str, type[Grain]] = {"echo": EchoGrain, "local-echo": LocalEchoGrain}


def say(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def commands() -> Any:
    """The JSON commands on stdin, until end of file (``profile`` answered here)."""
    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if not line:
            return
        if line.strip():
            cmd = json.loads(line)
            if cmd.get("cmd") == "profile":
                say({"profile": dump_profile()})
            else:
                yield cmd


def dump_profile() -> str | None:
    """Write this process's profile so far (profiling goes on); its path, None if off."""
    if PROFILER is None:
        return None
    PROFILER.dump_stats(PROFILE_PATH)  # (this disables the profiler)
    PROFILER.enable()
    return PROFILE_PATH


async def run_many(n: int, in_flight: int, one_call: Any) -> float:
    """*n* calls of ``await one_call(i)`` by *in_flight* tasks; the wall time."""
    per_task = n // in_flight

    async def worker(i: int) -> None:
        for _ in range(per_task):
            await one_call(i)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(in_flight):
            nursery.start_soon(worker, i)
    return time.perf_counter() - t0


# --- silos ----------------------------------------------------------------------------------


def echo_refs(silo: Any, prefix: str, count: int) -> list[Any]:
    return [silo.get_grain(EchoGrain, f"{prefix}{i}") for i in range(count)]


async def echo_calls(silo: Any, prefix: str, n: int, in_flight: int) -> float:
    """*n* echo calls, caller task i calling grain ``<prefix>i``; the wall time."""
    refs = echo_refs(silo, prefix, in_flight)

    async def one_call(i: int) -> None:
        await refs[i].echo(PAYLOAD)

    return await run_many(n, in_flight, one_call)


async def activate(
    silo: Any, prefix: str, n: int, in_flight: int, grain: type[Grain] = EchoGrain
) -> tuple[float, Counter[str]]:
    """First calls on *n* new keys ``<prefix>0`` ... of *grain* by *in_flight* tasks (each
    takes the next key); the wall time, and the silos the activations went to."""
    where: Counter[str] = Counter()
    keys = iter(range(n))

    async def worker() -> None:
        for i in keys:
            where[await silo.get_grain(grain, f"{prefix}{i}").where()] += 1

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(in_flight):
            nursery.start_soon(worker)
    return time.perf_counter() - t0, where


async def wait_active(cluster: Any, silo_id: str) -> None:
    """Until *silo_id* is active in this silo's membership view (polled: a benchmark aid)."""
    with trio.fail_after(30):
        while silo_id not in {e.silo_id for e in cluster.locator.view.active()}:  # noqa: ASYNC110
            await trio.sleep(0.02)


async def silo_main(url: str, cluster_id: str, name: str, host: bool) -> None:
    config = SiloConfig(
        name=name,
        cluster_id=cluster_id,
        clustering=ProviderConfig(provider="nats", options={"servers": url}),
    )
    async with open_silo(config, grains=list(GRAINS.values()) if host else []) as silo:
        cluster = silo.cluster
        assert cluster is not None
        say(
            {
                "ready": silo.silo_id,
                "heartbeat_interval": config.heartbeat_interval,
                "dead_after": config.dead_after,
            }
        )
        async with trio.open_nursery() as nursery:
            async for cmd in commands():
                what = cmd["cmd"]
                if what == "stats":
                    # (the catalog's counters, not silo.statistics(), whose count by type
                    # walks every activation: not part of what a round costs)
                    cpu = time.process_time()
                    catalog = silo.catalog
                    peer = None if cluster.distributed is None else cluster.distributed.messenger
                    say(
                        {
                            "activations": len(catalog.activations()),
                            "activations_created": catalog.activations_created,
                            "sent": cluster.messenger.sent,
                            "received": cluster.messenger.received,
                            # the in-cluster directory's messages (requests and answers)
                            "directory_sent": None if peer is None else peer.sent,
                            "cpu": cpu,
                        }
                    )
                elif what == "directory":  # this silo's share of the in-cluster directory
                    directory = cluster.distributed
                    if directory is None:  # (the provider's directory: nothing held here)
                        say({"entries": None, "by_silo": {}})
                    else:
                        by_silo = Counter(e.silo_id for e in directory.partition.entries.values())
                        say(
                            {
                                "entries": directory.partition.statistics().entries,
                                "by_silo": dict(by_silo),  # activation's silo -> entries
                            }
                        )
                elif what == "wait_silo":  # until this silo sees *silo* active
                    await wait_active(cluster, cmd["silo"])
                    say({"ok": True})
                elif what == "warm":  # call each grain once; where are they?
                    refs = echo_refs(silo, cmd["prefix"], cmd["keys"])
                    where = Counter([await ref.where() for ref in refs])
                    for ref in refs:
                        assert await ref.echo(PAYLOAD) == PAYLOAD
                    say({"where": dict(where)})
                elif what == "activate":  # first calls on new keys (activations)
                    cpu = time.process_time()
                    created = silo.catalog.activations_created
                    grain = GRAINS[cmd.get("grain", "echo")]
                    seconds, where = await activate(
                        silo, cmd["prefix"], cmd["n"], cmd["in_flight"], grain
                    )
                    say(
                        {
                            "seconds": seconds,
                            "cpu": time.process_time() - cpu,
                            "where": dict(where),
                            "created_here": silo.catalog.activations_created - created,
                        }
                    )
                elif what == "calls":
                    sent, cpu = cluster.messenger.sent, time.process_time()
                    seconds = await echo_calls(silo, cmd["prefix"], cmd["n"], cmd["in_flight"])
                    say(
                        {
                            "seconds": seconds,
                            "sent": cluster.messenger.sent - sent,
                            "cpu": time.process_time() - cpu,
                        }
                    )
                elif what == "find":  # a key whose activation is on *victim*
                    for i in range(1000):
                        key = f"{cmd['prefix']}{i}"
                        if await silo.get_grain(EchoGrain, key).where() == cmd["victim"]:
                            say({"key": key})
                            break
                    else:
                        say({"key": None})
                elif what == "failover":
                    nursery.start_soon(failover, silo, cmd["key"], cmd["victim"])
                else:
                    say({"error": f"unknown command {what!r}"})
            nursery.cancel_scope.cancel()


async def failover(silo: Any, key: str, victim: str) -> None:
    """Call the grain in a loop: say "calling" after its first success on *victim*, then
    the (system-wide monotonic) time of the first success on another silo."""
    ref = silo.get_grain(EchoGrain, key)
    announced = False
    errors: Counter[str] = Counter()
    while True:
        try:
            where = await ref.where()
        except Exception as exc:  # the victim died: calls fail until it is declared dead
            errors[type(exc).__name__] += 1
            await trio.sleep(0.001)
            continue
        if where != victim:
            say({"recovered_at": time.monotonic(), "silo": where, "errors": dict(errors)})
            return
        if not announced:
            announced = True
            say({"calling": True})
        await trio.sleep(0.002)


# --- the floor of activations: one silo on its own -----------------------------------------


async def local_main() -> None:
    """A silo with the default configuration (no clustering), as ``local-calls`` uses."""
    async with open_silo(grains=[EchoGrain]) as silo:
        say({"ready": silo.silo_id})
        async for cmd in commands():
            if cmd["cmd"] == "activate":
                cpu = time.process_time()
                seconds, where = await activate(silo, cmd["prefix"], cmd["n"], cmd["in_flight"])
                say({"seconds": seconds, "cpu": time.process_time() - cpu, "where": dict(where)})
            else:
                say({"error": f"unknown command {cmd['cmd']!r}"})


# --- the floor: raw request/reply on our NATS connection -------------------------------------


async def responder_main(url: str) -> None:
    async with tgn.connect(url, name="cluster-bench responder") as nc:
        sub = await nc.subscribe(FLOOR_SUBJECT, max_pending=262_144)
        await nc.flush()

        async def respond() -> None:
            async for msg in sub:
                await msg.respond(msg.data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(respond)
            say({"ready": "responder"})
            async for _ in commands():
                pass
            nursery.cancel_scope.cancel()


async def requester_main(url: str) -> None:
    async with tgn.connect(url, name="cluster-bench requester") as nc:
        say({"ready": "requester"})
        async for cmd in commands():

            async def one_call(_i: int) -> None:
                msg = await nc.request(FLOOR_SUBJECT, PAYLOAD)
                assert len(msg.data) == len(PAYLOAD)

            cpu = time.process_time()
            seconds = await run_many(cmd["n"], cmd["in_flight"], one_call)
            say({"seconds": seconds, "cpu": time.process_time() - cpu})


def main(argv: list[str]) -> None:
    global PROFILER, PROFILE_PATH
    role, url = argv[0], argv[1]
    profile_dir = os.environ.get("CLUSTER_BENCH_PROFILE")
    if profile_dir:  # cProfile this process: <dir>/<role>[-<name>].prof (exit, "profile")
        import cProfile

        name = f"{role}-{argv[3]}" if len(argv) > 3 else role
        PROFILE_PATH = os.path.join(profile_dir, f"{name}.prof")
        PROFILER = cProfile.Profile(time.process_time)  # CPU: preemption is not charged
        PROFILER.enable()
        try:
            run_role(role, url, argv)
        finally:
            PROFILER.disable()
            PROFILER.dump_stats(PROFILE_PATH)
    else:
        run_role(role, url, argv)


def run_role(role: str, url: str, argv: list[str]) -> None:
    if role in ("host", "caller"):
        trio.run(silo_main, url, argv[2], argv[3], role == "host")
    elif role == "responder":
        trio.run(responder_main, url)
    elif role == "requester":
        trio.run(requester_main, url)
    elif role == "local":
        trio.run(local_main)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
