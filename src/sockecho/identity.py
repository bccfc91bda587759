"""``--identify NAME``: which instance answered, for testing load balancers.

With it, every TCP/TLS connection first receives one JSON line, then the echo::

    {"sockecho": 1, "instance": "a", "peer": "203.0.113.7:51234", "local": "10.0.0.5:50010",
     "proxy": {...} or null, "tls": {"sni": ..., "alpn": ..., "version": ...,
     "client_cert": ...} or null}

``peer`` is the client as this server sees it: the load balancer's address, unless a
PROXY header named the client. The line is sent after the TLS handshake and the PROXY
header, before any echo, and is never counted as echoed. Without ``--identify`` the server
is pure RFC 862: nothing but the echo.

UDP: a datagram of exactly :data:`IDENTIFY_REQUEST` is answered with the same object (no
``\\n``) instead of its echo; every other datagram is echoed.

The client side: :func:`read_identity` splits the line off what a client received.
"""

from __future__ import annotations

import json
from typing import Any

#: The identity object's format version (the ``sockecho`` key).
IDENTITY_VERSION = 1
#: A UDP datagram of exactly these bytes asks for the identity (with ``--identify``).
IDENTIFY_REQUEST = b"sockecho-identify"
#: The longest identity line a client accepts (bytes): a UNIX-socket PROXY header with
#: every TLV and a TLS block stays under 2 KiB.
MAX_IDENTITY_LINE = 8192


def identity_object(
    instance: str,
    *,
    peer: str,
    local: str | None,
    proxy: dict[str, Any] | None = None,
    tls_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "sockecho": IDENTITY_VERSION,
        "instance": instance,
        "peer": peer,
        "local": local,
        "proxy": proxy,
        "tls": tls_info,
    }


def identity_line(
    instance: str,
    *,
    peer: str,
    local: str | None,
    proxy: dict[str, Any] | None = None,
    tls_info: dict[str, Any] | None = None,
) -> bytes:
    """The JSON line (UTF-8, ``\\n``-terminated) a connection receives first."""
    obj = identity_object(instance, peer=peer, local=local, proxy=proxy, tls_info=tls_info)
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")).encode() + b"\n"


class IdentityError(ValueError):
    """What a client received does not start with an identity line."""


def read_identity(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    """Split ``data`` (what a client received so far) into (identity, the rest).

    None: the line is not complete yet. Raises :class:`IdentityError` when it is not
    one (no JSON object with ``"sockecho"``, or longer than :data:`MAX_IDENTITY_LINE`).
    """
    end = data.find(b"\n")
    if end < 0:
        if len(data) > MAX_IDENTITY_LINE:
            raise IdentityError(f"no identity line within {MAX_IDENTITY_LINE} bytes")
        return None
    try:
        obj = json.loads(data[:end])
    except ValueError as exc:
        raise IdentityError(f"the first line is not JSON: {data[:60]!r}") from exc
    if not isinstance(obj, dict) or "sockecho" not in obj or "instance" not in obj:
        raise IdentityError(f"the first line is not a sockecho identity: {data[:60]!r}")
    return obj, data[end + 1 :]
