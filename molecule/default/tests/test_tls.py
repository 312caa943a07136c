"""HTTPS as clients meet it: verified with the internal CA, refused without it, and no plain HTTP beside it."""

from __future__ import annotations

import base64
import json
import os

import pytest
import testinfra.utils.ansible_runner
from cryptography import x509
from tls_support import CLIENT, CLIENT_BIN, FRONT_PORT, INDEX, PKI, PORT, SERVER, STRANGER, on

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts(
    "tls_servers"
)


def test_client_installs_over_https_with_verification(host, uploaded_wheel: tuple[str, str]) -> None:
    """No index flags at all: /etc/pip.conf (index-url, cert) is all pip gets; verification is on. The index URL
    is the front server's: nginx serves the pages and the file over HTTPS, gunicorn took only the upload."""
    wheel, version = uploaded_wheel
    target = "/tmp/site-tls"
    install = on(
        CLIENT,
        f"{CLIENT_BIN}/pip",
        "install",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--target",
        target,
        "--upgrade",
        f"airgap-demo=={version}",
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert INDEX in install.stdout, install.stdout  # "Looking in indexes: https://..."
    code = "import airgap_demo; print(airgap_demo.VERSION)"
    imported = on(CLIENT, "env", f"PYTHONPATH={target}", "python3", "-c", code)
    assert imported.stdout.strip() == version
    log = host.file("/var/log/supervisor/pypiserver.out.log").content_string
    assert f"GET /packages/{wheel} " not in log, "nginx served the file, gunicorn never saw it"
    proxied = [line for line in log.splitlines() if line.startswith("127.0.0.1 ") and '"POST / HTTP/1.1" 200' in line]
    assert proxied, "twine's upload reached gunicorn through nginx"


def test_pip_configuration_names_only_the_index() -> None:
    conf = on(CLIENT, "cat", "/etc/pip.conf").stdout
    assert f"index-url = {INDEX}" in conf
    assert "extra-index-url" not in conf and "trusted-host" not in conf
    assert "cert = /etc/ssl/certs/ca-certificates.crt" in conf
    listed = on(CLIENT, f"{CLIENT_BIN}/pip", "config", "list").stdout
    assert f"global.index-url='{INDEX}'" in listed


def test_client_trusts_the_internal_ca_system_wide() -> None:
    """The CA from the controller is in the system bundle: plain Python's default context verifies the index."""
    anchor = on(CLIENT, "cat", "/usr/local/share/ca-certificates/airgap-pypi-ca.crt").stdout
    assert anchor.strip() == (PKI / "ca.crt").read_text().strip()
    code = f"import urllib.request; print(urllib.request.urlopen('https://{SERVER}:{PORT}/health', timeout=10).status)"
    assert on(CLIENT, "python3", "-c", code).stdout.strip() == "200"


def test_client_without_the_ca_is_refused(uploaded_wheel: tuple[str, str]) -> None:
    _, version = uploaded_wheel
    refused = on(
        STRANGER,
        f"{CLIENT_BIN}/pip",
        "install",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--retries",
        "0",
        "--index-url",
        INDEX,
        "--target",
        "/tmp/site-stranger",
        f"airgap-demo=={version}",
    )
    assert refused.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stdout + refused.stderr, refused.stdout + refused.stderr


# Run on the client: a verified TLS handshake with the port, then a plain HTTP request on a fresh connection; prints
# what came back (never raises).
PLAIN_HTTP_PROBE = """
import base64, json, socket, ssl, sys
server, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
answer = {}
try:
    context = ssl.create_default_context(cafile=cafile)
    with context.wrap_socket(socket.create_connection((server, port), timeout=10), server_hostname=server) as tls:
        answer["tls"] = tls.version()
except (OSError, ssl.SSLError) as error:
    answer["tls_error"] = repr(error)
try:
    plain = socket.create_connection((server, port), timeout=10)
except OSError as error:
    answer["connect_error"] = repr(error)
else:
    received, ending = b"", "closed"
    try:
        plain.sendall(("GET /health HTTP/1.1\\r\\nHost: %s\\r\\nConnection: close\\r\\n\\r\\n" % server).encode())
        while len(received) < 65536:
            chunk = plain.recv(4096)
            if not chunk:
                break
            received += chunk
    except socket.timeout:
        ending = "timeout"
    except OSError as error:
        ending = repr(error)
    plain.close()
    answer.update(received=base64.b64encode(received).decode(), ending=ending)
print(json.dumps(answer))
"""


def plain_http_answer(port: int) -> tuple[dict[str, str], bytes]:
    ca = "/usr/local/share/ca-certificates/airgap-pypi-ca.crt"
    done = on(CLIENT, "python3", "-c", PLAIN_HTTP_PROBE, SERVER, str(port), ca)
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    return answer, base64.b64decode(answer.get("received", ""))


def test_plain_http_is_not_served_by_gunicorn() -> None:
    """The port answers TLS; a plain HTTP request on it gets no HTTP answer: gunicorn's TLS layer fails the
    handshake and closes the connection (or sends a TLS alert), it is neither refused nor left hanging."""
    answer, received = plain_http_answer(PORT)
    assert answer.get("tls") in ("TLSv1.2", "TLSv1.3"), f"port {PORT} must answer TLS first: {answer}"
    assert "connect_error" not in answer, answer
    assert answer["ending"] != "timeout", f"no answer at all: {answer}"
    assert not received.startswith(b"HTTP/"), received[:200]
    assert received == b"" or received[:2] == b"\x15\x03", f"neither a close nor a TLS alert: {received[:200]!r}"


def test_plain_http_is_not_served_by_the_front_server() -> None:
    """The port answers TLS; a plain HTTP request on it gets nginx's own refusal (400, "The plain HTTP request was
    sent to HTTPS port"), never the index's answer."""
    answer, received = plain_http_answer(FRONT_PORT)
    assert answer.get("tls") in ("TLSv1.2", "TLSv1.3"), f"port {FRONT_PORT} must answer TLS first: {answer}"
    assert "connect_error" not in answer, answer
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.split(b"\r\n", 1)[0] == b"HTTP/1.1 400 Bad Request", received[:300]
    assert b"The plain HTTP request was sent to HTTPS port" in body, body[:300]


def test_only_the_https_ports_listen(host) -> None:
    """gunicorn's and the front server's, both HTTPS: no plain HTTP port beside them (docker's DNS aside)."""
    ports = {
        line.split()[3].rsplit(":", 1)[1]
        for line in host.check_output("ss -Hltn").splitlines()
        if not line.split()[3].startswith("127.0.0.11:")
    }
    assert ports == {str(PORT), str(FRONT_PORT)}


def test_key_is_readable_by_the_gunicorn_group_only(host) -> None:
    key = host.file("/etc/airgap-pypi/tls/server.key")
    assert (key.user, key.group, key.mode) == ("root", "pypiserver", 0o640)
    assert host.file("/etc/airgap-pypi/tls").mode == 0o750


def test_internal_ca_key_is_private_on_the_controller() -> None:
    assert (PKI / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (PKI / "hosts" / f"{SERVER}.key").stat().st_mode & 0o777 == 0o600


def test_server_certificate_is_the_one_the_ca_issued(host) -> None:
    """What gunicorn serves is the controller's copy (the health check and clients verify it against ca.crt)."""
    served = host.file("/etc/airgap-pypi/tls/server.crt").content
    assert served == (PKI / "hosts" / f"{SERVER}.crt").read_bytes()
    cert = x509.load_pem_x509_certificate(served)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert SERVER in names.get_values_for_type(x509.DNSName)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage


@pytest.mark.parametrize("port", [PORT, FRONT_PORT], ids=["gunicorn", "front"])
def test_tls_minimum_is_1_2_and_1_2_works(host, port: int) -> None:
    """gunicorn's context and nginx's ssl_protocols refuse anything older than TLS 1.2 (their configs), and a
    TLS 1.2-only client gets in (test_tls_1_0_and_1_1_are_refused offers the older versions)."""
    config = host.file("/etc/airgap-pypi/gunicorn.conf.py").content_string
    assert "context.minimum_version = ssl.TLSVersion.TLSv1_2" in config
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in host.file("/etc/nginx/conf.d/airgap-pypi.conf").content_string
    code = (
        "import socket, ssl\n"
        "ctx = ssl.create_default_context()\n"
        "ctx.maximum_version = ssl.TLSVersion.TLSv1_2\n"
        f"s = ctx.wrap_socket(socket.create_connection(('{SERVER}', {port}), timeout=10), server_hostname='{SERVER}')\n"
        "print(s.version())\n"
    )
    answer = on(CLIENT, "python3", "-c", code)
    assert answer.stdout.strip() == "TLSv1.2", answer.stdout + answer.stderr


def test_front_server_serves_the_certificate_the_ca_issued() -> None:
    """What nginx presents on 443 is the same certificate gunicorn presents on 8080, verified against the CA."""
    code = (
        "import socket, ssl, sys, hashlib\n"
        "ctx = ssl.create_default_context(cafile=sys.argv[1])\n"
        "name = sys.argv[4]\n"
        "for port in (int(sys.argv[2]), int(sys.argv[3])):\n"
        "    s = ctx.wrap_socket(socket.create_connection((name, port), timeout=10), server_hostname=name)\n"
        "    print(hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest())\n"
    )
    ca = "/usr/local/share/ca-certificates/airgap-pypi-ca.crt"
    answer = on(CLIENT, "python3", "-c", code, ca, str(PORT), str(FRONT_PORT), SERVER)
    digests = answer.stdout.split()
    assert len(digests) == 2 and digests[0] == digests[1], answer.stdout + answer.stderr


# Run on the client: Python's ssl builds a ClientHello that offers only the given version (security level 0, so
# that Debian's OpenSSL 3 agrees to build it), the probe checks in its bytes what was offered, sends it to the
# server over a plain socket and reports the first TLS record the server sends back.
OLD_TLS_PROBE = """
import json, socket, ssl, struct, sys
server, port, version = sys.argv[1], int(sys.argv[2]), sys.argv[3]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
context.set_ciphers("DEFAULT:@SECLEVEL=0")
context.minimum_version = context.maximum_version = getattr(ssl.TLSVersion, version)
outgoing = ssl.MemoryBIO()
tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server)
answer = {}
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
except ssl.SSLError as error:
    answer["client_error"] = repr(error)
hello = outgoing.read()
if hello[:1] == b"\\x16" and hello[5:6] == b"\\x01":
    answer["offered"] = hello[9:11].hex()
    # Extensions after the session id, cipher suites and compression methods: supported_versions (43) would
    # offer other versions than the legacy field says.
    at = 43
    at += 1 + hello[at]
    at += 2 + struct.unpack(">H", hello[at:at + 2])[0]
    at += 1 + hello[at]
    end = at + 2 + struct.unpack(">H", hello[at:at + 2])[0] if len(hello) > at else at
    at += 2
    while at < end:
        kind, size = struct.unpack(">HH", hello[at:at + 4])
        if kind == 43:
            answer["supported_versions"] = hello[at + 5:at + 4 + size].hex()
        at += 4 + size
    sock = socket.create_connection((server, port), timeout=10)
    sock.sendall(hello)
    record = b""
    try:
        while len(record) < 5 or len(record) < 5 + struct.unpack(">H", record[3:5])[0]:
            chunk = sock.recv(4096)
            if not chunk:
                break
            record += chunk
    except OSError as error:
        answer["read_error"] = repr(error)
    sock.close()
    answer["reply"] = record[:64].hex()
print(json.dumps(answer))
"""
ALERT, HANDSHAKE, FATAL, PROTOCOL_VERSION = 0x15, 0x16, 2, 70


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
@pytest.mark.parametrize("port", [PORT, FRONT_PORT], ids=["gunicorn", "front"])
def test_tls_1_0_and_1_1_are_refused(port: int, version: str) -> None:
    """A client that really offers TLS 1.0 (1.1) and nothing newer gets a fatal protocol_version alert from the
    server, not a ServerHello. A client that cannot build the offer fails this test: it says nothing of the
    server."""
    done = on(CLIENT, "python3", "-c", OLD_TLS_PROBE, SERVER, str(port), version)
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    wire = {"TLSv1": "0301", "TLSv1_1": "0302"}[version]
    assert answer.get("offered") == wire, f"the client did not offer {version}, so the server was not asked: {answer}"
    assert answer.get("supported_versions", f"02{wire}") == f"02{wire}", f"the client offered more: {answer}"
    reply = bytes.fromhex(answer["reply"])
    assert reply, f"the server closed without a word: {answer}"
    assert reply[0] != HANDSHAKE, f"the server answered {version} with a handshake (ServerHello {reply[9:11].hex()})"
    assert (reply[0], reply[5], reply[6]) == (ALERT, FATAL, PROTOCOL_VERSION), f"not a protocol_version alert: {answer}"
