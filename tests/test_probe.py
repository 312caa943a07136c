"""The probe module against real local HTTP and HTTPS servers with a CA made here (cryptography)."""

from __future__ import annotations

import datetime
import hashlib
import http.server
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import load_module
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
probe_module = load_module("pypi_common_probe", ROOT / "roles" / "pypi_common" / "library" / "pypi_common_probe.py")
WHEEL = b"not really a wheel, but bytes with a known sha256"
PAGE = (
    '<html><body><a href="../../packages/demo-1.0-py3-none-any.whl#sha256='
    + hashlib.sha256(WHEEL).hexdigest()
    + '">demo-1.0-py3-none-any.whl</a></body></html>'
).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = {"/simple/demo/": PAGE, "/packages/demo-1.0-py3-none-any.whl": WHEEL}.get(self.path)
        self.send_response(200 if body else 404)
        # Echoes the Accept header it got, so the tests see what the probe sent.
        self.send_header("Content-Type", self.headers.get("Accept") or "text/html")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def do_POST(self) -> None:
        self.send_response(401 if "Authorization" not in self.headers else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a server certificate for pypi.test and 127.0.0.1, as PEM files."""
    out = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test CA"))
        .issuer_name(name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("pypi.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("pypi.test"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=10, hours=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": out / "ca.crt", "cert": out / "server.crt", "key": out / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


def serve(context: ssl.SSLContext | None) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def plain_port() -> Iterator[int]:
    yield from serve(None)


@pytest.fixture(scope="module")
def tls_port(pki: dict[str, Path]) -> Iterator[int]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["cert"], pki["key"])
    yield from serve(context)


def test_plain_http_page_links_and_download(plain_port: int) -> None:
    page = probe_module.probe("127.0.0.1", plain_port, path="/simple/demo/")
    assert page["status"] == 200 and page["error"] is None
    [link] = page["links"]
    assert link["path"] == "/packages/demo-1.0-py3-none-any.whl"
    assert link["name"] == "demo-1.0-py3-none-any.whl"
    download = probe_module.probe("127.0.0.1", plain_port, path=link["path"], want_sha256=True)
    assert download["status"] == 200 and download["sha256"] == link["sha256"]


def test_accept_header_and_content_type(plain_port: int) -> None:
    json_type = "application/vnd.pypi.simple.v1+json"
    answer = probe_module.probe("127.0.0.1", plain_port, path="/simple/demo/", accept=json_type)
    assert answer["content_type"] == json_type
    assert probe_module.probe("127.0.0.1", plain_port, path="/simple/demo/")["content_type"] == "text/html"


def test_post_without_and_with_credentials(plain_port: int) -> None:
    assert probe_module.probe("127.0.0.1", plain_port, method="POST")["status"] == 401
    assert probe_module.probe("127.0.0.1", plain_port, method="POST", username="u", password="p")["status"] == 200


def test_tls_verified_against_the_ca_and_the_name(tls_port: int, pki: dict[str, Path]) -> None:
    result = probe_module.probe(
        "127.0.0.1", tls_port, path="/simple/demo/", tls=True, server_name="pypi.test", ca_file=str(pki["ca"])
    )
    assert result["status"] == 200, result
    assert result["certificate"]["days_left"] == 10
    assert "DNS:pypi.test" in result["certificate"]["subject_alt_name"]


def test_tls_refuses_a_name_the_certificate_does_not_cover(tls_port: int, pki: dict[str, Path]) -> None:
    result = probe_module.probe("127.0.0.1", tls_port, tls=True, server_name="other.test", ca_file=str(pki["ca"]))
    assert result["status"] is None
    assert "certificate verify failed for other.test" in result["error"]


def test_tls_refuses_a_chain_without_its_ca(tls_port: int) -> None:
    # The system's trust store: a client that lacks the test CA.
    result = probe_module.probe("127.0.0.1", tls_port, tls=True, server_name="pypi.test", ca_file=None)
    assert result["status"] is None and "certificate verify failed" in result["error"]


def test_plain_http_to_the_tls_port_gets_no_answer(tls_port: int) -> None:
    result = probe_module.probe("127.0.0.1", tls_port, timeout=3)
    assert result["status"] is None and result["error"].startswith("no HTTP answer")


def test_refused_connection_is_reported() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    result = probe_module.probe("127.0.0.1", port, timeout=3)
    assert result["status"] is None and result["error"].startswith("cannot connect")
