"""The public API: every exported name exists, and TLS works through it alone."""

from __future__ import annotations

from pathlib import Path

import trustme

import sockecho


def test_every_exported_name_exists() -> None:
    missing = [name for name in sockecho.__all__ if not hasattr(sockecho, name)]
    assert missing == []


def test_tls_echo_through_the_public_api_alone(tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = (tmp_path / name for name in ("cert.pem", "key.pem", "ca.pem"))
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    context = sockecho.client_context(sockecho.ClientTLSConfig(ca_file=str(ca_file)))
    with sockecho.Server(model="selectors", port=0, tls_cert=str(cert), tls_key=str(key)) as srv:
        assert srv.endpoints[0].startswith("tls://")
        assert sockecho.echo(b"hola\n", *srv.address, tls=context) == b"hola\n"
