"""Shared helpers for the operations scenario: playbook runs, the index's files, the test bundles."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import build_bundle
from scripts.containers import SYSTEMD_RUN_OPTIONS, ansible_playbook, docker, wait_for
from scripts.containers import recap as recap_of_hosts

SERVER = "airgap-pypi-ops-deb12"
CLIENT = "airgap-pypi-ops-client"
NETWORK = "airgap-pypi-ops"
IMAGE = "airgap-pypi/debian12-systemd:latest"
PORT = 8080
USER = "tester"
PASSWORD = "molecule-test-only"  # the scenario's throwaway account (molecule.yml)
PROJECT_DIR = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
INVENTORY_DIR = Path(os.environ.get("MOLECULE_INVENTORY_FILE", "inventory/hosts")).parent
ARTIFACTS = PROJECT_DIR / "offline_artifacts"
CLIENT_BIN = "/opt/clients/bin"
PACKAGES = "/srv/pypi/packages"
VENV = "/opt/airgap-pypi/pypiserver"
RELEASES = "/opt/airgap-pypi/releases"
SUPERVISORCTL = "/opt/airgap-pypi/supervisor/bin/supervisorctl -c /etc/supervisor/supervisord.conf"
TAG = "cp311"  # Debian 12's Python
# Bundle B pins an older gunicorn than bundle A's lock (27.x for 3.11): the two lock sets differ in one package.
B_PIN = "gunicorn==23.0.0"
# The file whose first commit introduced releases: its parent is the single-virtualenv layout.
RELEASES_TASKS = "roles/pypi_server/tasks/release.yml"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "airgap-pypi" / "bundles"
# The old single-virtualenv host, converged once per set of inputs and kept as a local image.
SINGLE_VENV_IMAGE = "airgap-pypi/ops-single-venv"
PROBE = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{PORT}/health', timeout=5)"


def on(container: str, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a command in a container."""
    return docker("exec", container, *args, check=check)


def sh(container: str, script: str) -> str:
    """Run a shell script in a container; its stdout (fails the test on a non-zero exit)."""
    done = on(container, "sh", "-c", script)
    assert done.returncode == 0, f"{script}: {done.stdout}{done.stderr}"
    return done.stdout


def playbook(
    path: str, *args: str, project: Path = PROJECT_DIR, timeout: int = 900
) -> subprocess.CompletedProcess[str]:
    """ansible-playbook <path> of project (default: this one) against the scenario's inventory."""
    return ansible_playbook(project / path, INVENTORY_DIR, "--limit", SERVER, *args, project=project, timeout=timeout)


