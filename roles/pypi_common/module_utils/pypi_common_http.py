"""Links of a simple-index page and Basic credentials: shared by the modules that probe the index."""

from __future__ import annotations

import base64
import re
from typing import NamedTuple
from urllib.parse import unquote, urljoin, urlsplit

HREF = re.compile(r"""href\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


class PageLink(NamedTuple):
    """One href of a page: the URL resolved against the page (no fragment), its last segment, its sha256."""

    url: str
    name: str
    sha256: str | None


def page_links(body: str, base: str) -> list[PageLink]:
    """Every href of an HTML page, resolved against base, with the #sha256= of its fragment when it has one."""
    found = []
    for href in HREF.findall(body):
        url, _, fragment = urljoin(base, href).partition("#")
        params = dict(part.split("=", 1) for part in fragment.split("&") if "=" in part)
        name = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
        found.append(PageLink(url, name, params.get("sha256")))
    return found


def basic_auth(username: str, password: str | None) -> str:
    """The Authorization header's value for HTTP Basic."""
    token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
    return f"Basic {token}"
