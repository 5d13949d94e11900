#!/usr/bin/env python3
"""Known-answer vectors for chat-crypto, computed by an independent implementation.

This script uses only the Python `cryptography` package (OpenSSL's X25519, Ed25519, HKDF,
HMAC, SHA-2) and the constructions as docs/SECURITY.md states them; it shares no code with
the Rust crate. Its output is committed as chat-crypto/tests/vectors/independent-v1.json;
the Rust test `independent_vectors_match_python` (chat-crypto/src/primitives.rs) recomputes
every value with the crate's own code, and CI (.ci/run) runs this script and fails if its
output differs from the committed file.

    python3 chat-crypto/vectors/gen.py > chat-crypto/tests/vectors/independent-v1.json
"""

import hashlib
import hmac
import json
import struct
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def x25519(n):
    """The X25519 key pair whose secret is 32 repetitions of the byte n."""
    return X25519PrivateKey.from_private_bytes(bytes([n]) * 32)


def x_public(n):
    return x25519(n).public_key().public_bytes(*RAW)


def dh(a, b):
    """DH(secret a, public of secret b)."""
    out = x25519(a).exchange(x25519(b).public_key())
    assert out != bytes(32), "non-contributory"
    return out


def hkdf(salt, ikm, info, length):
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def x3dh(dh1, dh2, dh3, dh4=None):
    """SK = HKDF(salt = 0^32, ikm = 0xFF^32 || DH1 || DH2 || DH3 [|| DH4], info)."""
    ikm = b"\xff" * 32 + dh1 + dh2 + dh3 + (dh4 or b"")
    return hkdf(bytes(32), ikm, b"chat-crypto/v1/x3dh", 32)


def kdf_rk(root_key, dh_out):
    """(RK', CK) = HKDF(salt = RK, ikm = DH output, info), 64 bytes."""
    okm = hkdf(root_key, dh_out, b"chat-crypto/v1/root", 64)
    return okm[:32], okm[32:]


def kdf_ck(chain_key):
    """(message key seed, next chain key) = (HMAC(CK, 0x01), HMAC(CK, 0x02))."""
    return (
        hmac.new(chain_key, b"\x01", hashlib.sha256).digest(),
        hmac.new(chain_key, b"\x02", hashlib.sha256).digest(),
    )


def identity(n):
    """A device identity from fixed secrets: Ed25519 seed n^32, X25519 secret (n+1)^32;
    the public identity is Ed25519 public (32) || X25519 public (32)."""
    ed = Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32).public_key().public_bytes(*RAW)
    return ed + x_public(n + 1)


def ed_public(n):
    """The Ed25519 public key whose seed is 32 repetitions of the byte n."""
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32).public_key().public_bytes(*RAW)


def fingerprint(user_id, account_key):
    """Signal's numeric fingerprint, version 2: over the user's account key."""
    h = hashlib.sha512(b"\x00\x02" + account_key + struct.pack(">Q", user_id)).digest()
    for _ in range(5200):
        h = hashlib.sha512(h + account_key).digest()
    return "".join(
        "%05d" % (int.from_bytes(h[i : i + 5], "big") % 100000) for i in range(0, 30, 5)
    )


def safety_number(a_user, a_account, b_user, b_account):
    a, b = fingerprint(a_user, a_account), fingerprint(b_user, b_account)
    return a + b if a <= b else b + a


def labelled(context, *fields):
    """Every field, the context first, each with a u32 big-endian length prefix."""
    return b"".join(struct.pack(">I", len(f)) + f for f in (context,) + fields)


def device_list(user_id, version, account_seed, devices):
    """The signed device list: 44 01, user, version, account key, count, (id, identity)*,
    then the Ed25519 signature of labelled("chat-crypto/v1/device-list", all of that)."""
    body = b"\x44\x01" + struct.pack(">QQ", user_id, version) + ed_public(account_seed)
    body += struct.pack(">I", len(devices))
    for device_id, ident in sorted(devices):
        body += struct.pack(">Q", device_id) + ident
    key = Ed25519PrivateKey.from_private_bytes(bytes([account_seed]) * 32)
    return body + key.sign(labelled(b"chat-crypto/v1/device-list", body))


