"""On the controller: check the bundle and pick the host's Python, then name the locks and wheels it needs.

Returns python_path, python_tag, sum_of ({path: sha256} of SHA256SUMS), locks, lock_sha256 ({lock name: sha256}),
venv_markers ({lock name: marker file name}), wheels and pip_wheel for one
set_fact (facts returned by an action would be host facts, read through ansible_facts only).

One task in place of a chain of set_fact and fail tasks written in Jinja: the bundle's version, its checksums,
the Pythons the bundle supports against those the host has (found by a raw task before any module can run).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

DOCUMENTATION = r"""
module: pypi_bootstrap_plan
short_description: Check the offline bundle and choose the host's Python (runs on the controller)
options:
  artifacts_dir: {description: The bundle on the controller., type: path, required: true}
  version_file: {description: This copy's VERSION file., type: path, required: true}
  expected_version: {description: The version the inventory expects ('' for any)., type: str, default: ""}
  found: {description: 'Lines "<minor> <major.minor> <path>" of the raw task that looked for Pythons.', type: list}
  python: {description: The Python the inventory asks for ('' for the newest supported)., type: str, default: ""}
  lock_names: {description: The locks every host needs (bootstrap first)., type: list, required: true}
  marker_prefix: {description: "A marker's name before its lock's sha256.", type: str, required: true}
"""

HASH = re.compile(r"sha256:([0-9a-f]{64})")
FOUND = re.compile(r"^([0-9]+) (3[.][0-9]+) (\S.*)$")
LOCK = re.compile(r"^server-cp3([0-9]+)[.]txt$")
NOTHING = "Nothing was changed on any host."


def read_sums(artifacts: Path) -> dict[str, str]:
    """SHA256SUMS as {path: sha256}."""
    pairs = (line.split(None, 1) for line in (artifacts / "SHA256SUMS").read_text().splitlines() if line.strip())
    return {path.strip(): digest for digest, path in pairs}


def check_bundle(artifacts: Path, version_file: Path, expected: str) -> None:
    """The messages of the controller-side checks: version, bundle present, bundle whole."""
    if expected:
        try:
            version = version_file.read_text().strip() or "unknown"
        except OSError:
            version = "unknown"
        if version != expected:
            raise AnsibleActionFail(
                f"This copy of airgap-pypi is version {version} ({version_file}), but the inventory expects "
                f"{expected} (pypi_bootstrap_expected_version). Unpack the archive of version {expected}, or review "
                f"the inventory against this version's CHANGELOG and update pypi_bootstrap_expected_version. {NOTHING}"
            )
    where = artifacts.resolve()
    if not (artifacts / "SHA256SUMS").exists():
        raise AnsibleActionFail(
            f"No offline bundle at {where}: SHA256SUMS is missing. Build it on a connected machine with `make bundle`, "
            f"carry offline_artifacts/ to this controller, or point pypi_bootstrap_artifacts_dir at it (a playbook "
            f"outside the project's root: set pypi_common_project_dir to that root). {NOTHING}"
        )
    done = subprocess.run(
        ["sha256sum", "--check", "--strict", "--quiet", "SHA256SUMS"],
        cwd=artifacts,
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
    )
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).splitlines()
        raise AnsibleActionFail(
            f"The offline bundle in {where} failed its checksum check: {'; '.join(lines)}. Copy offline_artifacts/ "
            f"again from the connected side (or rebuild it there with `make bundle`). {NOTHING}"
        )


def choose_python(host: str, found: list[str], supported: list[str]) -> tuple[list[list[str]], list[str]]:
    """The host's Pythons ([minor, version, path], newest first) and the first the bundle supports."""
    pythons = [list(match.groups()) for line in found if (match := FOUND.match(line.strip()))]
    usable = [python for python in pythons if python[1] in supported]
    if not usable:
        listed = ", ".join(f"{version} {path}" for _, version, path in pythons) or "none"
        raise AnsibleActionFail(
            f"{host} has no Python that this bundle supports (found: {listed}; supported: {', '.join(supported)}). "
            "EL 8's platform-python is 3.6, too old for pypiserver, gunicorn and ansible-core: install python3.9, "
            "python3.11 or python3.12 from AppStream (carry the RPMs from your OS mirror, e.g. `dnf install "
            "python3.11`), or set pypi_bootstrap_python to one. Nothing was changed on this host."
        )
    return pythons, usable[0]


def plan(args: dict[str, Any], host: str) -> dict[str, Any]:
    artifacts = Path(args["artifacts_dir"])
    check_bundle(artifacts, Path(args["version_file"]), str(args.get("expected_version") or ""))
    sums = read_sums(artifacts)
    minors = sorted(int(match.group(1)) for path in sums if (match := LOCK.match(path.rsplit("/", 1)[-1])))
    supported = [f"3.{minor}" for minor in minors]
    pythons, chosen = choose_python(host, [str(line) for line in args.get("found") or []], supported)
    tag = f"cp3{chosen[0]}"
    locks = [f"locks/{name}-{tag}.txt" for name in args["lock_names"]]
    if missing := [lock for lock in locks if lock not in sums]:
        raise AnsibleActionFail(
            f"The bundle lacks {', '.join(missing)} for CPython {chosen[1]} ({chosen[2]} on {host}). Supported: "
            f"{', '.join(supported)}. Point pypi_bootstrap_python at one of those on the host, or build a bundle for "
            "it (`make bundle TARGETS=...` on the connected side). Nothing was changed on this host."
        )
    texts = [(artifacts / lock).read_text() for lock in locks]
    path_of = {digest: path for path, digest in sums.items()}
    wheels = sorted({path_of[digest] for digest in HASH.findall("\n".join(texts)) if digest in path_of})
    pip = re.search(r"(?m)^pip==(\S+)", texts[0])
    pip_wheels = [wheel for wheel in wheels if pip and wheel.startswith(f"wheels/pip-{pip.group(1)}-")]
    if not pip_wheels:
        raise AnsibleActionFail(f"The bootstrap lock {locks[0]} names no pip wheel of the bundle: rebuild the bundle.")
    found = ", ".join(f"{version} {path}" for _, version, path in pythons)
    return {
        "msg": f"Using Python {chosen[1]} at {chosen[2]} (found: {found}).",
        "python_path": chosen[2],
        "python_tag": tag,
        "sum_of": sums,
        "locks": locks,
        "lock_sha256": {name: sums[lock] for name, lock in zip(args["lock_names"], locks, strict=True)},
        # The file in a virtualenv (or the tools directory) that says it holds the lock: written last when built.
        "venv_markers": {
            name: f"{args['marker_prefix']}{sums[lock]}" for name, lock in zip(args["lock_names"], locks, strict=True)
        },
        "wheels": wheels,
        "pip_wheel": pip_wheels[0],
    }


class ActionModule(ActionBase):
    """See the module docstring; never touches the host."""

    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        host = (task_vars or {}).get("inventory_hostname", "this host")
        try:
            result.update(plan(self._task.args, host))
        except OSError as error:
            raise AnsibleActionFail(f"Reading the offline bundle failed: {error}") from error
        result["changed"] = False
        return result
