"""Reads a topic with confluent-kafka, a client this project did not write,
and prints each message as one JSON line: key, headers, payload, partition.

Usage: consume.py BOOTSTRAP TOPIC COUNT TIMEOUT_SECONDS
"""

import json
import sys
import time
import uuid

from confluent_kafka import Consumer


def main() -> int:
    bootstrap, topic, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"interop-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    deadline = time.monotonic() + timeout
    seen = 0
    try:
        while seen < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                print(f"consumer error: {message.error()}", file=sys.stderr)
                continue
            headers = {k: v.decode("utf-8") for k, v in (message.headers() or [])}
            print(json.dumps({
                "key": message.key().decode("utf-8"),
                "partition": message.partition(),
                "headers": headers,
                "payload": json.loads(message.value()),
            }), flush=True)
            seen += 1
    finally:
        consumer.close()
    return 0 if seen == count else 1


if __name__ == "__main__":
    sys.exit(main())
