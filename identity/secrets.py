"""Opaque credentials: generated with `secrets`, stored only as SHA-256 digests.

The values are 256 bits of randomness, so a fast hash is enough (no salt or stretching needed:
there is nothing to brute-force). Lookups go by digest; the final comparison is constant-time.
"""

import hashlib
import hmac
import secrets

USER_TOKEN_PREFIX = "dpu_"
APP_SECRET_PREFIX = "dpk_"
# Characters of a secret kept in clear so people can tell secrets apart in the UI.
VISIBLE_CHARS = 8


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def matches(value: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(value), stored_digest)


def visible_part(value: str) -> str:
    return value[: len(value.split("_", 1)[0]) + 1 + VISIBLE_CHARS]
