"""trio-grains: virtual actors (grains) for Trio, in the spirit of Microsoft Orleans.

A grain is addressed by a logical id (``type/key``), always exists, and is activated on
demand inside a silo that you embed in your Trio program::

    class HelloGrain(Grain):
        async def say_hello(self, greeting: str) -> str:
            return f"You said {greeting!r}, I say: Hello!"

    async with open_silo(grains=[HelloGrain]) as silo:
        print(await silo.get_grain(HelloGrain, 0).say_hello("Good morning!"))

May import: every layer below (it re-exports the public API). Not ``cli`` or ``testing``,
which import it.
"""

from ._client import Client as Client
from ._client import ClientConfig as ClientConfig
from ._client import ClientStatistics as ClientStatistics
from ._client import open_client as open_client
from ._cluster.directory import DirectoryEntry as DirectoryEntry
from ._cluster.directory import GrainDirectory as GrainDirectory
from ._cluster.directory import MemoryGrainDirectory as MemoryGrainDirectory
from ._cluster.directory import decode_directory_entry as decode_directory_entry
from ._cluster.directory import encode_directory_entry as encode_directory_entry
from ._cluster.membership import MembershipProtocol as MembershipProtocol
from ._cluster.membership import MembershipTable as MembershipTable
from ._cluster.membership import MemoryMembershipTable as MemoryMembershipTable
from ._cluster.silo_entries import MembershipRow as MembershipRow
from ._cluster.silo_entries import MembershipRows as MembershipRows
from ._cluster.silo_entries import MembershipView as MembershipView
from ._cluster.silo_entries import SiloEntry as SiloEntry
from ._cluster.silo_entries import SiloStatus as SiloStatus
from ._cluster.silo_entries import decode_silo_row as decode_silo_row
from ._cluster.silo_entries import encode_silo_row as encode_silo_row
from ._cluster.transport import ClusterBackend as ClusterBackend
from ._cluster.transport import MemoryCluster as MemoryCluster
from ._cluster.transport import Transport as Transport
from ._config import PluginsConfig as PluginsConfig
from ._config import ProviderConfig as ProviderConfig
from ._config import SiloConfig as SiloConfig
from ._exceptions import ActivationOverloadedError as ActivationOverloadedError
from ._exceptions import ConfigError as ConfigError
from ._exceptions import DirectoryError as DirectoryError
from ._exceptions import GrainCallError as GrainCallError
from ._exceptions import GrainCallTimeoutError as GrainCallTimeoutError
from ._exceptions import GrainIdError as GrainIdError
from ._exceptions import GrainKeyKindError as GrainKeyKindError
from ._exceptions import GrainMethodError as GrainMethodError
from ._exceptions import GrainsError as GrainsError
from ._exceptions import GrainTypeError as GrainTypeError
from ._exceptions import InconsistentStateError as InconsistentStateError
from ._exceptions import InternalError as InternalError
from ._exceptions import MembershipError as MembershipError
from ._exceptions import MembershipUnavailableError as MembershipUnavailableError
from ._exceptions import MessageTooLargeError as MessageTooLargeError
from ._exceptions import PluginError as PluginError
from ._exceptions import RejectedItemError as RejectedItemError
from ._exceptions import RemoteGrainError as RemoteGrainError
from ._exceptions import SerializationError as SerializationError
from ._exceptions import SiloAlreadyJoinedError as SiloAlreadyJoinedError
from ._exceptions import SiloDeclaredDeadError as SiloDeclaredDeadError
from ._exceptions import SiloUnavailableError as SiloUnavailableError
from ._exceptions import StorageError as StorageError
from ._exceptions import StreamError as StreamError
from ._exceptions import TransportClosedError as TransportClosedError
from ._exceptions import TransportError as TransportError
from ._exceptions import remotable as remotable
from ._grain import Grain as Grain
from ._grain import GrainClassRegistry as GrainClassRegistry
from ._grain import GrainInterface as GrainInterface
from ._grain import always_interleave as always_interleave
from ._grain import collection_age as collection_age
from ._grain import grain_type as grain_type
from ._grain import idempotent as idempotent
from ._grain import one_way as one_way
from ._grain import read_only as read_only
from ._grain import reentrant as reentrant
from ._grain import stateless_worker as stateless_worker
from ._ids import SINGLETON_KEY as SINGLETON_KEY
from ._ids import GrainId as GrainId
from ._ids import GrainKey as GrainKey
from ._ids import GrainType as GrainType
from ._ids import escape_token as escape_token
from ._ids import unescape_token as unescape_token
from ._logging import GrainsContextFilter as GrainsContextFilter
from ._metrics import LatencyHistogram as LatencyHistogram
from ._metrics import MethodStatistics as MethodStatistics
from ._metrics import MetricsSnapshot as MetricsSnapshot
from ._metrics import StorageStatistics as StorageStatistics
from ._placement import ActivationCountPlacement as ActivationCountPlacement
from ._placement import HashBasedPlacement as HashBasedPlacement
from ._placement import PlacementDirector as PlacementDirector
from ._placement import PlacementRegistry as PlacementRegistry
from ._placement import PlacementStrategy as PlacementStrategy
from ._placement import PlacementTarget as PlacementTarget
from ._placement import PreferLocalPlacement as PreferLocalPlacement
from ._placement import RandomPlacement as RandomPlacement
from ._placement import SiloInfo as SiloInfo
from ._placement import SiloRolePlacement as SiloRolePlacement
from ._placement import placement as placement
from ._reference import GrainReference as GrainReference
from ._registry import ProviderContext as ProviderContext
from ._registry import ProviderRegistry as ProviderRegistry
from ._reminders import GrainReminder as GrainReminder
from ._reminders import ReminderEntry as ReminderEntry
from ._reminders import ReminderTable as ReminderTable
from ._reminders import TickStatus as TickStatus
from ._rows import MalformedRows as MalformedRows
from ._silo import Silo as Silo
from ._silo import SiloStatistics as SiloStatistics
from ._silo import open_silo as open_silo
from ._storage import GrainStorage as GrainStorage
from ._storage import PersistentState as PersistentState
from ._storage import StoredState as StoredState
from ._storage import persistent_state as persistent_state
from ._streams.model import DeadLetter as DeadLetter
from ._streams.model import EncodedItem as EncodedItem
from ._streams.model import ReceivedItem as ReceivedItem
from ._streams.model import SequenceToken as SequenceToken
from ._streams.model import StreamAdapter as StreamAdapter
from ._streams.model import StreamId as StreamId
from ._streams.model import StreamOptions as StreamOptions
from ._streams.model import StreamStatistics as StreamStatistics
from ._streams.model import implicit_subscription as implicit_subscription
from ._streams.model import partition_for as partition_for
from ._streams.provider import Stream as Stream
from ._streams.provider import StreamProvider as StreamProvider
from ._streams.provider import StreamSubscriptionHandle as StreamSubscriptionHandle
from ._timers import GrainTimer as GrainTimer
from ._tracing import Attributes as Attributes
from ._tracing import SpanKind as SpanKind
from ._tracing import TraceContext as TraceContext
from ._tracing import Tracer as Tracer
from .hookspecs import hookimpl as hookimpl