def main():
    hx = bytes.hex
    # Initiator A: identity 0x11, ephemeral 0x22. Responder B: identity 0x33, signed prekey
    # 0x44, one-time prekey 0x55.
    dh1, dh2, dh3, dh4 = dh(0x11, 0x44), dh(0x22, 0x33), dh(0x22, 0x44), dh(0x22, 0x55)
    assert dh1 == dh(0x44, 0x11) and dh4 == dh(0x55, 0x22)
    sk = x3dh(dh1, dh2, dh3, dh4)
    # The initiator's first root step: KDF_RK(SK, DH(ratchet 0x66, SPK_B)).
    rk1, ck1 = kdf_rk(sk, dh(0x66, 0x44))
    seed, next_ck = kdf_ck(ck1)
    message_key = hkdf(bytes(32), seed, b"chat-crypto/v1/message-key", 32)
    group_key = hkdf(bytes(32), seed, b"chat-crypto/v1/sender-message-key", 32)
    content_key = bytes(range(32))
    body = hkdf(bytes(32), content_key, b"chat-crypto/v2/body-keys", 64)

    alice = [identity(0x01)]
    bob = [identity(0x03), identity(0x05)]
    out = {
        "version": 1,
        "generator": "chat-crypto/vectors/gen.py (Python cryptography)",
        "note": "X25519 secrets are 32 repetitions of one byte; identity(n) = "
        "Ed25519 public of seed n^32 || X25519 public of secret (n+1)^32",
        "x3dh": {
            "secrets": {"ik_a": "11", "ek_a": "22", "ik_b": "33", "spk_b": "44", "opk_b": "55"},
            "publics": {k: hx(x_public(v)) for k, v in
                        {"ik_a": 0x11, "ek_a": 0x22, "ik_b": 0x33, "spk_b": 0x44,
                         "opk_b": 0x55}.items()},
            "dh1": hx(dh1),
            "dh2": hx(dh2),
            "dh3": hx(dh3),
            "dh4": hx(dh4),
            "sk_with_opk": hx(sk),
            "sk_without_opk": hx(x3dh(dh1, dh2, dh3)),
        },
        "root_step": {
            "root_key": "sk_with_opk",
            "ratchet_secret": "66",
            "their_ratchet": "spk_b",
            "dh_output": hx(dh(0x66, 0x44)),
            "new_root_key": hx(rk1),
            "chain_key": hx(ck1),
        },
        "chain_step": {
            "chain_key": hx(ck1),
            "message_key_seed": hx(seed),
            "next_chain_key": hx(next_ck),
            "message_key": hx(message_key),
            "group_message_key": hx(group_key),
        },
        "body_keys": {
            "content_key": hx(content_key),
            "aead_key": hx(body[:32]),
            "commitment": hx(body[32:]),
        },
        "safety_number": {
            "version": 2,
            "user_id_encoding": "u64 big-endian",
            "account_key": "Ed25519 public of seed n^32",
            "alice": {"user_id": 1, "account_seed": "0a", "account_key": hx(ed_public(0x0A))},
            "bob": {"user_id": 2, "account_seed": "0b", "account_key": hx(ed_public(0x0B))},
            "alice_fingerprint": fingerprint(1, ed_public(0x0A)),
            "bob_fingerprint": fingerprint(2, ed_public(0x0B)),
            "digits": safety_number(1, ed_public(0x0A), 2, ed_public(0x0B)),
        },
        "device_list": {
            "user_id": 2,
            "version": 3,
            "account_seed": "0b",
            "devices": {"7": hx(bob[0]), "4": hx(bob[1])},
            "encoded": hx(device_list(2, 3, 0x0B, [(7, bob[0]), (4, bob[1])])),
        },
        "link_key": {
            "secret": hx(bytes(range(32))),
            "key": hx(hkdf(None, bytes(range(32)), b"chat-crypto/v1/link-key", 32)),
        },
    }
    json.dump(out, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
