"""A silo's part in a cluster: remote calls in and out, directory registration, forwarding.

:class:`SiloCluster` is built by the silo's composition root when the silo is configured
with a clustering provider, before the catalog, and handed to the catalog (as its
``ClusterHooks``) and to the dispatcher (as its ``RemoteCalls``). They ask it to:

* :meth:`~SiloCluster.call` grains that are not activated here (locate, then call
  locally or over the transport; "not here" answers and lost races are retried);
* :meth:`~SiloCluster.register` every new activation in the grain directory before it
  runs (create-if-absent: losing the race raises
  :class:`~trio_grains._exceptions.ActivationRaceLostError` and the calls go to the winner),
  and :meth:`~SiloCluster.unregister` it after ``on_deactivate``;
* :meth:`~SiloCluster.reroute` calls that were queued on an activation that is gone.

Requests from other silos and clients arrive in :meth:`SiloCluster._on_request` once
:meth:`~SiloCluster.run` serves them into the catalog: a call to an activation that is
here is posted to its mailbox with a callback that sends the reply (no task per call);
anything else is placed or forwarded.

May import: the core up to the catalog and the dispatcher, and the cluster modules below it.
Not ``member``, reminders, streams or the silo.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import outcome
import trio

from .._calls import ABANDONED, DONE, Call, TimeoutWheel, log_one_way_outcome
from .._exceptions import (
    ActivationRaceLostError,
    DirectoryError,
    GrainCallError,
    GrainCallTimeoutError,
    GrainMethodError,
    GrainsError,
    SiloUnavailableError,
)
from .._ids import GrainId, check_key_length
from . import envelope as env
from .directory import DirectoryEntry, GrainDirectory
from .distributed_directory import DistributedGrainDirectory
from .locator import Locator
from .messenger import Messenger, RerouteError
from .silo_entries import MembershipView, SiloEntry, SiloStatus

if TYPE_CHECKING:
    from .._activation import Activation
    from .._catalog import Catalog, LocalCall
    from .._config import SiloConfig
    from .._grain import GrainClassRegistry
    from .._methods import MethodInfo
    from .._metrics import SiloMetrics
    from .._placement import PlacementRegistry, PlacementStrategy
    from .._serialization import Codec
    from .._tracing import Tracer
    from .membership_service import MembershipService
    from .transport import ClusterBackend, Transport

__all__ = ["MAX_ATTEMPTS", "SiloCluster", "call_anywhere"]

log = logging.getLogger("trio_grains.cluster")

MAX_ATTEMPTS = 8  # locate-and-call attempts (or forwards) before a call gives up
#: seconds the calls still waiting on a silo that left the cluster (not one declared dead)
#: are given before they fail: a leaving silo answers for up to a second after it left
LEFT_GRACE = 2.0
_FORWARDED_REMEMBERED = 10_000  # (caller, call id) -> silo of calls forwarded from here
_GRAIN_ID_CACHE_SIZE = 10_000


def backoff(attempt: int) -> float:
    """Seconds to wait before locating again after a "not here" answer: none the first
    time (a stale cache entry), then growing (an activation on its way somewhere)."""
    return 0.0 if attempt <= 1 else min(1.0, 0.01 * 2**attempt)


async def call_anywhere(
    locator: Locator,
    messenger: Messenger,
    grain_id: GrainId,
    method: MethodInfo,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    local: Callable[..., Awaitable[Any]] | None = None,
    prefer_local: bool = False,
) -> Any:
    """Locate *grain_id* and call it there (through *local* if that is this silo); on a
    "not here" answer, or a lost activation race, locate it again. *prefer_local*: place
    a new activation here (see :meth:`Locator.locate_uncached`)."""
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            await trio.sleep(backoff(attempt))
        cached = locator.cached(grain_id)  # the common case, without a coroutine
        if cached is not None:
            silo_id, flags = cached, 0
        else:
            silo_id, flags = await locator.locate_uncached(grain_id, prefer_local=prefer_local)
        try:
            if local is not None and silo_id == locator.self_id:
                return await local(grain_id, method, args, kwargs)
            return await messenger.call(silo_id, grain_id, method, args, kwargs, flags=flags)
        except (RerouteError, ActivationRaceLostError):
            # (a race lost here: the winner's entry is in the cache now)
            if local is None or silo_id != locator.self_id:
                locator.directory.cache.invalidate(grain_id)
    raise SiloUnavailableError(
        f"could not reach an activation of {grain_id} in {MAX_ATTEMPTS} attempts (its silo "
        "is stopping or the directory keeps changing); retry later"
    )


class SiloCluster:
    """The cluster side of one silo (see the module docstring)."""

    def __init__(
        self,
        backend: ClusterBackend,
        transport: Transport,
        silo_id: str,
        placement: PlacementRegistry,
        default_strategy: PlacementStrategy,
        *,
        config: SiloConfig,
        registry: GrainClassRegistry,
        codec: Codec,
        wheel: TimeoutWheel,
        tracer: Tracer | None = None,
        metrics: SiloMetrics | None = None,
        peer_transport: Transport | None = None,
    ) -> None:
        self.silo_id = silo_id
        self.cluster_id = config.cluster_id
        self._warned: set[str] = set()  # silos of another grain directory kind
        self.roles = config.roles
        self.registry = registry
        self.codec = codec
        self.tracer = tracer
        self.metrics = metrics
        #: the catalog this silo's endpoint serves, while :meth:`run` runs
        self._catalog: Catalog | None = None
        #: the clustering provider's directory (stream partition leases; and the grains'
        #: directory with ``grain_directory = "provider"``)
        self.backend_directory = backend.directory
        #: the in-cluster directory (with a peer endpoint), else ``None``
        self.distributed: DistributedGrainDirectory | None = None
        directory: GrainDirectory = backend.directory
        if peer_transport is not None:
            peer_messenger = Messenger(
                peer_transport,
                codec,
                wheel,
                silo_id,
                self._peer_address_of,
                max_subject_length=config.max_subject_length,
                max_grain_id_length=config.max_key_length + 256,
            )
            directory = self.distributed = DistributedGrainDirectory(
                silo_id,
                peer_messenger,
                codec,
                local_entries=self._local_entries,
                refresh=self._refresh_view,
                refused=self._refused,
                max_grain_id_length=config.max_key_length + 256,
            )
            peer_messenger.on_request = directory.on_request
        self.locator = Locator(
            membership=backend.membership,
            directory=directory,
            placement=placement,
            default_strategy=default_strategy,
            hosted=registry,
            self_id=silo_id,
            local_load=self.local_load,
            on_gone=self._silo_gone,
        )
        self.max_key_length = config.max_key_length
        self.messenger = Messenger(
            transport,
            codec,
            wheel,
            silo_id,
            self.locator.address_of,
            max_subject_length=config.max_subject_length,
            max_grain_id_length=config.max_key_length + 256,
            tracer=tracer,
            on_request=self._on_request,
            on_cancel=self._on_cancel,
        )
        #: inbound calls by (reply_to, call_id), while they exist, for CANCEL messages
        self._inbound: weakref.WeakValueDictionary[tuple[str, int], Call] = (
            weakref.WeakValueDictionary()
        )
        #: calls placed elsewhere from here (LOCATE) -> (that silo, idempotent?), so that a
        #: CANCEL can follow them and their callers hear of it if that silo dies (as an
        #: Orleans gateway tells its clients)
        self._forwarded: dict[tuple[str, int], tuple[str, bool]] = {}
        #: called with every new membership view (stream balancers, reminder ownership)
        self.view_listeners: list[Callable[[MembershipView], None]] = []
        self._nursery: trio.Nursery | None = None
        self._janitor_send, self._janitor_receive = trio.open_memory_channel[str](1000)
        #: parsed grain ids of incoming requests (bounded: cleared when full)
        self._grain_ids: dict[str, GrainId] = {}
        self.forwarded = 0
        self.rerouted = 0
        self.stale_entries_removed = 0

    def entry(self) -> SiloEntry:
        """This silo's membership row, before joining."""
        return SiloEntry(
            silo_id=self.silo_id,
            address=self.messenger.transport.address,
            roles=self.roles,
            grain_types=[str(t) for t in self.registry.types()],
            started_at=time.time(),
            peer_address=(
                "" if self.distributed is None else self.distributed.messenger.transport.address
            ),
        )

    # -- lifetime -----------------------------------------------------------------------------

    def local_load(self) -> int:
        """How many activations this silo holds (its membership row's ``load``)."""
        return 0 if self._catalog is None else self._catalog.count()

    async def run(
        self, catalog: Catalog, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve requests from the cluster into *catalog* until cancelled."""
        self._catalog = catalog
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.distributed is not None:
                await nursery.start(self.distributed.run)
            await nursery.start(self.messenger.run)
            nursery.start_soon(self._janitor)
            task_status.started()

    async def follow(self, membership: MembershipService) -> None:
        """Apply every membership view the service sees (run in the silo's nursery)."""
        seen = -1

        def newer(view: MembershipView) -> bool:
            return view.version > seen

        while True:
            view = await membership.wait_view(newer)
            seen = view.version
            self.on_view(view)

    def on_view(self, view: MembershipView) -> None:
        self._check_directory_kinds(view)
        self.locator.set_view(view)  # calls _silo_gone for the silos that died or left
        if self.distributed is not None:
            self.distributed.on_view(view)
        if self.metrics is not None:
            self.metrics.membership_changes += 1
        for listener in self.view_listeners:
            listener(view)

    def _check_directory_kinds(self, view: MembershipView) -> None:
        """Say it (once per silo) when a silo of the cluster registers its activations
        in another grain directory than this one: single activation needs one."""
        in_cluster = self.distributed is not None
        for entry in view.alive():
            if bool(entry.peer_address) != in_cluster and entry.silo_id not in self._warned:
                self._warned.add(entry.silo_id)
                log.error(
                    "silo %s uses grain_directory = %r but silo %s does not: a grain may "
                    "be activated once in each directory. Give every silo of cluster %r "
                    "the same grain_directory",
                    self.silo_id,
                    "in-cluster" if in_cluster else "provider",
                    entry.silo_id,
                    self.cluster_id,
                )

    async def _refresh_view(self) -> None:
        """Re-read membership (the in-cluster directory found a ring other than ours)."""
        view = await self.locator.membership.snapshot()
        if view.version > self.locator.view.version:
            self.on_view(view)

    def _peer_address_of(self, silo_id: str) -> str | None:
        entry = self.locator.view.get(silo_id)
        return None if entry is None or not entry.alive else (entry.peer_address or None)

    def _local_entries(self) -> list[DirectoryEntry]:
        """The directory entries of this silo's registered activations."""
        catalog = self._catalog
        if catalog is None:
            return []
        entries = (act.directory_entry for act in catalog.activations())
        return [e for e in entries if isinstance(e, DirectoryEntry)]

    def _refused(self, entry: DirectoryEntry) -> None:
        """Another activation of *entry*'s grain won: this silo's one stops."""
        catalog = self._catalog
        act = None if catalog is None else catalog.lookup(entry.grain_id)
        if act is None or not isinstance(act.directory_entry, DirectoryEntry):
            return
        if act.directory_entry.same_activation(entry):
            act.directory_entry = None  # (the registered entry is the other's)
            assert catalog is not None
            catalog.deactivate_soon(act, "another activation of the grain is registered")

    def _silo_gone(self, silo_id: str, view: MembershipView) -> None:
        dead = view.status_of(silo_id) is SiloStatus.DEAD
        if dead or self._nursery is None:
            self.messenger.fail_calls_to(silo_id, "died" if dead else "left")
            self._fail_forwarded_to(silo_id, "died" if dead else "left")
        else:  # it left: it answers what it holds while it lingers
            self._nursery.start_soon(self._fail_after_leaving, silo_id)
        # One janitor per cluster. A silo that left cleanly has unregistered its grains
        # (this finds nothing); one whose row expired unseen has not.
        active = view.active()
        if active and active[0].silo_id == self.silo_id:
            try:
                self._janitor_send.send_nowait(silo_id)
            except trio.WouldBlock:
                log.warning("janitor is behind; entries of %s are removed lazily", silo_id)

    async def _fail_after_leaving(self, silo_id: str) -> None:
        await trio.sleep(LEFT_GRACE)
        self.messenger.fail_calls_to(silo_id, "left")
        self._fail_forwarded_to(silo_id, "left")

    def _fail_forwarded_to(self, silo_id: str, why: str) -> None:
        """Tell the callers of the calls forwarded from here to *silo_id* that it is gone:
        locate again (idempotent calls), or it may or may not have run. (Callers of calls
        that were answered meanwhile drop this as a reply they do not wait for.)"""
        doomed = [(key, idem) for key, (to, idem) in self._forwarded.items() if to == silo_id]
        for (reply_to, call_id), idempotent in doomed:
            del self._forwarded[(reply_to, call_id)]
            if idempotent:
                status, payload = env.REROUTE, b""
            else:
                error = SiloUnavailableError(
                    f"silo {silo_id!r} {why} before a call forwarded to it replied; the call "
                    "may or may not have run there (retry it if it is idempotent)"
                )
                status, payload = env.ERROR, self.messenger.encode_exception(error)
            self.messenger.send_nowait(
                reply_to, env.encode_reply(call_id, status, payload, self.silo_id)
            )

    async def _janitor(self) -> None:
        """Remove directory entries of dead silos, so their grains can move at once."""
        async for silo_id in self._janitor_receive:
            while True:
                try:
                    removed = await self.locator.directory.remove_silo(silo_id)
                except DirectoryError as exc:
                    log.warning("could not remove entries of dead silo %s: %s", silo_id, exc)
                    await trio.sleep(1.0)
                    continue
                self.stale_entries_removed += removed
                log.info("removed %d directory entries of dead silo %s", removed, silo_id)
                break

    # -- calls out ----------------------------------------------------------------------------

    async def call(
        self,
        grain_id: GrainId,
        method: MethodInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        local: LocalCall,
        *,
        prefer_local: bool = False,
    ) -> Any:
        """Call *method* on *grain_id* wherever it is (or is placed): through *local* if
        that is this silo."""
        return await call_anywhere(
            self.locator,
            self.messenger,
            grain_id,
            method,
            args,
            kwargs,
            local=local,
            prefer_local=prefer_local,
        )

    def reroute(self, call: Call, local: LocalCall) -> None:
        """Send a call that never ran here to wherever its grain is now."""
        if call.state == ABANDONED or call.method is None or self._nursery is None:
            if call.state != ABANDONED:
                call.fail(SiloUnavailableError(f"the silo stopped before {call.describe()} ran"))
            return
        on_done = call.on_done
        if isinstance(on_done, functools.partial) and on_done.func == self._send_reply:
            # A call from another endpoint that never ran here: answer "not here". Its
            # caller locates the grain again, which also mends the caller's stale cache
            # entry (sending it on from here would leave it pointing here); and a
            # stopping silo must not send calls on: its shutdown would fail them.
            call.state = DONE
            self.messenger.reply(on_done.args[0], env.REROUTE, b"")
            return
        self.rerouted += 1
        self._nursery.start_soon(self._reroute, call, local)

    async def _reroute(self, call: Call, local: LocalCall) -> None:
        assert call.method is not None
        assert isinstance(call.target, GrainId)
        with trio.CancelScope(deadline=call.deadline):
            result = await outcome.acapture(
                self.call, call.target, call.method, call.args, call.kwargs, local
            )
            if call.state not in (DONE, ABANDONED):
                call.finish(result)

    # -- the directory ------------------------------------------------------------------------

    async def register(self, act: Activation) -> None:
        """Register *act* in the directory, or raise ActivationRaceLostError."""
        directory = self.locator.directory
        entry = DirectoryEntry.new(act.grain_id, self.silo_id)
        for _ in range(3):
            winner = await directory.register(entry)
            if winner.same_activation(entry):
                act.directory_entry = winner
                return
            if winner.silo_id == self.silo_id or not await self.locator.alive(winner.silo_id):
                # Ours from an activation that is gone (it could not unregister), or a dead
                # silo's: stale either way.
                await directory.unregister(winner)
                continue
            break
        raise ActivationRaceLostError(act.grain_id, winner.silo_id)

    async def unregister(self, act: Activation) -> None:
        entry, act.directory_entry = act.directory_entry, None
        if not isinstance(entry, DirectoryEntry):
            return
        if self.distributed is not None:  # one message at most, never waited for
            self.locator.directory.forget(entry)
            self.distributed.unregister_nowait(entry)
            return
        with trio.move_on_after(5.0):
            try:
                await self.locator.directory.unregister(entry)
            except DirectoryError as exc:
                log.warning("could not unregister %s: %s", act.grain_id, exc)

    # -- calls in -----------------------------------------------------------------------------

    def _on_request(self, req: env.Request) -> None:
        messenger = self.messenger
        catalog = self._catalog
        assert catalog is not None  # the messenger runs inside run()
        try:
            grain_id = self._grain_ids.get(req.grain_id)
            if grain_id is None:
                grain_id = GrainId.parse(req.grain_id)
                check_key_length(grain_id.key, self.max_key_length)
                if len(self._grain_ids) >= _GRAIN_ID_CACHE_SIZE:
                    self._grain_ids.clear()
                self._grain_ids[req.grain_id] = grain_id
            info = catalog.implementation(grain_id, None)
            method = catalog.remote_methods(info).get(req.method)
            if method is None:
                raise GrainMethodError(
                    f"{info.describe()} has no grain method {req.method!r} that other "
                    "processes may call (see its grain interfaces)"
                )
            kwargs = self.codec.decode_call(method, req.args)
            if req.timeout == 0:
                raise GrainCallTimeoutError(
                    f"the caller's deadline for {grain_id}.{req.method}() had passed when "
                    "the call was sent"
                )
        except (GrainsError, ValueError) as exc:
            messenger.reply_error(req, exc)
            return
        call = Call(method, (), kwargs, target=grain_id)
        call.kind = method.kind
        if req.trace is not None and self.tracer is not None:
            call.trace = self.tracer.extract(req.trace)
        if req.timeout is not None:
            call.deadline = trio.current_time() + req.timeout
        if req.reply_to:
            call.on_done = functools.partial(self._send_reply, req, method)
            self._inbound[(req.reply_to, req.call_id)] = call
        else:
            call.on_done = log_one_way_outcome(call.describe())
        act = catalog.lookup(grain_id)
        if act is not None:  # queue it there
            act.post(call)
            return
        if not catalog.accepting:
            if req.reply_to:
                messenger.reply(req, env.REROUTE, b"")
            return
        if info.max_local_workers is None and req.flags & env.LOCATE:
            if req.hops >= MAX_ATTEMPTS:
                messenger.reply_error(req, GrainCallError(f"{grain_id}: too many forwards"))
                return
            assert self._nursery is not None
            self._nursery.start_soon(self._place_and_forward, req, call, grain_id)
            return
        catalog.local_activation(grain_id, info).post(call)

    async def _place_and_forward(self, req: env.Request, call: Call, grain_id: GrainId) -> None:
        try:
            silo_id, _ = await self.locator.locate(grain_id)
        except (GrainsError, DirectoryError) as exc:
            call.fail(exc)
            return
        catalog = self._catalog
        assert catalog is not None
        if silo_id == self.silo_id or not self.messenger.forward(req, silo_id):
            info = catalog.implementation(grain_id, None)
            try:
                catalog.local_activation(grain_id, info).post(call)
            except SiloUnavailableError as exc:
                call.fail(exc)
        else:
            self.forwarded += 1
            self._inbound.pop((req.reply_to, req.call_id), None)
            if len(self._forwarded) >= _FORWARDED_REMEMBERED:
                self._forwarded.clear()
            idempotent = call.method is not None and call.method.idempotent
            self._forwarded[(req.reply_to, req.call_id)] = (silo_id, idempotent)

    def _on_cancel(self, reply_to: str, call_id: int) -> None:
        """The caller was cancelled: skip its call if queued, cancel its turn if running
        (or pass the cancel on, if the call was forwarded from here)."""
        call = self._inbound.pop((reply_to, call_id), None)
        if call is not None:
            call.abandon()
            return
        forwarded = self._forwarded.pop((reply_to, call_id), None)
        address = None if forwarded is None else self.locator.address_of(forwarded[0])
        if address is not None:
            self.messenger.send_nowait(address, env.encode_cancel(call_id, reply_to))

    def _send_reply(
        self, req: env.Request, method: MethodInfo, result: outcome.Outcome[Any]
    ) -> None:
        messenger = self.messenger
        if isinstance(result, outcome.Value):
            try:
                payload = self.codec.encode_result(method, result.value)
            except Exception as exc:
                messenger.reply(req, env.ERROR, messenger.encode_exception(exc))
                return
            messenger.reply(req, env.OK, payload)
        else:
            assert isinstance(result, outcome.Error)
            messenger.reply(req, env.ERROR, messenger.encode_exception(result.error))
