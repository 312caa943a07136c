"""Helpers the Molecule scenarios' tests share: the docker CLI and polling."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def docker(
    *args: str, check: bool = True, timeout: float = 120, input_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI and return its result (input_file, if given, is its standard input)."""
    if input_file is None:
        return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)
    with input_file.open("rb") as stdin:
        done = subprocess.run(["docker", *args], stdin=stdin, capture_output=True, check=check, timeout=timeout)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def wait_for(predicate: Callable[[], bool], seconds: float, step: float = 0.5) -> bool:
    """Poll predicate until it holds or the time is up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