def commit_before_releases() -> str | None:
    """The commit before the one that introduced releases (the single-virtualenv layout), if git has it."""
    added = subprocess.run(
        ["git", "-C", str(PROJECT_DIR), "log", "--diff-filter=A", "--format=%H", "--", RELEASES_TASKS],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not added:
        return None
    return subprocess.run(
        ["git", "-C", str(PROJECT_DIR), "rev-parse", f"{added[-1]}^"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="session")
def project_before_releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This repository as it was before releases (single-virtualenv layout), from git."""
    commit = commit_before_releases()
    if commit is None:
        pytest.skip("no git history with the commit that introduced releases")
    dest = tmp_path_factory.mktemp("before-releases")
    archive = subprocess.run(
        ["git", "-C", str(PROJECT_DIR), "archive", commit, "roles", "site.yml", "ansible.cfg", "VERSION"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def recap(output: str) -> dict[str, int]:
    """The PLAY RECAP counts of the index host."""
    counts = recap_of_hosts(output)
    assert SERVER in counts, f"no recap for {SERVER} in:\n{output[-3000:]}"
    return counts[SERVER]


def said(result: subprocess.CompletedProcess[str]) -> str:
    """Everything a run printed, whitespace folded (ansible-core prints task errors on stderr too)."""
    return " ".join((result.stdout + result.stderr).split())


def tail(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout[-4000:] + result.stderr[-2000:]


def packages(container: str = SERVER) -> dict[str, str]:
    """{file name: sha256} of every file in the index's packages directory."""
    out = sh(container, f"cd {PACKAGES} && find . -type f -print0 | xargs -0r sha256sum")
    return {line.split("  ", 1)[1].removeprefix("./"): line.split("  ", 1)[0] for line in out.splitlines()}


def current_release(container: str = SERVER) -> str:
    return sh(container, f"readlink {VENV}").strip().rsplit("/", 1)[-1]


def running_release(container: str = SERVER) -> str:
    """The release supervisord started the running gunicorn master with (its environment)."""
    pid = sh(container, f"{SUPERVISORCTL} pid pypiserver").strip()
    assert pid.isdigit() and pid != "0", f"pypiserver is not running (pid {pid!r})"
    environ = sh(container, f"tr '\\0' '\\n' </proc/{pid}/environ")
    found = re.search(r"^AIRGAP_PYPI_RELEASE=(.*)$", environ, re.MULTILINE)
    assert found, environ
    return found.group(1)


def release_of(artifacts: Path) -> str:
    """The release id the role derives from a bundle: <tag>-<sha256 of the server lock>[:12]."""
    return f"{TAG}-{build_bundle.sha256_file(artifacts / 'locks' / f'server-{TAG}.txt')[:12]}"


def upload(
    wheel: str, check: bool = True, user: str = USER, password: str = PASSWORD
) -> subprocess.CompletedProcess[str]:
    """twine upload of a wheel on the client to the index (the scenario's account unless told)."""
    done = on(
        CLIENT,
        f"{CLIENT_BIN}/twine",
        "upload",
        "--non-interactive",
        "--repository-url",
        f"http://{SERVER}:{PORT}/",
        "-u",
        user,
        "-p",
        password,
        wheel,
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def pip_install(requirement: str) -> subprocess.CompletedProcess[str]:
    """pip install from the index on the client, into a fresh target directory."""
    target = f"/var/tmp/site-{hashlib.sha256(requirement.encode()).hexdigest()[:8]}-{os.getpid()}"
    on(CLIENT, "rm", "-rf", target)
    return on(
        CLIENT,
        f"{CLIENT_BIN}/pip",
        "install",
        "--no-cache-dir",
        "--trusted-host",
        SERVER,
        "--index-url",
        f"http://{SERVER}:{PORT}/simple/",
        "--target",
        target,
        requirement,
    )


def copy_tree(source: Path, dest: Path) -> None:
    """Copy a bundle directory, hard-linking its files where the file system allows."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, dest, copy_function=link_or_copy)


def bundle_subset(dest: Path) -> Path:
    """dest/ with bundle A's requirements, this host's locks and all of A's wheels (no SHA256SUMS yet)."""
    dest.mkdir(parents=True)
    shutil.copytree(ARTIFACTS / "requirements", dest / "requirements")
    (dest / "locks").mkdir()
    for lock in (ARTIFACTS / "locks").glob(f"*-{TAG}.txt"):
        shutil.copy2(lock, dest / "locks" / lock.name)
    copy_tree(ARTIFACTS / "wheels", dest / "wheels")
    return dest


@pytest.fixture(scope="session")
def bundle_b() -> Path:
    """Bundle B: bundle A with gunicorn pinned to an older release, built by scripts/build_bundle.py.

    Resolving and downloading that one wheel needs the public index on the controller (the containers stay
    offline); the result is cached outside the repository, so later runs build nothing.
    """
    key = hashlib.sha256(((ARTIFACTS / "requirements" / "server.in").read_text() + B_PIN + TAG).encode()).hexdigest()[
        :12
    ]
    dest = CACHE / f"upgrade-b-{key}"
    if build_bundle.check(dest) == []:
        return dest
    work = CACHE / f"upgrade-b-{key}.building"
    shutil.rmtree(work, ignore_errors=True)
    bundle_subset(work)
    server_in = work / "requirements" / "server.in"
    server_in.write_text(server_in.read_text() + f"# Bundle B of molecule/operations: an older gunicorn.\n{B_PIN}\n")
    built = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "scripts" / "build_bundle.py"), "--artifacts", str(work), "--targets", TAG],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if built.returncode != 0:
        pytest.fail(
            "bundle B (an older gunicorn) could not be built: the controller needs the public index once for it.\n"
            + built.stdout[-2000:]
            + built.stderr[-2000:]
        )
    shutil.rmtree(dest, ignore_errors=True)
    work.rename(dest)
    return dest


@pytest.fixture(scope="session")
def bundle_broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle whose index app cannot start: A's server lock without pypiserver (gunicorn cannot import the app)."""
    dest = bundle_subset(tmp_path_factory.mktemp("bundle") / "broken")
    lock = dest / "locks" / f"server-{TAG}.txt"
    kept: list[str] = []
    skipping = False
    for line in lock.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            skipping = line.startswith("pypiserver==")
        if not skipping:
            kept.append(line)
    text = "\n".join(kept) + "\n"
    assert "pypiserver==" in lock.read_text() and "pypiserver==" not in text
    lock.write_text(text)
    files = build_bundle.hash_dir(dest / "wheels")
    locks = [build_bundle.load_lock(path) for path in sorted((dest / "locks").glob("*.txt"))]
    for name in build_bundle.unreferenced(files, locks):
        (dest / "wheels" / name).unlink()
    build_bundle.write_sums(dest, (lk.path for lk in locks))
    assert build_bundle.check(dest) == []
    return dest


def new_server_container(image: str = IMAGE) -> None:
    """A fresh index host under the same name, started as create.yml starts it (systemd, no --privileged)."""
    docker("rm", "-f", SERVER, check=False)
    docker(
        "run",
        "-d",
        "--name",
        SERVER,
        "--hostname",
        SERVER,
        "--network",
        NETWORK,
        *SYSTEMD_RUN_OPTIONS,
        "--label",
        "airgap-pypi.molecule=true",
        image,
    )
    # Right after `docker run` systemd may not even have its bus yet: ask until it says it is up.
    booted = wait_for(
        lambda: on(SERVER, "systemctl", "is-system-running").stdout.strip() in {"running", "degraded"}, 120, 1
    )
    assert booted, on(SERVER, "systemctl", "is-system-running").stdout


def single_venv_image_key(commit: str) -> str:
    """What the old single-virtualenv host is made of: the old code, the base image's recipe, the bundle, the mirror."""
    recipe = docker("image", "inspect", "--format", '{{index .Config.Labels "airgap-pypi.recipe"}}', IMAGE).stdout
    parts = [commit, recipe.strip(), TAG, (ARTIFACTS / "SHA256SUMS").read_text()]
    parts.append((ARTIFACTS / "mirror" / "SHA256SUMS").read_text())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def single_venv_host(project: Path) -> bool:
    """A new index host as the code before releases left it; True when it came from the image cache.

    Converging the old code takes a minute and gives the same host for the same inputs, so the converged host is
    kept as a local image (docker commit) keyed by those inputs; older keys are removed.
    """
    commit = commit_before_releases()
    assert commit is not None
    image = f"{SINGLE_VENV_IMAGE}:{single_venv_image_key(commit)}"
    if docker("image", "inspect", image, check=False).returncode == 0:
        new_server_container(image)
        # supervisord starts at boot; the index answers once gunicorn is up.
        serving = wait_for(lambda: on(SERVER, "python3", "-c", PROBE).returncode == 0, 60, 1)
        assert serving, f"the cached single-virtualenv host ({image}) did not serve after boot"
        return True
    new_server_container()
    assert sh(SERVER, f"ls -A {PACKAGES} 2>/dev/null || true").strip() == ""
    old = playbook(
        "site.yml",
        "-e",
        f"pypi_bootstrap_artifacts_dir={ARTIFACTS}",
        "-e",
        f"pypi_server_mirror_dir={ARTIFACTS / 'mirror'}",
        project=project,
    )
    assert old.returncode == 0, tail(old)
    for stale in docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", SINGLE_VENV_IMAGE).stdout.split():
        docker("image", "rm", stale, check=False)
    docker("commit", SERVER, image)
    return False
