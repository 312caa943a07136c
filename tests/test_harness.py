"""The test harness keeps one copy of each thing it shares: the helpers are one package, imported as such; the
Molecule scenarios create and destroy their containers with one pair of playbooks."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PYTHON_DIRS = ("scripts", "tests", "molecule", "roles", "proof")
# The scripts that import a sibling: each must still run as a file (`python scripts/NAME.py`), not only as
# `scripts.NAME`.
WITH_SIBLINGS = ("bench", "build_controller", "build_mirror")
MOLECULE = ROOT / "molecule"
SCENARIOS = sorted(path.parent.name for path in MOLECULE.glob("*/molecule.yml"))
SHARED_PLAYBOOKS = {"create": "../shared/create.yml", "destroy": "../shared/destroy.yml"}
# molecule/el has no platforms: it starts the operator's images named by variables and finds its containers by
# label when it destroys them, so it keeps a create and destroy playbook of its own.
OWN_PLAYBOOKS = {"el"}


def python_files() -> Iterator[Path]:
    for folder in PYTHON_DIRS:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_no_module_changes_the_import_path() -> None:
    """scripts/ is a package and pytest.ini puts the repository root on the path: nothing edits sys.path."""
    edit = re.compile(r"\bsys\.path\.(insert|append)\(")
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in python_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if edit.search(line)
    ]
    assert not found, "import from the scripts package instead (from scripts import NAME):\n" + "\n".join(found)


@pytest.mark.parametrize("name", WITH_SIBLINGS)
def test_a_script_with_siblings_runs_as_a_file(name: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / f"{name}.py"), "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:"), done.stdout


def test_the_scenarios_are_found() -> None:
    assert {"default", "tls", "network", "operations", "el"} <= set(SCENARIOS)


@pytest.mark.parametrize("scenario", sorted(set(SCENARIOS) - OWN_PLAYBOOKS))
def test_a_scenario_creates_and_destroys_with_the_shared_playbooks(scenario: str) -> None:
    config = yaml.safe_load((MOLECULE / scenario / "molecule.yml").read_text(encoding="utf-8"))
    playbooks = config["provisioner"]["playbooks"]
    for step, shared in SHARED_PLAYBOOKS.items():
        assert playbooks.get(step) == shared, f"molecule/{scenario}/molecule.yml: {step} must be {shared}"
        copy = MOLECULE / scenario / f"{step}.yml"
        assert not copy.exists(), f"{copy.relative_to(ROOT)} copies molecule/shared/{step}.yml: give it parameters"


def test_only_the_shared_and_the_el_create_start_containers() -> None:
    """A copy of the create playbook under another name is a copy too."""
    allowed = {MOLECULE / "shared" / "create.yml", *(MOLECULE / name / "create.yml" for name in OWN_PLAYBOOKS)}
    starting = {
        path
        for path in MOLECULE.rglob("*.yml")
        if "community.docker.docker_container:" in path.read_text(encoding="utf-8")
        and "state: started" in path.read_text(encoding="utf-8")
    }
    assert starting <= allowed, sorted(str(path.relative_to(ROOT)) for path in starting - allowed)
