"""The in-cluster grain directory: each silo owns a share, silos ask each other.

:class:`DistributedGrainDirectory` is a silo's front to the directory that
:mod:`~trio_grains._cluster.directory_ring` partitions over the silos. A registration, a
lookup or an unregistration goes to the owner of the grain's entry under this silo's ring:
this very silo (no message at all; a lone silo never sends one) or one request to the
owner over the silos' *peer* endpoints (:meth:`~trio_grains.ClusterBackend.
open_peer_endpoint`, where clients cannot send). When the ring changes, the silo pushes
the entries of its own activations to their new owners.

Requests carry the sender's ring key and the version of the view it saw it in; an owner
whose ring differs answers ``STALE`` and the sender re-reads membership and asks again
(with a short backoff, within the caller's deadline). A registration that was answered
under a ring that changed meanwhile is made again under the new one (the same activation
id: it is a no-op if the entry moved with the push). See the ring module for why this
keeps one activation per grain.

Every request is hostile until checked: the arguments are decoded by their annotations
(attrs classes, strict), grain ids parsed and bounded, silo and activation ids bounded,
and pushes limited to :data:`MAX_PUSH_ENTRIES` entries. Only silos can reach a peer
endpoint (with the NATS permissions of ``docs/security.md``).

May import: the core up to the catalog and the dispatcher, and the cluster modules below
routing (``directory``, ``directory_ring``, ``messenger``, ``envelope``, ``silo_entries``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Set
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._exceptions import DirectoryError, GrainsError, SiloUnavailableError
from .._ids import GrainId, check_key_length
from .._methods import MethodInfo
from . import envelope as env
from .directory import DirectoryEntry, GrainDirectory
from .directory_ring import DirectoryPartition, DirectoryRing
from .messenger import Messenger, RerouteError
from .silo_entries import MembershipView, SiloStatus

if TYPE_CHECKING:
    from .._serialization import Codec

__all__ = [
    "DIRECTORY_TARGET",
    "MAX_PUSH_ENTRIES",
    "DistributedGrainDirectory",
    "WireEntry",
]

log = logging.getLogger("trio_grains.directory")

DIRECTORY_TARGET = GrainId.create("sys.directory", "0")
"""The target named in directory requests (not a grain: peer endpoints serve only these)."""
MAX_PUSH_ENTRIES = 2_000  # entries per push message
MAX_BATCH = 500  # registrations or unregistrations per request
SLOW_RECOVERY = 5.0  # seconds a request waits for this silo's share before it is logged
MAX_ACTIVATION_ID_LENGTH = 64
MAX_DEFERRED = 10_000  # requests waiting for this silo's share to be recovered
OK, STALE = 0, 1


@attrs.frozen
class WireEntry:
    """A directory entry as it travels between silos."""

    grain: str
    silo: str
    activation: str

    @classmethod
    def of(cls, entry: DirectoryEntry) -> WireEntry:
        return cls(str(entry.grain_id), entry.silo_id, entry.activation_id)


@attrs.frozen
class DirectoryAnswer:
    """An owner's answer: ``status`` (``OK`` or ``STALE``: "my ring is another, refresh"),
    the entry asked for (registered or looked up), the pushed entries it refused."""

    status: int
    ring: int
    entry: WireEntry | None = None
    refused: list[WireEntry] = attrs.Factory(list)
    #: a batch of registrations' stored entries, in the order asked
    entries: list[WireEntry] = attrs.Factory(list)


@attrs.define(eq=False)
class _Batch:
    """Registrations on their way to one owner, sent as one request when the tasks that
    made them have run (so many concurrent activations cost one message, not one each)."""

    ring: DirectoryRing
    entries: list[WireEntry] = attrs.Factory(list)
    done: trio.Event = attrs.Factory(trio.Event)
    #: the stored entries, in order; ``None``: ask again (another ring, owner gone)
    answers: list[WireEntry] | None = None
    error: BaseException | None = None


# The directory's operations, as methods of the peer endpoints (their annotations are
# what the codec decodes requests and answers by; they are never called).
async def _register(
    _self: object, ring: int, version: int, entries: list[WireEntry]
) -> DirectoryAnswer:
    raise NotImplementedError


async def _lookup(_self: object, ring: int, version: int, grain: str) -> DirectoryAnswer:
    raise NotImplementedError


async def _unregister(
    _self: object, ring: int, version: int, entries: list[WireEntry]
) -> DirectoryAnswer:
    raise NotImplementedError


async def _push(
    _self: object, ring: int, version: int, sender: str, entries: list[WireEntry], done: bool
) -> DirectoryAnswer:
    raise NotImplementedError


REGISTER = MethodInfo("register", _register, idempotent=True)
LOOKUP = MethodInfo("lookup", _lookup, idempotent=True)
UNREGISTER = MethodInfo("unregister", _unregister, one_way=True)
PUSH = MethodInfo("push", _push, idempotent=True)
OPERATIONS = {op.name: op for op in (REGISTER, LOOKUP, UNREGISTER, PUSH)}


def backoff(attempt: int) -> float:
    return 0.0 if attempt == 0 else min(0.5, 0.005 * 2**attempt)


class DistributedGrainDirectory(GrainDirectory):
    """A silo's front to the in-cluster directory (see the module docstring).

    *messenger* is the silo's peer messenger (its ``on_request`` must be
    :meth:`on_request`); *local_entries* gives the entries of this silo's registered
    activations (pushed on ring changes); *refresh* re-reads membership and applies it
    (through :meth:`on_view`); *refused* is told of local activations another silo's
    registration won over (they must stop).
    """

    def __init__(
        self,
        self_id: str,
        messenger: Messenger,
        codec: Codec,
        *,
        local_entries: Callable[[], Iterable[DirectoryEntry]],
        refresh: Callable[[], Awaitable[None]],
        refused: Callable[[DirectoryEntry], None],
        max_grain_id_length: int,
    ) -> None:
        self.self_id = self_id
        self.messenger = messenger
        self.codec = codec
        self.partition = DirectoryPartition(self_id)
        self.ring = self.partition.ring
        self.view_version = -1
        self._local_entries = local_entries
        self._refresh = refresh
        self._refused = refused
        self._max_grain_id_length = max_grain_id_length
        self._nursery: trio.Nursery | None = None
        self._refreshing: trio.Event | None = None
        self._deferred = 0
        self._dead: set[str] = set()  # the silos the last view showed DEAD
        #: registrations waiting to be sent, and unregistrations, by owner
        self._batches: dict[str, _Batch] = {}
        self._unregisters: dict[str, list[WireEntry]] = {}
        self._one_way_ids = random.Random()  # (one-way: nobody answers or cancels them)
        self.stale_answers = 0
        self.pushes_sent = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the peer endpoint's requests and push on ring changes, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.messenger.run)
            task_status.started()
            await trio.sleep_forever()

    # -- the ring -----------------------------------------------------------------------------

    def on_view(self, view: MembershipView) -> None:
        """Adopt *view*: drop the entries of dead silos, and on a ring change push this
        silo's entries to their owners."""
        if view.version < self.view_version:
            return
        self.view_version = view.version
        dead = {s for s, e in view.entries.items() if e.status is SiloStatus.DEAD}
        newly_dead = dead - self._dead
        self._dead = dead  # (a DEAD row stays in views for a while: scan the share once)
        if newly_dead:
            self.partition.remove_silos(newly_dead)
        ring = DirectoryRing.of(view, self.ring)
        changed = ring.key != self.ring.key
        self.partition.adopt(ring, self._local_entries() if changed else (), view.version)
        self.ring = self.partition.ring
        if changed and self._nursery is not None:
            self._nursery.start_soon(self._push, self.partition.ring, view.version)

    async def _push(self, ring: DirectoryRing, version: int) -> None:
        by_owner: dict[str, list[WireEntry]] = {o: [] for o in ring.owners if o != self.self_id}
        for entry in self._local_entries():
            owner = ring.owner_of(entry.grain_id)
            if owner is not None and owner != self.self_id:
                by_owner[owner].append(WireEntry.of(entry))
        async with trio.open_nursery() as nursery:
            for owner, entries in by_owner.items():
                nursery.start_soon(self._push_to, ring, version, owner, entries)

    async def _push_to(
        self, ring: DirectoryRing, version: int, owner: str, entries: list[WireEntry]
    ) -> None:
        step = MAX_PUSH_ENTRIES
        chunks = [entries[i : i + step] for i in range(0, len(entries), step)] or [[]]
        for i, chunk in enumerate(chunks):
            attempt = 0
            while self.ring.key == ring.key:
                args = {
                    "ring": ring.key,
                    "version": version,
                    "sender": self.self_id,
                    "entries": chunk,
                    "done": i == len(chunks) - 1,
                }
                try:
                    with trio.move_on_after(5.0):
                        answer: DirectoryAnswer = await self.messenger.call(
                            owner, DIRECTORY_TARGET, PUSH, (), args
                        )
                        self.pushes_sent += 1
                        for refused in answer.refused:
                            self._refuse(refused)
                        break
                except (GrainsError, RerouteError) as exc:
                    log.debug("push to %s failed (%s); retrying", owner, exc)
                attempt += 1
                await trio.sleep(backoff(attempt))
            else:
                return  # the ring changed: that ring's push replaces this one

    def _refuse(self, wire: WireEntry) -> None:
        entry = self._decode_entry(wire)
        log.warning(
            "%s is also active elsewhere (found while recovering the directory): this "
            "activation stops",
            entry.grain_id,
        )
        self._refused(entry)

    # -- operations (GrainDirectory) ----------------------------------------------------------

    async def register(self, entry: DirectoryEntry) -> DirectoryEntry:
        attempt = 0
        while True:
            ring = self.ring
            owner = ring.owner_of(entry.grain_id)
            if owner == self.self_id:
                if not self.partition.recovered:  # (else no checkpoint: a dict operation)
                    await self._wait_recovered()
                    if self.ring.key != ring.key:
                        continue
                winner = self.partition.register(entry)
            elif owner is None:
                attempt = await self._after_stale(attempt)
                continue
            else:
                batch = self._batches.get(owner)
                if batch is None or batch.ring.key != ring.key or len(batch.entries) >= MAX_BATCH:
                    batch = _Batch(ring)
                    if self._nursery is not None:
                        self._batches[owner] = batch
                        self._nursery.start_soon(self._send_batch, owner, batch)
                index = len(batch.entries)
                batch.entries.append(WireEntry.of(entry))
                if self._nursery is None:  # (not serving yet: no batching)
                    await self._send_batch(owner, batch)
                await batch.done.wait()
                if batch.error is not None:
                    raise batch.error
                if batch.answers is None:
                    attempt = await self._after_stale(attempt)
                    continue
                winner = self._decode_entry(batch.answers[index])
            if self.ring.key == ring.key:
                return winner
            # The ring changed while we asked: register again under the new one.

    async def _wait_recovered(self) -> None:
        """Wait until this silo's share serves; say so if that takes long."""
        with trio.move_on_after(SLOW_RECOVERY):
            await self.partition.wait_recovered()
            return
        stats = self.partition.statistics()
        log.warning(
            "silo %s: its share of the grain directory has waited %.0f s for the entries "
            "of silos %s (ring of %s)",
            self.self_id,
            SLOW_RECOVERY,
            ", ".join(sorted(stats.waiting_for)) or "(none)",
            ", ".join(self.ring.owners),
        )
        await self.partition.wait_recovered()

    async def _send_batch(self, owner: str, batch: _Batch) -> None:
        """Send *batch* (started in the nursery: it runs once the tasks that are runnable
        now have added their registrations)."""
        if self._batches.get(owner) is batch:
            del self._batches[owner]  # sealed: later registrations make a new batch
        try:
            answer = await self._ask(owner, REGISTER, batch.ring, {"entries": batch.entries})
            if answer is not None and len(answer.entries) == len(batch.entries):
                batch.answers = answer.entries
        except DirectoryError as exc:
            batch.error = exc
        finally:
            batch.done.set()

    async def lookup(self, grain_id: GrainId) -> DirectoryEntry | None:
        attempt = 0
        while True:
            ring = self.ring
            owner = ring.owner_of(grain_id)
            if owner == self.self_id:
                if not self.partition.recovered:
                    await self._wait_recovered()
                    if self.ring.key != ring.key:
                        continue
                return self.partition.lookup(grain_id)
            answer = await self._ask(owner, LOOKUP, ring, {"grain": str(grain_id)})
            if answer is None:
                attempt = await self._after_stale(attempt)
                continue
            return None if answer.entry is None else self._decode_entry(answer.entry)

    async def unregister(self, entry: DirectoryEntry) -> bool:
        await trio.lowlevel.checkpoint()
        return self.unregister_nowait(entry)

    def unregister_nowait(self, entry: DirectoryEntry) -> bool:
        """Remove *entry* at its owner: here, or one message that gets no answer (an entry
        left behind, should it be lost, is found stale and mended by the grain's next
        activation). True if it was removed here."""
        owner = self.ring.owner_of(entry.grain_id)
        if owner is None:
            return False
        if owner == self.self_id:
            return self.partition.unregister(entry)
        pending = self._unregisters.setdefault(owner, [])
        pending.append(WireEntry.of(entry))
        if self._nursery is None:
            self._send_unregisters(owner)
        elif len(pending) == 1:  # the first since the last flush: flush after this tick
            self._nursery.start_soon(self._flush_unregisters, owner)
        return False

    async def _flush_unregisters(self, owner: str) -> None:
        self._send_unregisters(owner)

    def _send_unregisters(self, owner: str) -> None:
        entries = self._unregisters.pop(owner, [])
        address = self.messenger.address_of(owner)
        if address is None:
            return
        target = str(DIRECTORY_TARGET)
        for i in range(0, len(entries), MAX_BATCH):
            args = {
                "ring": self.ring.key,
                "version": self.view_version,
                "entries": entries[i : i + MAX_BATCH],
            }
            payload = self.codec.encode_call(UNREGISTER, (), args)
            call_id = self._one_way_ids.randrange(1, env.MAX_CALL_ID)
            data = env.encode_request(
                call_id, "", target, UNREGISTER.name, payload, None, 0, 0, None
            )
            self.messenger.send_nowait(address, data)

    async def remove_silo(self, silo_id: str) -> int:
        await trio.lowlevel.checkpoint()
        return self.partition.remove_silos({silo_id})

    async def remove_silos_not_in(self, live: Set[str]) -> int:
        await trio.lowlevel.checkpoint()
        gone = {e.silo_id for e in self.partition.entries.values()} - set(live)
        return self.partition.remove_silos(gone)

    async def _ask(
        self, owner: str | None, op: MethodInfo, ring: DirectoryRing, args: dict[str, Any]
    ) -> DirectoryAnswer | None:
        """*op* at *owner*; ``None`` when it must be asked again (stale ring, owner gone)."""
        if owner is None:
            return None
        try:
            answer: DirectoryAnswer = await self.messenger.call(
                owner,
                DIRECTORY_TARGET,
                op,
                (),
                {"ring": ring.key, "version": self.view_version, **args},
            )
        except (RerouteError, SiloUnavailableError):
            return None
        except GrainsError as exc:
            raise DirectoryError(f"the directory of silo {owner} failed: {exc}") from exc
        if answer.status != OK:
            self.stale_answers += 1
            return None
        return answer

    async def _after_stale(self, attempt: int) -> int:
        """Re-read membership (once for every caller waiting), then back off."""
        if self._refreshing is None:
            self._refreshing = event = trio.Event()
            try:
                await self._refresh()
            except GrainsError as exc:
                log.debug("could not re-read membership: %s", exc)
            finally:
                self._refreshing = None
                event.set()
        else:
            await self._refreshing.wait()
        await trio.sleep(backoff(attempt))
        return attempt + 1

    # -- requests from other silos --------------------------------------------------------------

    def on_request(self, req: env.Request) -> None:
        """A request at this silo's peer endpoint (only directory operations are served)."""
        messenger = self.messenger
        op = OPERATIONS.get(req.method)
        if req.grain_id != str(DIRECTORY_TARGET) or op is None:
            messenger.reply_error(req, DirectoryError("a peer endpoint serves the directory only"))
            return
        try:
            kwargs = self.codec.decode_call(op, req.args)
            entries = kwargs.get("entries")
            if entries is not None:
                limit = MAX_PUSH_ENTRIES if op is PUSH else MAX_BATCH
                if len(entries) > limit:
                    raise DirectoryError(f"a {op.name} of more than {limit} entries")
                kwargs["entries"] = [self._decode_entry(e) for e in entries]
            if op is PUSH and any(e.silo_id != kwargs["sender"] for e in kwargs["entries"]):
                raise DirectoryError("a push names activations of another silo")
            if op is LOOKUP:
                kwargs["grain"] = self._grain_id(kwargs["grain"])
        except (GrainsError, ValueError) as exc:
            messenger.reply_error(req, exc)
            return
        if op is PUSH:  # (for a ring not adopted yet, kept until it is)
            refused = self.partition.pushed(
                kwargs["ring"],
                kwargs["sender"],
                kwargs["entries"],
                kwargs["done"],
                kwargs["version"],
            )
            wires = [WireEntry.of(e) for e in refused]
            self._answer(req, op, DirectoryAnswer(OK, self.ring.key, refused=wires))
            if kwargs["ring"] != self.ring.key:
                self._maybe_stale(kwargs["version"])
        elif kwargs["ring"] != self.ring.key:
            self._maybe_stale(kwargs["version"])
            self._answer(req, op, DirectoryAnswer(STALE, self.ring.key))
        elif op is UNREGISTER:
            for entry in kwargs["entries"]:
                self.partition.unregister(entry)
        elif self.partition.recovered:
            self._serve(req, op, kwargs)
        elif self._nursery is not None and self._deferred < MAX_DEFERRED:
            self._deferred += 1
            self._nursery.start_soon(self._serve_when_recovered, req, op, kwargs)
        else:
            self._answer(req, op, DirectoryAnswer(STALE, self.ring.key))

    def _maybe_stale(self, version: int) -> None:
        """A request made under a newer view than ours: re-read membership."""
        if version > self.view_version and self._nursery is not None and self._refreshing is None:
            self._nursery.start_soon(self._after_stale, 0)

    async def _serve_when_recovered(
        self, req: env.Request, op: MethodInfo, kwargs: dict[str, Any]
    ) -> None:
        try:
            with trio.move_on_after(req.timeout if req.timeout is not None else 30.0):
                await self._wait_recovered()
        finally:
            self._deferred -= 1
        if self.partition.recovered and self.ring.key == kwargs["ring"]:
            self._serve(req, op, kwargs)
        else:
            self._answer(req, op, DirectoryAnswer(STALE, self.ring.key))

    def _serve(self, req: env.Request, op: MethodInfo, kwargs: dict[str, Any]) -> None:
        if op is REGISTER:
            register = self.partition.register
            stored = [WireEntry.of(register(entry)) for entry in kwargs["entries"]]
            self._answer(req, op, DirectoryAnswer(OK, self.ring.key, entries=stored))
            return
        found = self.partition.lookup(kwargs["grain"])
        wire = None if found is None else WireEntry.of(found)
        self._answer(req, op, DirectoryAnswer(OK, self.ring.key, entry=wire))

    def _answer(self, req: env.Request, op: MethodInfo, answer: DirectoryAnswer) -> None:
        if req.reply_to:
            self.messenger.reply(req, env.OK, self.codec.encode_result(op, answer))

    # -- checks ---------------------------------------------------------------------------------

    def _grain_id(self, text: str) -> GrainId:
        if len(text) > self._max_grain_id_length:
            raise DirectoryError(f"a grain id of more than {self._max_grain_id_length} characters")
        grain_id = GrainId.parse(text)
        check_key_length(grain_id.key, self._max_grain_id_length)
        return grain_id

    def _decode_entry(self, wire: WireEntry) -> DirectoryEntry:
        if len(wire.silo) > env.MAX_SILO_ID_LENGTH:
            raise DirectoryError(f"a silo id of more than {env.MAX_SILO_ID_LENGTH} characters")
        if len(wire.activation) > MAX_ACTIVATION_ID_LENGTH:
            raise DirectoryError(
                f"an activation id of more than {MAX_ACTIVATION_ID_LENGTH} characters"
            )
        try:
            return DirectoryEntry(self._grain_id(wire.grain), wire.silo, wire.activation)
        except ValueError as exc:
            raise DirectoryError(f"malformed directory entry: {exc}") from None
