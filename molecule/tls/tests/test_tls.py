"""HTTPS as clients meet it: verified with the internal CA, refused without it, and no plain HTTP beside it."""

from __future__ import annotations

import os

import pytest
import testinfra.utils.ansible_runner
from conftest import CLIENT, CLIENT_BIN, FRONT_PORT, INDEX, PKI, PORT, SERVER, STRANGER, on
from cryptography import x509

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts(
    "pypi_servers"
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


@pytest.mark.parametrize("port", [PORT, FRONT_PORT], ids=["gunicorn", "front"])
def test_plain_http_is_not_served(port: int) -> None:
    code = (
        "import urllib.request, sys\n"
        "try:\n"
        f"    urllib.request.urlopen('http://{SERVER}:{port}/health', timeout=10)\n"
        "except Exception as error:\n"
        "    print(type(error).__name__)\n"
        "else:\n"
        "    print('served')\n"
    )
    answer = on(CLIENT, "python3", "-c", code).stdout.strip()
    assert answer not in ("served", ""), answer


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
    TLS 1.2-only client gets in.

    Older versions cannot be offered from here: Debian's OpenSSL refuses them on the client side already.
    """
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
