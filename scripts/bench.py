#!/usr/bin/env python3
"""Measure airgap-pypi in one run: provisioning, reads against an nginx yardstick, pip, uploads, the bundle.

Reports, never asserts: it writes bench/results.json and bench/results.md with the goals' ratios and never fails
on a number. Numbers are wall-clock on a shared machine: compare the ratios within one run, not seconds across
runs. Sections (--only runs a subset; the others keep their last results in results.json):

  provision  a bare container to a serving index with site.yml, the idempotent re-run, loading 1,000 small
             wheels as a carried-in mirror and the re-run after it
  hosts4     four bare containers provisioned in one site.yml run (forks)
  reads      wrk req/s, p50 and p99 of /simple/, /simple/<project>/ and a file at 1,000 and 10,000 files, for
             the default deployment, pypiserver as it is today (pypi_server_static_index=false) and the
             optional front server, each as a ratio to nginx serving the same files as a static tree
  features   descriptions of the bundle's wheels rendered as the index renders them (ms per file), upload to
             visible on /project/<name>/ with the rendered description, and /simple/<project>/ reads with
             the owner checks and claims on against the index's defaults (loopback, no docker)
  pip        pip install of the locked set bench/pip-set.txt from the index vs from a --find-links directory
  upload     time from a finished twine upload to pip (and a plain HTTP GET) seeing the file
  bundle     a bundle build from the committed locks, the default mirror build, packing the archive
  transfer   a delta archive's size over the bytes of the files it carries (synthetic tree of random bytes), and
             checking a 1 GB set of parts against their manifest over sha256sum alone (no containers)
  scale      100,000 synthetic files over 20,000 projects (loopback, no docker): a cold rebuild of the tree by the
             sync command, then gunicorn on it: upload to visible, /simple/<project>/ p99 (wrk), worker memory,
             the state's and the front page's sizes (a few minutes; not part of make test)
  replication  upload to a read replica serving it at 10,000 files: the replicas' program's publisher and one
             pull with the role's intervals and the machine's rsync on a local path (no SSH hop, no docker);
             the initial copy, the lag of 20 uploads, and the lag's parts measured in-process
  balancer   one read replica (nginx with the front server's read-only site on a synthetic tree) read with wrk
             directly and through HAProxy with the balancer role's configuration (and beside it the same without
             its cache of package files), alternating; req/s, p99, each container's CPU per request, the ratio
             through / direct and what those predict per added replica

Needs docker, the test images and wrk (scripts/bench.sh installs what is missing on Debian/Ubuntu).
The index under test is a container on the bench's own --internal docker network; so is the nginx yardstick,
a container of the same image with Debian's nginx from the stand-in OS mirror and its own static tree, so that
both are reached across the same bridge.
"""

from __future__ import annotations

import argparse
import contextlib
import email.parser
import hashlib
import importlib.util
import json
import math
import os
import random
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

if __package__:  # imported: from scripts import bench (the unit tests)
    from . import airgap_transfer, containers, demo_wheel, index_stack, pack_archive
    from . import build_bundle as bb
else:  # run as a file (scripts/bench.sh): python puts its folder, scripts/, first on sys.path
    import airgap_transfer
    import build_bundle as bb
    import containers
    import demo_wheel
    import index_stack
    import pack_archive

ROOT = Path(__file__).resolve().parent.parent

SECTIONS: tuple[str, ...] = (
    "provision",
    "hosts4",
    "reads",
    "auth",
    "features",
    "pip",
    "upload",
    "bundle",
    "transfer",
    "scale",
    "replication",
    "balancer",
)
# The sections that run containers (docker); the others run on loopback only.
DOCKER_SECTIONS = frozenset({"provision", "hosts4", "reads", "pip", "upload", "balancer"})
PREFIX = "airgap-pypi-bench"
NETWORK = PREFIX
INDEX = f"{PREFIX}-index"
CLIENT = f"{PREFIX}-client"
YARDSTICK = f"{PREFIX}-nginx"
MANY = tuple(f"{PREFIX}-h{i}" for i in range(1, 5))
IMAGE = "airgap-pypi/debian12-systemd:latest"
CLIENT_IMAGE = "airgap-pypi/debian12-client:latest"
CLIENT_BIN = "/opt/clients/bin"
CLIENT_PYTHON = bb.Target(11)  # the client image's python3 (Debian 12), which the pip set is locked for
PORT = 8080
PACKAGES_DIR = "/srv/pypi/packages"  # pypi_server_packages_dir's default
PIP_SET_IN = ROOT / "bench" / "pip-set.in"
PIP_SET_LOCK = ROOT / "bench" / "pip-set.txt"
SERVER_SPECS = ROOT / "roles" / "pypi_server" / "meta" / "argument_specs.yml"
FRONT_SPECS = ROOT / "roles" / "pypi_front" / "meta" / "argument_specs.yml"
OS_MIRROR = ROOT / "scripts" / "os_mirror.sh"
# Synthetic files: every project has VERSIONS files, so /simple/<project>/ lists several; the 1,000-file set is
# the first tenth of the 10,000-file set, and TARGET_PROJECT is in both.
VERSIONS = 10
TARGET_PROJECT = "bench-pkg-0000"
# Goals of the issue; reported as ratios, never asserted.
TIME_GOALS = {"first_run_s": 35.0, "rerun_s": 10.0}
# Four hosts in one site.yml run, as a ratio to one host.
GOAL_HOSTS4_RATIO = 1.5
TASK_TIMES_PLUGINS = ROOT / "molecule" / "shared" / "callback_plugins"
GOAL_BASELINE_FACTOR = 100.0
GOAL_P99_MS = 20.0
GOAL_FRONT_VS_NGINX = 0.8  # like with like: the yardstick is reached across the same docker bridge
GOAL_PIP_RATIO = 1.2
GOAL_UPLOAD_S = 1.0
GOAL_AUTH_RATIO = 0.8
GOAL_RENDER_P95_MS = 50.0
GOAL_FEATURES_RATIO = 0.9
RENDER_REPEATS = 5  # renderings of each description counted as its time, after a first (cold) call
# Issue 16: a delta's size over the bytes of the files it carries, and the private side's check of the carried
# parts over sha256sum alone on the same files (speed).
GOAL_DELTA_RATIO = 1.1
GOAL_VERIFY_RATIO = 0.8
# Issue 15: one host with 100,000 files over 20,000 projects.
SCALE_FILES = 100_000
SCALE_VERSIONS = 5
GOAL_SCALE_UPLOAD_S = 1.0
GOAL_SCALE_P99_MS = 20.0
GOAL_SCALE_WORKER_MB = 300.0
GOAL_SCALE_REBUILD_S = 120.0
SCALE_UPLOADS = 5
# Issue 15 part 2: the lag from an upload on the writer to a read replica serving it (one replica, local rsync).
GENERATION = ROOT / "roles" / "pypi_common" / "files" / "airgap_pypi_generation.py"
REPLICA_DEFAULTS = ROOT / "roles" / "pypi_replica" / "defaults" / "main.yml"
GOAL_REPLICATION_P50_S = 1.0
GOAL_REPLICATION_MAX_S = 2.0
REPLICATION_FILES = 10_000
REPLICATION_FILE_BYTES = 4096  # the files already there: only the initial copy reads them
REPLICATION_UPLOAD_BYTES = 100_000  # an upload: about a small wheel
REPLICATION_UPLOADS = 20
REPLICATION_GAP_S = (0.3, 1.5)  # seconds before each upload, seeded
REPLICATION_SEED = 15
REPLICATION_KEEP = 2
REPLICATION_POLL_S = 0.01
REPLICATION_UPLOAD_LIMIT_S = 30.0  # an upload not seen by then counts as a timeout
REPLICATION_INITIAL_S = 600.0  # the first generation and the initial copy, each


# --------------------------------------------------------------------------- processes


def run(cmd: Sequence[str], check: bool = False, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, **kwargs)


def timed(cmd: Sequence[str], **kwargs: Any) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.monotonic()
    result = run(cmd, **kwargs)
    return time.monotonic() - start, result


def tool(name: str) -> str:
    """A program of the toolchain next to this Python (.venv/bin), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else name


STARTED = time.monotonic()


def say(text: str) -> None:
    """A progress line with the minutes and seconds since the start and the machine's 1-minute load."""
    minutes, seconds = divmod(int(time.monotonic() - STARTED), 60)
    print(f"==> [{minutes:02d}:{seconds:02d} load {load_1min()}] {text}", flush=True)


def load_1min() -> float:
    return round(os.getloadavg()[0], 1)


def changed_count(output: str) -> int:
    """Sum of changed=N over the PLAY RECAP lines."""
    recap = output.split("PLAY RECAP", 1)[-1]
    return sum(int(n) for n in re.findall(r"changed=(\d+)", recap))


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def cache_dir() -> Path:
    """Where downloads for the benchmark are kept between runs, outside the repository (as build_images.sh)."""
    if os.environ.get("AIRGAP_PYPI_CACHE"):
        return Path(os.environ["AIRGAP_PYPI_CACHE"]) / "bench"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "airgap-pypi" / "bench"


# --------------------------------------------------------------------------- containers and site.yml


def remove_containers(names: Iterable[str]) -> None:
    names = list(names)
    if names:
        run(["docker", "rm", "-f", *names])


def start_hosts(names: Sequence[str]) -> None:
    """Start bare systemd containers on the bench network and wait until their init is up."""
    for name in names:
        run(
            [
                "docker",
                "run",
                "-d",
                "--name",
                name,
                "--hostname",
                name,
                "--network",
                NETWORK,
                *containers.SYSTEMD_RUN_OPTIONS,
                IMAGE,
            ],
            check=True,
        )
    # Right after the start systemctl may find no bus yet and answer at once: ask until systemd says it is up.
    booted = ("running", "degraded")
    for name in names:
        wait_for(
            lambda name=name: (
                run(
                    ["docker", "exec", name, "timeout", "120", "systemctl", "is-system-running", "--wait"]
                ).stdout.strip()
                in booted
            ),
            150,
            1,
            f"{name}'s systemd to finish booting",
        )


def container_ip(name: str) -> str:
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    return run(["docker", "inspect", "-f", fmt, name], check=True).stdout.strip()


@contextlib.contextmanager
def bench_network() -> Iterator[None]:
    run(["docker", "network", "create", "--internal", NETWORK])
    try:
        yield
    finally:
        run(["docker", "network", "rm", NETWORK])


