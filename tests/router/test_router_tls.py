"""`preble router` with TLS and an inference token, as a real process: a TLS client with the
token is served; one without the token is refused; a plaintext client cannot connect."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
import time

import grpc
import pytest
from ports import free_port

from preble_tiered.client import Client


def self_signed(dirpath):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (dirpath / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (dirpath / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return str(dirpath / "cert.pem"), str(dirpath / "key.pem")


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(d)
    (d / "inference-token").write_text("inference-token-0123456789\n")
    port, http_port = free_port(), free_port()
    log = open(d / "router.log", "wb")  # noqa: SIM115
    p = subprocess.Popen([sys.executable, "-m", "preble_tiered.cli", "router", "--port", str(port),
                          "--http-port", str(http_port), "--tls-cert", cert,
                          "--tls-key", key, "--inference-token-file", str(d / "inference-token"),
                          "--state", str(d / "state.json")], stdout=log, stderr=subprocess.STDOUT)
    addr = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with Client(addr, 2.0, token="inference-token-0123456789", tls_ca=cert) as c:
                    c.model_info()
                break
            except grpc.RpcError:
                assert p.poll() is None, (d / "router.log").read_text()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield addr, cert, http_port
    finally:
        p.terminate()
        p.wait(10)
        log.close()


def test_tls_client_with_the_token_is_served(router):
    addr, cert, _ = router
    with Client(addr, 5.0, token="inference-token-0123456789", tls_ca=cert) as c:
        assert c.model_info().block_size == 32


def test_tls_client_without_the_token_is_refused(router):
    addr, cert, _ = router
    with Client(addr, 5.0, tls_ca=cert) as c, pytest.raises(grpc.RpcError) as e:
        c.model_info()
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "inference token (--inference-token-file FILE, or the PREBLE_INFERENCE_TOKEN variable)" in e.value.details()


def test_bench_gets_through_with_the_token_file_and_the_certificate(router, tmp_path, capsys, monkeypatch):
    from preble_tiered.cli.main import main

    addr, cert, _ = router
    monkeypatch.delenv("PREBLE_INFERENCE_TOKEN", raising=False)
    argv = ["bench", "--addr", addr, "--workload", "loogle", "--requests", "2", "--nodes", "1", "--quiet"]
    assert main([*argv, "--tls-ca", cert]) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err  # a clear refusal, no traceback
    (tmp_path / "tok").write_text("inference-token-0123456789\n")
    assert main([*argv, "--tls-ca", cert, "--inference-token-file", str(tmp_path / "tok")]) == 2
    assert "has no node serving" in capsys.readouterr().err  # let in: this router has no nodes


def test_plaintext_client_cannot_talk_to_a_tls_router(router):
    addr, _, _ = router
    with Client(addr, 3.0, token="inference-token-0123456789") as c, pytest.raises(grpc.RpcError) as e:
        c.model_info()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_openai_api_is_served_over_tls_with_the_token(router):
    import ssl

    import httpx

    _, cert, http_port = router
    url = f"https://127.0.0.1:{http_port}/v1/models"
    ca = ssl.create_default_context(cafile=cert)
    r = httpx.get(url, verify=ca, headers={"Authorization": "Bearer inference-token-0123456789"}, timeout=10)
    assert r.status_code == 200 and r.json() == {"object": "list", "data": []}  # no node: no model yet
    assert httpx.get(url, verify=ca, timeout=10).status_code == 401
    with pytest.raises(httpx.HTTPError):  # plaintext HTTP to a TLS port
        httpx.get(f"http://127.0.0.1:{http_port}/v1/models", timeout=5)
