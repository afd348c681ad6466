"""End-to-end encrypted Pusher channels (`private-encrypted-*`): the key of a channel and
the encryption of the game events the relay publishes there.

Where it sits: `realtime.pusher_channels` derives a subscriber's key when it subscribes;
`realtime.pusher_socket` encrypts each event once per channel name (every subscriber of
that name on this process gets the same ciphertext). An app's own encrypted channels
need none of this: their publishers encrypt, and the server relays the ciphertext as it
is.

As Pusher's server SDKs do: the channel's key (`shared_secret`, 32 bytes) is SHA-256 of
the channel name followed by the 32-byte master key; an event's `data` is the JSON text
`{"nonce": b64, "ciphertext": b64}` of a NaCl secretbox (XSalsa20-Poly1305, a random
24-byte nonce) over the event's own JSON data, which pusher-js opens with tweetnacl.
"""

from __future__ import annotations

import base64
import hashlib

import orjson
from nacl.secret import SecretBox
from nacl.utils import random as random_bytes


def shared_secret(master_key_b64: str, channel: str) -> bytes:
    """The key of encrypted channel `channel` under the base64 master key."""
    return hashlib.sha256(channel.encode() + base64.b64decode(master_key_b64)).digest()


def encrypted_data(key: bytes, plaintext_json: bytes) -> bytes:
    """An event's `data` for an encrypted channel, as the JSON string clients expect."""
    nonce = random_bytes(SecretBox.NONCE_SIZE)
    box = SecretBox(key).encrypt(plaintext_json, nonce)
    wrapper = {"nonce": base64.b64encode(nonce).decode(),
               "ciphertext": base64.b64encode(box.ciphertext).decode()}
    return orjson.dumps(orjson.dumps(wrapper).decode())