@dataclass
class Site:
    """site.yml against an inventory of bench containers."""

    inventory: Path
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    tasks: dict[str, Any] = field(default_factory=dict)

    @property
    def module_cache(self) -> Path:
        return self.inventory.parent / "module-cache"

    def write_inventory(self, hosts: Sequence[str]) -> None:
        group_vars = {
            "ansible_connection": "community.docker.docker",
            "pypi_server_users": [{"name": "bench", "password": self.password}],
        }
        self.inventory.write_text(json.dumps({"pypi_servers": {"hosts": dict.fromkeys(hosts), "vars": group_vars}}))

    def play(self, extra_vars: dict[str, Any] | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
        """site.yml against the inventory; self.tasks says how many tasks ran and what they cost (task_times)."""
        times = self.inventory.with_suffix(".tasks.jsonl")
        times.unlink(missing_ok=True)
        env = dict(
            os.environ,
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
            # ansible.cfg's module payload cache, as an operator has it, in this bench's own directory: the
            # first run builds the payloads (cold, as on a new controller), later runs reuse them.
            ANSIBLE_CALLBACK_PLUGINS=f"{ROOT / 'callback_plugins'}:{TASK_TIMES_PLUGINS}",
            ANSIBLE_CALLBACKS_ENABLED="airgap_pypi_module_cache,task_times",
            AIRGAP_PYPI_MODULE_CACHE=str(self.module_cache),
            AIRGAP_PYPI_TASK_TIMES=str(times),
        )
        cmd = [tool("ansible-playbook"), "-i", str(self.inventory), str(ROOT / "site.yml")]
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        seconds, result = timed(cmd, env=env, cwd=ROOT)
        self.tasks = task_counts(times)
        return seconds, result

    def play_or_fail(self, extra_vars: dict[str, Any] | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
        seconds, result = self.play(extra_vars)
        if result.returncode != 0:
            raise RuntimeError(f"site.yml failed (extra vars {extra_vars}):\n{result.stdout[-3000:]}")
        return seconds, result


def task_counts(times: Path) -> dict[str, Any]:
    """Tasks of one run from the task_times callback: in all, executed on a host, and seconds per executed task."""
    records = [json.loads(line) for line in times.read_text().splitlines()] if times.exists() else []
    executed = [r for r in records if r["hosts"] > r["skipped"]]
    seconds = sum(r["seconds"] for r in records)
    return {
        "tasks": len(records),
        "tasks_executed": len(executed),
        "s_per_executed_task": round(seconds / len(executed), 3) if executed else None,
    }


def first_provision(site: Site, hosts: Sequence[str], rerun: bool = True) -> dict[str, Any]:
    """Time bare containers to serving indexes (container start, init, site.yml), then (if asked) the re-run."""
    site.write_inventory(hosts)
    remove_containers(hosts)
    shutil.rmtree(site.module_cache, ignore_errors=True)  # every first run builds its module payloads (cold)
    start = time.monotonic()
    start_hosts(hosts)
    _, first = site.play_or_fail()
    first_s = time.monotonic() - start
    out = {
        "hosts": len(hosts),
        "first_run_s": round(first_s, 1),
        "first_run_changed": changed_count(first.stdout),
        **{f"first_run_{key}": value for key, value in site.tasks.items()},
        "load_1min": load_1min(),
    }
    if rerun:
        rerun_s, again = site.play()
        out.update(rerun_s=round(rerun_s, 1), rerun_changed=changed_count(again.stdout))
        out.update({f"rerun_{key}": value for key, value in site.tasks.items()})
    return out


def provision_many(site: Site) -> dict[str, Any]:
    """Four bare containers in one site.yml run (ansible.cfg's forks cover them)."""
    try:
        return first_provision(site, MANY, rerun=False)
    finally:
        remove_containers(MANY)


# --------------------------------------------------------------------------- file sets


def synthetic_names(files: int, versions: int = VERSIONS) -> list[tuple[str, str]]:
    """(project, version) for `files` wheels: files // versions projects with `versions` releases each."""
    if files <= 0 or files % versions:
        raise ValueError(f"{files} files: use a positive multiple of {versions}")
    return [(f"bench-pkg-{p:04d}", f"1.0.{v}") for p in range(files // versions) for v in range(versions)]


def build_synthetic(directory: Path, files: int, versions: int = VERSIONS) -> list[Path]:
    """The synthetic wheels in directory (built where missing; the builder writes identical bytes each time)."""
    paths = []
    for name, version in synthetic_names(files, versions):
        path = directory / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
        paths.append(path if path.exists() else demo_wheel.build_wheel(directory, name, version))
    return paths


def write_mirror(mirror: Path, files: Iterable[Path]) -> int:
    """Make `mirror` a carried-in mirror (files/, SHA256SUMS) holding exactly `files`; return their number."""
    dest = mirror / "files"
    dest.mkdir(parents=True, exist_ok=True)
    lines = []
    for path in sorted(set(files), key=lambda p: p.name):
        target = dest / path.name
        if path.resolve() != target.resolve() and not target.exists():
            link_or_copy(path, target)
        lines.append(f"{bb.sha256_file(target)}  files/{path.name}")
    (mirror / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return len(lines)


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def index_files(container: str) -> list[str]:
    """Names of the files in the index container's packages directory."""
    listing = run(["docker", "exec", container, "ls", "-1", PACKAGES_DIR], check=True).stdout
    return sorted(line for line in listing.splitlines() if line)


# --------------------------------------------------------------------------- the nginx yardstick


def project_of(filename: str) -> str | None:
    """The normalized project name of a wheel or sdist file name, or None for anything else."""
    try:
        return canonicalize_name(parse_wheel_filename(filename)[0])
    except InvalidWheelFilename:
        pass
    try:
        return canonicalize_name(parse_sdist_filename(filename)[0])
    except InvalidSdistFilename:
        return None


def page(title: str, links: Iterable[tuple[str, str]]) -> str:
    """A PEP 503 page: one anchor per (href, text)."""
    anchors = "".join(f'<a href="{href}">{text}</a><br>\n' for href, text in links)
    return f"<!DOCTYPE html>\n<html><head><title>{title}</title></head><body>\n{anchors}</body></html>\n"


def build_yardstick_tree(files: Iterable[Path], root: Path) -> dict[str, int]:
    """Lay `files` out under root as a static PEP 503 tree: simple/index.html, simple/<project>/index.html
    (links ../../packages/<file>#sha256=<digest>) and packages/<file>. Files of no project are left out.

    Deliberately independent of the product's own static index: it is the yardstick, not the thing measured.
    """
    projects: dict[str, list[tuple[str, str]]] = {}
    (root / "packages").mkdir(parents=True, exist_ok=True)
    for path in sorted(files, key=lambda p: p.name):
        project = project_of(path.name)
        if project is None:
            continue
        link_or_copy(path, root / "packages" / path.name)
        projects.setdefault(project, []).append((path.name, bb.sha256_file(path)))
    for project, entries in projects.items():
        (root / "simple" / project).mkdir(parents=True, exist_ok=True)
        links = ((f"../../packages/{name}#sha256={digest}", name) for name, digest in entries)
        (root / "simple" / project / "index.html").write_text(page(f"Links for {project}", links))
    listing = ((f"{project}/", project) for project in sorted(projects))
    (root / "simple" / "index.html").write_text(page("Simple index", listing))
    return {"projects": len(projects), "files": sum(len(e) for e in projects.values())}


def nginx_head(prefix: str, workers: int, connections: int) -> str:
    """The start of a self-contained nginx.conf, up to the open http block: every path under prefix."""
    temp = " ".join(
        f"{kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""user www-data;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    {temp}"""


def nginx_conf(prefix: str, root: str, port: int, workers: int) -> str:
    """A self-contained nginx configuration: everything under prefix, serving root on port (every address).

    The Debian package's defaults for a static site (sendfile, tcp_nopush) and nothing of the product's site."""
    return f"""{nginx_head(prefix, workers, 1024)}
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    types {{ text/html html; }}
    default_type application/octet-stream;
    server {{
        listen {port};
        root {root};
        index index.html;
    }}
}}
"""


# The yardstick's nginx in its own container on the bench network, as the index's is reached: Debian's package
# from the stand-in OS mirror (scripts/os_mirror.sh), the tree bind-mounted read-only, its own configuration.
YARDSTICK_ROOT = "/srv/yardstick"
YARDSTICK_PREFIX = "/run/yardstick"
YARDSTICK_PORT = 80


def yardstick_commands(conf: str) -> str:
    """The shell script that installs nginx in the yardstick container and starts it with conf."""
    return f"""set -e
printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
DEBIAN_FRONTEND=noninteractive apt-get install -q -y --no-install-recommends nginx >/dev/null
mkdir -p {YARDSTICK_PREFIX}
cat >{YARDSTICK_PREFIX}/nginx.conf <<'AIRGAP_PYPI_BENCH_EOF'
{conf}AIRGAP_PYPI_BENCH_EOF
nginx -p {YARDSTICK_PREFIX} -e {YARDSTICK_PREFIX}/error.log -c {YARDSTICK_PREFIX}/nginx.conf
nginx -v 2>&1
"""


@contextlib.contextmanager
def nginx(root: Path, workers: int, conf: str | None = None, name: str = YARDSTICK) -> Iterator[tuple[str, str]]:
    """nginx serving root from the container `name` (the yardstick's by default) on the bench network, with conf
    (default: the yardstick's, nginx_conf) on YARDSTICK_PORT; yields its base URL and nginx's version; removes the
    container at the end, also on failure."""
    remove_containers([name])
    try:
        mount = f"type=bind,source={root},target={YARDSTICK_ROOT},readonly"
        run(["docker", "run", "-d", "--name", name, "--hostname", name, "--network", NETWORK,
             "--mount", mount, "--entrypoint", "sleep", IMAGE, "infinity"], check=True)  # fmt: skip
        run([str(OS_MIRROR), "build"], check=True)
        run([str(OS_MIRROR), "attach", name], check=True)
        if conf is None:
            conf = nginx_conf(YARDSTICK_PREFIX, YARDSTICK_ROOT, YARDSTICK_PORT, workers)
        done = run(["docker", "exec", name, "sh", "-c", yardstick_commands(conf)])
        if done.returncode != 0:
            raise RuntimeError(f"nginx in {name} did not start: {(done.stdout + done.stderr)[-800:]}")
        version = re.search(r"nginx/(\S+)", done.stdout)
        url = f"http://{container_ip(name)}:{YARDSTICK_PORT}"
        if not containers.wait_for(lambda: http_get(url + "/simple/")[0] == 200, 10, step=0.2):
            raise RuntimeError(f"nginx in {name} did not serve {url} within 10 s")
        yield url, version.group(1) if version else "?"
    finally:
        remove_containers([name])


# --------------------------------------------------------------------------- HTTP


def http_get(url: str, timeout: float = 60) -> tuple[int, str]:
    """Status and body of a GET (status 0 when nothing answered)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, OSError):
        return 0, ""


def _roles_http_utils() -> Any:
    """The link parser the roles' modules use (roles/pypi_common/module_utils), so all three read pages alike."""
    path = ROOT / "roles" / "pypi_common" / "module_utils" / "pypi_common_http.py"
    spec = importlib.util.spec_from_file_location("pypi_common_http", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("pypi_common_http", module)
    spec.loader.exec_module(module)
    return module


HTTP_UTILS = _roles_http_utils()


def hrefs(text: str) -> list[str]:
    """The href of every anchor of an HTML page."""
    return list(HTTP_UTILS.HREF.findall(text))


def file_url(project_url: str, text: str) -> str | None:
    """Absolute URL (fragment dropped) of the last file a project page links, or None."""
    links = [h for h in hrefs(text) if project_of(urllib.parse.urlsplit(h).path.rsplit("/", 1)[-1])]
    if not links:
        return None
    return urllib.parse.urldefrag(urllib.parse.urljoin(project_url, links[-1]))[0]


# --------------------------------------------------------------------------- wrk

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def duration_ms(text: str) -> float | None:
    """wrk's `650.23ms`, `71.00us`, `1.20s`, `2.00m` in milliseconds; None for anything else (-nan)."""
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    return round(float(match.group(1)) * _UNITS_MS[match.group(2)], 6) if match else None


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    socket_errors: int
    non_2xx: int


def parse_wrk(text: str) -> WrkResult:
    """Parse the output of `wrk --latency`."""
    total = re.search(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h),", text, re.MULTILINE)
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.MULTILINE)
    if total is None or rps is None:
        raise ValueError(f"not wrk --latency output: {text[-300:]!r}")
    percentiles = dict(re.findall(r"^\s+(50|90|99)(?:\.0+)?%\s+(\S+)\s*$", text, re.MULTILINE))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    seconds = (duration_ms(total.group(2) + total.group(3)) or 0.0) / 1000

    def pct(key: str) -> float | None:
        # With no finished request wrk prints 0.00us percentiles: there is no latency to report.
        return duration_ms(percentiles[key]) if key in percentiles and int(total.group(1)) else None

    return WrkResult(
        requests=int(total.group(1)),
        seconds=round(seconds, 2),
        rps=float(rps.group(1)),
        p50_ms=pct("50"),
        p90_ms=pct("90"),
        p99_ms=pct("99"),
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


@dataclass(frozen=True)
class Load:
    threads: int = 2
    connections: int = 8
    seconds: int = 10
    timeout_s: int = 30


def wrk(url: str, load: Load, headers: Sequence[str] = ()) -> WrkResult:
    cmd = ["wrk", f"-t{load.threads}", f"-c{load.connections}", f"-d{load.seconds}s", f"--timeout={load.timeout_s}s"]
    cmd += [item for header in headers for item in ("-H", header)]
    done = run([*cmd, "--latency", url], timeout=load.seconds + load.timeout_s + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed on {url}: {done.stderr.strip()[-300:]}")
    return parse_wrk(done.stdout)


# --------------------------------------------------------------------------- auth


def auth_reads(workdir: Path, load: Load) -> dict[str, Any]:
    """/simple/<project>/ on loopback through the real stack (scripts/index_stack.py): an index with
    pypi_server_auth_downloads read with the password (sha512_crypt, 100,000 rounds; verified passwords
    remembered) against the same index without auth read without one."""
    out: dict[str, Any] = {"load": asdict(load)}
    for name, protected in (("open", False), ("password", True)):
        with index_stack.serve(workdir / f"auth-{name}", auth_downloads=protected) as stack:
            wheel = demo_wheel.build_wheel(workdir / f"auth-{name}-dist", "bench-auth", "1.0")
            done = index_stack.twine_upload(stack.url, wheel)
            if done.returncode != 0:
                raise RuntimeError(f"upload to the {name} index failed: {done.stdout[-300:]} {done.stderr[-300:]}")
            result = wrk(
                f"{stack.url}/simple/bench-auth/", load, [f"Authorization: {index_stack.auth_header()}"] * protected
            )
            out[name] = {
                "rps": result.rps,
                "p99_ms": result.p99_ms,
                "requests": result.requests,
                "errors": result.socket_errors + result.non_2xx,
            }
    out["password_over_open"] = round(out["password"]["rps"] / out["open"]["rps"], 3) if out["open"]["rps"] else None
    return out


# --------------------------------------------------------------------------- features (issue 14)

# Runs with the bundle's server wheels and the role's airgap_pypi_index.py on its path: each description rendered
# as the index renders it when a file arrives, timed; prints JSON {wheel: {...}}.
RENDER_TIMES = r"""
import json, sys, time
import airgap_pypi_index as index
repeats, paths = int(sys.argv[1]), sys.argv[2:]
start = time.perf_counter()
assert index.description_renderers() is not None, "readme_renderer cannot be imported"
out = {"import_ms": (time.perf_counter() - start) * 1000, "files": {}}
for path in paths:
    fields = index.parse_metadata(index.read_core_metadata(path)[0])
    text, kind = fields.get("description", ""), fields.get("description-content-type")
    times, shown = [], ""
    for _ in range(repeats + 1):
        start = time.perf_counter()
        shown = index.render_description(text, kind)
        times.append((time.perf_counter() - start) * 1000)
    out["files"][path] = {"project": fields.get("name", ""), "type": kind or "", "bytes": len(text.encode()),
                          "first_ms": times[0], "ms": times[1:], "unrendered": "render-note" in shown[:40]}
print(json.dumps(out))
"""


def one_wheel_per_project(wheels: Iterable[Path]) -> list[Path]:
    """The newest version's wheel of each project (the first by name of that version's wheels), by project."""
    newest: dict[str, tuple[Version, str, Path]] = {}
    for path in wheels:
        try:
            name, version, _, _ = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        key = (version, path.name, path)
        held = newest.get(name)
        if held is None or version > held[0] or (version == held[0] and path.name < held[1]):
            newest[name] = key
    return [newest[name][2] for name in sorted(newest)]


def bundle_wheels(wheels_dir: Path = index_stack.WHEELS) -> list[Path]:
    """One wheel per project of the whole bundle: the server wheels, the controller's and the mirror's."""
    artifacts = wheels_dir.parent
    dirs = (wheels_dir, artifacts / "controller" / "wheels", artifacts / "mirror" / "files")
    return one_wheel_per_project(path for folder in dirs if folder.is_dir() for path in folder.glob("*.whl"))


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest value with at least `fraction` of the values at or below it."""
    if not values:
        raise ValueError("no values")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction} is not in (0, 1]")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def render_stats(files: dict[str, dict[str, Any]], goal_ms: float = GOAL_RENDER_P95_MS) -> dict[str, Any]:
    """p50, p95 and max over the files with a description of each file's median rendering (ms), the first calls'
    p95, the slowest project, and p95 over the goal."""
    timed_files = {path: f for path, f in files.items() if f["bytes"] and f["ms"]}
    if not timed_files:
        raise ValueError("no description was rendered")
    medians = {path: statistics.median(f["ms"]) for path, f in timed_files.items()}
    slowest = max(medians, key=lambda path: medians[path])
    p95 = round(percentile(list(medians.values()), 0.95), 2)
    return {
        "files": len(timed_files),
        "without_description": len(files) - len(timed_files),
        "unrendered": sorted(f["project"] for f in timed_files.values() if f["unrendered"]),
        "p50_ms": round(percentile(list(medians.values()), 0.5), 2),
        "p95_ms": p95,
        "max_ms": round(medians[slowest], 2),
        "first_p95_ms": round(percentile([f["first_ms"] for f in timed_files.values()], 0.95), 2),
        "slowest": timed_files[slowest]["project"],
        "slowest_type": timed_files[slowest]["type"] or "no type: reStructuredText",
        "slowest_bytes": timed_files[slowest]["bytes"],
        "p95_over_goal": round(p95 / goal_ms, 3),
    }


def render_times(site: Path, wheels: Sequence[Path], repeats: int = RENDER_REPEATS) -> dict[str, Any]:
    """RENDER_TIMES's output for these wheels, run with the site directory and the role's module on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "TWINE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT / "roles" / "pypi_server" / "files")])
    done = run([sys.executable, "-c", RENDER_TIMES, str(repeats), *map(str, wheels)], env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"rendering the descriptions failed: {done.stderr[-1500:]}")
    return dict(json.loads(done.stdout))


def wheel_description(wheel: Path) -> tuple[str, str]:
    """(description, Description-Content-Type) of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        message = email.parser.Parser().parsestr(archive.read(name).decode("utf-8", errors="replace"))
    body = message.get_payload()
    text = body if isinstance(body, str) and body.strip() else str(message.get("Description") or "")
    return text, str(message.get("Description-Content-Type") or "")


def largest_markdown(files: dict[str, dict[str, Any]]) -> Path:
    """The wheel whose Markdown description is the largest."""
    markdown_files = {p: f for p, f in files.items() if f["type"].startswith("text/markdown")}
    if not markdown_files:
        raise ValueError("no wheel of the bundle has a Markdown description")
    return Path(max(markdown_files, key=lambda p: markdown_files[p]["bytes"]))


def upload_visible(stack: index_stack.Stack, dist: Path, readme: tuple[str, str], runs: int) -> dict[str, Any]:
    """Upload `runs` versions of bench-readme (a real README, a marker first) with twine; for each, the seconds
    from twine's return to the start of the first GET of /project/bench-readme/ that shows the marker rendered."""
    seen, calls = [], []
    for i in range(runs):
        marker = f"bench-marker-{i}"
        wheel = demo_wheel.build_wheel(
            dist, "bench-readme", f"1.{i}.0", description=f"**{marker}**\n\n{readme[0]}", content_type=readme[1]
        )
        start = time.monotonic()
        done = index_stack.twine_upload(stack.url, wheel)
        returned = time.monotonic()
        if done.returncode != 0:
            raise RuntimeError(f"upload of {wheel.name} failed: {done.stdout[-300:]} {done.stderr[-300:]}")
        calls.append(round(returned - start, 3))
        seen.append(round(seen_after(f"{stack.url}/project/bench-readme/", f"<strong>{marker}</strong>", returned), 3))
    return {
        "runs": runs,
        "seen_s": seen,
        "seen_median_s": statistics.median(seen),
        "twine_median_s": statistics.median(calls),
    }


def post_upload(url: str, wheel: Path) -> float:
    """Seconds from sending an upload of `wheel` (the form twine sends, one connection) to its response's end."""
    name, version = wheel.name.split("-")[:2]
    data = wheel.read_bytes()
    fields = {
        ":action": "file_upload",
        "protocol_version": "1",
        "name": name,
        "version": version,
        "filetype": "bdist_wheel",
        "pyversion": "py3",
        "metadata_version": "2.1",
        "sha256_digest": hashlib.sha256(data).hexdigest(),
    }
    boundary = secrets.token_hex(16)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; filename="{wheel.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{url}/",
        data=b"".join(parts),
        method="POST",
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Authorization": index_stack.auth_header(),
        },
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:  # loopback: our own stack
        response.read()
        if response.status != 200:
            raise RuntimeError(f"upload of {wheel.name} answered {response.status}")
    return time.perf_counter() - start


RENDERING = b"is being rendered"  # the project page's note while a description waits for the renderer


def renderer_idle(stack: index_stack.Stack, project: str, limit_s: float = 60) -> None:
    """Wait until the project page no longer says its description is being rendered (the renderer, a child of
    the index, would otherwise take the CPU from the next upload measured)."""
    deadline = time.monotonic() + limit_s
    while True:
        status, body = index_stack.get(f"{stack.url}/project/{project}/")
        if status == 200 and RENDERING not in body:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{project}'s description was still being rendered after {limit_s:g} s")
        time.sleep(0.02)


ADDED_ROUNDS = 3  # pairs per description: a file's added time is their median (one pair is mostly noise)


def upload_added(stack: index_stack.Stack, dist: Path, wheels: Sequence[Path]) -> dict[str, Any]:
    """What rendering adds to an upload's response: each bundle wheel's description uploaded in a wheel of its own
    and a wheel of the same name length with no description, in turns (every other pair the plain one first), the
    renderer left to finish before the next upload, ADDED_ROUNDS pairs per description; per description the median
    of its pairs' differences (ms); p50, p95 and max over the descriptions."""
    added, with_text = [], []
    for number, wheel in enumerate(wheels):
        text, kind = wheel_description(wheel)
        if not text.strip():
            continue
        differences = []
        for round_ in range(ADDED_ROUNDS):
            name = f"{number}-{round_}"
            described = demo_wheel.build_wheel(dist, f"bench-rd-{name}", "1.0", description=text, content_type=kind)
            plain = demo_wheel.build_wheel(dist, f"bench-nd-{name}", "1.0")
            times: dict[Path, float] = {}
            for upload in (described, plain) if (number + round_) % 2 == 0 else (plain, described):
                times[upload] = post_upload(stack.url, upload)
                renderer_idle(stack, f"bench-rd-{name}" if upload is described else f"bench-nd-{name}")
            with_text.append(times[described] * 1000)
            differences.append((times[described] - times[plain]) * 1000)
        added.append(statistics.median(differences))
    if not added:
        raise ValueError("no wheel of the bundle has a description")
    ordered = sorted(added)
    return {
        "pairs": len(added) * ADDED_ROUNDS,
        "descriptions": len(added),
        "added_p50_ms": round(statistics.median(ordered), 1),
        "added_p95_ms": round(ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)], 1),
        "added_max_ms": round(ordered[-1], 1),
        "response_p95_ms": round(sorted(with_text)[min(len(with_text) - 1, math.ceil(0.95 * len(with_text)) - 1)], 1),
    }


def seen_after(url: str, needle: str, since: float, limit_s: float = 30) -> float:
    """Seconds from `since` to the start of the first GET of url whose body holds needle."""
    while True:
        start = time.monotonic()
        status, body = index_stack.get(url)
        if status == 200 and needle.encode() in body:
            return start - since
        if start - since > limit_s:
            raise RuntimeError(f"{url} did not show {needle!r} within {limit_s:g} s (status {status})")
        time.sleep(0.02)


FEATURE_STACKS: dict[str, dict[str, Any]] = {
    "off": {},
    "on": {"project_owners": {"bench-feat": [index_stack.USER]}, "claim_first_upload": True},
}


FEATURE_ROUNDS = 2  # wrk runs per index, alternating between them, so that drift on the machine hits both alike


def feature_reads(workdir: Path, load: Load, readme: tuple[str, str], runs: int) -> dict[str, Any]:
    """Both indexes of FEATURE_STACKS served at once: into each the README uploads (upload_visible), bench-feat and
    bench-claimed; then wrk on /simple/bench-feat/ of each in turn, FEATURE_ROUNDS times; and on / off of the
    median req/s."""
    out: dict[str, Any] = {}
    with contextlib.ExitStack() as running:
        stacks = {
            name: running.enter_context(index_stack.serve(workdir / f"features-{name}", **options))
            for name, options in FEATURE_STACKS.items()
        }
        for name, stack in stacks.items():
            out[name] = {"upload_visible": upload_visible(stack, workdir / f"features-{name}-readme", readme, runs)}
            for project in ("bench-feat", "bench-claimed"):
                wheel = demo_wheel.build_wheel(workdir / f"features-{name}-dist", project, "1.0")
                done = index_stack.twine_upload(stack.url, wheel)
                if done.returncode != 0:
                    raise RuntimeError(f"upload to the {name} index failed: {done.stdout[-300:]} {done.stderr[-300:]}")
        out["upload_added"] = upload_added(stacks["on"], workdir / "features-added", bundle_wheels())
        results: dict[str, list[WrkResult]] = {name: [] for name in stacks}
        for _ in range(FEATURE_ROUNDS):
            for name, stack in stacks.items():
                results[name].append(wrk(f"{stack.url}/simple/bench-feat/", load))
        for name, stack in stacks.items():
            out[name].update(wrk_summary(results[name]))
            out[name].update(audit_records=audit_records(stack.audit), claims=stack.owners.is_file())
    out["rounds"] = FEATURE_ROUNDS
    out["on_over_off"] = round(out["on"]["rps"] / out["off"]["rps"], 3) if out["off"]["rps"] else None
    return out


def wrk_summary(results: Sequence[WrkResult]) -> dict[str, Any]:
    """Median req/s and p99 of several wrk runs of one URL, every run's req/s, requests and errors summed."""
    p99s = [r.p99_ms for r in results if r.p99_ms is not None]
    return {
        "rps": statistics.median(r.rps for r in results),
        "rps_runs": [r.rps for r in results],
        "p99_ms": statistics.median(p99s) if p99s else None,
        "requests": sum(r.requests for r in results),
        "errors": sum(r.socket_errors + r.non_2xx for r in results),
    }


def audit_records(directory: Path) -> int:
    """Lines in the audit trail's current file."""
    path = directory / "audit.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def features(workdir: Path, load: Load, runs: int = 5) -> dict[str, Any]:
    """Issue 14's features measured on loopback: rendering of the bundle's descriptions, upload to visible with a
    rendered README, and reads with the owner checks on against the defaults."""
    site = index_stack.extract_site(workdir / "features-site")
    rendered = render_times(site, bundle_wheels())
    say(f"  rendered {len(rendered['files'])} descriptions")
    readme_wheel = largest_markdown(rendered["files"])
    readme = wheel_description(readme_wheel)
    out: dict[str, Any] = {
        "load": asdict(load),
        "render": {
            "import_ms": round(rendered["import_ms"], 1),
            "repeats": RENDER_REPEATS,
            **render_stats(rendered["files"]),
        },
        "readme": {
            "project": rendered["files"][str(readme_wheel)]["project"],
            "type": readme[1],
            "bytes": len(readme[0].encode()),
        },
    }
    out.update(feature_reads(workdir, load, readme, runs))
    return out


# --------------------------------------------------------------------------- reads

PATHS = ("/simple/", "/simple/<project>/", "file")
MIN_REQUESTS = 20  # fewer finished requests than this: wrk runs again for longer
MAX_WRK_SECONDS = 60


@dataclass(frozen=True)
class Deployment:
    name: str
    extra_vars: dict[str, Any]
    port: int
    note: str


def server_options(specs: Sequence[Path] = (SERVER_SPECS, FRONT_SPECS)) -> dict[str, Any]:
    """The options (name -> spec) of the roles that serve the index (pypi_server, pypi_front where it exists)."""
    import yaml  # noqa: PLC0415 - PyYAML comes with ansible-core in the toolchain

    options: dict[str, Any] = {}
    for path in specs:
        if path.exists():
            options.update(yaml.safe_load(path.read_text())["argument_specs"]["main"]["options"])
    return options


def deployments(options: dict[str, Any]) -> tuple[list[Deployment], dict[str, str]]:
    """The deployments to measure, and a note for each one that cannot be measured in this tree."""
    static_note = (
        "site.yml -e pypi_server_static_index=false"
        if "pypi_server_static_index" in options
        else "site.yml -e pypi_server_static_index=false; this tree has no such variable, so it is the default"
    )
    found = [
        Deployment("default", {}, PORT, "site.yml defaults: gunicorn, no front server"),
        Deployment("baseline", {"pypi_server_static_index": False}, PORT, "pypiserver as it is today: " + static_note),
    ]
    missing = {}
    if "pypi_front_enabled" in options:
        # nginx listens on pypi_front_port (its plain HTTP default, 80), gunicorn stays on the index port behind it.
        port = options.get("pypi_front_port", {}).get("default")
        port = port if isinstance(port, int) else 80
        note = "nginx from the host's OS repositories in front of gunicorn (pypi_front_enabled)"
        found.append(Deployment("front", {"pypi_front_enabled": True, "pypi_front_port": port}, port, note))
    else:
        missing["front"] = "not available (this tree has no pypi_front role with pypi_front_enabled)"
    return found, missing


def check_server(base: str, project: str, expected_links: int) -> dict[str, str]:
    """The three URLs to load on a server, after checking each answers 200 (and the project page's links)."""
    urls = {"/simple/": f"{base}/simple/", "/simple/<project>/": f"{base}/simple/{project}/"}
    status, body = http_get(urls["/simple/<project>/"])
    links = len([h for h in hrefs(body) if project_of(urllib.parse.urlsplit(h).path.rsplit("/", 1)[-1])])
    if status != 200 or links != expected_links:
        raise RuntimeError(
            f"{urls['/simple/<project>/']}: status {status}, {links} file links, {expected_links} expected"
        )
    found = file_url(urls["/simple/<project>/"], body) or ""
    urls["file"] = found
    for url in (urls["/simple/"], found):
        status, _ = http_get(url)
        if status != 200:
            raise RuntimeError(f"{url}: status {status}, expected 200")
    return urls


def wrk_enough(server: str, url: str, load: Load) -> WrkResult:
    """wrk on url; once more, longer (within a bound), when too few requests finished for a rate or a p99."""
    result = wrk(url, load)
    if result.requests < MIN_REQUESTS:
        longer = Load(load.threads, load.connections, min(load.seconds * 6, MAX_WRK_SECONDS), load.timeout_s)
        say(f"  {server}: {result.requests} requests in {load.seconds} s on {url}; again for {longer.seconds} s")
        result = wrk(url, longer)
    return result


def measure_server(
    server: str, base: str, files: int, expected_links: int, load: Load, *, yardstick: str
) -> list[dict[str, Any]]:
    """wrk on each path of the server and of the nginx yardstick in turn (nginx first), so that each ratio
    compares two runs next to each other; the nginx rows name the server they were measured with."""
    urls = check_server(base, TARGET_PROJECT, expected_links)
    nginx_urls = check_server(yardstick, TARGET_PROJECT, expected_links)
    rows = []
    for path in PATHS:
        for name, url, extra in (("nginx", nginx_urls[path], {"paired_with": server}), (server, urls[path], {})):
            result = wrk_enough(name, url, load)
            say(
                f"  {name:8} {files:>6} files {path:20} {result.rps:>10.1f} req/s"
                f"  p50 {result.p50_ms} ms  p99 {result.p99_ms} ms"
            )
            row = {"files": files, "path": path, "server": name, **extra, **asdict(result), "load_1min": load_1min()}
            rows.append(row)
    return rows


def add_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with x_nginx (its req/s over nginx's at the same files and path) and, but for nginx and the
    baseline, x_baseline (over the baseline's)."""

    def rps_of(server: str, row: dict[str, Any]) -> float | None:
        same = [o for o in rows if o["server"] == server and (o["files"], o["path"]) == (row["files"], row["path"])]
        # nginx measured next to this server where it was, else any nginx run at the same files and path.
        paired = [o for o in same if o.get("paired_with") == row["server"]] or same
        return float(paired[0]["rps"]) if paired else None

    out = []
    for row in rows:
        new = dict(row)
        for server in ("nginx", "baseline"):
            if row["server"] in ("nginx", server):
                continue
            base = rps_of(server, row)
            new[f"x_{server}"] = float(f"{row['rps'] / base:.4g}") if base else None
        out.append(new)
    return out


@dataclass
class Index:
    """The one index container under test and what it currently runs."""

    site: Site
    mirror: Path
    extra_files: list[Path]
    synthetic_dir: Path
    state: tuple[str, int] | None = None
    loads: dict[str, float] = field(default_factory=dict)
    applied: dict[str, Any] | None = None  # the role variables of the last site.yml run
    os_mirror: bool = False  # the container's apt points at the stand-in OS mirror (for nginx)

    def ensure(self, deployment: Deployment, files: int) -> None:
        """Run site.yml with the deployment's variables and a mirror of `files` synthetic wheels (+ extras).

        Variables the role does not have (a deployment of a branch not merged yet) change nothing: when only
        they differ from the last run, site.yml is not run again.
        """
        if self.state == (deployment.name, files):
            return
        options = server_options()
        effective = {k: v for k, v in deployment.extra_vars.items() if k in options}
        loading = self.state is None or self.state[1] != files
        if not loading and effective == self.applied:
            say(f"{deployment.name} deployment: same role variables as the running one, no site.yml run")
            self.state = (deployment.name, files)
            return
        if loading:
            count = write_mirror(self.mirror, [*build_synthetic(self.synthetic_dir, files), *self.extra_files])
            say(f"site.yml: {deployment.name} deployment, loading a mirror of {count} files")
        else:
            say(f"site.yml: {deployment.name} deployment")
        if deployment.extra_vars.get("pypi_front_enabled") and not self.os_mirror:
            # As an operator's host has its OS repositories: nginx comes from them (scripts/os_mirror.sh).
            run([str(OS_MIRROR), "build"], check=True)
            run([str(OS_MIRROR), "attach", INDEX], check=True)
            self.os_mirror = True
        seconds, _ = self.site.play_or_fail({**deployment.extra_vars, "pypi_server_mirror_dir": str(self.mirror)})
        if loading:
            self.loads[f"site_yml_loading_mirror_to_{files}_files_s"] = round(seconds, 1)
        self.state, self.applied = (deployment.name, files), effective


def reads(index: Index, counts: Sequence[int], load: Load, workdir: Path) -> dict[str, Any]:
    """wrk against every deployment and the nginx yardstick, at each file count."""
    found, missing = deployments(server_options())
    ip = container_ip(INDEX)
    rows: list[dict[str, Any]] = []
    trees: dict[str, Any] = {}
    versions: dict[str, str] = {}
    errors: list[str] = []
    for files in counts:
        # The running deployment first (it loads the new files), the default one last (pip and upload use it).
        current = index.state[0] if index.state else "default"
        order = sorted(found, key=lambda d: (d.name != current, d.name == "default"))
        expected = -1  # files of TARGET_PROJECT in the index, counted once the files are loaded
        yardstick_url = ""
        with contextlib.ExitStack() as stack:  # the yardstick's container, for every deployment at these files
            for deployment in order:
                try:
                    index.ensure(deployment, files)
                    if expected < 0:
                        names = index_files(INDEX)
                        expected = sum(1 for n in names if project_of(n) == TARGET_PROJECT)
                        tree = workdir / f"tree-{files}"
                        trees[str(files)] = yardstick(names, [index.mirror / "files", *mirror_dirs()], tree)
                        yardstick_url, versions["nginx"] = stack.enter_context(nginx(tree, workers=2))
                    if not yardstick_url:
                        raise RuntimeError("the nginx yardstick did not start at these files")
                    base = f"http://{ip}:{deployment.port}"
                    rows += measure_server(deployment.name, base, files, expected, load, yardstick=yardstick_url)
                except (RuntimeError, subprocess.SubprocessError) as exc:
                    say(f"{deployment.name} at {files} files failed: {str(exc)[-1500:]}")
                    errors.append(f"{deployment.name} at {files} files: {str(exc)[-1500:]}")
                    index.state = None  # unknown now: the next deployment runs site.yml again
    return {
        "load": asdict(load),
        "target_project": TARGET_PROJECT,
        "deployments": {d.name: d.note for d in found} | missing,
        "index_files": trees,
        **versions,
        "rows": add_ratios(rows),
        **index.loads,
        **({"errors": errors} if errors else {}),
    }


def mirror_dirs() -> list[Path]:
    """Where local copies of other files the index holds may be: the default carried-in mirror."""
    return [ROOT / "offline_artifacts" / "mirror" / "files"]


def yardstick(names: Sequence[str], sources: Sequence[Path], root: Path) -> dict[str, int]:
    """Build the nginx tree from local copies of exactly the files the index holds; count any without a copy."""
    local = {}
    for directory in sources:
        for name in names:
            if name not in local and (directory / name).is_file():
                local[name] = directory / name
    shutil.rmtree(root, ignore_errors=True)
    counts = build_yardstick_tree(local.values(), root)
    return {
        "index": len(names),
        "tree": counts["files"],
        "projects": counts["projects"],
        "no_local_copy": len(names) - len(local),
    }


# --------------------------------------------------------------------------- the pip set


def lock_pip_set() -> None:
    """Re-resolve bench/pip-set.in into the hash-locked bench/pip-set.txt for the client's CPython (needs PyPI)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pip-set.txt"
        cmd = [bb.find_uv(), "pip", "compile", "--quiet", *bb.UV_OPTIONS, "--python-version", CLIENT_PYTHON.version]
        bb.run([*cmd, PIP_SET_IN.name, "--output-file", str(out)], cwd=PIP_SET_IN.parent)
        header = (
            f"# bench/pip-set.in locked for CPython {CLIENT_PYTHON.version}, {bb.UV_PLATFORM}, wheels only, hashed.\n"
            "# Generated by `scripts/bench.py --lock`: do not edit.\n"
        )
        PIP_SET_LOCK.write_text(header + out.read_text())


def fetch_pip_set(directory: Path) -> list[Path]:
    """The pip set's wheels for the client, downloaded into directory where missing (hash-checked)."""
    lock = bb.Lock("pip-set", CLIENT_PYTHON, PIP_SET_LOCK, bb.parse_pins(PIP_SET_LOCK.read_text()))
    missing = bb.missing_pins(lock, bb.hash_dir(directory))
    if missing:
        say(f"downloading {len(missing)} wheels of the pip set into {directory}")
        bb.download(lock, missing, directory)
    files = bb.hash_dir(directory)
    chosen = {p.name: f for p in lock.pins for f, d in files.items() if bb.satisfies(f, d, p, lock.target)}
    return [directory / f for f in sorted(chosen.values())]


def client_exec(*cmd: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    flags = [arg for key, value in (env or {}).items() for arg in ("-e", f"{key}={value}")]
    return run(["docker", "exec", "-e", "PIP_CONFIG_FILE=/dev/null", *flags, CLIENT, *cmd], timeout=timeout)


def start_client() -> None:
    remove_containers([CLIENT])
    run(["docker", "run", "-d", "--name", CLIENT, "--hostname", CLIENT, "--network", NETWORK, CLIENT_IMAGE], check=True)
    client_exec("mkdir", "-p", "/root/bench")


# Runs in the client: a fresh venv (untimed), then the pip command timed inside the container.
TIMED_INSTALL = """
set -e
rm -rf /root/venv
{bin}/python -m venv --without-pip /root/venv
start=$(date +%s%N)
{bin}/pip --python /root/venv/bin/python "$@" >/root/pip.log 2>&1 || {{ tail -20 /root/pip.log; exit 1; }}
end=$(date +%s%N)
echo "elapsed_ns=$((end - start))"
/root/venv/bin/python -c 'import requests, flask, rich, yaml, pytest, bs4, dateutil, tabulate'
{bin}/pip --python /root/venv/bin/python list --format=freeze 2>/dev/null | wc -l
"""


def pip_install(args: Sequence[str]) -> tuple[float, int]:
    """Seconds of one pip install of the set into a fresh venv on the client, and the number of packages then."""
    script = TIMED_INSTALL.format(bin=CLIENT_BIN)
    done = client_exec("sh", "-c", script, "sh", "install", "--no-cache-dir", "--disable-pip-version-check", *args)
    match = re.search(r"elapsed_ns=(\d+)", done.stdout)
    if done.returncode != 0 or match is None:
        raise RuntimeError(
            f"pip install {' '.join(args)} failed on the client:\n{done.stdout[-2000:]}{done.stderr[-1000:]}"
        )
    return int(match.group(1)) / 1e9, int(done.stdout.strip().splitlines()[-1])


def pip_bench(ip: str, wheels: Sequence[Path], runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "wheels"
        local.mkdir()
        for wheel in wheels:
            shutil.copyfile(wheel, local / wheel.name)
        run(["docker", "cp", str(local), f"{CLIENT}:/root/bench/wheels"], check=True)
    run(["docker", "cp", str(PIP_SET_LOCK), f"{CLIENT}:/root/bench/pip-set.txt"], check=True)
    index_args = ["--index-url", f"http://{ip}:{PORT}/simple/", "--trusted-host", ip, "-r", "/root/bench/pip-set.txt"]
    local_args = ["--no-index", "--find-links", "/root/bench/wheels", "-r", "/root/bench/pip-set.txt"]
    times: dict[str, list[float]] = {"index": [], "find_links": []}
    installed = 0
    for attempt in range(runs):  # alternate, so that drift on the shared machine hits both alike
        for mode, args in (("index", index_args), ("find_links", local_args)):
            seconds, installed = pip_install(args)
            times[mode].append(round(seconds, 2))
            say(f"  pip install {mode} run {attempt + 1}: {seconds:.2f} s ({installed} packages)")
    index_s, local_s = statistics.median(times["index"]), statistics.median(times["find_links"])
    return {
        "packages": installed,
        "wheels": len(wheels),
        "runs": runs,
        "index_s": times["index"],
        "find_links_s": times["find_links"],
        "index_median_s": index_s,
        "find_links_median_s": local_s,
        "index_over_find_links": round(index_s / local_s, 3),
    }


# --------------------------------------------------------------------------- uploads

# Runs in the client's Python: twine upload, then poll until the file is seen (bounded), and print JSON.
POLL = r"""
import json, subprocess, sys, tempfile, time, urllib.request
mode, repo, index, host, name, version, wheel = sys.argv[1:]
bin = "/opt/clients/bin"
up = subprocess.run([bin + "/twine", "upload", "--non-interactive", "--repository-url", repo, wheel],
                    capture_output=True, text=True)
t0 = time.monotonic()
if up.returncode != 0:
    print(json.dumps({"error": "twine: " + (up.stdout + up.stderr)[-300:]})); sys.exit(0)
polls, filename = 0, wheel.rsplit("/", 1)[-1]
while True:
    start = time.monotonic()
    if mode == "pip":
        with tempfile.TemporaryDirectory() as dest:
            ok = subprocess.run([bin + "/pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
                                 "-q", "--index-url", index, "--trusted-host", host, "-d", dest,
                                 name + "==" + version], capture_output=True).returncode == 0
    else:
        try:
            with urllib.request.urlopen(index + name + "/", timeout=10) as r:
                ok = filename in r.read().decode()
        except OSError:
            ok = False
    end, polls = time.monotonic(), polls + 1
    if ok:
        print(json.dumps({"seen_from_s": start - t0, "seen_by_s": end - t0, "poll_s": end - start, "polls": polls}))
        break
    if end - t0 > 30:
        print(json.dumps({"error": "not seen after 30 s", "polls": polls})); break
    time.sleep(0.05 if mode == "http" else 0)
"""


def upload_bench(ip: str, password: str, runs: int) -> dict[str, Any]:
    """Upload `runs` new versions per mode with twine from the client; time until pip (or an HTTP GET) sees each."""
    results: dict[str, list[dict[str, Any]]] = {"pip": [], "http": []}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, outcomes in results.items():
            for i in range(runs):
                version = f"1.{len(results['pip']) + len(results['http'])}.0"
                wheel = demo_wheel.build_wheel(Path(tmp), "bench-upload", version)
                run(["docker", "cp", str(wheel), f"{CLIENT}:/root/bench/{wheel.name}"], check=True)
                args = [f"http://{ip}:{PORT}/", f"http://{ip}:{PORT}/simple/", ip, "bench-upload", version]
                done = client_exec(
                    f"{CLIENT_BIN}/python",
                    "-c",
                    POLL,
                    mode,
                    *args,
                    f"/root/bench/{wheel.name}",
                    env={"TWINE_USERNAME": "bench", "TWINE_PASSWORD": password},
                    timeout=120,
                )
                outcome = (
                    json.loads(done.stdout.strip().splitlines()[-1])
                    if done.stdout.strip()
                    else {"error": done.stderr[-300:]}
                )
                say(f"  upload {mode} run {i + 1}: {outcome}")
                outcomes.append(outcome)
    summary: dict[str, Any] = {"runs": runs, "pip": results["pip"], "http": results["http"]}
    for mode, outcomes in results.items():
        seen = [o["seen_from_s"] for o in outcomes if "seen_from_s" in o]
        summary[f"{mode}_seen_median_s"] = round(statistics.median(seen), 3) if len(seen) == len(outcomes) else None
    calls = [o["poll_s"] for o in results["pip"] if "poll_s" in o]
    summary["pip_call_median_s"] = round(statistics.median(calls), 2) if calls else None
    return summary


# --------------------------------------------------------------------------- bundle


def bundle() -> dict[str, Any]:
    """Time a bundle build from the committed locks into an empty directory, and its size."""
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = Path(tmp) / "offline_artifacts"
        for part in ("requirements", "locks"):
            shutil.copytree(ROOT / "offline_artifacts" / part, artifacts / part)
        seconds, result = timed(
            [sys.executable, str(ROOT / "scripts" / "build_bundle.py"), "--artifacts", str(artifacts)]
        )
        if result.returncode != 0:
            return {"bundle_error": result.stderr.strip()[-500:]}
        files = list((artifacts / "wheels").iterdir())
        same = (artifacts / "SHA256SUMS").read_bytes() == (ROOT / "offline_artifacts" / "SHA256SUMS").read_bytes()
        return {
            "bundle_build_s": round(seconds, 1),
            "bundle_files": len(files),
            "bundle_mb": round(sum(f.stat().st_size for f in files) / 1e6, 1),
            "bundle_sums_identical_to_repo": same,
        }


def mirror_and_archive() -> dict[str, Any]:
    """Time the default mirror build from its committed locks into an empty directory, then packing the archive."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        mirror = Path(tmp) / "mirror"
        shutil.copytree(
            ROOT / "offline_artifacts" / "mirror", mirror, ignore=shutil.ignore_patterns("files", "SHA256SUMS")
        )
        seconds, result = timed([sys.executable, str(ROOT / "scripts" / "build_mirror.py"), "--artifacts", str(mirror)])
        if result.returncode != 0:
            return {"mirror_error": result.stderr.strip()[-500:]}
        files = list((mirror / "files").iterdir())
        results.update(
            mirror_build_s=round(seconds, 1),
            mirror_files=len(files),
            mirror_mb=round(sum(f.stat().st_size for f in files) / 1e6, 1),
        )
        out = Path(tmp) / "dist"
        seconds, result = timed([sys.executable, str(ROOT / "scripts" / "pack_archive.py"), "--out", str(out)])
        if result.returncode != 0:
            return {**results, "archive_error": result.stderr.strip()[-500:]}
        archive = next(out.glob("*.tar.gz"))
        results.update(archive_pack_s=round(seconds, 1), archive_mb=round(archive.stat().st_size / 1e6, 1))
    return results


# --------------------------------------------------------------------------- transfer


def random_file(path: Path, size: int) -> None:
    """size random bytes (incompressible, as wheels nearly are), written a MiB at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        for offset in range(0, size, airgap_transfer.CHUNK):
            fh.write(os.urandom(min(airgap_transfer.CHUNK, size - offset)))


def transfer_repo(root: Path, files: int, size: int) -> list[Path]:
    """A tree pack_archive.pack() takes (a git repository without commits, VERSION, the bundle's SHA256SUMS, the
    unpack scripts) with files of size random bytes in the mirror: their paths."""
    for sums in ("offline_artifacts/SHA256SUMS", "offline_artifacts/controller/SHA256SUMS"):
        (root / sums).parent.mkdir(parents=True, exist_ok=True)
        (root / sums).write_text("")
    (root / "VERSION").write_text("1.0.0\n")
    (root / "scripts").mkdir()
    for script in ("unpack_archive.sh", "airgap_transfer.py"):  # pack() copies them beside the archive
        shutil.copy2(ROOT / "scripts" / script, root / "scripts" / script)
    mirror = root / "offline_artifacts" / "mirror" / "files"
    paths = [mirror / f"bench_pkg_{i:04d}-1.0-py3-none-any.whl" for i in range(files)]
    for path in paths:
        random_file(path, size)
    run(["git", "init", "-q", str(root)], check=True)
    return paths


@contextlib.contextmanager
def source_date(epoch: int) -> Iterator[None]:
    saved = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = str(epoch)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("SOURCE_DATE_EPOCH", None)
        else:
            os.environ["SOURCE_DATE_EPOCH"] = saved


def ignore(_line: str) -> None:
    """A say() for pack_archive and airgap_transfer that prints nothing."""


def transfer_delta(
    workdir: Path,
    *,
    files: int = 400,
    size: int = 100_000,
    changed: int = 40,
    added: int = 4,
    added_size: int = 1 << 20,
) -> dict[str, Any]:
    """A full archive of a synthetic tree, then `changed` of its files rewritten and `added` new ones, and the
    delta on it (unsigned: a signature adds a file of about 120 bytes). Sizes as the manifests record them."""
    root, out = workdir / "transfer-repo", workdir / "transfer-dist"
    paths = transfer_repo(root, files, size)
    with source_date(1_700_000_000):
        full = pack_archive.pack(root, out / "full", say=ignore)
        for path in paths[:changed]:
            random_file(path, size)
        for i in range(added):
            random_file(
                root / "offline_artifacts" / "mirror" / "files" / f"bench_new_{i:02d}-1.0-py3-none-any.whl", added_size
            )
        start = time.monotonic()
        delta = pack_archive.pack(root, out / "delta", base=out / "full" / f"{full.name}.manifest", say=ignore)
        pack_s = time.monotonic() - start
    manifest_path = out / "delta" / f"{delta.name}.manifest"
    manifest = airgap_transfer.load(manifest_path)[0]
    # What the delta carries: the files its base lacks or has with other bytes, as the manifests say.
    new = airgap_transfer.changed(list(manifest.files), airgap_transfer.load(out / "full" / f"{full.name}.manifest")[0])
    carried_files = sum(e.size for e in new)
    carried = manifest.archive.size + manifest_path.stat().st_size
    return {
        "tree_files": len(manifest.files),
        "tree_mb": round(sum(e.size for e in manifest.files) / 1e6, 1),
        "full_archive_bytes": manifest.full_size,
        "new_and_changed_files": len(new),
        "new_file_bytes": carried_files,
        "delta_bytes": manifest.archive.size,
        "delta_manifest_bytes": manifest_path.stat().st_size,
        "delta_over_new_files": round(manifest.archive.size / carried_files, 4),
        "delta_and_manifest_over_new_files": round(carried / carried_files, 4),
        "delta_pack_s": round(pack_s, 1),
    }


def transfer_verify(workdir: Path, *, total: int = 1 << 30, parts: int = 4, rounds: int = 3) -> dict[str, Any]:
    """`total` random bytes as `parts` parts of one archive and a manifest naming them; then, in turns,
    `sha256sum` of the parts and airgap_transfer.check_carried() (each part's sha256 and the whole's, as the
    private side checks them before unpacking). Both read the same files from the page cache. The files are
    removed at the end."""
    folder = workdir / "transfer-parts"
    folder.mkdir()
    try:
        whole, carried = hashlib.sha256(), []
        size = total // parts
        for i in range(1, parts + 1):
            path = folder / f"bench.tar.gz.part{i:03d}"
            digest = hashlib.sha256()
            with path.open("wb") as fh:
                for offset in range(0, size, airgap_transfer.CHUNK):
                    chunk = os.urandom(min(airgap_transfer.CHUNK, size - offset))
                    digest.update(chunk)
                    whole.update(chunk)
                    fh.write(chunk)
            carried.append(airgap_transfer.Carried(path.name, size, digest.hexdigest()))
        manifest = airgap_transfer.Manifest(
            kind="full",
            version="1.0.0",
            sequence=1,
            base=None,
            base_sequence=None,
            created="2023-11-14T22:13:20Z",
            archive=airgap_transfer.Carried("bench.tar.gz", size * parts, whole.hexdigest()),
            full_size=size * parts,
            parts=tuple(carried),
            files=(),
        )
        paths = [str(folder / p.name) for p in carried]
        sums_s: list[float] = []
        verify_s: list[float] = []
        for _ in range(rounds):
            seconds, result = timed(["sha256sum", *paths])
            if result.returncode != 0:
                raise RuntimeError(f"sha256sum failed: {result.stderr.strip()[-300:]}")
            sums_s.append(seconds)
            start = time.monotonic()
            airgap_transfer.check_carried(manifest, folder, ignore)
            verify_s.append(time.monotonic() - start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # Medians and ratios of the unrounded times: a small tree (the tests') checks in milliseconds.
    sums, verify = statistics.median(sums_s), statistics.median(verify_s)
    return {
        "parts": parts,
        "parts_mb": round(size * parts / 1e6, 1),
        "sha256sum_s": [round(value, 3) for value in sums_s],
        "verify_s": [round(value, 3) for value in verify_s],
        "sha256sum_mb_per_s": round(size * parts / 1e6 / sums, 1),
        "verify_mb_per_s": round(size * parts / 1e6 / verify, 1),
        "verify_speed_over_sha256sum": round(sums / verify, 2),
    }


def transfer_bench(workdir: Path) -> dict[str, Any]:
    say("a delta archive of a synthetic tree, then checking 1 GB of parts against sha256sum")
    section = {"delta": transfer_delta(workdir)}
    shutil.rmtree(workdir / "transfer-repo", ignore_errors=True)
    shutil.rmtree(workdir / "transfer-dist", ignore_errors=True)
    section["verify"] = transfer_verify(workdir)
    return section


# --------------------------------------------------------------------------- goals and report


def find_row(rows: Sequence[dict[str, Any]], server: str, files: int, path: str) -> dict[str, Any] | None:
    return next((r for r in rows if (r["server"], r["files"], r["path"]) == (server, files, path)), None)


def goal(name: str, value: float | None, target: str, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"goal": name, "value": value, "target": target, "met": met, "note": note}


def goals(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, from whichever sections have results (None: not measured)."""
    out = []
    provision = sections.get("provision", {})
    for key, limit in TIME_GOALS.items():
        value = provision.get(key)
        out.append(goal(f"1 host: {key}", value, f"<= {limit:g} s", None if value is None else value <= limit))
    one, many = provision.get("first_run_s"), sections.get("hosts4", {}).get("first_run_s")
    ratio = round(many / one, 2) if one and many else None
    out.append(
        goal(
            "4 hosts in one run vs 1 host",
            ratio,
            f"<= {GOAL_HOSTS4_RATIO:g}x",
            None if ratio is None else ratio <= GOAL_HOSTS4_RATIO,
        )
    )
    rows = sections.get("reads", {}).get("rows", [])
    files = max((r["files"] for r in rows), default=10_000)
    default = find_row(rows, "default", files, "/simple/<project>/")
    ratio = default.get("x_baseline") if default else None
    out.append(
        goal(
            f"default /simple/<project>/ at {files:,} files vs pypiserver today",
            ratio,
            f">= {GOAL_BASELINE_FACTOR:g}x",
            None if ratio is None else ratio >= GOAL_BASELINE_FACTOR,
        )
    )
    p99 = default.get("p99_ms") if default else None
    out.append(
        goal(
            f"default /simple/<project>/ at {files:,} files, p99",
            p99,
            f"<= {GOAL_P99_MS:g} ms",
            None if p99 is None else p99 <= GOAL_P99_MS,
        )
    )
    front = find_row(rows, "front", files, "/simple/<project>/")
    front_note = sections.get("reads", {}).get("deployments", {}).get("front", "") if front is None else ""
    value = front.get("x_nginx") if front else None
    out.append(
        goal(
            f"front server /simple/<project>/ at {files:,} files vs nginx",
            value,
            f">= {GOAL_FRONT_VS_NGINX:g}x",
            None if value is None else value >= GOAL_FRONT_VS_NGINX,
            front_note,
        )
    )
    value = sections.get("auth", {}).get("password_over_open")
    out.append(
        goal(
            "reads with a password (auth_downloads) vs without, /simple/<project>/ on loopback",
            value,
            f">= {GOAL_AUTH_RATIO:g}x",
            None if value is None else value >= GOAL_AUTH_RATIO,
        )
    )
    out += feature_goals(sections.get("features", {}))
    value = sections.get("pip", {}).get("index_over_find_links")
    out.append(
        goal(
            "pip install of the set: index / --find-links",
            value,
            f"<= {GOAL_PIP_RATIO:g}x",
            None if value is None else value <= GOAL_PIP_RATIO,
        )
    )
    value = sections.get("upload", {}).get("pip_seen_median_s")
    out.append(
        goal(
            "upload visible to pip (twine returned -> start of the pip call that finds it)",
            value,
            f"<= {GOAL_UPLOAD_S:g} s",
            None if value is None else value <= GOAL_UPLOAD_S,
        )
    )
    return (
        out
        + transfer_goals(sections.get("transfer", {}))
        + scale_goals(sections.get("scale", {}))
        + replication_goals(sections.get("replication", {}))
        + balancer_goals(sections.get("balancer", {}))
    )


def scale_goals(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 15's goals from the scale section (100,000 files on one host)."""
    files = section.get("files", SCALE_FILES)
    rows = [
        (
            "upload visible on /simple/<project>/ (POST sent -> page shows it), median",
            "upload_visible_median_s",
            f"<= {GOAL_SCALE_UPLOAD_S:g} s",
            GOAL_SCALE_UPLOAD_S,
        ),
        ("/simple/<project>/ p99 (wrk)", "project_p99_ms", f"<= {GOAL_SCALE_P99_MS:g} ms", GOAL_SCALE_P99_MS),
        (
            "gunicorn worker memory (largest RSS)",
            "worker_rss_mb",
            f"<= {GOAL_SCALE_WORKER_MB:g} MB",
            GOAL_SCALE_WORKER_MB,
        ),
        (
            "cold rebuild of the tree (deleted) by the sync command",
            "cold_rebuild_s",
            f"<= {GOAL_SCALE_REBUILD_S:g} s",
            GOAL_SCALE_REBUILD_S,
        ),
    ]
    out = []
    for name, key, target, limit in rows:
        value = section.get(key)
        out.append(goal(f"{files:,} files: {name}", value, target, None if value is None else value <= limit))
    return out


def transfer_goals(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 16's goals from the transfer section: a delta's size, checking the carried parts."""
    ratio = section.get("delta", {}).get("delta_over_new_files")
    speed = section.get("verify", {}).get("verify_speed_over_sha256sum")
    return [
        goal(
            "delta archive over the bytes of the new and changed files it carries",
            ratio,
            f"<= {GOAL_DELTA_RATIO:g}x",
            None if ratio is None else ratio <= GOAL_DELTA_RATIO,
        ),
        goal(
            "checking 1 GB of parts against their manifest, speed over sha256sum alone",
            speed,
            f">= {GOAL_VERIFY_RATIO:g}x",
            None if speed is None else speed >= GOAL_VERIFY_RATIO,
        ),
    ]


def feature_goals(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 14's goals from the features section: rendering p95, upload to a rendered page, reads on / off."""
    p95 = section.get("upload_added", {}).get("added_p95_ms")
    seen = section.get("on", {}).get("upload_visible", {}).get("seen_median_s")
    ratio = section.get("on_over_off")
    return [
        goal(
            "rendering adds to an upload's response, p95 per file (the bundle's descriptions, paired uploads)",
            p95,
            f"<= {GOAL_RENDER_P95_MS:g} ms",
            None if p95 is None else p95 <= GOAL_RENDER_P95_MS,
        ),
        goal(
            "upload visible on /project/<name>/ with its README rendered (owner checks on)",
            seen,
            f"<= {GOAL_UPLOAD_S:g} s",
            None if seen is None else seen <= GOAL_UPLOAD_S,
        ),
        goal(
            "/simple/<project>/ reads with the owner checks, claims and audit records vs the defaults, on loopback",
            ratio,
            f">= {GOAL_FEATURES_RATIO:g}x",
            None if ratio is None else ratio >= GOAL_FEATURES_RATIO,
        ),
    ]


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def met_text(row: dict[str, Any]) -> str:
    """The Met column: yes, no, or why it was not measured."""
    if row["met"] is not None:
        return "yes" if row["met"] else "no"
    return row["note"] or "not measured"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(results: dict[str, Any]) -> str:
    """bench/results.md: the goals first, then each section measured."""
    sections = results.get("sections", {})
    parts = [
        "# Benchmark results\n",
        f"Written by `make bench` (scripts/bench.py) on {results.get('cpus')} CPUs; wrk {results.get('wrk', '?')}, "
        f"nginx {sections.get('reads', {}).get('nginx', '?')} (the yardstick's). Ratios compare numbers of one run; "
        "seconds vary between runs.\n",
        "## Goals\n",
        table(
            ["Goal", "Measured", "Target", "Met"],
            ([g["goal"], g["value"], g["target"], met_text(g)] for g in results.get("goals", [])),
        ),
    ]
    if "provision" in sections or "hosts4" in sections:
        one, many = sections.get("provision", {}), sections.get("hosts4", {})
        rows = [
            ["bare containers to serving (site.yml)", one.get("first_run_s"), many.get("first_run_s")],
            ["its changed count", one.get("first_run_changed"), many.get("first_run_changed")],
            ["idempotent re-run", one.get("rerun_s"), many.get("rerun_s")],
            ["its changed count", one.get("rerun_changed"), many.get("rerun_changed")],
            ["re-run: tasks in all", one.get("rerun_tasks"), None],
            ["re-run: tasks not skipped (on the host or the controller)", one.get("rerun_tasks_executed"), None],
            ["re-run: seconds per task not skipped", one.get("rerun_s_per_executed_task"), None],
            ["first run: tasks not skipped", one.get("first_run_tasks_executed"), many.get("first_run_tasks_executed")],
        ]
        rows += [
            [key.replace("_", " "), value, None]
            for key, value in one.items()
            if key.startswith(("mirror_load", "rerun_with"))
        ]
        parts += [
            "## Provisioning (seconds)\n",
            f"Measured {one.get('measured_at', '-')} (1 host), {many.get('measured_at', '-')} (4 hosts).\n",
            table(["Measure", "1 host", "4 hosts"], rows),
        ]
    if "reads" in sections:
        section = sections["reads"]
        load = section.get("load", {})
        parts += [
            "## Reads\n",
            f"Measured {section.get('measured_at')}: wrk -t{load.get('threads')} -c{load.get('connections')} "
            f"-d{load.get('seconds')}s --latency from the machine to the index container's IP; nginx serves the "
            "same files as a static PEP 503 tree from a container on the same docker network (the yardstick: the "
            "test image with Debian's nginx, none of the product's code), measured path by path just before each "
            f"deployment (its rows name it). /simple/<project>/ is {section.get('target_project')} "
            f"({VERSIONS} files). Files: the synthetic wheels; the index also holds the default mirror and the pip "
            "set. x nginx: req/s over the nginx run just before; x baseline: over the baseline's at the same files "
            "and path. Errors: socket errors and "
            "non-2xx answers. Load: the machine's 1-minute load average after the row (other work shares it). A "
            f"row with fewer than {MIN_REQUESTS} requests was measured again for up to {MAX_WRK_SECONDS} s.\n",
            "".join(f"- {name}: {note}\n" for name, note in section.get("deployments", {}).items()) + "\n",
            table(
                [
                    "Files",
                    "Path",
                    "Server",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "x nginx",
                    "x baseline",
                    "requests",
                    "errors",
                    "load",
                ],
                (
                    [
                        r["files"],
                        r["path"],
                        r["server"] + (f" (with {r['paired_with']})" if r.get("paired_with") else ""),
                        r["rps"],
                        r["p50_ms"],
                        r["p99_ms"],
                        r.get("x_nginx"),
                        r.get("x_baseline"),
                        r.get("requests"),
                        r.get("socket_errors", 0) + r.get("non_2xx", 0),
                        r.get("load_1min"),
                    ]
                    for r in section.get("rows", [])
                ),
            ),
        ]
    if "auth" in sections:
        auth = sections["auth"]
        load = auth.get("load", {})
        parts += [
            "## Reads with a password\n",
            f"Measured {auth.get('measured_at')}: wrk -t{load.get('threads')} -c{load.get('connections')} "
            f"-d{load.get('seconds')}s on 127.0.0.1 against gunicorn, pypiserver and the static read path as the role "
            "renders them (scripts/index_stack.py), one project page; with pypi_server_auth_downloads every read "
            "carries the account's password (sha512_crypt, 100,000 rounds).\n",
            table(
                ["Index", "req/s", "p99 ms", "requests", "errors"],
                [
                    [name, row.get("rps"), row.get("p99_ms"), row.get("requests"), row.get("errors")]
                    for name, row in ((n, auth.get(n, {})) for n in ("open", "password"))
                ]
                + [["password / open", auth.get("password_over_open"), None, None, None]],
            ),
        ]
    if "features" in sections:
        parts += features_markdown(sections["features"])
    if "pip" in sections:
        pip = sections["pip"]
        parts += [
            "## pip install of bench/pip-set.txt\n",
            f"Measured {pip.get('measured_at')}: {pip.get('packages')} packages into a fresh venv on the client "
            f"container, median of {pip.get('runs')} runs each, no cache.\n",
            table(
                ["Source", "Median s", "Runs s"],
                [
                    ["the index (--index-url)", pip.get("index_median_s"), ", ".join(map(str, pip.get("index_s", [])))],
                    [
                        "a local directory (--no-index --find-links)",
                        pip.get("find_links_median_s"),
                        ", ".join(map(str, pip.get("find_links_s", []))),
                    ],
                    ["index / local", pip.get("index_over_find_links"), ""],
                ],
            ),
        ]
    if "upload" in sections:
        up = sections["upload"]
        parts += [
            "## Upload to visible\n",
            f"Measured {up.get('measured_at')}: from twine's return on the client to the start of the first poll that "
            f"finds the new file (0 = the first poll after the upload found it), median of {up.get('runs')} uploads "
            f"each; a pip call itself took {fmt(up.get('pip_call_median_s'))} s.\n",
            table(
                ["Poll", "Median s"],
                [
                    ["pip download --no-deps", up.get("pip_seen_median_s")],
                    ["HTTP GET /simple/<project>/", up.get("http_seen_median_s")],
                ],
            ),
        ]
    if "bundle" in sections:
        parts += [
            "## Bundle, mirror, archive\n",
            table(["Measure", "Value"], ([k.replace("_", " "), v] for k, v in sections["bundle"].items())),
        ]
    if "transfer" in sections and "error" not in sections["transfer"]:
        parts += transfer_markdown(sections["transfer"])
    if "scale" in sections and "error" not in sections["scale"]:
        parts += scale_markdown(sections["scale"])
    if "replication" in sections and "error" not in sections["replication"]:
        parts += replication_markdown(sections["replication"])
    if "balancer" in sections and "error" not in sections["balancer"]:
        parts += balancer_markdown(sections["balancer"])
    failures = [(name, section["error"]) for name, section in sections.items() if "error" in section]
    failures += [("reads", error) for error in sections.get("reads", {}).get("errors", [])]
    if failures:
        parts += ["## Errors\n", *(f"- {name}: `{' '.join(error.split())[-600:]}`\n" for name, error in failures)]
    return "\n".join(parts)


def features_markdown(section: dict[str, Any]) -> list[str]:
    """The features section of results.md: rendering per file, then uploads and reads per index."""
    if "error" in section:
        return []
    render, load, readme = section.get("render", {}), section.get("load", {}), section.get("readme", {})
    added = section.get("upload_added", {})
    stacks = [(name, section.get(name, {})) for name in FEATURE_STACKS]
    return [
        "## Issue 14's features\n",
        f"Measured {section.get('measured_at')}: the description of one wheel per project of the bundle "
        f"({render.get('files')} with a description, {render.get('without_description')} without) rendered by "
        "airgap_pypi_index.render_description with readme_renderer from the bundle's wheels, each "
        f"{render.get('repeats')} times after a first call; a file's time is the median of its renderings "
        f"(importing readme_renderer took {fmt(render.get('import_ms'))} ms once). This is the renderer's work, done "
        "in a child process after the upload's response; what it adds to the response is the next table.\n",
        table(
            ["Files", "p50 ms", "p95 ms", "max ms", "first call p95 ms", "slowest", "p95 / 50 ms"],
            [
                [
                    render.get("files"),
                    render.get("p50_ms"),
                    render.get("p95_ms"),
                    render.get("max_ms"),
                    render.get("first_p95_ms"),
                    f"{render.get('slowest')}, {render.get('slowest_type')}, {fmt(render.get('slowest_bytes'))} bytes",
                    render.get("p95_over_goal"),
                ]
            ],
        ),
        "What rendering adds to an upload's response: each of those descriptions in a wheel of its own, POSTed "
        "as twine does (one connection, no retries) to the index with owners on, and a wheel without a "
        "description (every other pair that one first), the renderer left to finish its work before the next "
        f"upload; {ADDED_ROUNDS} pairs per description, a description's added time the median of its pairs' "
        "differences (the described wheel's response time minus the plain one's).\n",
        table(
            [
                "Descriptions",
                "Pairs",
                "added p50 ms",
                "added p95 ms",
                "added max ms",
                "response p95 ms (with a description)",
            ],
            [
                [
                    added.get("descriptions"),
                    added.get("pairs"),
                    added.get("added_p50_ms"),
                    added.get("added_p95_ms"),
                    added.get("added_max_ms"),
                    added.get("response_p95_ms"),
                ]
            ],
        ),
        "Uploads and reads on 127.0.0.1 through the real stack (scripts/index_stack.py), both indexes served at "
        "once: the index's defaults (off) and the same with an owner map naming the project read and claims of "
        "first uploads (on); the audit trail records every upload in both (the role has no switch for it). "
        "Upload to visible: from twine's return to the start of the first GET of "
        f"/project/bench-readme/ showing the new version's README ({readme.get('project')}'s, {readme.get('type')}, "
        f"{fmt(readme.get('bytes'))} bytes) rendered, median of {stacks[-1][1].get('upload_visible', {}).get('runs')}"
        f" uploads per index. Reads: wrk -t{load.get('threads')} -c{load.get('connections')} -d{load.get('seconds')}s "
        f"--latency on /simple/bench-feat/ of each index in turn, {section.get('rounds')} times: the median req/s "
        "and p99 of those runs.\n",
        table(
            ["Index", "req/s", "p99 ms", "requests", "errors", "audit records", "visible s", "twine s"],
            [
                [
                    name,
                    row.get("rps"),
                    row.get("p99_ms"),
                    row.get("requests"),
                    row.get("errors"),
                    row.get("audit_records"),
                    row.get("upload_visible", {}).get("seen_median_s"),
                    row.get("upload_visible", {}).get("twine_median_s"),
                ]
                for name, row in stacks
            ]
            + [["on / off", section.get("on_over_off"), None, None, None, None, None, None]],
        ),
    ]


def ratio4(value: float | None) -> str | None:
    """A ratio near 1 with four decimals (fmt() would round 1.0013 to 1)."""
    return None if value is None else f"{value:.4f}"


def transfer_markdown(section: dict[str, Any]) -> list[str]:
    """The transfer section of results.md: the delta's size, then the parts checked against sha256sum."""
    delta, verify = section.get("delta", {}), section.get("verify", {})
    return [
        "## Transfers across the air gap (issue 16)\n",
        f"Measured {section.get('measured_at')}. Delta: a synthetic tree of {fmt(delta.get('tree_files'))} files of "
        f"random bytes ({fmt(delta.get('tree_mb'))} MB) packed full, then {fmt(delta.get('new_and_changed_files'))} "
        "files rewritten or added and the delta packed on the full archive's manifest (unsigned). Parts: "
        f"{fmt(verify.get('parts_mb'))} MB of random bytes in {fmt(verify.get('parts'))} parts, checked by "
        "airgap_transfer.check_carried() (each part's sha256 and the whole archive's) and by `sha256sum` of the "
        f"same files, in turns, {len(verify.get('verify_s', []))} times each, from the page cache: the medians.\n",
        table(
            ["Measure", "Value"],
            [
                ["full archive bytes", delta.get("full_archive_bytes")],
                ["new and changed file bytes", delta.get("new_file_bytes")],
                ["delta archive bytes", delta.get("delta_bytes")],
                ["its manifest bytes", delta.get("delta_manifest_bytes")],
                ["delta / new file bytes", ratio4(delta.get("delta_over_new_files"))],
                ["(delta + manifest) / new file bytes", ratio4(delta.get("delta_and_manifest_over_new_files"))],
                ["packing the delta, s", delta.get("delta_pack_s")],
                ["sha256sum, s", ", ".join(map(str, verify.get("sha256sum_s", [])))],
                ["check of the parts, s", ", ".join(map(str, verify.get("verify_s", [])))],
                ["sha256sum MB/s", verify.get("sha256sum_mb_per_s")],
                ["check MB/s", verify.get("verify_mb_per_s")],
                ["check speed / sha256sum speed", verify.get("verify_speed_over_sha256sum")],
            ],
        ),
    ]


def scale_markdown(section: dict[str, Any]) -> list[str]:
    """The scale section of results.md."""
    load = section.get("load", {})
    return [
        "## 100,000 files on one host (issue 15)\n",
        f"Measured {section.get('measured_at')} on loopback: {fmt(section.get('files'))} synthetic wheels over "
        f"{fmt(section.get('projects'))} projects. Cold rebuild: the sync command on the packages directory with "
        "no tree (every file read and hashed, every page written); then gunicorn with the role's configuration "
        f"(scripts/index_stack.py, {section.get('workers')} workers) serves that tree. Upload to visible: "
        f"{section.get('uploads')} uploads of a new project (the form twine sends), each from sending the POST to the "
        "start of the first GET of its /simple/<project>/ that lists it. Reads: wrk "
        f"-t{load.get('threads')} -c{load.get('connections')} -d{load.get('seconds')}s on "
        f"{section.get('target_project')}'s /simple/<project>/. Memory: the largest resident set of the workers "
        "after the uploads and the reads.\n",
        table(
            ["Measure", "Value"],
            [
                ["cold rebuild, s", section.get("cold_rebuild_s")],
                ["cold rebuild: progress lines logged", section.get("cold_rebuild_progress_lines")],
                ["cold rebuild: peak memory of the sync command, MB", section.get("cold_rebuild_rss_mb")],
                ["upload to visible, median s", section.get("upload_visible_median_s")],
                ["upload to visible, each s", ", ".join(map(str, section.get("upload_visible_s", [])))],
                ["/simple/<project>/ req/s", section.get("project_rps")],
                ["/simple/<project>/ p99 ms", section.get("project_p99_ms")],
                ["the same once the uploads' lists are written: req/s", section.get("project_quiet_rps")],
                ["the same once the uploads' lists are written: p99 ms", section.get("project_quiet_p99_ms")],
                ["worker memory (largest RSS), MB", section.get("worker_rss_mb")],
                ["state.json bytes", section.get("state_bytes")],
                ["state.journal bytes after the uploads", section.get("journal_bytes")],
                ["front page (index.html) bytes", section.get("front_page_bytes")],
                ["its search index (search.json) bytes", section.get("search_index_bytes")],
                ["/simple/ (index.html) bytes", section.get("simple_root_bytes")],
            ],
        ),
    ]


def rss_mb(pid: int) -> float | None:
    """A process's resident set size in MB (None when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def scale_bench(workdir: Path, load: Load, files: int = SCALE_FILES, uploads: int = SCALE_UPLOADS) -> dict[str, Any]:
    """Issue 15 on loopback: `files` synthetic wheels (SCALE_VERSIONS per project), a cold rebuild of the tree by
    the sync command, then gunicorn on that tree: uploads of new projects to visible, wrk on a project page, the
    workers' memory, the sizes of the state and of the front page."""
    packages = workdir / "scale" / "packages"
    say(f"  building {files:,} synthetic wheels")
    build_synthetic(packages, files, SCALE_VERSIONS)
    site = index_stack.extract_site(workdir / "scale-site")
    tree = workdir / "scale" / "static"  # where index_stack.serve puts the stack's tree
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PYTHONPATH"] = str(site)
    module = ROOT / "roles" / "pypi_server" / "files" / "airgap_pypi_index.py"
    say("  cold rebuild (the sync command, no tree)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(module), "--packages", str(packages), "--tree", str(tree), "--no-render"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    rebuild_s = round(time.monotonic() - start, 1)
    if done.returncode != 0:
        raise RuntimeError(f"the cold rebuild failed: {done.stderr[-1500:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out: dict[str, Any] = {
        "files": files,
        "projects": files // SCALE_VERSIONS,
        "load": asdict(load),
        "cold_rebuild_s": rebuild_s,
        "cold_rebuild_progress_lines": sum(" of " in line for line in done.stderr.splitlines()),
        "cold_rebuild_rss_mb": round(peak / 1024, 1) if peak > before else None,
        "uploads": uploads,
    }
    target = synthetic_names(files, SCALE_VERSIONS)[0][0]
    say("  gunicorn on that tree: uploads, reads, memory")
    with index_stack.serve(workdir / "scale", packages=packages) as stack:
        seen = []
        for number in range(uploads):
            wheel = demo_wheel.build_wheel(workdir / "scale-dist", f"bench-scale-new-{number}", "1.0")
            sent = time.monotonic()
            post_upload(stack.url, wheel)
            seen.append(round(seen_after(f"{stack.url}/simple/bench-scale-new-{number}/", wheel.name, sent), 3))
        result = wrk(f"{stack.url}/simple/{target}/", load)
        # The same reads again once the uploads' after-response work (the project-wide lists, about 2.6 MB at
        # 100,000 files) is done: /simple/ names the last upload, then a quiet second. Tells a stall the lists
        # cause apart from a page's own cost.
        settled = True
        if uploads:
            try:
                seen_after(f"{stack.url}/simple/", f"bench-scale-new-{uploads - 1}", time.monotonic(), 30)
            except RuntimeError:
                settled = False
        time.sleep(1)
        quiet = wrk(f"{stack.url}/simple/{target}/", load)
        memory = [value for value in (rss_mb(pid) for pid in stack.workers()) if value is not None]
        out.update(
            workers=len(stack.workers()),
            target_project=target,
            upload_visible_s=seen,
            upload_visible_median_s=statistics.median(seen),
            project_rps=result.rps,
            project_p99_ms=result.p99_ms,
            project_settled=settled,
            project_quiet_rps=quiet.rps,
            project_quiet_p99_ms=quiet.p99_ms,
            worker_rss_mb=max(memory) if memory else None,
        )
    sizes = {
        "state_bytes": "state.json",
        "journal_bytes": "state.journal",
        "front_page_bytes": "index.html",
        "search_index_bytes": "search.json",
        "simple_root_bytes": "simple/index.html",
    }
    out.update({key: (tree / name).stat().st_size if (tree / name).is_file() else None for key, name in sizes.items()})
    shutil.rmtree(workdir / "scale", ignore_errors=True)
    return out


# --------------------------------------------------------------------------- replication


def replica_intervals(defaults: Path = REPLICA_DEFAULTS) -> tuple[float, float, int]:
    """pypi_replica's default publish and pull intervals (seconds) and generations kept, as deployed."""
    import yaml  # noqa: PLC0415 - PyYAML comes with ansible-core in the toolchain

    values = yaml.safe_load(defaults.read_text())
    return (
        float(values["pypi_replica_publish_interval"]),
        float(values["pypi_replica_pull_interval"]),
        int(values["pypi_replica_keep"]),
    )


def load_generation() -> Any:
    """The replicas' program (roles/pypi_common/files/airgap_pypi_generation.py) as a module, read only."""
    spec = importlib.util.spec_from_file_location("airgap_pypi_generation", GENERATION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upload_gaps(count: int, low: float, high: float, seed: int = REPLICATION_SEED) -> list[float]:
    """`count` pauses (seconds) before the uploads: uniform in [low, high], the same for the same seed."""
    if count < 0 or not 0 <= low <= high:
        raise ValueError(f"{count} gaps in [{low}, {high}]: need count >= 0 and 0 <= low <= high")
    rng = random.Random(seed)
    return [round(rng.uniform(low, high), 3) for _ in range(count)]


def lag_summary(samples: Sequence[float], p50_goal: float, max_goal: float) -> dict[str, Any]:
    """p50, p95 (nearest rank), max and mean of the lag samples (seconds) and whether p50 and max meet the goals."""
    if not samples:
        raise ValueError("no lag was measured")
    p50, top = percentile(samples, 0.5), max(samples)
    return {
        "samples": len(samples),
        "p50_s": round(p50, 3),
        "p95_s": round(percentile(samples, 0.95), 3),
        "max_s": round(top, 3),
        "mean_s": round(statistics.fmean(samples), 3),
        "p50_met": p50 <= p50_goal,
        "max_met": top <= max_goal,
    }


def lag_model(publish_s: float, pull_s: float, scan_s: float, pull_parts: dict[str, float]) -> dict[str, Any]:
    """The expected lag after an upload and its worst case: the wait for the publisher's next scan (half its
    interval on average, all of it at worst), the scan, the wait for the replica's next pull (half, or all, of
    its interval), then the pull until the tree holds it (pull_parts: manifest fetch, file copy, check, apply, ...).
    The term that weighs most is named."""
    terms = {"publish wait": publish_s / 2, "scan": scan_s, "pull wait": pull_s / 2, **pull_parts}
    worst = dict(terms, **{"publish wait": publish_s, "pull wait": pull_s})
    dominant = max(terms, key=lambda name: terms[name])
    return {
        "terms_s": {name: round(value, 3) for name, value in terms.items()},
        "expected_s": round(sum(terms.values()), 3),
        "worst_s": round(sum(worst.values()), 3),
        "dominant": dominant,
    }


def wheel_name(project: str, version: str) -> str:
    return f"{project.replace('-', '_')}-{version}-py3-none-any.whl"


def replication_page(project: str, entries: Sequence[tuple[str, str]]) -> str:
    """A project's simple page in the writer's tree (static/simple/<project>/index.html), as page() writes one."""
    links = ((f"../../../packages/{name}#sha256={digest}", name) for name, digest in entries)
    return page(f"Links for {project}", links)


def write_replace(path: Path, data: bytes) -> float:
    """data at path as the index writes: a hidden temporary name in the same directory (which the publisher
    never lists), then a rename; the monotonic time right after the rename."""
    temporary = path.with_name(f".tmp-{path.name}")
    temporary.write_bytes(data)
    temporary.replace(path)
    return time.monotonic()


def replication_tree(root: Path, files: int, size: int) -> dict[str, list[tuple[str, str]]]:
    """A writer's data directory: packages/ with `files` synthetic wheel names (size seeded random bytes each,
    VERSIONS per project) and static/simple/<project>/index.html listing them, plus static/simple/index.html.
    Returns {project: [(file name, sha256), ...]}."""
    rng = random.Random(REPLICATION_SEED)
    (root / "packages").mkdir(parents=True)
    projects: dict[str, list[tuple[str, str]]] = {}
    for project, version in synthetic_names(files):
        name = wheel_name(project, version)
        data = rng.randbytes(size)
        (root / "packages" / name).write_bytes(data)
        projects.setdefault(project, []).append((name, hashlib.sha256(data).hexdigest()))
    for project, entries in projects.items():
        (root / "static" / "simple" / project).mkdir(parents=True)
        (root / "static" / "simple" / project / "index.html").write_text(replication_page(project, entries))
    listing = ((f"{project}/", project) for project in sorted(projects))
    (root / "static" / "simple" / "index.html").write_text(page("Simple index", listing))
    return projects


def upload_to_writer(
    writer: Path, projects: dict[str, list[tuple[str, str]]], project: str, version: str, data: bytes
) -> tuple[str, float]:
    """A new file of project in the writer's packages (temporary name, then renamed) and its project's page
    rewritten the same way: the file's name and the time of its rename."""
    name = wheel_name(project, version)
    renamed = write_replace(writer / "packages" / name, data)
    projects[project].append((name, hashlib.sha256(data).hexdigest()))
    write_replace(
        writer / "static" / "simple" / project / "index.html", replication_page(project, projects[project]).encode()
    )
    return name, renamed


def replica_holds(replica: Path, name: str, data: bytes, project: str) -> bool:
    """Whether the tree replica/current names (as nginx reads it) holds packages/<name> with these bytes and its
    project's page lists it (what a reader of the replica needs to install it)."""
    try:
        held = (replica / "current" / "packages" / name).read_bytes()
        listed = (replica / "current" / "static" / "simple" / project / "index.html").read_text()
    except OSError:
        return False
    return held == data and f">{name}</a>" in listed


def writer_lists(writer: Path, name: str, last: tuple[int, int] | None) -> tuple[bool, tuple[int, int] | None]:
    """Whether the writer's generation.json lists packages/<name>; read only when it was replaced since `last`
    (its inode and mtime), which is returned for the next call."""
    try:
        info = (writer / "generation.json").stat()
    except OSError:
        return False, last
    key = (info.st_ino, info.st_mtime_ns)
    if key == last:
        return False, last
    try:
        return f'"packages/{name}"'.encode() in (writer / "generation.json").read_bytes(), key
    except OSError:
        return False, last


def replica_generation(replica: Path) -> str | None:
    """Which generation the replica applied last: its record's (applied.json) inode and mtime, replaced by rename
    once per apply."""
    try:
        info = (replica / "applied.json").stat()
    except OSError:
        return None
    return f"{info.st_ino}:{info.st_mtime_ns}"


class Timed:
    """Wraps functions of a module (by name) to record the seconds of each call, per name; undone on exit."""

    def __init__(self, module: Any, names: Sequence[str]) -> None:
        self.module = module
        self.calls: dict[str, list[float]] = {name: [] for name in names if hasattr(module, name)}
        self.saved = {name: getattr(module, name) for name in self.calls}

    def __enter__(self) -> Timed:
        for name, original in self.saved.items():
            setattr(self.module, name, self._wrap(self.calls[name], original))
        return self

    @staticmethod
    def _wrap(calls: list[float], original: Callable[..., Any]) -> Callable[..., Any]:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                calls.append(time.perf_counter() - start)

        return timed_call

    def __exit__(self, *_exc: object) -> None:
        for name, original in self.saved.items():
            setattr(self.module, name, original)


def scan_parts(publisher: Any, writer: Path) -> dict[str, Any]:
    """The publisher's first scan of the writer (every file hashed, a generation written) and the median of 5
    scans of the unchanged tree; the manifest's size."""
    start = time.perf_counter()
    publisher.scan()
    cold = time.perf_counter() - start
    scans = []
    for _ in range(5):
        start = time.perf_counter()
        publisher.scan()
        scans.append(time.perf_counter() - start)
    return {
        "cold_scan_s": round(cold, 3),
        "scan_s": round(statistics.median(scans), 3),
        "scans_s": [round(value, 3) for value in scans],
        "manifest_bytes": (writer / "generation.json").stat().st_size,
    }


def pull_after_upload(gen: Any, publisher: Any, writer: Path, model: Path, rsync: str) -> dict[str, float]:
    """One publisher scan after an upload, then one pull into model, split by the program's own functions: the
    manifest's fetch (the first rsync run), the copy of the new and changed files (the others), their check, the
    apply (renames into the tree, removals, the record), the rest (the record read, the diff)."""
    start = time.perf_counter()
    publisher.scan()
    scan_one = time.perf_counter() - start
    with Timed(gen, ["rsync", "check_staged", "apply_changes", "record_applied"]) as timer:
        start = time.perf_counter()
        gen.pull(str(writer), str(model), REPLICATION_KEEP, rsync)
        total = time.perf_counter() - start
    runs = timer.calls.get("rsync", [])
    fetch, copy = (runs[0], sum(runs[1:])) if runs else (0.0, 0.0)
    check = sum(timer.calls.get("check_staged", []))
    apply = sum(timer.calls.get("apply_changes", [])) + sum(timer.calls.get("record_applied", []))
    return {
        "scan_with_one_new_file_s": scan_one,
        "pull_s": total,
        "manifest_fetch_s": fetch,
        "copy_s": copy,
        "check_s": check,
        "apply_s": apply,
        "other_s": total - fetch - copy - check - apply,
    }


def replication_parts(
    gen: Any, writer: Path, model: Path, projects: dict[str, list[tuple[str, str]]], rsync: str
) -> dict[str, Any]:
    """The lag's parts measured in this process with the program's own functions, nothing else running: the
    publisher's scans (scan_parts), a first pull into a replica of its own (model), the manifest's fetch alone and
    a whole pull that finds nothing new (what every pull interval costs a replica; medians of 3), and 3 pulls
    after one upload each (pull_after_upload). The writer is left as it was, without generation.json."""
    added: list[tuple[str, str]] = []
    pages: dict[str, bytes] = {}
    try:
        publisher = gen.Publisher(str(writer), ["packages", "static"])
        out = scan_parts(publisher, writer)
        start = time.perf_counter()
        gen.pull(str(writer), str(model), REPLICATION_KEEP, rsync)
        out["first_pull_s"] = round(time.perf_counter() - start, 2)
        fetches = []
        for _ in range(3):
            start = time.perf_counter()
            gen.fetch_manifest(str(writer), str(model), rsync)
            fetches.append(time.perf_counter() - start)
        out["manifest_fetch_alone_s"] = round(statistics.median(fetches), 3)
        idle = []
        for _ in range(3):
            start = time.perf_counter()
            gen.pull(str(writer), str(model), REPLICATION_KEEP, rsync)
            idle.append(time.perf_counter() - start)
        out["unchanged_pull_s"] = round(statistics.median(idle), 3)
        rows = []
        for number, project in enumerate(sorted(projects)[:3]):
            pages.setdefault(project, (writer / "static" / "simple" / project / "index.html").read_bytes())
            data = os.urandom(REPLICATION_UPLOAD_BYTES)
            added.append((project, upload_to_writer(writer, projects, project, f"9.9.{number}", data)[0]))
            rows.append(pull_after_upload(gen, publisher, writer, model, rsync))
        out["one_upload"] = {key: round(statistics.median(row[key] for row in rows), 3) for key in rows[0]}
        out["one_upload_pulls_s"] = [round(row["pull_s"], 3) for row in rows]
        return out
    finally:
        for project, name in added:
            (writer / "packages" / name).unlink(missing_ok=True)
            projects[project] = [entry for entry in projects[project] if entry[0] != name]
        for project, data in pages.items():
            (writer / "static" / "simple" / project / "index.html").write_bytes(data)
        (writer / "generation.json").unlink(missing_ok=True)  # the publisher under test starts its own sequence
        shutil.rmtree(model, ignore_errors=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    """End a process this section started (its own process group: the rsync it may be running too)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_for(check: Callable[[], bool], limit_s: float, poll_s: float, what: str) -> float:
    """Seconds until check() is true, polling every poll_s; RuntimeError after limit_s."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > limit_s:
            raise RuntimeError(f"{what} did not happen within {limit_s:g} s")
        time.sleep(poll_s)
    return time.monotonic() - start


def replica_commands(
    writer: Path, replica: Path, rsync: str, intervals: tuple[float, float, int]
) -> dict[str, list[str]]:
    """The publisher on the writer's directory and one replica's pull of it, as the role runs them."""
    publish_s, pull_s, keep = intervals
    program = [sys.executable, str(GENERATION)]
    areas = ["--area", "packages", "--area", "static"]
    pull = ["--loop", f"{pull_s:g}", "--keep", str(keep), "--rsync", rsync]
    return {
        "publish": [*program, "publish", str(writer), *areas, "--loop", f"{publish_s:g}"],
        "pull": [*program, "pull", str(writer), str(replica), *pull],
    }


@contextlib.contextmanager
def running(commands: dict[str, list[str]], logs: Path) -> Iterator[Callable[[], None]]:
    """The commands started (output in logs/<name>.log), each in a process group of its own, and stopped on exit;
    yields a check that raises RuntimeError when one of them has ended."""
    processes: dict[str, subprocess.Popen[bytes]] = {}

    def alive() -> None:
        for name, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"the {name} process ended ({process.returncode}): {tail(logs / f'{name}.log')}")

    try:
        for name, argv in commands.items():
            with (logs / f"{name}.log").open("wb") as log:
                processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        yield alive
    finally:
        for process in processes.values():
            stop(process)


def page_without_file(generation: Path, name: str, project: str) -> bool:
    """Whether a served tree's page of project lists packages/<name> while the tree lacks that file (a reader
    would follow the link to a 404)."""
    try:
        listed = (generation / "static" / "simple" / project / "index.html").read_text()
    except OSError:
        return False
    return f">{name}</a>" in listed and not (generation / "packages" / name).is_file()


def one_lag(
    writer: Path, replica: Path, projects: dict[str, list[tuple[str, str]]], upload: tuple[str, str, bytes]
) -> dict[str, Any]:
    """One upload (project, version, the file's bytes): seconds from its rename to the first poll that finds it
    served by the replica ("lag", None after REPLICATION_UPLOAD_LIMIT_S), to the first poll that finds the
    writer's generation.json listing it ("listed", None if none did), how many generations the replica applied
    in between ("switches", counted from applied.json, written after the renames: 1 when the first one after the
    upload held it, 0 when a poll found it in the tree before the record), and whether any poll found the
    served page listing it without the file there ("page_first": 0 or 1; every poll looks, as a reader would)."""
    project, version, data = upload
    name, renamed = upload_to_writer(writer, projects, project, version, data)
    found: dict[str, Any] = {"lag": None, "listed": None, "switches": 0, "page_first": 0}
    last, serving = None, replica_generation(replica)
    while True:
        now_s = time.monotonic()
        if found["listed"] is None:
            listed, last = writer_lists(writer, name, last)
            found["listed"] = now_s - renamed if listed else None
        generation = replica_generation(replica)
        if generation != serving and generation is not None:
            found["switches"] += 1
        serving = generation
        if not found["page_first"] and page_without_file(replica / "current", name, project):
            found["page_first"] = 1
        if replica_holds(replica, name, data, project):
            return found | {"lag": now_s - renamed}
        if now_s - renamed > REPLICATION_UPLOAD_LIMIT_S:
            return found
        time.sleep(REPLICATION_POLL_S)


def replication_bench(
    workdir: Path, files: int = REPLICATION_FILES, uploads: int = REPLICATION_UPLOADS
) -> dict[str, Any]:
    """Issue 15 part 2 on this machine: a writer's data directory of `files` package files and their pages, the
    program's publisher and one replica's pull as the role runs them (its default intervals), with the
    machine's rsync on a local path (no SSH hop, no containers); the initial copy, then `uploads` uploads at
    seeded random gaps, each from the rename of its file to the first poll that finds the file, with its bytes,
    and its page in the tree the replica's `current` names. The lag's parts are measured in-process
    first (replication_parts) and set against the lag."""
    rsync = shutil.which("rsync")
    if rsync is None:
        return {"skipped": "not measured: no rsync on this machine (scripts/ensure_deb_tool.sh rsync rsync)"}
    intervals = replica_intervals()
    gen = load_generation()
    writer, replica, logs = workdir / "writer", workdir / "replica", workdir / "replication-logs"
    logs.mkdir(parents=True, exist_ok=True)
    say(f"  a writer's tree of {files:,} files and their pages")
    projects = replication_tree(writer, files, REPLICATION_FILE_BYTES)
    tree_files = files + len(projects) + 1  # the package files, the project pages, /simple/
    say("  the lag's parts, in-process: scans, a pull after one upload")
    parts = replication_parts(gen, writer, workdir / "replica-model", projects, rsync)
    out: dict[str, Any] = {
        "files": files,
        "projects": len(projects),
        "tree_files": tree_files,
        "file_bytes": REPLICATION_FILE_BYTES,
        "upload_bytes": REPLICATION_UPLOAD_BYTES,
        "publish_interval_s": intervals[0],
        "pull_interval_s": intervals[1],
        "keep": intervals[2],
        "rsync": tool_version([rsync, "--version"], r"version (\S+)"),
        "transport": "local path (no SSH hop, no containers)",
        "parts": parts,
    }
    rows = []
    say(f"  the publisher (--loop {intervals[0]:g}) and a replica's pull (--loop {intervals[1]:g}): the initial copy")
    started = time.monotonic()
    with running(replica_commands(writer, replica, rsync, intervals), logs) as alive:

        def served_all() -> bool:
            alive()
            manifest = gen.served(str(replica))
            return manifest is not None and len(manifest["files"]) >= tree_files

        published = wait_for((writer / "generation.json").is_file, REPLICATION_INITIAL_S, 0.05, "a first generation")
        wait_for(served_all, REPLICATION_INITIAL_S, 0.1, "the replica's initial copy")
        out.update(initial_publish_s=round(published, 2), initial_copy_s=round(time.monotonic() - started, 2))
        time.sleep(2 * intervals[1])  # the loops settle
        log_start = (logs / "pull.log").stat().st_size
        gaps = upload_gaps(uploads, *REPLICATION_GAP_S)
        rng = random.Random(REPLICATION_SEED + 1)
        say(f"  {uploads} uploads, {REPLICATION_GAP_S[0]:g} to {REPLICATION_GAP_S[1]:g} s apart")
        for number, gap in enumerate(gaps):
            time.sleep(gap)
            project = sorted(projects)[rng.randrange(len(projects))]
            upload = (project, f"2.0.{number}", rng.randbytes(REPLICATION_UPLOAD_BYTES))
            rows.append(one_lag(writer, replica, projects, upload))
        alive()
    lags = [row["lag"] for row in rows if row["lag"] is not None]
    listed = [row["listed"] for row in rows if row["listed"] is not None]
    pull_errors = (logs / "pull.log").read_bytes()[log_start:].decode(errors="replace").count("pull failed")
    if not lags:
        raise RuntimeError(f"no upload reached the replica within {REPLICATION_UPLOAD_LIMIT_S:g} s")
    one = parts["one_upload"]
    pull_parts = {
        "manifest fetch": one["manifest_fetch_s"],
        "copy": one["copy_s"],
        "check": one["check_s"],
        "apply": one["apply_s"],
        "rest": max(0.0, one["other_s"]),
    }
    out.update(
        uploads=uploads,
        gaps_s=gaps,
        lag_s=[round(value, 3) for value in lags],
        writer_listed_s=[round(value, 3) for value in listed],
        writer_listed_median_s=round(statistics.median(listed), 3) if listed else None,
        switches=[row["switches"] for row in rows],
        pages_before_their_file=sum(row["page_first"] for row in rows),
        timeouts=len(rows) - len(lags),
        pull_errors=pull_errors,
        load_1min=load_1min(),
        **lag_summary(lags, GOAL_REPLICATION_P50_S, GOAL_REPLICATION_MAX_S),
        model=lag_model(intervals[0], intervals[1], one["scan_with_one_new_file_s"], pull_parts),
    )
    shutil.rmtree(writer, ignore_errors=True)
    shutil.rmtree(replica, ignore_errors=True)
    return out


def tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:].strip()
    except OSError:
        return ""


def replication_goals(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 15 part 2's goals from the replication section: the lag from an upload on the writer to a replica
    serving it, p50 and max."""
    files = section.get("files", REPLICATION_FILES)
    note = section.get("skipped", "")
    p50, top = section.get("p50_s"), section.get("max_s")
    where = "one replica on a local rsync path, the role's intervals"
    return [
        goal(
            f"replication lag at {files:,} files, p50 (upload renamed on the writer -> the replica serves it; {where})",
            p50,
            f"<= {GOAL_REPLICATION_P50_S:g} s",
            None if p50 is None else p50 <= GOAL_REPLICATION_P50_S,
            note,
        ),
        goal(
            f"replication lag at {files:,} files, max",
            top,
            f"<= {GOAL_REPLICATION_MAX_S:g} s",
            None if top is None else top <= GOAL_REPLICATION_MAX_S,
            note,
        ),
    ]


def replication_markdown(section: dict[str, Any]) -> list[str]:
    """The replication section of results.md: the lag, the initial copy, the model against the lag's parts."""
    if "skipped" in section:
        return ["## Replication lag (issue 15 part 2)\n", f"{section['skipped']}\n"]
    parts, model = section.get("parts", {}), section.get("model", {})
    one = parts.get("one_upload", {})
    terms = model.get("terms_s", {})
    return [
        "## Replication lag (issue 15 part 2)\n",
        f"Measured {section.get('measured_at')} on this machine, rsync {section.get('rsync')} from a local path: "
        "no SSH hop, no containers. A writer's data directory of "
        f"{fmt(section.get('files'))} package files ({fmt(section.get('file_bytes'))} bytes each) over "
        f"{fmt(section.get('projects'))} projects, a page each; `airgap_pypi_generation.py publish --loop "
        f"{fmt(section.get('publish_interval_s'))}` on it and one `pull --loop {fmt(section.get('pull_interval_s'))} "
        f"--keep {section.get('keep')}` into a replica directory (the role's defaults). {section.get('uploads')} "
        f"uploads ({fmt(section.get('upload_bytes'))} bytes each) at seeded gaps of "
        f"{REPLICATION_GAP_S[0]:g} to {REPLICATION_GAP_S[1]:g} s: each file written under a hidden name, renamed, "
        "its project's page rewritten the same way; the lag is from the rename to the first poll (every "
        f"{REPLICATION_POLL_S * 1000:g} ms) that finds the file with its bytes and its page listing it in the "
        "tree the replica's `current` names (updated in place). The parts were measured in-process first, with the "
        "program's own functions and nothing else running (medians of 3 pulls after one upload each). Over SSH "
        "each rsync run (two per pull that changes, one per pull that does not) is one more session on the kept "
        "ControlMaster connection: no handshake, a round trip and the writer's rsync daemon starting.\n",
        table(
            ["Measure", "Value"],
            [
                ["lag p50, s", section.get("p50_s")],
                ["lag p95, s", section.get("p95_s")],
                ["lag max, s", section.get("max_s")],
                ["lag, each s", ", ".join(map(str, section.get("lag_s", [])))],
                ["the writer's generation.json lists it, median s", section.get("writer_listed_median_s")],
                [
                    "generations the replica recorded as applied until it served the upload, each (0: found in"
                    " the tree between the apply's renames and its record)",
                    ", ".join(map(str, section.get("switches", []))),
                ],
                [
                    "uploads whose served page a poll found listing them without their file",
                    section.get("pages_before_their_file"),
                ],
                ["uploads not seen within the limit", section.get("timeouts")],
                ["pull failures during the uploads", section.get("pull_errors")],
                ["the machine's 1-minute load after the uploads", section.get("load_1min")],
                ["model: expected lag, s", model.get("expected_s")],
                ["model: worst case, s", model.get("worst_s")],
                ["model: the term that weighs most", model.get("dominant")],
                *([f"model term: {name}, s", value] for name, value in terms.items()),
                ["initial: first generation published, s", section.get("initial_publish_s")],
                ["initial: the replica serves all files, s", section.get("initial_copy_s")],
                ["publisher's first scan (every file hashed), s", parts.get("cold_scan_s")],
                ["publisher's scan of the unchanged tree, s", parts.get("scan_s")],
                [
                    "publisher's scan with one new file (and the manifest written), s",
                    one.get("scan_with_one_new_file_s"),
                ],
                ["generation.json bytes", parts.get("manifest_bytes")],
                ["a pull that finds the manifest unchanged (each interval), s", parts.get("unchanged_pull_s")],
                ["a pull after one upload, s", one.get("pull_s")],
                ["  its manifest fetch, s", one.get("manifest_fetch_s")],
                ["  its copy (rsync --files-from the new and changed paths), s", one.get("copy_s")],
                ["  its check of them against the manifest, s", one.get("check_s")],
                ["  its apply (renames into the tree, removals, the record), s", one.get("apply_s")],
                ["  the rest (the record read, the diff), s", one.get("other_s")],
            ],
        ),
    ]


def merge(old: dict[str, Any], new_sections: dict[str, Any]) -> dict[str, Any]:
    """Results with new_sections replacing old ones of the same name (old results of another format dropped)."""
    sections = dict(old.get("sections", {})) if old.get("format") == 2 else {}
    sections.update(new_sections)
    return {"format": 2, "sections": {name: sections[name] for name in SECTIONS if name in sections}}


def tool_version(cmd: Sequence[str], pattern: str) -> str:
    try:
        done = run(cmd)
    except FileNotFoundError:
        return "missing"
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else "?"


# --------------------------------------------------------------------------- balancer (issue 15 part 3)

BALANCER = f"{PREFIX}-haproxy"
REPLICA = f"{PREFIX}-replica"
BALANCER_DEFAULTS = ROOT / "roles" / "pypi_balancer" / "defaults" / "main.yml"
BALANCER_VARS = ROOT / "roles" / "pypi_balancer" / "vars" / "main.yml"
BALANCER_TEMPLATE = ROOT / "roles" / "pypi_balancer" / "templates" / "haproxy.cfg.j2"
FRONT_DEFAULTS = ROOT / "roles" / "pypi_front" / "defaults" / "main.yml"
FRONT_TEMPLATE = ROOT / "roles" / "pypi_front" / "templates" / "airgap-pypi.conf.j2"
GOAL_BALANCER_RATIO = 0.8
BALANCER_FILES = 1000
BALANCER_PORT = 8080
BALANCER_STATS_PORT = 8404  # pypi_balancer_stats_port's default
# A second HAProxy beside the role's, on other ports, differing only in having no cache of package files
# (pypi_balancer_cache_mb: 0): what a read that reaches the replica costs the balancer.
BALANCER_NO_CACHE_PORT = 8081
BALANCER_NO_CACHE_STATS_PORT = 8405
BALANCER_ROUNDS = 2  # wrk runs per target and path, alternating direct and through, so drift hits both alike
BALANCER_PATHS = ("/simple/<project>/", "file")
REPLICA_HEALTH = "health"  # the tree's directory whose ok.json answers /health, as the replica's pull keeps it
REPLICA_WORKERS = 2  # Debian's worker_processes auto on this machine; fixed, so that the ratio compares the same


def role_template(path: Path, variables: dict[str, Any]) -> str:
    """A role's template rendered as Ansible renders it (trim_blocks), with plain jinja2 and the two Ansible
    filters the front server's and the balancer's templates use; an undefined variable (a template that grew one
    the bench does not give) is a ValueError, which fails the section and not the whole run."""
    import jinja2  # noqa: PLC0415 - Jinja2 comes with ansible-core in the toolchain

    env = jinja2.Environment(
        trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined, autoescape=False
    )
    env.filters["regex_replace"] = lambda value, pattern, replacement="": re.sub(pattern, replacement, str(value))
    env.filters["bool"] = lambda value: value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    try:
        return env.from_string(path.read_text()).render(**variables)
    except jinja2.TemplateError as exc:
        raise ValueError(f"{path.name} does not render with the bench's variables: {exc}") from exc


def balancer_vars(
    replicas: Sequence[tuple[str, str, int]],
    writer: tuple[str, str, int],
    port: int = BALANCER_PORT,
    defaults: Path = BALANCER_DEFAULTS,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The balancer template's variables: the role's defaults (templated ones rendered with these values) with
    overrides over them, the replicas (name, address, port) as __pypi_balancer_replicas, the writer a backup (reads
    go to the replicas)."""
    import jinja2  # noqa: PLC0415 - Jinja2 comes with ansible-core in the toolchain
    import yaml  # noqa: PLC0415 - PyYAML comes with ansible-core in the toolchain

    name, address, writer_port = writer
    values: dict[str, Any] = {
        **yaml.safe_load(defaults.read_text()),
        "pypi_balancer_writer": name,
        "pypi_balancer_writer_address": address,
        "pypi_balancer_port": port,
        "pypi_balancer_read_from_writer": False,
        **(overrides or {}),
    }
    for key, value in list(values.items()):
        if isinstance(value, str) and "{{" in value:
            values[key] = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(value).render(**values)
    role_vars = yaml.safe_load(BALANCER_VARS.read_text())
    return {
        **values,
        "ansible_managed": "Written by scripts/bench.py (balancer section) from the role's template",
        "inventory_hostname": BALANCER,
        "__pypi_balancer_writer_port": writer_port,
        # Plain HTTP: the bench measures the balancer's own cost, not TLS's.
        "__pypi_balancer_tls": False,
        # The cache as the role sets it for a writer that does not overwrite files; the reads it keeps, the role's.
        "__pypi_balancer_cache": int(values["pypi_balancer_cache_mb"]) > 0,
        "__pypi_balancer_cache_path": role_vars["__pypi_balancer_cache_path"],
        "__pypi_balancer_marker": role_vars["__pypi_balancer_marker"],
        "__pypi_balancer_replicas": [
            {"inventory_hostname": n, "pypi_replica_serves": {"address": a, "port": p}} for n, a, p in replicas
        ],
    }


def replica_site(root: str, port: int, health_dir: str, template: Path = FRONT_TEMPLATE) -> str:
    """The read replica's nginx site: the front server's template read-only (no gunicorn), root the static tree
    with packages/ in it, /health answered by health_dir/ok.json."""
    import yaml  # noqa: PLC0415 - PyYAML comes with ansible-core in the toolchain

    defaults = yaml.safe_load(FRONT_DEFAULTS.read_text())
    return role_template(
        template,
        {
            "ansible_managed": "Written by scripts/bench.py (balancer section) from the front server's template",
            "ansible_facts": {},  # no IPv6 listen: the bench network has none
            "pypi_front_static_dir": root,
            "pypi_front_packages_dir": f"{root}/packages",
            "pypi_front_port": port,
            "pypi_front_max_upload_size": "100m",
            "pypi_front_read_only": True,
            "pypi_front_read_only_message": defaults["pypi_front_read_only_message"],
            "pypi_front_read_only_health_dir": health_dir,
            "__pypi_front_tls": False,
        },
    )


def replica_nginx_conf(prefix: str, site: str, workers: int) -> str:
    """nginx.conf for the replica: Debian's http defaults (sendfile, tcp_nopush, its MIME types) around the site
    as the role writes it, everything else under prefix."""
    return f"""{nginx_head(prefix, workers, 768)}
    sendfile on;
    tcp_nopush on;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
{site}}}
"""


def no_cache_vars(ip: str) -> dict[str, Any]:
    """The balancer template's variables for the HAProxy beside the role's: the same with no cache, on other ports."""
    return balancer_vars(
        [(REPLICA, ip, YARDSTICK_PORT)],
        ("bench-writer", ip, YARDSTICK_PORT),
        port=BALANCER_NO_CACHE_PORT,
        overrides={"pypi_balancer_cache_mb": 0, "pypi_balancer_stats_port": BALANCER_NO_CACHE_STATS_PORT},
    )


def haproxy_commands(configs: dict[str, str]) -> str:
    """The shell script that installs HAProxy (Debian's, from the stand-in OS mirror) and writes each
    configuration ({path: text}), checked as the role's validate does; it prints HAProxy's version. HAProxy itself
    is started apart, in the foreground."""
    writes = "".join(
        f"cat >{path} <<'AIRGAP_PYPI_BENCH_EOF'\n{cfg}AIRGAP_PYPI_BENCH_EOF\nhaproxy -c -q -f {path}\n"
        for path, cfg in configs.items()
    )
    return f"""set -e
printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
DEBIAN_FRONTEND=noninteractive apt-get install -q -y --no-install-recommends haproxy >/dev/null
{writes}haproxy -v | head -n 1
"""


def cpu_seconds(container: str) -> float:
    """CPU time the container's processes used so far (its cgroup: v1 cpuacct.usage, else v2 cpu.stat)."""
    # cpuacct.usage counts nanoseconds, cpu.stat's usage_usec microseconds.
    script = (
        "if [ -r /sys/fs/cgroup/cpuacct/cpuacct.usage ]; then echo ns $(cat /sys/fs/cgroup/cpuacct/cpuacct.usage);"
        " else echo us $(sed -n 's/^usage_usec //p' /sys/fs/cgroup/cpu.stat); fi"
    )
    out = run(["docker", "exec", container, "sh", "-c", script], check=True).stdout.split()
    if len(out) != 2 or not out[1].isdigit():
        raise RuntimeError(f"no CPU accounting readable in {container}: {out}")
    return int(out[1]) / (1e9 if out[0] == "ns" else 1e6)


def children_cpu_seconds() -> float:
    """CPU time (user and system) of this process's children that ended so far: wrk's, around one wrk run."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def haproxy_stats(container: str, port: int) -> dict[str, dict[str, int]]:
    """Per server of the reads backend: HAProxy's count of sessions and of 2xx answers, from its stats CSV."""
    fetch = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/stats;csv').read().decode())"
    text = run(["docker", "exec", container, "python3", "-c", fetch], check=True).stdout
    return parse_haproxy_csv(text, "airgap_pypi_reads")


def parse_haproxy_csv(text: str, backend: str) -> dict[str, dict[str, int]]:
    """{server: {sessions, http_2xx, status}} of one backend's servers in HAProxy's stats CSV."""
    lines = text.lstrip("# ").splitlines()
    if not lines:
        return {}
    header = lines[0].split(",")
    out: dict[str, dict[str, Any]] = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND"):
            out[row["svname"]] = {
                "sessions": int(row.get("stot") or 0),
                "http_2xx": int(row.get("hrsp_2xx") or 0),
                "status": row.get("status", ""),
            }
    return out


def balancer_summary(rows: Sequence[dict[str, Any]], goal_ratio: float = GOAL_BALANCER_RATIO) -> dict[str, Any]:
    """Per path: the direct and the through-HAProxy req/s (means over the rounds), their ratio against the goal,
    the worst p99 of each; and the CPU per request: HAProxy's (through runs), the replica's direct and through."""
    paths: dict[str, Any] = {}
    for path in dict.fromkeys(r["path"] for r in rows):
        mine = [r for r in rows if r["path"] == path]
        direct = [r for r in mine if r["target"] == "direct"]
        through = [r for r in mine if r["target"] == "haproxy"]
        if not direct or not through:
            continue
        no_cache = [r for r in mine if r["target"] == "haproxy_no_cache"]
        d_rps = statistics.fmean(r["rps"] for r in direct)
        t_rps = statistics.fmean(r["rps"] for r in through)
        n_rps = statistics.fmean(r["rps"] for r in no_cache) if no_cache else None
        ratio = round(t_rps / d_rps, 3) if d_rps else None
        p99s = {
            name: [r["p99_ms"] for r in group if r["p99_ms"] is not None]
            for name, group in (("d", direct), ("t", through))
        }
        paths[path] = {
            "direct_rps": round(d_rps, 1),
            "through_rps": round(t_rps, 1),
            "through_over_direct": ratio,
            "met": None if ratio is None else ratio >= goal_ratio,
            "direct_p99_ms": max(p99s["d"], default=None),
            "through_p99_ms": max(p99s["t"], default=None),
            "no_cache_rps": None if n_rps is None else round(n_rps, 1),
            "no_cache_over_direct": round(n_rps / d_rps, 3) if n_rps and d_rps else None,
        }

    def per_request_us(target: str, container: str, path: str | None = None) -> float | None:
        chosen = [r for r in rows if r["target"] == target and path in (None, r["path"])]
        requests = sum(r["requests"] for r in chosen)
        if not requests or any(container not in r["cpu_s"] for r in chosen):
            return None
        return round(sum(r["cpu_s"][container] for r in chosen) / requests * 1e6, 1)

    for path, values in paths.items():
        # On one machine whose cores all of them saturate, req/s go as 1 / (CPU per request of everything on the
        # path): through / direct = (nginx + wrk, direct) / (nginx + HAProxy + wrk, through).
        direct_us = [per_request_us("direct", c, path) for c in ("replica", "wrk")]
        through_us = [per_request_us("haproxy", c, path) for c in ("replica", "balancer", "wrk")]
        direct_sum = sum(v for v in direct_us if v is not None)
        through_sum = sum(v for v in through_us if v is not None)
        known = None not in direct_us and None not in through_us and through_sum > 0
        values["cpu_model_through_over_direct"] = round(direct_sum / through_sum, 3) if known else None

    cpu = {
        "haproxy_us_per_request": per_request_us("haproxy", "balancer"),
        "haproxy_no_cache_us_per_request": per_request_us("haproxy_no_cache", "balancer"),
        "replica_us_per_request_direct": per_request_us("direct", "replica"),
        "replica_us_per_request_through": per_request_us("haproxy", "replica"),
        "replica_us_per_request_no_cache": per_request_us("haproxy_no_cache", "replica"),
        "wrk_us_per_request_direct": per_request_us("direct", "wrk"),
        "wrk_us_per_request_through": per_request_us("haproxy", "wrk"),
    }
    return {"paths": paths, "cpu": cpu, "prediction": balancer_prediction(cpu, os.cpu_count() or 1)}


def balancer_goals(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 15's balancer goal: reads through HAProxy to one replica over the same replica read directly."""
    out = []
    for path in BALANCER_PATHS:
        row = section.get("paths", {}).get(path, {})
        value = row.get("through_over_direct")
        out.append(
            goal(
                f"reads through HAProxy (the role's configuration, its cache of package files on) to one replica /"
                f" the replica directly, {path} (`--only balancer`, 2 cores shared by wrk, HAProxy and nginx)",
                value,
                f">= {GOAL_BALANCER_RATIO:g}x",
                None if value is None else value >= GOAL_BALANCER_RATIO,
                "" if section else "not measured",
            )
        )
    return out


def balancer_markdown(section: dict[str, Any]) -> list[str]:
    """The balancer section of results.md: per path the direct and through req/s and p99, CPU per request, and
    what the numbers predict per added replica."""
    load = section.get("load", {})
    cpu, pred = section.get("cpu", {}), section.get("prediction", {})
    rows = [
        [
            path,
            v.get("direct_rps"),
            v.get("through_rps"),
            v.get("through_over_direct"),
            v.get("no_cache_rps"),
            v.get("no_cache_over_direct"),
            v.get("cpu_model_through_over_direct"),
            v.get("direct_p99_ms"),
            v.get("through_p99_ms"),
        ]
        for path, v in section.get("paths", {}).items()
    ]
    return [
        "## Balancer (issue 15 part 3)\n",
        f"Measured {section.get('measured_at')}: one replica, nginx {section.get('nginx')} with the front "
        f"server's site read-only ({section.get('replica_site')}) on a synthetic tree of "
        f"{fmt(section.get('tree', {}).get('files'))} files, read with wrk -t{load.get('threads')} "
        f"-c{load.get('connections')} -d{load.get('seconds')}s from the machine directly and through HAProxy "
        f"{section.get('haproxy')} ({section.get('balancer_config')}), {section.get('rounds')} runs each, "
        "alternating; req/s are their means, p99 their worst. Without cache: "
        f"{section.get('no_cache_variant')}. All containers and wrk share this machine's cores (1-minute load "
        f"{fmt(section.get('load_1min'))} at the end).\n",
        table(
            [
                "Path",
                "Direct req/s",
                "Through req/s",
                "Through / direct",
                "Without cache req/s",
                "/ direct",
                "CPU model: through / direct",
                "Direct p99 ms",
                "Through p99 ms",
            ],
            rows,
        ),
        table(
            ["CPU per request (container cgroup over requests served)", "us"],
            [
                ["HAProxy, the role's configuration", cpu.get("haproxy_us_per_request")],
                ["HAProxy, without its cache", cpu.get("haproxy_no_cache_us_per_request")],
                ["the replica's nginx, read directly", cpu.get("replica_us_per_request_direct")],
                ["the replica's nginx, read through HAProxy", cpu.get("replica_us_per_request_through")],
                [
                    "the replica's nginx, read through HAProxy without its cache",
                    cpu.get("replica_us_per_request_no_cache"),
                ],
                ["wrk (on the machine), direct", cpu.get("wrk_us_per_request_direct")],
                ["wrk (on the machine), through HAProxy", cpu.get("wrk_us_per_request_through")],
            ],
        ),
        table(
            [
                f"Prediction from these numbers for reads the cache does not answer (pages, files not yet kept),"
                f" hosts of {pred.get('cores_per_host')} cores",
                "Value",
            ],
            [
                ["one replica on its own host, req/s (cores / its CPU per request)", pred.get("replica_capacity_rps")],
                ["the balancer on its own host, req/s (cores / HAProxy's)", pred.get("balancer_capacity_rps")],
                ["replicas whose sum reaches the balancer's", pred.get("replicas_until_balancer_bound")],
                [
                    "HAProxy and any number of replicas on one machine of those cores, clients elsewhere, req/s",
                    pred.get("one_machine_capacity_rps"),
                ],
                [
                    "separate hosts: one replica through the balancer / the replica directly (ratio)",
                    pred.get("separate_hosts_one_replica_over_direct"),
                ],
                ["balancer cores each added replica host needs (cores)", pred.get("balancer_cores_per_replica_host")],
            ],
        ),
    ]


def balancer_prediction(cpu: dict[str, float | None], cores: int) -> dict[str, Any]:
    """What the design predicts per added replica, from the measured CPU per request: on hosts of `cores` cores
    each, a replica serves about cores / its CPU per request, the balancer about cores / HAProxy's; replicas add
    their throughput until their sum reaches the balancer's. On one machine all of them share the same cores.
    Also: one replica through a balancer on a host like its own over the replica read directly (the goal's ratio
    on separate hosts), and the balancer's cores each added replica host needs. For reads that reach a replica:
    the CPU of the HAProxy without a cache where measured (the role's own answers kept files without one)."""
    haproxy = cpu.get("haproxy_no_cache_us_per_request") or cpu.get("haproxy_us_per_request")
    replica = cpu.get("replica_us_per_request_no_cache") or cpu.get("replica_us_per_request_through")
    direct = cpu.get("replica_us_per_request_direct") or replica
    if not haproxy or not replica or not direct:
        return {}
    balancer_cap = cores / (haproxy * 1e-6)
    replica_cap = cores / (replica * 1e-6)
    return {
        "cores_per_host": cores,
        "replica_capacity_rps": round(replica_cap),
        "balancer_capacity_rps": round(balancer_cap),
        "replicas_until_balancer_bound": round(balancer_cap / replica_cap, 1),
        "one_machine_capacity_rps": round(cores / ((haproxy + replica) * 1e-6)),
        "separate_hosts_one_replica_over_direct": round(min(balancer_cap, replica_cap) / (cores / (direct * 1e-6)), 2),
        "balancer_cores_per_replica_host": round(cores * haproxy / replica, 1),
    }


@contextlib.contextmanager
def haproxy(configs: Sequence[tuple[str, int]]) -> Iterator[tuple[list[str], str]]:
    """One HAProxy per (configuration, port) in the container BALANCER on the bench network, each in the
    foreground (-db) as systemd runs it; yields their base URLs and HAProxy's version; removes the container at the
    end, also on failure."""
    remove_containers([BALANCER])
    try:
        run(["docker", "run", "-d", "--name", BALANCER, "--hostname", BALANCER, "--network", NETWORK,
             "--entrypoint", "sleep", IMAGE, "infinity"], check=True)  # fmt: skip
        run([str(OS_MIRROR), "build"], check=True)
        run([str(OS_MIRROR), "attach", BALANCER], check=True)
        paths = [f"/run/bench-haproxy-{i}.cfg" for i in range(len(configs))]
        done = run(
            [
                "docker",
                "exec",
                BALANCER,
                "sh",
                "-c",
                haproxy_commands(dict(zip(paths, (c for c, _ in configs), strict=True))),
            ]
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"HAProxy did not install or refused its configuration: {(done.stdout + done.stderr)[-800:]}"
            )
        version = re.search(r"version (\S+)", done.stdout)
        # Its log (the role's: every request, to stdout) goes to a file, as systemd's journal takes it.
        ip, urls = container_ip(BALANCER), []
        for path, (_, port) in zip(paths, configs, strict=True):
            start = f"exec haproxy -db -f {path} >{path}.log 2>&1"
            run(["docker", "exec", "-d", BALANCER, "sh", "-c", start], check=True)
            url = f"http://{ip}:{port}"
            if not containers.wait_for(lambda url=url: http_get(url + "/simple/")[0] == 200, 20, step=0.2):
                log = run(["docker", "exec", BALANCER, "tail", "-c", "800", f"{path}.log"]).stdout
                raise RuntimeError(f"HAProxy did not serve {url}/simple/ within 20 s: {log}")
            urls.append(url)
        yield urls, version.group(1) if version else "?"
    finally:
        remove_containers([BALANCER])


def balancer_bench(
    workdir: Path, load: Load, files: int = BALANCER_FILES, rounds: int = BALANCER_ROUNDS
) -> dict[str, Any]:
    """One replica (nginx with the front server's read-only site on a synthetic tree) read directly and through
    HAProxy (the balancer role's configuration) with the same wrk load, alternating, in one run."""
    tree = workdir / "balancer-tree"
    shutil.rmtree(tree, ignore_errors=True)
    counts = build_yardstick_tree(build_synthetic(workdir / "synthetic", files), tree)
    (tree / REPLICA_HEALTH).mkdir()
    (tree / REPLICA_HEALTH / "ok.json").write_text('{"ok": true}\n')
    site = replica_site(YARDSTICK_ROOT, YARDSTICK_PORT, f"{YARDSTICK_ROOT}/{REPLICA_HEALTH}")
    conf = replica_nginx_conf(YARDSTICK_PREFIX, site, REPLICA_WORKERS)
    rows: list[dict[str, Any]] = []
    with nginx(tree, REPLICA_WORKERS, conf=conf, name=REPLICA) as (direct, nginx_version):
        ip = direct.split("//", 1)[1].split(":")[0]
        health = http_get(direct + "/health")[0]
        if health != 200:
            raise RuntimeError(f"the replica's /health answers {health}, not 200")
        cfg = role_template(
            BALANCER_TEMPLATE, balancer_vars([(REPLICA, ip, YARDSTICK_PORT)], ("bench-writer", ip, YARDSTICK_PORT))
        )
        no_cache = role_template(BALANCER_TEMPLATE, no_cache_vars(ip))
        with haproxy([(cfg, BALANCER_PORT), (no_cache, BALANCER_NO_CACHE_PORT)]) as (bases, haproxy_version):
            urls = {"direct": check_server(direct, TARGET_PROJECT, VERSIONS)}
            urls["haproxy"] = check_server(bases[0], TARGET_PROJECT, VERSIONS)
            urls["haproxy_no_cache"] = check_server(bases[1], TARGET_PROJECT, VERSIONS)
            for path in BALANCER_PATHS:
                if len({http_get(u[path])[1] for u in urls.values()}) != 1:
                    raise RuntimeError(f"{path}: HAProxy's answer differs from the replica's")
            before = haproxy_stats(BALANCER, BALANCER_STATS_PORT)
            for path in BALANCER_PATHS:
                for round_ in range(rounds):
                    for target, url in ((t, u[path]) for t, u in urls.items()):
                        start = {"replica": cpu_seconds(REPLICA), "balancer": cpu_seconds(BALANCER)}
                        wrk_start = children_cpu_seconds()
                        result = wrk(url, load)
                        wrk_used = round(children_cpu_seconds() - wrk_start, 3)
                        used = {
                            k: round(cpu_seconds(c) - start[k], 3)
                            for k, c in (("replica", REPLICA), ("balancer", BALANCER))
                        }
                        say(
                            f"  {target:8} {path:20} {result.rps:>10.1f} req/s  p99 {result.p99_ms} ms"
                            f"  cpu replica {used['replica']} s, haproxy {used['balancer']} s"
                        )
                        rows.append(
                            {
                                "path": path,
                                "target": target,
                                "round": round_,
                                **asdict(result),
                                "cpu_s": {**used, "wrk": wrk_used},
                                "load_1min": load_1min(),
                            }
                        )
            after = haproxy_stats(BALANCER, BALANCER_STATS_PORT)
    served = {
        name: {k: v - before.get(name, {}).get(k, 0) if isinstance(v, int) else v for k, v in s.items()}
        for name, s in after.items()
    }
    return {
        "load": asdict(load),
        "rounds": rounds,
        "tree": counts,
        "nginx": nginx_version,
        "haproxy": haproxy_version,
        "replica_site": "roles/pypi_front/templates/airgap-pypi.conf.j2, pypi_front_read_only true",
        "balancer_config": "roles/pypi_balancer/templates/haproxy.cfg.j2, one replica, the writer a backup",
        "no_cache_variant": "the same configuration with pypi_balancer_cache_mb 0 (every read reaches the replica)",
        "reads_backend_during_runs": served,
        "rows": rows,
        **balancer_summary(rows),
        "load_1min": load_1min(),
    }


# --------------------------------------------------------------------------- main


def parse_only(values: Sequence[str] | None) -> list[str]:
    """--only a,b --only c -> the named sections in SECTIONS' order; all when none is named."""
    if not values:
        return list(SECTIONS)
    named = {part.strip() for value in values for part in value.split(",") if part.strip()}
    unknown = sorted(named - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in named]


def parse_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    for count in counts:
        synthetic_names(count)  # raises on a bad count
    return counts


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only", action="append", metavar="SECTIONS", help=f"comma-separated subset of: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--skip-bundle", action="store_true", help="leave out the bundle section (needs PyPI)")
    parser.add_argument(
        "--files",
        type=parse_counts,
        default=[1000, 10_000],
        metavar="N,N",
        help="file counts for reads (default: 1000,10000)",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default: %(default)s)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default: %(default)s)")
    parser.add_argument(
        "--runs", type=int, default=3, help="pip installs per source and uploads per poll (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench", help="where results.json and results.md go")
    parser.add_argument(
        "--lock", action="store_true", help="re-lock bench/pip-set.in into bench/pip-set.txt (needs PyPI) and exit"
    )
    return parser


def attempt(name: str, step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one section; a failure becomes its result ({"error": ...}) so that the other sections still run."""
    try:
        return step()
    except (RuntimeError, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        say(f"{name} failed: {str(exc)[-1500:]}")
        return {"error": str(exc)[-3000:]}


def index_session(
    chosen: Sequence[str], args: argparse.Namespace, workdir: Path, record: Callable[[str, dict[str, Any]], None]
) -> None:
    """Provision the index container and run the sections that need it (provision, reads, pip, upload)."""
    wanted = [s for s in ("provision", "reads", "pip", "upload") if s in chosen]
    site = Site(workdir / "hosts.json")
    index = Index(site, workdir / "mirror", [], workdir / "synthetic")
    default = Deployment("default", {}, PORT, "")
    first_files = args.files[0] if "reads" in chosen else 1000

    def setup() -> dict[str, Any]:
        if "pip" in chosen:
            index.extra_files = fetch_pip_set(cache_dir() / f"pip-set-{CLIENT_PYTHON.tag}")
        if "pip" in chosen or "upload" in chosen:
            start_client()
        say("provisioning one bare container with site.yml" + (", then re-running it" if "provision" in chosen else ""))
        provision = first_provision(site, [INDEX], rerun="provision" in chosen)
        index.ensure(default, first_files)
        if "provision" in chosen:
            load_s = index.loads[f"site_yml_loading_mirror_to_{first_files}_files_s"]
            again_s, again = site.play_or_fail({"pypi_server_mirror_dir": str(index.mirror)})
            provision.update(
                {
                    f"mirror_load_{first_files}_files_s": load_s,
                    f"mirror_load_{first_files}_files_minus_rerun_s": round(load_s - provision["rerun_s"], 1),
                    f"rerun_with_{first_files}_mirror_files_s": round(again_s, 1),
                    f"rerun_with_{first_files}_mirror_files_changed": changed_count(again.stdout),
                    "mirror_extra_files": len(index.extra_files),
                }
            )
        return provision

    def pip() -> dict[str, Any]:
        index.ensure(default, index.state[1] if index.state else first_files)
        say("pip install of the set from the index and from a local directory")
        return pip_bench(container_ip(INDEX), index.extra_files, args.runs)

    def upload() -> dict[str, Any]:
        index.ensure(default, index.state[1] if index.state else first_files)
        say("twine upload, then poll until pip sees the file")
        return upload_bench(container_ip(INDEX), site.password, args.runs)

    def read() -> dict[str, Any]:
        say(f"reads at {', '.join(map(str, args.files))} files")
        return reads(index, args.files, Load(args.threads, args.connections, args.duration), workdir)

    try:
        provision = attempt("provisioning the index", setup)
        if "error" in provision:
            for name in wanted:
                record(name, provision)
            return
        if "provision" in chosen:
            record("provision", provision)
        for name, step in (("reads", read), ("pip", pip), ("upload", upload)):
            if name in chosen:
                record(name, attempt(name, step))
    finally:
        remove_containers([INDEX, CLIENT, YARDSTICK])


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.lock:
        lock_pip_set()
        print(f"wrote {PIP_SET_LOCK.relative_to(ROOT)}")
        return 0
    try:
        chosen = parse_only(args.only)
    except ValueError as exc:
        parser.error(str(exc))
    if args.skip_bundle and "bundle" in chosen:
        chosen.remove("bundle")
    started = time.monotonic()

    def record(name: str, values: dict[str, Any]) -> None:
        """Keep a section's results at once: an interrupted run still leaves the sections it finished."""
        write_results(args.out, {name: {"measured_at": now(), **values}}, chosen, started)

    with tempfile.TemporaryDirectory(prefix="airgap-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # the yardstick's nginx workers (www-data) read its tree in here
        with bench_network() if DOCKER_SECTIONS & set(chosen) else contextlib.nullcontext():
            if {"provision", "reads", "pip", "upload"} & set(chosen):
                index_session(chosen, args, workdir, record)
            if "auth" in chosen:
                say("reads with and without a password on loopback")
                record("auth", attempt("auth", lambda: auth_reads(workdir, Load())))
            if "features" in chosen:
                say("descriptions rendered, upload to visible, reads with the owner checks on, on loopback")
                record("features", attempt("features", lambda: features(workdir, Load())))
            if "hosts4" in chosen:
                say("provisioning four bare containers in one site.yml run")
                record("hosts4", attempt("hosts4", lambda: provision_many(Site(workdir / "hosts4.json"))))
            if "balancer" in chosen:
                say(f"one replica read directly and through HAProxy, {BALANCER_FILES:,} files")
                load = Load(args.threads, args.connections, args.duration)
                record("balancer", attempt("balancer", lambda: balancer_bench(workdir, load)))
        if "transfer" in chosen:
            record("transfer", attempt("transfer", lambda: transfer_bench(workdir)))
        if "scale" in chosen:
            say(f"{SCALE_FILES:,} files on one host, on loopback")
            record("scale", attempt("scale", lambda: scale_bench(workdir, Load())))
        if "replication" in chosen:
            say(f"replication lag at {REPLICATION_FILES:,} files: a publisher and a replica's pull, local rsync")
            record("replication", attempt("replication", lambda: replication_bench(workdir)))
    if "bundle" in chosen:
        say("building the bundle from the committed locks into an empty directory")
        values = bundle()
        say("building the default mirror from its locks, then packing the archive")
        values.update(mirror_and_archive())
        record("bundle", values)
    print(write_results(args.out, {}, chosen, started))
    return 0


def write_results(out: Path, measured: dict[str, Any], chosen: Sequence[str], started: float) -> str:
    """Merge `measured` into out/results.json, rewrite out/results.md from it, and return the Markdown."""
    out_json = out / "results.json"
    old = json.loads(out_json.read_text()) if out_json.is_file() else {}
    results = merge(old, measured)
    results.update(
        cpus=os.cpu_count(),
        wrk=tool_version(["wrk", "--version"], r"wrk (\S+)"),
        last_run={"sections": list(chosen), "seconds": round(time.monotonic() - started)},
    )
    results["goals"] = goals(results["sections"])
    out.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (out / "results.md").write_text(text)
    return text


if __name__ == "__main__":
    raise SystemExit(main())
