#!/usr/bin/python
"""Send one HTTP(S) request to the index, connecting to a given address but checking a given name (read-only)."""

from __future__ import annotations

import hashlib
import http.client
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pypi_common_http import basic_auth, page_links

DOCUMENTATION = r"""
module: pypi_common_probe
short_description: One HTTP(S) request to the index, with the certificate checked against a name and a CA
description:
  - Connects to I(host):I(port) (e.g. the loopback address), and with I(tls) verifies the server's certificate
    chain against I(ca_file) (or the system's trust store) and its names against I(server_name), as a client
    using that name would. Never fails on a refused connection or a bad certificate; it reports them in I(error).
    Changes nothing.
options:
  host:
    description: Address to connect to.
    type: str
    default: 127.0.0.1
  port:
    description: TCP port.
    type: int
    required: true
  path:
    description: Request path.
    type: str
    default: /
  method:
    description: HTTP method (POST sends an empty body).
    type: str
    default: GET
    choices: [GET, POST]
  tls:
    description: Speak TLS and verify the certificate.
    type: bool
    default: false
  server_name:
    description: Name sent as SNI and Host, which the certificate must cover; defaults to I(host).
    type: str
  ca_file:
    description: PEM file of the CA(s) to trust; empty uses the system's trust store.
    type: path
  username:
    description: Basic-auth user.
    type: str
  password:
    description: Basic-auth password.
    type: str
  accept:
    description: Accept header to send (PEP 691 content negotiation); none when empty.
    type: str
    default: ""
  sha256:
    description: Return the sha256 of the body instead of the body.
    type: bool
    default: false
  timeout:
    description: Seconds for connecting and for each read.
    type: float
    default: 10
author: airgap-pypi
"""

RETURN = r"""
status:
  description: HTTP status code, or null when no HTTP answer came.
  type: int
  returned: always
error:
  description: Why no HTTP answer came (refused, certificate verify failed, ...), or null.
  type: str
  returned: always
body:
  description: The first 256 KiB of the body as text (unless sha256 is true).
  type: str
  returned: when an answer came
content_type:
  description: The answer's Content-Type header, or null.
  type: str
  returned: when an answer came
sha256:
  description: sha256 of the whole body.
  type: str
  returned: when sha256 is true and an answer came
links:
  description: The page's links (a simple index page), each with path (resolved against the request path),
    name (the last path segment) and sha256 (from the URL fragment, or null).
  type: list
  elements: dict
  returned: when an answer came and sha256 is false
certificate:
  description: The verified peer certificate (not_after, days_left, subject, subject_alt_name) and TLS version.
  type: dict
  returned: when tls is true and the handshake succeeded
"""

BODY_LIMIT = 256 * 1024


class _Connection(http.client.HTTPConnection):
    """An HTTP connection over a socket that is already open (and maybe wrapped in TLS)."""

    def __init__(self, sock: socket.socket, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.sock = sock

    def connect(self) -> None:  # the socket is connected already
        return None


def links_of(body: str, base: str) -> list[dict[str, Any]]:
    """Every href of an HTML page, as a path resolved against base, its file name and its #sha256= fragment."""
    found = []
    for link in page_links(body, base):
        parts = urlsplit(link.url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        found.append({"path": path, "name": link.name, "sha256": link.sha256})
    return found


def describe_certificate(sock: ssl.SSLSocket) -> dict[str, Any]:
    """The verified peer certificate as plain data."""
    cert = sock.getpeercert() or {}
    subject = ", ".join("=".join(pair) for rdn in cert.get("subject", ()) for pair in rdn)
    not_after = cert.get("notAfter")
    return {
        "version": sock.version(),
        "not_after": not_after,
        "days_left": int((ssl.cert_time_to_seconds(not_after) - time.time()) // 86400) if not_after else None,
        "subject": subject,
        "subject_alt_name": [f"{kind}:{value}" for kind, value in cert.get("subjectAltName", ())],
    }


def probe(
    host: str,
    port: int,
    *,
    path: str = "/",
    method: str = "GET",
    tls: bool = False,
    server_name: str | None = None,
    ca_file: str | None = None,
    username: str | None = None,
    password: str | None = None,
    want_sha256: bool = False,
    timeout: float = 10,
    accept: str = "",
) -> dict[str, Any]:
    """One request; the result always has status and error."""
    name = server_name or host
    result: dict[str, Any] = {"status": None, "error": None}
    try:
        sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
    except OSError as error:
        result["error"] = f"cannot connect to {host}:{port}: {error.strerror or error}"
        return result
    try:
        if tls:
            context = ssl.create_default_context(cafile=ca_file or None)
            try:
                sock = context.wrap_socket(sock, server_hostname=name)
            except ssl.SSLCertVerificationError as error:
                result["error"] = f"certificate verify failed for {name}: {error.verify_message}"
                return result
            except (ssl.SSLError, OSError) as error:
                result["error"] = f"TLS handshake with {host}:{port} failed: {error}"
                return result
            result["certificate"] = describe_certificate(sock)  # type: ignore[arg-type]
        headers = {"Host": f"{name}:{port}", "User-Agent": "airgap-pypi-probe"}
        if accept:
            headers["Accept"] = accept
        if username is not None:
            headers["Authorization"] = basic_auth(username, password)
        connection = _Connection(sock, name, port, timeout)
        try:
            connection.request(method, path, body=b"" if method == "POST" else None, headers=headers)
            response = connection.getresponse()
            digest = hashlib.sha256()
            kept = b""
            while chunk := response.read(65536):
                digest.update(chunk)
                if len(kept) < BODY_LIMIT:
                    kept += chunk[: BODY_LIMIT - len(kept)]
        except (OSError, http.client.HTTPException) as error:
            result["error"] = f"no HTTP answer from {host}:{port}: {error!r}"
            return result
        result["status"] = response.status
        result["content_type"] = response.getheader("Content-Type")
        if want_sha256:
            result["sha256"] = digest.hexdigest()
        else:
            result["body"] = kept.decode("utf-8", errors="replace")
            result["links"] = links_of(result["body"], path)
        return result
    finally:
        sock.close()


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "default": "127.0.0.1"},
            "port": {"type": "int", "required": True},
            "path": {"type": "str", "default": "/"},
            "method": {"type": "str", "default": "GET", "choices": ["GET", "POST"]},
            "tls": {"type": "bool", "default": False},
            "server_name": {"type": "str"},
            "ca_file": {"type": "path"},
            "username": {"type": "str"},
            "password": {"type": "str", "no_log": True},
            "sha256": {"type": "bool", "default": False},
            "timeout": {"type": "float", "default": 10},
            "accept": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    p = module.params
    result = probe(
        p["host"],
        p["port"],
        path=p["path"],
        method=p["method"],
        tls=p["tls"],
        server_name=p["server_name"],
        ca_file=p["ca_file"],
        username=p["username"],
        password=p["password"],
        want_sha256=p["sha256"],
        timeout=p["timeout"],
        accept=p["accept"],
    )
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
