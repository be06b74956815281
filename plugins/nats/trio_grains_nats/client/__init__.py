"""A Trio-native NATS client: core publish/subscribe/request, JetStream, KV.

Usable on its own by any Trio program; the trio-grains providers beside it
(``trio_grains_nats.storage``, ``.streams``, ``.clustering``, ...) are built on it::

    from trio_grains_nats.client import connect

    async with connect("nats://127.0.0.1:4222") as nc:
        sub = await nc.subscribe("greet.*")
        await nc.publish("greet.joe", b"hello")
        reply = await nc.request("svc.time", b"")
        js = nc.jetstream()
"""

from __future__ import annotations

from ._connection import Connection as Connection
from ._connection import ConnectionStatistics as ConnectionStatistics
from ._connection import LateReply as LateReply
from ._connection import connect as connect
from ._exceptions import JS_ERR_CONSUMER_NOT_FOUND as JS_ERR_CONSUMER_NOT_FOUND
from ._exceptions import JS_ERR_MESSAGE_NOT_FOUND as JS_ERR_MESSAGE_NOT_FOUND
from ._exceptions import JS_ERR_STREAM_NOT_FOUND as JS_ERR_STREAM_NOT_FOUND
from ._exceptions import JS_ERR_WRONG_LAST_SEQUENCE as JS_ERR_WRONG_LAST_SEQUENCE
from ._exceptions import AuthorizationError as AuthorizationError
from ._exceptions import ConnectionClosedError as ConnectionClosedError
from ._exceptions import InvalidKeyError as InvalidKeyError
from ._exceptions import JetStreamAPIError as JetStreamAPIError
from ._exceptions import JetStreamError as JetStreamError
from ._exceptions import KeyDeletedError as KeyDeletedError
from ._exceptions import KeyExistsError as KeyExistsError
from ._exceptions import NatsConnectionError as NatsConnectionError
from ._exceptions import NatsError as NatsError
from ._exceptions import NoRespondersError as NoRespondersError
from ._exceptions import NotFoundError as NotFoundError
from ._exceptions import ProtocolViolationError as ProtocolViolationError
from ._exceptions import StaleConnectionError as StaleConnectionError
from ._exceptions import WrongLastSequenceError as WrongLastSequenceError
from ._handshake import redact_url as redact_url
from ._jetstream import MSG_ID as MSG_ID
from ._jetstream import JetStream as JetStream
from ._jetstream import PublishItem as PublishItem
from ._jetstream import PullSubscription as PullSubscription
from ._jsmsg import JsMsg as JsMsg
from ._jsmsg import JsMsgMetadata as JsMsgMetadata
from ._jsmsg import ack_all as ack_all
from ._kv import MAX_SUBJECT_LENGTH as MAX_SUBJECT_LENGTH
from ._kv import KeyValue as KeyValue
from ._kv import KvEntry as KvEntry
from ._kv import KvWatcher as KvWatcher
from ._kv import create_key_value as create_key_value
from ._kv import key_value as key_value
from ._msg import Msg as Msg
from ._subscription import PayloadSubscription as PayloadSubscription
from ._subscription import Subscription as Subscription
from ._subscription import SubscriptionStatistics as SubscriptionStatistics

__all__ = [
    "JS_ERR_CONSUMER_NOT_FOUND",
    "JS_ERR_MESSAGE_NOT_FOUND",
    "JS_ERR_STREAM_NOT_FOUND",
    "JS_ERR_WRONG_LAST_SEQUENCE",
    "MAX_SUBJECT_LENGTH",
    "MSG_ID",
    "AuthorizationError",
    "Connection",
    "ConnectionClosedError",
    "ConnectionStatistics",
    "InvalidKeyError",
    "JetStream",
    "JetStreamAPIError",
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
    "PayloadSubscription",
    "ProtocolViolationError",
    "PublishItem",
    "PullSubscription",
    "StaleConnectionError",
    "Subscription",
    "SubscriptionStatistics",
    "WrongLastSequenceError",
    "ack_all",
    "connect",
    "create_key_value",
    "key_value",
    "redact_url",
]

# Tracebacks and reprs show the public names.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith(__name__ + "._"):
        try:
            _obj.__module__ = __name__
        except (AttributeError, TypeError):
            pass
del _name, _obj
