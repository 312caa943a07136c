"""HTTPS as clients meet it: verified with the internal CA, refused without it, and no plain HTTP beside it."""

from __future__ import annotations

import os

import testinfra.utils.ansible_runner
from conftest import CLIENT, CLIENT_BIN, INDEX, PKI, PORT, SERVER, STRANGER, on
from cryptography import x509

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts(
    "pypi_servers"
)


def test_client_installs_over_https_with_verification(uploaded_wheel: tuple[str, str]) -> None:
    """No index flags at all: /etc/pip.conf (index-url, cert) is all pip gets; verification is on."""
    _, version = uploaded_wheel
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


def test_plain_http_is_not_served() -> None:
    code = (
        "import urllib.request, sys\n"
        "try:\n"
        f"    urllib.request.urlopen('http://{SERVER}:{PORT}/health', timeout=10)\n"
        "except Exception as error:\n"
        "    print(type(error).__name__)\n"
        "else:\n"
        "    print('served')\n"
    )
    answer = on(CLIENT, "python3", "-c", code).stdout.strip()
    assert answer not in ("served", ""), answer


def test_only_the_https_port_listens(host) -> None:
    """One listener, HTTPS: no plain HTTP port beside it (docker's DNS on 127.0.0.11 aside)."""
    ports = {
        line.split()[3].rsplit(":", 1)[1]
        for line in host.check_output("ss -Hltn").splitlines()
        if not line.split()[3].startswith("127.0.0.11:")
    }
    assert ports == {str(PORT)}


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


def test_tls_minimum_is_1_2_and_1_2_works(host) -> None:
    """gunicorn's context refuses anything older than TLS 1.2 (its config), and a TLS 1.2-only client gets in.

    Older versions cannot be offered from here: Debian's OpenSSL refuses them on the client side already.
    """
    config = host.file("/etc/airgap-pypi/gunicorn.conf.py").content_string
    assert "context.minimum_version = ssl.TLSVersion.TLSv1_2" in config
    code = (
        "import socket, ssl\n"
        "ctx = ssl.create_default_context()\n"
        "ctx.maximum_version = ssl.TLSVersion.TLSv1_2\n"
        f"s = ctx.wrap_socket(socket.create_connection(('{SERVER}', {PORT}), timeout=10), server_hostname='{SERVER}')\n"
        "print(s.version())\n"
    )
    answer = on(CLIENT, "python3", "-c", code)
    assert answer.stdout.strip() == "TLSv1.2", answer.stdout + answer.stderr
