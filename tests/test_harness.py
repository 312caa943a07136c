"""The test harness keeps one copy of each thing it shares: the helpers are one package, imported as such."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON_DIRS = ("scripts", "tests", "molecule", "roles", "proof")
# The scripts that import a sibling: each must still run as a file (`python scripts/NAME.py`), not only as
# `scripts.NAME`.
WITH_SIBLINGS = ("bench", "build_controller", "build_mirror")


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
