"""Secrets: compared in constant time, and kept out of logs.

* `same_secret`: a token given by a client (bootstrap token, administration token) compared
  with the expected one by `hmac.compare_digest`, whose time does not depend on where the two
  first differ. Invitation tokens are not compared but looked up (a hash or B-tree key of
  122 random bits): no comparison with a known secret leaks through timing there.
* `redact_url` / `scrub_url`: a URL that may carry a credential (a webhook's path or query
  often holds its token) is logged as its scheme and host only.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

__all__ = ["redact_url", "same_secret", "scrub_url"]


def same_secret(expected: str | bytes, given: str | bytes) -> bool:
    """`expected == given`, in a time that depends on their lengths only."""
    if isinstance(expected, str):
        expected = expected.encode("utf-8", "surrogatepass")
    if isinstance(given, str):
        given = given.encode("utf-8", "surrogatepass")
    return hmac.compare_digest(expected, given)


def redact_url(url: str) -> str:
    """`scheme://host[:port]/…`: nothing of the user info, path, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return f"{parts.scheme}://{netloc}/…" if parts.scheme else "<invalid URL>"


def scrub_url(text: str, url: str) -> str:
    """`text` (e.g. an error message) with `url`, and each secret-bearing part of it, replaced
    by its redacted form."""
    redacted = redact_url(url)
    text = text.replace(url, redacted)
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    userinfo = parts.netloc.rpartition("@")[0]
    for piece in (userinfo, parts.path, parts.query, parts.fragment):
        if len(piece) > 1:
            text = text.replace(piece, "…")
    return text
