"""Filters of role pypi_balancer: HAProxy's statistics, read."""

from __future__ import annotations

import csv
import io
from typing import Any

BACKENDS = ("airgap_pypi_reads", "airgap_pypi_writer")


def server_states(text: str) -> list[dict[str, str]]:
    """{backend, server, status} of every server of the balancer's two backends, from HAProxy's CSV statistics
    (`/stats;csv`; its header line starts with '# '). Status is its first word (UP, DOWN, MAINT, no ...)."""
    lines = (text or "").splitlines()
    if not lines or not lines[0].startswith("# "):
        return []
    rows = csv.DictReader(io.StringIO("\n".join([lines[0][2:], *lines[1:]])))
    return [
        {"backend": row["pxname"], "server": row["svname"], "status": (row.get("status") or "").split(" ")[0]}
        for row in rows
        if row.get("pxname") in BACKENDS and row.get("svname") not in ("FRONTEND", "BACKEND")
    ]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"pypi_balancer_server_states": server_states}
