"""pypi_bootstrap_plan (controller side) and pypi_bootstrap_venv (host side) on a small bundle made here."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleActionFail
from conftest import ROOT, load_module, module_argv

plan_module = load_module(
    "pypi_bootstrap_plan", ROOT / "roles" / "pypi_bootstrap" / "action_plugins" / "pypi_bootstrap_plan.py"
)
VENV = ROOT / "roles" / "pypi_bootstrap" / "library" / "pypi_bootstrap_venv.py"
LOCKS = ["bootstrap", "server", "supervisor"]


def bundle(tmp_path: Path, minors: tuple[int, ...] = (11, 12)) -> Path:
    """Locks for each minor naming two wheels, the wheels, SHA256SUMS and a VERSION beside it."""
    root = tmp_path / "bundle"
    (root / "locks").mkdir(parents=True)
    (root / "wheels").mkdir()
    files: dict[str, bytes] = {}
    for wheel in ("pip-25.0-py3-none-any.whl", "demo-1.0-py3-none-any.whl"):
        files[f"wheels/{wheel}"] = wheel.encode()
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    for minor in minors:
        for lock in LOCKS:
            text = f"pip==25.0 --hash=sha256:{hashes['wheels/pip-25.0-py3-none-any.whl']}\n"
            if lock == "server":
                text += f"demo==1.0 --hash=sha256:{hashes['wheels/demo-1.0-py3-none-any.whl']}\n"
            files[f"locks/{lock}-cp3{minor}.txt"] = text.encode()
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "SHA256SUMS").write_text(
        "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in sorted(files.items()))
    )
    (tmp_path / "VERSION").write_text("0.4.0\n")
    return root


def args(root: Path, found: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "artifacts_dir": str(root),
        "version_file": str(root.parent / "VERSION"),
        "found": found,
        "lock_names": LOCKS,
        "marker_prefix": ".marker-",
        **extra,
    }


def test_chooses_the_newest_supported_python_and_names_its_locks_and_wheels(tmp_path: Path) -> None:
    root = bundle(tmp_path)
    found = ["13 3.13 /usr/bin/python3.13", "12 3.12 /usr/bin/python3.12", "6 3.6 /usr/libexec/platform-python"]
    result = plan_module.plan(args(root, found, expected_version="0.4.0"), "h1")
    assert result["python_path"] == "/usr/bin/python3.12" and result["python_tag"] == "cp312"
    assert result["locks"] == [f"locks/{lock}-cp312.txt" for lock in LOCKS]
    assert result["wheels"] == ["wheels/demo-1.0-py3-none-any.whl", "wheels/pip-25.0-py3-none-any.whl"]
    assert result["pip_wheel"] == "wheels/pip-25.0-py3-none-any.whl"
    assert result["lock_sha256"]["server"] == result["sum_of"]["locks/server-cp312.txt"]
    assert result["venv_markers"]["server"] == ".marker-" + result["sum_of"]["locks/server-cp312.txt"]
    assert "Using Python 3.12 at /usr/bin/python3.12" in result["msg"]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("version", "This copy of airgap-pypi is version 0.4.0"),
        ("missing", "SHA256SUMS is missing"),
        ("corrupt", "failed its checksum check: wheels/demo-1.0-py3-none-any.whl: FAILED"),
        (
            "no-python",
            "h1 has no Python that this bundle supports (found: 3.6 /usr/libexec/platform-python; "
            "supported: 3.11, 3.12)",
        ),
    ],
)
def test_each_problem_stops_with_its_message(tmp_path: Path, breakage: str, message: str) -> None:
    root = bundle(tmp_path)
    found = ["12 3.12 /usr/bin/python3.12"]
    extra: dict[str, Any] = {}
    if breakage == "version":
        extra["expected_version"] = "0.3.0"
    elif breakage == "missing":
        (root / "SHA256SUMS").unlink()
    elif breakage == "corrupt":
        (root / "wheels" / "demo-1.0-py3-none-any.whl").write_bytes(b"other bytes")
    else:
        found = ["6 3.6 /usr/libexec/platform-python"]
    with pytest.raises(AnsibleActionFail) as failed:
        plan_module.plan(args(root, found, **extra), "h1")
    assert message in str(failed.value)


def run_venv(tmp_path: Path, check: bool = False, **params: Any) -> dict[str, Any]:
    path = tmp_path / f"args-{len(list(tmp_path.glob('args-*')))}.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**params, "_ansible_check_mode": check}}))
    return json.loads(subprocess.run(module_argv(VENV, path), capture_output=True, text=True, check=False).stdout)


def venv_params(tmp_path: Path, venv: Path) -> dict[str, Any]:
    return {
        "path": str(venv),
        "python": "/bin/false",  # the step fails as a broken bootstrap virtualenv would
        "tools_dir": str(tmp_path / "no-tools"),
        "bundle_dir": str(tmp_path),
        "lock": "locks/server-cp312.txt",
        "marker": ".airgap-pypi-lock-" + "a" * 64,
        "pip_wheel": "wheels/pip.whl",
        "pip_launcher": "raise SystemExit(0)",
    }


def test_venv_with_its_marker_is_left_alone_and_one_without_is_rebuilt(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / (".airgap-pypi-lock-" + "a" * 64)).write_text("locks/server-cp312.txt\n")
    assert run_venv(tmp_path, **venv_params(tmp_path, venv))["changed"] is False
    planned = run_venv(tmp_path, True, **{**venv_params(tmp_path, venv), "marker": ".airgap-pypi-lock-" + "b" * 64})
    assert planned["changed"] is True and not (venv / (".airgap-pypi-lock-" + "b" * 64)).exists()
    # A real run without the bootstrap tools fails, naming the step, and writes no marker.
    failed = run_venv(tmp_path, **{**venv_params(tmp_path, venv), "marker": ".airgap-pypi-lock-" + "b" * 64})
    assert failed["failed"] is True and failed["msg"].startswith(f"Creating the virtualenv {venv} failed")
    assert not (venv / (".airgap-pypi-lock-" + "b" * 64)).exists()


def test_a_link_at_the_marker_name_does_not_count(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    (tmp_path / "elsewhere").write_text("x")
    (venv / (".airgap-pypi-lock-" + "a" * 64)).symlink_to(tmp_path / "elsewhere")
    assert run_venv(tmp_path, True, **venv_params(tmp_path, venv))["changed"] is True


@pytest.mark.parametrize("marker", ["", ".", "..", "../elsewhere", "sub/marker"])
def test_a_marker_that_is_not_a_plain_name_is_refused(tmp_path: Path, marker: str) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    result = run_venv(tmp_path, True, **{**venv_params(tmp_path, venv), "marker": marker})
    assert result["failed"] is True and "is not a plain file name" in result["msg"], result
