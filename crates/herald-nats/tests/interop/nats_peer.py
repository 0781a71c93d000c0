#!/usr/bin/env python3
"""A plain NATS peer (nats-py) for Herald's interop test.

read URL STREAM SUBJECT COUNT: read COUNT messages on SUBJECT from the JetStream stream STREAM
with an ephemeral pull consumer and print one JSON line per message (subject, headers, body
parsed as JSON).

publish URL SUBJECT COUNT: publish COUNT plain JSON messages (no headers) to SUBJECT through
JetStream, waiting for each ack, then print DONE.
"""
import asyncio
import json
import sys

import nats


async def read(url, stream, subject, count):
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(subject, durable=None, stream=stream)
    got = 0
    while got < count:
        for m in await sub.fetch(count - got, timeout=10):
            print(json.dumps({
                "subject": m.subject,
                "headers": dict(m.headers or {}),
                "body": json.loads(m.data),
            }), flush=True)
            await m.ack()
            got += 1
    await nc.close()


async def publish(url, subject, count):
    nc = await nats.connect(url)
    js = nc.jetstream()
    for i in range(count):
        await js.publish(subject, json.dumps({"event_type": "course.enrolled", "data": {"user_id": i}}).encode())
    await nc.close()
    print("DONE", flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "read":
        asyncio.run(read(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
    else:
        asyncio.run(publish(sys.argv[2], sys.argv[3], int(sys.argv[4])))
