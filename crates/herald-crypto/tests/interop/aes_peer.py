#!/usr/bin/env python3
"""A Python client of Herald's encrypted bodies (pika + cryptography), for the interop test and
as the example of docs/wire-format.md ("Encrypted bodies").

consume EXCHANGE BINDING KEY_ID=HEX: bind a private queue, print READY, decrypt the first
message and print its plaintext body on one line.

publish EXCHANGE ROUTING_KEY KEY_ID=HEX BODY: publish BODY encrypted the way Herald does.
"""
import os
import sys
import time
import uuid

import pika
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

URL = "amqp://guest:guest@127.0.0.1:5672/%2f"


def decrypt(keys, props, body):
    """The plaintext of a Herald message, or an exception saying why not."""
    headers = props.headers or {}
    if headers.get("herald-encryption") != "aes-256-gcm":
        raise ValueError("not encrypted with aes-256-gcm")
    key = keys[headers["herald-key-id"]]              # KeyError: a key we do not have
    # Associated data: the CloudEvents type and id (on AMQP: the type and message_id properties).
    aad = f"{props.type}\n{props.message_id}".encode()
    nonce, sealed = body[:12], body[12:]               # sealed = ciphertext + 16-byte tag
    return AESGCM(key).decrypt(nonce, sealed, aad)     # InvalidTag: wrong key or altered


def encrypt(key_id, key, event_type, event_id, plaintext):
    """The body and headers Herald expects for an encrypted event."""
    nonce = os.urandom(12)
    aad = f"{event_type}\n{event_id}".encode()
    body = nonce + AESGCM(key).encrypt(nonce, plaintext, aad)
    return body, {"herald-encryption": "aes-256-gcm", "herald-key-id": key_id}


def parse_key(spec):
    key_id, hex_key = spec.split("=", 1)
    return key_id, bytes.fromhex(hex_key)


def consume(exchange, binding, key_spec):
    key_id, key = parse_key(key_spec)
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(queue=q, exchange=exchange, routing_key=binding)
    print("READY", flush=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        method, props, body = ch.basic_get(queue=q, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        print(decrypt({key_id: key}, props, body).decode(), flush=True)
        break
    conn.close()


def publish(exchange, routing_key, key_spec, plaintext):
    key_id, key = parse_key(key_spec)
    event_id = str(uuid.uuid4())
    body, headers = encrypt(key_id, key, routing_key, event_id, plaintext.encode())
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    ch.confirm_delivery()
    props = pika.BasicProperties(
        content_type="application/json", delivery_mode=2, message_id=event_id,
        type=routing_key, app_id="python-peer", headers=headers)
    ch.basic_publish(exchange=exchange, routing_key=routing_key, body=body, properties=props,
                     mandatory=True)
    conn.close()
    print("DONE", flush=True)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"consume": consume, "publish": publish}[mode](*args)
