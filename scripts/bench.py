#!/usr/bin/env python3
"""Measure airgap-pypi's provisioning and bundle numbers in one run; report, never assert.

Writes bench/results.json and bench/results.md. Numbers are wall-clock times on a shared machine:
compare the ratios within one run, not absolute seconds across runs.
Usage: bench.py [--skip-bundle] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NETWORK = "airgap-pypi-bench"
HOST = "airgap-pypi-bench1"
IMAGE = "airgap-pypi/debian12-systemd:latest"
SYSTEMD_RUN = [
    "--cgroupns",
    "host",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--cap-add",
    "SYS_ADMIN",
    "--cap-add",
    "NET_ADMIN",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
    "--tmpfs",
    "/tmp",
    "-e",
    "container=docker",
    "--stop-signal",
    "SIGRTMIN+3",
]
GOALS = {"first_run_s": 45.0, "rerun_s": 10.0}


def run(cmd: list[str], check: bool = False, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kwargs)


def timed(cmd: list[str], **kwargs: Any) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.monotonic()
    result = run(cmd, **kwargs)
    return time.monotonic() - start, result


def changed_count(output: str) -> int:
    """Sum of changed=N over the PLAY RECAP lines."""
    recap = output.split("PLAY RECAP", 1)[-1]
    return sum(int(n) for n in re.findall(r"changed=(\d+)", recap))


def provision(inventory: Path) -> dict[str, Any]:
    """Time a bare container to a serving index, then the idempotent re-run."""
    run(["docker", "rm", "-f", HOST])
    run(["docker", "network", "create", "--internal", NETWORK])
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_ROLES_PATH=str(ROOT / "roles"))
    playbook = ["ansible-playbook", "-i", str(inventory), str(ROOT / "site.yml")]
    try:
        start = time.monotonic()
        run(
            ["docker", "run", "-d", "--name", HOST, "--hostname", HOST, "--network", NETWORK, *SYSTEMD_RUN, IMAGE],
            check=True,
        )
        run(["docker", "exec", HOST, "timeout", "120", "systemctl", "is-system-running", "--wait"])
        first = run(playbook, env=env, cwd=ROOT)
        first_s = time.monotonic() - start
        if first.returncode != 0:
            raise RuntimeError("site.yml failed on the bench host:\n" + first.stdout[-3000:])
        rerun_s, rerun = timed(playbook, env=env, cwd=ROOT)
        results = {
            "first_run_s": round(first_s, 1),
            "first_run_changed": changed_count(first.stdout),
            "rerun_s": round(rerun_s, 1),
            "rerun_changed": changed_count(rerun.stdout),
        }
        results.update(mirror_load(playbook, env, rerun_s))
        return results
    finally:
        run(["docker", "rm", "-f", HOST])
        run(["docker", "network", "rm", NETWORK])


def mirror_load(playbook: list[str], env: dict[str, str], rerun_s: float, count: int = 1000) -> dict[str, Any]:
    """Time loading `count` small wheels as a carried-in mirror into the running index, then the re-run."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from demo_wheel import build_wheel  # noqa: PLC0415 - a sibling script, not a package

    with tempfile.TemporaryDirectory() as tmp:
        mirror = Path(tmp) / "mirror"
        files = mirror / "files"
        wheels = [build_wheel(files, f"bench-pkg-{i:04d}", "1.0.0") for i in range(count)]
        sums = (f"{hashlib.sha256(w.read_bytes()).hexdigest()}  files/{w.name}" for w in sorted(wheels))
        (mirror / "SHA256SUMS").write_text("\n".join(sums) + "\n")
        command = [*playbook, "-e", f"pypi_server_mirror_dir={mirror}"]
        load_s, load = timed(command, env=env, cwd=ROOT)
        if load.returncode != 0:
            return {"mirror_load_error": load.stdout[-500:]}
        again_s, again = timed(command, env=env, cwd=ROOT)
    return {
        f"mirror_load_{count}_files_s": round(load_s, 1),
        f"mirror_load_{count}_files_minus_rerun_s": round(load_s - rerun_s, 1),
        f"rerun_with_{count}_mirror_files_s": round(again_s, 1),
        f"rerun_with_{count}_mirror_files_changed": changed_count(again.stdout),
    }


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


def report(results: dict[str, Any]) -> str:
    lines = ["| Measure | Value | Goal | Ratio (value / goal) |", "| --- | --- | --- | --- |"]
    for key, value in results.items():
        goal = GOALS.get(key)
        ratio = f"{value / goal:.2f}" if goal and isinstance(value, (int, float)) else ""
        lines.append(f"| {key} | {value} | {goal or ''} | {ratio} |")
    if "first_run_s" in results and results.get("rerun_s"):
        lines.append(f"| rerun / first run | {results['rerun_s'] / results['first_run_s']:.2f} | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-bundle", action="store_true", help="do not time a bundle build (needs PyPI)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp) / "hosts.json"
        group_vars = {
            "ansible_connection": "community.docker.docker",
            "pypi_server_users": [{"name": "bench", "password": secrets.token_urlsafe(12)}],
        }
        inventory.write_text(json.dumps({"pypi_servers": {"hosts": {HOST: None}, "vars": group_vars}}))
        print("==> provisioning one bare container with site.yml, then re-running it", flush=True)
        results: dict[str, Any] = provision(inventory)
    if not args.skip_bundle:
        print("==> building the bundle from the committed locks into an empty directory", flush=True)
        results.update(bundle())
        print("==> building the default mirror from its locks, then packing the archive", flush=True)
        results.update(mirror_and_archive())
    results["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["cpus"] = os.cpu_count()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = report(results)
    (args.out / "results.md").write_text(
        "# Benchmark results\n\nWritten by `make bench` (scripts/bench.py).\n\n" + table
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
