"""Yanking end to end on loopback: the real stack (gunicorn, pypiserver, the static read path, the role's
templates), twine uploads, the yank command as the role runs it, and real pip installing into target
directories with no configuration but the index URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.build_bundle import scrubbed_env
from scripts.demo_wheel import build_wheel
from scripts.index_stack import Stack, get, serve, twine_upload

PROJECT = "yank-me"
REASON = "broken build <do not use>"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with serve(tmp_path_factory.mktemp("yank-server")) as running:
        yield running


def index_command(stack: Stack, command: str, *args: str) -> dict[str, object]:
    """airgap_pypi_index.py yank/unyank as deployed beside the WSGI entry point; its JSON result line."""
    done = subprocess.run(
        [
            *(sys.executable, str(stack.config / "airgap_pypi_index.py"), command),
            *("--packages", str(stack.packages), "--tree", str(stack.tree), "--yanked", str(stack.yanked)),
            *("--project", PROJECT, *args),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def pip_install(stack: Stack, target: Path, requirement: str) -> tuple[str, str]:
    """pip install into target from the index alone (no configuration file, no PIP_* variable); the version
    installed (the module says which file it came from) and pip's output."""
    env = scrubbed_env(os.environ)  # the machine's pip configuration must not leak in
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check"),
            *("--index-url", f"{stack.url}/simple/", "--target", str(target), requirement),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    module = (target / PROJECT.replace("-", "_") / "__init__.py").read_text()
    return module.split('"')[1], done.stdout + done.stderr


def test_pip_skips_a_yanked_release_unless_pinned_and_prints_the_reason(stack: Stack, tmp_path: Path) -> None:
    for version in ("1.0", "2.0"):
        done = twine_upload(stack.url, build_wheel(tmp_path / "dist", PROJECT, version))
        assert done.returncode == 0, done.stdout + done.stderr
    assert pip_install(stack, tmp_path / "before", PROJECT)[0] == "2.0"

    result = index_command(stack, "yank", "--version", "2.0", "--reason", REASON)
    assert result["changed"] is True and result["pages"] == [PROJECT]
    # On disk when the command returns, before any read could have brought the pages up to date.
    files = json.loads((stack.tree / "simple" / PROJECT / "index.json").read_text())["files"]
    assert [item["yanked"] for item in files] == [False, REASON]

    assert pip_install(stack, tmp_path / "unpinned", PROJECT)[0] == "1.0", "pip skips the yanked release"
    version, output = pip_install(stack, tmp_path / "pinned", f"{PROJECT}==2.0")
    assert version == "2.0", "pinned with ==, pip still installs it"
    assert "yanked version" in output and f"Reason for being yanked: {REASON}" in output, output

    status, page = get(f"{stack.url}/simple/{PROJECT}/")
    assert status == 200 and b'data-yanked="broken build &lt;do not use&gt;"' in page
    status, browse = get(f"{stack.url}/project/{PROJECT}/")
    assert status == 200 and b"yanked: broken build &lt;do not use&gt;" in browse

    result = index_command(stack, "unyank", "--version", "2.0")
    assert result["changed"] is True
    assert pip_install(stack, tmp_path / "after", PROJECT)[0] == "2.0", "unyanked: the newest again"
    assert b"data-yanked" not in get(f"{stack.url}/simple/{PROJECT}/")[1]


def test_the_workers_follow_the_yank_file_the_role_names(stack: Stack, tmp_path: Path) -> None:
    """A change of the yank file by hand (or a yank whose own sync failed) is on the pages after a read or two:
    the WSGI entry point passes the file to the workers (pypi_server_data_dir/yanked.json)."""
    done = twine_upload(stack.url, build_wheel(tmp_path, "by-hand", "1.0"))
    assert done.returncode == 0, done.stdout + done.stderr
    entry = {"reason": "edited by hand", "when": "2024-01-01T00:00:00Z"}
    document = {"format": 1, "projects": {"by-hand": {"1.0": entry}}}
    temporary = stack.yanked.with_name(".tmp-by-hand")
    temporary.write_text(json.dumps(document))
    temporary.replace(stack.yanked)
    deadline = time.monotonic() + 10  # a worker looks again at most once a second
    while b'data-yanked="edited by hand"' not in get(f"{stack.url}/simple/by-hand/")[1]:
        assert time.monotonic() < deadline, "the workers did not follow the yank file"
        time.sleep(0.2)
