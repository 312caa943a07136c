"""The bad-input harness makes way for its cases' containers (scripts/pristine.claim): what a killed run left is
removed, anything else of a case's name is never touched and stops the run. Real containers, never a case's name."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from scripts.containers import docker
from scripts.pristine import OWNER_LABEL, PREFIX, claim, new_owner

IMAGE = "airgap-pypi/debian12-sysv:latest"  # the image the cases start from


@pytest.fixture
def names() -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        docker("rm", "-f", name, check=False)


def make(names: list[str], label: str | None, running: bool = True) -> str:
    name = f"{PREFIX}claim-{uuid.uuid4().hex[:8]}"
    names.append(name)
    labels = ["--label", f"{OWNER_LABEL}={label}"] if label is not None else []
    docker("run", "-d", "--name", name, "--network", "none", *labels, "--entrypoint", "sleep", IMAGE, "300")
    if not running:
        docker("stop", "-t", "0", name)
    return name


def exists(name: str) -> bool:
    return docker("container", "inspect", name, check=False).returncode == 0


def dead_owner() -> str:
    ended = subprocess.Popen(["true"])
    ended.wait()
    host, boot, _, started, random = new_owner().split("/")
    return f"{host}/{boot}/{ended.pid}/{started}/{random}"


def test_containers_a_killed_run_left_are_removed(names: list[str]) -> None:
    owner_ended = make(names, dead_owner())
    stopped = make(names, "6eafdac9890c4b88a9d9174c669cb18a", running=False)  # the earlier label; the daemon stopped
    claim([owner_ended, stopped])
    assert not exists(owner_ended) and not exists(stopped)


def test_containers_of_a_run_that_still_runs_stop_the_run_untouched(names: list[str]) -> None:
    live = make(names, new_owner())
    earlier_format = make(names, "6eafdac9890c4b88a9d9174c669cb18a")  # running, and its owner cannot be told
    with pytest.raises(RuntimeError, match=f"{live}, {earlier_format} exist already"):
        claim([live, earlier_format])
    assert exists(live) and exists(earlier_format)


def test_a_container_the_harness_did_not_make_is_never_removed(names: list[str]) -> None:
    foreign = make(names, None, running=False)
    with pytest.raises(RuntimeError, match=foreign):
        claim([foreign])
    assert exists(foreign)
