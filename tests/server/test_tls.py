"""The TLS policy and reload, without a network: descriptions, contexts, reload rules."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from OpenSSL import SSL

from presence.server.tls import (
    ReloadableTLS,
    SSLPort,
    TLSConfigError,
    TLSReloadService,
    load_options,
    parse_ssl_port,
)
from tests.support.certs import fingerprint, make_cert


def test_parse_descriptions() -> None:
    spec = parse_ssl_port("ssl:3443:privateKey=/k.pem:certKey=/c.pem:interface=127.0.0.1")
    assert spec == SSLPort(3443, Path("/k.pem"), Path("/c.pem"), None, "127.0.0.1", 511)
    spec = parse_ssl_port(r"ssl:port=0:privateKey=/both.pem:interface=\:\:1:backlog=7")
    assert (spec.port, spec.cert_key, spec.interface, spec.backlog) == (
        0,
        Path("/both.pem"),
        "::1",
        7,
    )
    for bad in (
        "ssl:privateKey=/k.pem",
        "ssl:x:privateKey=/k.pem",
        "ssl:3443",
        "ssl:3443:privateKey=/k:sslmethod=TLSv1_METHOD",
        "ssl:3443:privateKey=/k:privateKey=/j",
        "ssl:70000:privateKey=/k",
    ):
        with pytest.raises(TLSConfigError):
            parse_ssl_port(bad)


def _options_bits(tls: ReloadableTLS) -> int:
    return int(tls.options.getContext().set_options(0))


def test_policy_tls12_minimum(tmp_path: Path) -> None:
    key, cert = make_cert(tmp_path, "a")
    tls = ReloadableTLS(SSLPort(0, key, cert))
    bits = _options_bits(tls)
    assert bits & SSL.OP_NO_TLSv1 and bits & SSL.OP_NO_TLSv1_1
    connection = tls.serverConnectionForTLS(None)
    ciphers = connection.get_cipher_list()
    tls12 = [c for c in ciphers if not c.startswith("TLS_")]
    assert tls12 and all(c.startswith("ECDHE-") for c in tls12)
    assert all("GCM" in c or "CHACHA20" in c for c in ciphers)


def test_reload_swaps_for_new_connections_and_keeps_old_on_bad_files(tmp_path: Path) -> None:
    key, cert = make_cert(tmp_path, "live")
    other_key, other_cert = make_cert(tmp_path, "next")
    tls = ReloadableTLS(SSLPort(0, key, cert))
    before = tls.serverConnectionForTLS(None)
    first = tls.options.getContext()
    service = TLSReloadService([tls], reactor=None)
    # A bad file: the old context stays.
    cert.write_text("garbage")
    assert service.reload() is False
    assert tls.options.getContext() is first
    # A key that does not match the certificate: refused too.
    shutil.copy(other_cert, cert)
    assert service.reload() is False
    assert tls.options.getContext() is first
    # Both new: swapped; the connection made before keeps its context.
    shutil.copy(other_key, key)
    assert service.reload() is True
    assert tls.options.getContext() is not first
    assert before.get_context() is first
    assert fingerprint(cert) == fingerprint(other_cert)


def test_load_errors_are_one_line(tmp_path: Path) -> None:
    key, cert = make_cert(tmp_path, "a")
    with pytest.raises(TLSConfigError, match="cannot read"):
        load_options(SSLPort(0, tmp_path / "missing.key", cert))
    with pytest.raises(TLSConfigError, match="no unencrypted PEM private key"):
        load_options(SSLPort(0, cert, cert))
    with pytest.raises(TLSConfigError, match="no PEM certificate"):
        load_options(SSLPort(0, key, key))
