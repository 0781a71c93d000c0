#!/usr/bin/env python3
"""A plain AMQP peer (pika) for Herald's interop test.

consume EXCHANGE BINDING COUNT: bind a private queue, print READY, then print one JSON line per
message (properties + headers + body parsed as JSON) until COUNT arrived (or 30 s passed).

publish EXCHANGE ROUTING_KEY COUNT: publish COUNT plain JSON messages with ordinary properties
(no CloudEvents headers), with publisher confirms, then print DONE.
"""
import json
import sys
import time

import pika

URL = "amqp://guest:guest@127.0.0.1:5672/%2f"


def consume(exchange, binding, count):
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(queue=q, exchange=exchange, routing_key=binding)
    print("READY", flush=True)
    got = 0
    deadline = time.time() + 30
    while got < count and time.time() < deadline:
        method, props, body = ch.basic_get(queue=q, auto_ack=False)
        if method is None:
            time.sleep(0.05)
            continue
        headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (props.headers or {}).items()}
        print(json.dumps({
            "routing_key": method.routing_key,
            "content_type": props.content_type,
            "delivery_mode": props.delivery_mode,
            "message_id": props.message_id,
            "type": props.type,
            "app_id": props.app_id,
            "correlation_id": props.correlation_id,
            "timestamp": props.timestamp,
            # A UUIDv7 message id carries the event time in milliseconds (its first 48 bits).
            "id_time_ms": int(props.message_id.replace("-", "")[:12], 16) if props.message_id else None,
            "headers": headers,
            "body": json.loads(body),
        }), flush=True)
        ch.basic_ack(method.delivery_tag)
        got += 1
    conn.close()
    return 0 if got == count else 1


def publish(exchange, routing_key, count):
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(count):
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            message_id="py-%d" % i,
            type="user.registered",
            app_id="python-service",
            correlation_id="flow-%d" % i,
        )
        ch.basic_publish(exchange=exchange, routing_key=routing_key,
                         body=json.dumps({"user": "u%d" % i, "n": i}), properties=props,
                         mandatory=True)
    conn.close()
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    mode, exchange, key, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    sys.exit(consume(exchange, key, count) if mode == "consume" else publish(exchange, key, count))
