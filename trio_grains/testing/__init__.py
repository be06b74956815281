"""Tools for testing grains and the providers that plugins ship.

Conformance kits, in the spirit of ``trio.testing.check_two_way_stream`` and Orleans'
storage TestKit: every storage provider, reminder table, stream adapter
(:func:`check_stream_adapter`), clustering transport (:func:`check_transport`), membership
table (:func:`check_membership_table`) and grain directory (:func:`check_grain_directory`)
should pass them::

    from trio_grains.testing import check_grain_storage

    async def test_my_storage_conforms(tmp_path):
        await check_grain_storage(lambda: open_my_storage(tmp_path / "db"))

The callable must yield a provider on the *same* backend each time it is called: the kits
close and reopen it to check durability. ``durable=False`` skips those checks for
in-memory providers. Each check is also available alone (:data:`STORAGE_CHECKS`,
:data:`REMINDER_CHECKS`), e.g. to parametrize a pytest test over them.

May import: every layer below, the ``trio_grains`` package and its own modules. Not ``cli``.
"""

from ._cluster import TestCluster as TestCluster
from ._cluster import open_test_cluster as open_test_cluster
from ._directory_kit import DIRECTORY_CHECKS as DIRECTORY_CHECKS
from ._directory_kit import DirectoryCorrupter as DirectoryCorrupter
from ._directory_kit import GrainDirectoryCheck as GrainDirectoryCheck
from ._directory_kit import GrainDirectoryOpener as GrainDirectoryOpener
from ._directory_kit import check_grain_directory as check_grain_directory
from ._membership_kit import MEMBERSHIP_CHECKS as MEMBERSHIP_CHECKS
from ._membership_kit import MembershipTableCheck as MembershipTableCheck
from ._membership_kit import MembershipTableOpener as MembershipTableOpener
from ._membership_kit import check_membership_table as check_membership_table
from ._reminder_kit import REMINDER_CHECKS as REMINDER_CHECKS
from ._reminder_kit import REMINDER_DURABILITY_CHECKS as REMINDER_DURABILITY_CHECKS
from ._reminder_kit import ReminderTableCheck as ReminderTableCheck
from ._reminder_kit import ReminderTableOpener as ReminderTableOpener
from ._reminder_kit import check_reminder_table as check_reminder_table
from ._storage_kit import STORAGE_CHECKS as STORAGE_CHECKS
from ._storage_kit import STORAGE_DURABILITY_CHECKS as STORAGE_DURABILITY_CHECKS
from ._storage_kit import StorageCheck as StorageCheck
from ._storage_kit import StorageOpener as StorageOpener
from ._storage_kit import check_grain_storage as check_grain_storage
from ._stream_kit import STREAM_CHECKS as STREAM_CHECKS
from ._stream_kit import StreamAdapterCheck as StreamAdapterCheck
from ._stream_kit import StreamAdapterOpener as StreamAdapterOpener
from ._stream_kit import check_stream_adapter as check_stream_adapter
from ._transport_kit import TRANSPORT_CHECKS as TRANSPORT_CHECKS
from ._transport_kit import ClusterBackendOpener as ClusterBackendOpener
from ._transport_kit import TransportCheck as TransportCheck
from ._transport_kit import check_transport as check_transport

__all__ = [
    "DIRECTORY_CHECKS",
    "MEMBERSHIP_CHECKS",
    "REMINDER_CHECKS",
    "REMINDER_DURABILITY_CHECKS",
    "STORAGE_CHECKS",
    "STORAGE_DURABILITY_CHECKS",
    "STREAM_CHECKS",
    "TRANSPORT_CHECKS",
    "ClusterBackendOpener",
    "DirectoryCorrupter",
    "GrainDirectoryCheck",
    "GrainDirectoryOpener",
    "MembershipTableCheck",
    "MembershipTableOpener",
    "ReminderTableCheck",
    "ReminderTableOpener",
    "StorageCheck",
    "StorageOpener",
    "StreamAdapterCheck",
    "StreamAdapterOpener",
    "TestCluster",
    "TransportCheck",
    "check_grain_directory",
    "check_grain_storage",
    "check_membership_table",
    "check_reminder_table",
    "check_stream_adapter",
    "check_transport",
    "open_test_cluster",
]

for _name in (
    "check_grain_directory",
    "check_grain_storage",
    "check_membership_table",
    "check_reminder_table",
    "check_stream_adapter",
    "check_transport",
):
    globals()[_name].__module__ = __name__
del _name