__version__ = "0.1.0"

__all__ = [
    "SINGLETON_KEY",
    "ActivationCountPlacement",
    "Client",
    "ActivationOverloadedError",
    "ClientConfig",
    "ClientStatistics",
    "ClusterBackend",
    "ConfigError",
    "DeadLetter",
    "DirectoryEntry",
    "DirectoryError",
    "EncodedItem",
    "Grain",
    "GrainCallError",
    "GrainCallTimeoutError",
    "GrainClassRegistry",
    "GrainDirectory",
    "GrainId",
    "GrainIdError",
    "GrainInterface",
    "GrainKey",
    "GrainKeyKindError",
    "GrainMethodError",
    "GrainReference",
    "GrainReminder",
    "GrainStorage",
    "GrainTimer",
    "GrainType",
    "GrainTypeError",
    "GrainsError",
    "HashBasedPlacement",
    "InconsistentStateError",
    "InternalError",
    "MalformedRows",
    "MembershipError",
    "MembershipProtocol",
    "MembershipRow",
    "MembershipRows",
    "GrainsContextFilter",
    "MembershipTable",
    "LatencyHistogram",
    "MethodStatistics",
    "MetricsSnapshot",
    "StorageStatistics",
    # tracing (a tracing provider plugin implements Tracer)
    "Attributes",
    "SpanKind",
    "TraceContext",
    "Tracer",
    "MembershipUnavailableError",
    "MembershipView",
    "MemoryCluster",
    "MemoryGrainDirectory",
    "MemoryMembershipTable",
    "MessageTooLargeError",
    "PersistentState",
    "PlacementDirector",
    "PlacementRegistry",
    "PlacementStrategy",
    "PlacementTarget",
    "PluginError",
    "PluginsConfig",
    "PreferLocalPlacement",
    "ProviderConfig",
    "ProviderContext",
    "ProviderRegistry",
    "RandomPlacement",
    "ReceivedItem",
    "ReminderEntry",
    "ReminderTable",
    "RemoteGrainError",
    "SequenceToken",
    "RejectedItemError",
    "SerializationError",
    "Silo",
    "SiloAlreadyJoinedError",
    "SiloConfig",
    "SiloDeclaredDeadError",
    "SiloEntry",
    "SiloInfo",
    "SiloRolePlacement",
    "SiloStatistics",
    "SiloStatus",
    "SiloUnavailableError",
    "StorageError",
    "StoredState",
    "Stream",
    "StreamAdapter",
    "StreamError",
    "StreamId",
    "StreamOptions",
    "StreamProvider",
    "StreamStatistics",
    "StreamSubscriptionHandle",
    "TickStatus",
    "Transport",
    "TransportClosedError",
    "TransportError",
    "always_interleave",
    "collection_age",
    "decode_directory_entry",
    "decode_silo_row",
    "encode_directory_entry",
    "encode_silo_row",
    "escape_token",
    "grain_type",
    "hookimpl",
    "idempotent",
    "implicit_subscription",
    "one_way",
    "open_client",
    "open_silo",
    "partition_for",
    "persistent_state",
    "placement",
    "read_only",
    "reentrant",
    "remotable",
    "stateless_worker",
    "unescape_token",
]


def _fix_module_names() -> None:
    """Show public names as ``trio_grains.X`` in reprs and tracebacks, as trio does.

    attrs classes get their string annotations resolved first: once ``__module__`` changes,
    ``typing.get_type_hints`` (used by cattrs) would look them up in the wrong module.
    """
    import attrs

    private = [
        obj
        for name in __all__
        if getattr(obj := globals()[name], "__module__", "").startswith("trio_grains._")
    ]
    unresolved = set()
    for obj in private:  # all first: a subclass's hints are looked up in its bases' modules
        if attrs.has(obj):
            try:
                attrs.resolve_types(obj)
            except NameError:
                unresolved.add(obj)  # annotations name TYPE_CHECKING-only imports
    for obj in private:
        if obj in unresolved:
            continue  # keep the module, where its annotations can still be resolved
        try:
            obj.__module__ = __name__
        except (AttributeError, TypeError):
            pass


_fix_module_names()
del _fix_module_names
