"""trio-grains-dashboard: a live dashboard and a Prometheus ``/metrics`` endpoint served
beside a silo, over HTTP, on Trio (Starlette served by Hypercorn's Trio worker).

Enable it in a silo's configuration::

    [services.dashboard]
    provider = "dashboard"
    options = { host = "127.0.0.1", port = 8080 }

See ``docs/dashboard.md``. :func:`render_prometheus` is the exposition renderer, a pure
function of ``silo.statistics()`` and the stream providers' statistics.
"""

from ._app import make_app as make_app
from ._prometheus import BUCKET_BOUNDS_SECONDS as BUCKET_BOUNDS_SECONDS
from ._prometheus import CONTENT_TYPE as CONTENT_TYPE
from ._prometheus import escape_label_value as escape_label_value
from ._prometheus import render_prometheus as render_prometheus
from ._service import Dashboard as Dashboard
from ._service import DashboardOptions as DashboardOptions
from ._service import open_dashboard as open_dashboard
from ._stats import Snapshot as Snapshot
from ._stats import snapshot_json as snapshot_json
from ._stats import take_snapshot as take_snapshot

__all__ = [
    "BUCKET_BOUNDS_SECONDS",
    "CONTENT_TYPE",
    "Dashboard",
    "DashboardOptions",
    "Snapshot",
    "escape_label_value",
    "make_app",
    "open_dashboard",
    "render_prometheus",
    "snapshot_json",
    "take_snapshot",
]
