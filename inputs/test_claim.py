"""The bad-input harness makes way for its cases' containers (scripts/pristine.claim): what a killed run left is
removed, anything else of a case's name is never touched and stops the run. Real containers, never a case's name."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from scripts.containers import docker
from scripts.pristine import OWNER_LABEL, OWNER_PARTS, PREFIX, claim, new_owner

IMAGE = "airgap-pypi/debian12-sysv:latest"  # the image the cases start from
EARLIER = "6eafdac9890c4b88a9d9174c669cb18a"  # the label's earlier format: its owner cannot be told


@pytest.fixture
def names() -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        docker("rm", "-f", name, check=False)


def make(names: list[str], label: str | None, state: str = "running") -> str:
    """A container of a name of the harness's, labelled with owner label (none when None): running, exited or
    created (never started, as between docker run's create and start)."""
    name = f"{PREFIX}claim-{uuid.uuid4().hex[:8]}"
    names.append(name)
    labels = ["--label", f"{OWNER_LABEL}={label}"] if label is not None else []
    argv = ["--name", name, "--network", "none", *labels, "--entrypoint", "sleep", IMAGE, "300"]
    docker("create" if state == "created" else "run", *(["-d"] if state != "created" else []), *argv)
    if state == "exited":
        docker("stop", "-t", "0", name)
    return name


def exists(name: str) -> bool:
    return docker("container", "inspect", name, check=False).returncode == 0


def owner(**changes: str) -> str:
    return "/".join({**dict(zip(OWNER_PARTS, new_owner().split("/"), strict=True)), **changes}.values())


def ended_pid() -> str:
    ended = subprocess.Popen(["true"])
    ended.wait()
    return str(ended.pid)


def test_containers_a_killed_run_left_are_removed(names: list[str]) -> None:
    owner_ended = make(names, owner(pid=ended_pid()))  # still running: its owner is gone all the same
    stopped = make(names, EARLIER, state="exited")  # the daemon or the machine stopped it with its run
    unknown_stopped = make(names, owner(host="another-host"), state="exited")
    claim([owner_ended, stopped, unknown_stopped])
    assert not exists(owner_ended) and not exists(stopped) and not exists(unknown_stopped)


def test_containers_of_a_run_that_may_still_run_stop_the_run_untouched(names: list[str]) -> None:
    live = make(names, new_owner())
    live_stopped = make(names, new_owner(), state="exited")  # its owner runs: not ours to remove
    earlier_format = make(names, EARLIER)  # running, and its owner cannot be told
    other_machine = make(names, owner(host="another-host", pid=ended_pid()))  # a PID of another machine
    being_made = make(names, EARLIER, state="created")
    taken = [live, live_stopped, earlier_format, other_machine, being_made]
    with pytest.raises(RuntimeError, match=f"{', '.join(taken)} exist already"):
        claim(taken)
    assert all(exists(name) for name in taken)


def test_a_container_the_harness_did_not_make_is_never_removed(names: list[str]) -> None:
    foreign = make(names, None, state="exited")
    with pytest.raises(RuntimeError, match=foreign):
        claim([foreign])
    assert exists(foreign)
