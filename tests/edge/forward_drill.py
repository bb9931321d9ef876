"""Child process for the SIGKILL drill: appends signed frames and forwards them to Kafka.

``python -m tests.edge.forward_drill SPOOL BOOTSTRAP TOPIC_PREFIX KEY_PEM (run|drain)``

``run`` appends a readings frame every few milliseconds while a Forwarder
drains the spool to Kafka, printing each sequence number once ``append``
returned; the parent kills it with SIGKILL at a random moment. ``drain``
forwards what is left and exits 0.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from edge import wire
from edge.forward import ForwardConfig, Forwarder
from edge.publish_kafka import KafkaOutput, KafkaPublisher
from edge.spool import Spool, SpoolConfig
from tests.edge.kafka_helpers import append_frame

SITE = "drill-site"


async def main(spool_path: str, bootstrap: str, prefix: str, key_pem: str, mode: str) -> None:
    key = wire.load_private_key(Path(key_pem))
    publisher = KafkaPublisher(
        KafkaOutput(bootstrap_servers=[bootstrap], topic_prefix=prefix, linger_s=0.001), SITE
    )
    config = ForwardConfig(batch_frames=20, backoff_initial_s=0.05, backoff_max_s=0.5,
                           idle_poll_s=0.02)
    with Spool(SpoolConfig(path=Path(spool_path)), "gw-drill") as spool:
        forwarder = Forwarder(spool, [publisher], config)
        if mode == "drain":
            await asyncio.wait_for(forwarder.drain(), 60)
            await publisher.close()
            return
        runner = asyncio.create_task(forwarder.run())
        while not runner.done():
            seq = await asyncio.to_thread(append_frame, spool, key, SITE)
            sys.stdout.write(f"{seq}\n")
            sys.stdout.flush()
            forwarder.notify()
            await asyncio.sleep(0.003)
        runner.result()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
