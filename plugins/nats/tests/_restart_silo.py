"""A silo in a process of its own, for the restart-safety test (test_jetstream_restart.py).

    python _restart_silo.py <nats url> <prefix> <record file> <silo label>

Runs a silo with the ``jetstream`` stream provider until it is killed. Its implicitly
subscribed grain appends one line per handled item to the record file (flushed and
fsynced before the handler returns, i.e. before the item is acked)::

    <silo label> <TAB> <key> <TAB> <payload> <TAB> <partition>:<sequence>
"""

from __future__ import annotations

import os
import sys

import trio

from trio_grains import Grain, SequenceToken, SiloConfig, implicit_subscription, open_silo

URL, PREFIX, RECORD, LABEL = sys.argv[1:5]
PARTITIONS = 4
MAX_IN_FLIGHT = 32  # per partition: the bound on redeliveries after a kill

_record = open(RECORD, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process


@implicit_subscription("restart")
class RecorderGrain(Grain):
    async def on_stream_item(self, item: int, token: SequenceToken) -> None:
        await trio.sleep(0.001)  # some work: the kill lands mid-stream
        _record.write(f"{LABEL}\t{self.primary_key}\t{item}\t{token}\n")
        _record.flush()
        os.fsync(_record.fileno())


async def main() -> None:
    config = SiloConfig.from_dict(
        {
            "name": f"restart-{LABEL}",
            "streams": {
                "default": {
                    "provider": "jetstream",
                    "options": {
                        "servers": [URL],
                        "prefix": PREFIX,
                        "partitions": PARTITIONS,
                        "ack_wait": 3,
                        "max_in_flight": MAX_IN_FLIGHT,
                        "batch_size": 16,
                    },
                }
            },
        }
    )
    async with open_silo(config, grains=[RecorderGrain]):
        print("ready", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main)
