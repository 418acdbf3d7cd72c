"""API keys: which paths need one, where a client puts it, and a constant-time check.

Pure functions over strings and bytes; the ASGI glue that answers 401 lives in `middleware.py`.
"""

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MIN_KEY_LENGTH = 16
"""Shorter keys are refused at start-up: they could be guessed."""

PROBE_PATHS = ("/healthz", "/readyz", "/metrics")
"""Health and metrics: open to orchestrators and scrapers unless `auth_probes` is set."""

PUBLIC_PREFIXES = ("/docs", "/redoc", "/openapi.json")
"""The API's own documentation is never secret (it holds no data); everything else is guarded."""

REALM = "digitserve"


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The accepted keys, held only as SHA-256 digests so comparisons take constant time."""

    digests: tuple[bytes, ...]
    protect_probes: bool = False

    def admits(self, presented: list[str]) -> bool:
        """Whether a request may pass: it sent at least one key, and every key it sent is good."""
        return bool(presented) and all(self.accepts(key) for key in presented)

    def accepts(self, presented: str) -> bool:
        """Whether a presented key is one of the ring's, comparing against every key in full."""
        candidate = _digest(presented)
        matched = False
        for digest in self.digests:
            matched |= hmac.compare_digest(candidate, digest)
        return matched

    def guards(self, path: str) -> bool:
        """Whether a request to this path needs a key."""
        if path.startswith(PUBLIC_PREFIXES):
            return False
        return self.protect_probes or path not in PROBE_PATHS


def _digest(key: str) -> bytes:
    """Equal-length stand-in for a key, so compare_digest does not reveal key lengths."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def read_key_file(path: Path) -> list[str]:
    """Keys from a file, one a line; blank lines and lines starting with # are ignored."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def check_keys(keys: Iterable[str]) -> list[str]:
    """Refuse keys too short to be secret; raises ValueError naming how many and why."""
    keys = list(keys)
    short = sum(len(key) < MIN_KEY_LENGTH for key in keys)
    if short:
        raise ValueError(f"{short} API key(s) shorter than {MIN_KEY_LENGTH} characters")
    return keys


def key_ring(keys: Iterable[str], *, protect_probes: bool = False) -> KeyRing | None:
    """A ring of these keys, or None when there are none (authentication off)."""
    digests = tuple(dict.fromkeys(_digest(key) for key in check_keys(keys)))
    return KeyRing(digests, protect_probes) if digests else None


def presented_keys(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every credential a client sent, in every `Authorization: Bearer` and `X-API-Key` header.

    The raw header list is read, not a mapping: a repeated header is several credentials, each of
    which must be good (a mapping would keep one, and `X-API-Key: bad` then `X-API-Key: good`
    would pass). An Authorization header of another scheme, or an empty one, counts as a
    credential that matches nothing: a request is never let in on one good key while it also
    carries a bad one.
    """
    keys: list[str] = []
    for raw_name, raw_value in headers:
        name = raw_name.lower()
        if name == b"authorization":
            scheme, _, credentials = raw_value.decode("latin-1").strip().partition(" ")
            keys.append(credentials.strip() if scheme.lower() == "bearer" else "")
        elif name == b"x-api-key":
            keys.append(raw_value.decode("latin-1").strip())
    return keys


def challenge(presented: list[str]) -> str:
    """The WWW-Authenticate value for a refusal (RFC 6750: say when a key was sent but wrong)."""
    if not presented:
        return f'Bearer realm="{REALM}"'
    return f'Bearer realm="{REALM}", error="invalid_token"'
