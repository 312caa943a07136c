#!/usr/bin/python
"""Check that a running index really serves: its simple index, its file list and one download (read-only)."""

from __future__ import annotations

import hashlib
import http.client
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pypi_common_http import basic_auth, page_links

DOCUMENTATION = r"""
module: pypi_server_serving
short_description: Check that a pypiserver index serves its simple index and a file
description:
  - GETs /simple/, then /packages/ (the flat list of every file), downloads the first file listed and compares
    its sha256 with the one in its link. An empty index passes with C(file) empty and says so.
  - Changes nothing.
options:
  url:
    description: Base URL of the index, e.g. http://127.0.0.1:8080.
    type: str
    required: true
  username:
    description: Account for an index that needs a password to list and download.
    type: str
    default: ""
  password:
    description: Its password.
    type: str
    default: ""
    no_log: true
  ca_file:
    description:
      - For an https URL, the CA the chain is verified against (empty, the system trust store). The name is not
        checked: the URL is the loopback address, and the role's TLS health check verifies the name clients use.
    type: str
    default: ""
  timeout:
    description: Seconds for each request.
    type: int
    default: 10
  health_wait:
    description:
      - First wait up to this many seconds for GET /health to answer 200, asking once a second (after a restart);
        0 does not ask. When it never answers 200, the result says so in C(msg) and C(health) is false.
    type: int
    default: 0
  expect_unauthorized:
    description:
      - The index asks for a password and the play has no account to give: check only that GET /simple/ answers
        401 (I(username) is not used).
    type: bool
    default: false
author: airgap-pypi
"""

RETURN = r"""
health:
  description: Whether /health answered 200 (true when I(health_wait) is 0).
  type: bool
  returned: always
serving:
  description: Whether every check passed.
  type: bool
  returned: always
files:
  description: How many files /packages/ lists.
  type: int
  returned: always
file:
  description: The file downloaded and verified (empty for an empty index).
  type: str
  returned: always
checks:
  description: What was checked, one line each.
  type: list
  elements: str
  returned: always
"""


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Verify the chain against ca_file (or the system store); the name is checked elsewhere (see ca_file)."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.check_hostname = False
    return context


def fetch(url: str, auth: str | None, timeout: int, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    """GET url; (status, body). HTTP errors are returned as their status, not raised."""
    request = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def file_links(base: str, html: str) -> list[tuple[str, str, str]]:
    """(name, absolute URL without fragment, sha256 from the fragment or '') of every file link in a listing."""
    return [
        (link.name, link.url, link.sha256 or "")
        for link in page_links(html, base)
        if link.name and not link.url.endswith("/")
    ]


def probe(url: str, auth: str | None, timeout: int, ca_file: str = "") -> dict[str, Any]:
    """Run the checks; the result dict of the module (ok False with msg on the first failure)."""
    base = url.rstrip("/")
    context = tls_context(ca_file) if base.startswith("https:") else None
    checks: list[str] = []
    result: dict[str, Any] = {"serving": False, "files": 0, "file": "", "checks": checks}
    try:
        status, _ = fetch(f"{base}/simple/", auth, timeout, context)
        if status != 200:
            result["msg"] = f"GET {base}/simple/ answered {status}, not 200"
            return result
        checks.append(f"GET {base}/simple/: 200")
        status, body = fetch(f"{base}/packages/", auth, timeout, context)
        if status != 200:
            result["msg"] = f"GET {base}/packages/ answered {status}, not 200"
            return result
        links = file_links(f"{base}/packages/", body.decode("utf-8", "replace"))
        result["files"] = len(links)
        checks.append(f"GET {base}/packages/: 200, {len(links)} file(s)")
        if not links:
            checks.append("the index holds no file yet: no download to check")
            result["serving"] = True
            return result
        name, file_url, digest = min(links)
        status, data = fetch(file_url, auth, timeout, context)
        if status != 200:
            result["msg"] = f"GET {file_url} (the first file the index lists) answered {status}, not 200"
            return result
        got = hashlib.sha256(data).hexdigest()
        if digest and got != digest:
            result["msg"] = f"{name} downloaded with sha256 {got}, but the index lists {digest}"
            return result
        result["file"] = name
        checks.append(f"GET {file_url}: 200, {len(data)} bytes, sha256 {'matches the listing' if digest else got}")
        result["serving"] = True
    except (OSError, ValueError, http.client.HTTPException) as exc:
        result["msg"] = f"{base} did not answer: {exc}"
    return result


def asks_password(url: str, timeout: int, ca_file: str = "") -> dict[str, Any]:
    """GET /simple/ without a password must answer 401."""
    base = url.rstrip("/")
    context = tls_context(ca_file) if base.startswith("https:") else None
    result: dict[str, Any] = {"serving": False, "files": 0, "file": "", "checks": []}
    try:
        status, _ = fetch(f"{base}/simple/", None, timeout, context)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        result["msg"] = f"{base} did not answer: {exc}"
        return result
    if status != 401:
        result["msg"] = f"GET /simple/ answered {status}, not 401"
        return result
    result["checks"].append(f"GET {base}/simple/ without a password: 401")
    result["serving"] = True
    return result


def wait_for_health(url: str, seconds: int, context: ssl.SSLContext | None, timeout: int = 10) -> str:
    """Ask url/health once a second for up to seconds; '' when it answered 200, else what the last try got."""
    deadline = time.monotonic() + seconds
    last = "no answer"
    while True:
        try:
            status, _ = fetch(f"{url.rstrip('/')}/health", None, timeout, context)
            if status == 200:
                return ""
            last = f"status {status}"
        except (OSError, ValueError, http.client.HTTPException) as exc:
            last = str(exc)
        if time.monotonic() + 1 > deadline:
            return f"GET /health did not answer 200 within {seconds} s ({last})"
        time.sleep(1)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "username": {"type": "str", "default": ""},
            "password": {"type": "str", "default": "", "no_log": True},
            "ca_file": {"type": "str", "default": ""},
            "timeout": {"type": "int", "default": 10},
            "health_wait": {"type": "int", "default": 0},
            "expect_unauthorized": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    auth = None
    if params["username"]:
        auth = basic_auth(params["username"], params["password"])
    if params["health_wait"] > 0:
        context = tls_context(params["ca_file"]) if params["url"].startswith("https:") else None
        error = wait_for_health(params["url"], params["health_wait"], context, params["timeout"])
        if error:
            module.fail_json(changed=False, health=False, serving=False, files=0, file="", checks=[], msg=error)
    if params["expect_unauthorized"]:
        result = asks_password(params["url"], params["timeout"], params["ca_file"])
    else:
        result = probe(params["url"], auth, params["timeout"], params["ca_file"])
    result["health"] = True
    if not result["serving"]:
        module.fail_json(changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
