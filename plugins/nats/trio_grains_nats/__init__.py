"""trio-grains-nats: a Trio-native NATS client and the trio-grains providers built on it.

The client lives in :mod:`trio_grains_nats.client` (usable on its own by any Trio
program); its public names are re-exported here so ``trio_grains_nats.connect`` keeps
working. The providers are ``storage``, ``reminders``, ``streams``, ``clustering``
(membership, directory, transport), registered by ``plugin``.

async with trio_grains_nats.connect("nats://127.0.0.1:4222") as nc:
    sub = await nc.subscribe("greet.*")
    await nc.publish("greet.joe", b"hello")
    reply = await nc.request("svc.time", b"")
    js = nc.jetstream()
"""

from __future__ import annotations

from .client import AuthorizationError as AuthorizationError
from .client import Connection as Connection
from .client import ConnectionClosedError as ConnectionClosedError
from .client import ConnectionStatistics as ConnectionStatistics
from .client import InvalidKeyError as InvalidKeyError
from .client import JetStream as JetStream
from .client import JetStreamAPIError as JetStreamAPIError
from .client import JetStreamError as JetStreamError
from .client import JsMsg as JsMsg
from .client import JsMsgMetadata as JsMsgMetadata
from .client import KeyDeletedError as KeyDeletedError
from .client import KeyExistsError as KeyExistsError
from .client import KeyValue as KeyValue
from .client import KvEntry as KvEntry
from .client import KvWatcher as KvWatcher
from .client import LateReply as LateReply
from .client import Msg as Msg
from .client import NatsConnectionError as NatsConnectionError
from .client import NatsError as NatsError
from .client import NoRespondersError as NoRespondersError
from .client import NotFoundError as NotFoundError
from .client import ProtocolViolationError as ProtocolViolationError
from .client import PublishItem as PublishItem
from .client import PullSubscription as PullSubscription
from .client import StaleConnectionError as StaleConnectionError
from .client import Subscription as Subscription
from .client import SubscriptionStatistics as SubscriptionStatistics
from .client import WrongLastSequenceError as WrongLastSequenceError
from .client import ack_all as ack_all
from .client import connect as connect

__all__ = [
    "AuthorizationError",
    "Connection",
    "ConnectionClosedError",
    "ConnectionStatistics",
    "JetStream",
    "JetStreamAPIError",
    "InvalidKeyError",
    "JetStreamError",
    "JsMsg",
    "JsMsgMetadata",
    "KeyDeletedError",
    "KeyExistsError",
    "KeyValue",
    "KvEntry",
    "KvWatcher",
    "LateReply",
    "Msg",
    "NatsConnectionError",
    "NatsError",
    "NoRespondersError",
    "NotFoundError",
    "ProtocolViolationError",
    "PublishItem",
    "PullSubscription",
    "StaleConnectionError",
    "Subscription",
    "SubscriptionStatistics",
    "WrongLastSequenceError",
    "ack_all",
    "connect",
]
