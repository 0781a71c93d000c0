#!/usr/bin/env python3
"""A plain Kafka peer (confluent-kafka, librdkafka's Python client) for Herald's interop test.

read BROKER TOPIC COUNT: read TOPIC from its beginning (no consumer group) and print one JSON
line per record (key, headers as strings, value parsed as JSON) until COUNT arrived (or 30 s).

write BROKER TOPIC ROUTING_KEY COUNT: produce COUNT plain JSON records with only a
`herald_routing_key` header, acks=all, then print DONE.
"""
import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition


def read(broker, topic, count):
    c = Consumer({"bootstrap.servers": broker, "group.id": "interop-reader",
                  "enable.auto.commit": False})
    md = c.list_topics(topic, timeout=10)
    c.assign([TopicPartition(topic, p, 0) for p in md.topics[topic].partitions])
    got = 0
    deadline = time.time() + 30
    while got < count and time.time() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        headers = {k: (v or b"").decode() for k, v in (m.headers() or [])}
        print(json.dumps({"key": (m.key() or b"").decode(), "headers": headers,
                          "value": json.loads(m.value())}), flush=True)
        got += 1
    c.close()


def write(broker, topic, routing_key, count):
    p = Producer({"bootstrap.servers": broker, "acks": "all"})
    for i in range(count):
        p.produce(topic, json.dumps({"legacy": i}).encode(),
                  headers=[("herald_routing_key", routing_key.encode())])
    p.flush(30)
    print("DONE", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "read":
        read(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        write(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
