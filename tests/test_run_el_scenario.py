"""scripts/run_el_scenario.py: NOT RUN (skipped, never passed) without images, molecule for real with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "run_el_scenario.py"
EL_NOT_RUN = "molecule el: NOT RUN — no EL images (set MOLECULE_EL_IMAGES=...)"
UBUNTU_NOT_RUN = "molecule el: NOT RUN — no Ubuntu images (set MOLECULE_UBUNTU_IMAGES=...)"


def run(results: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MOLECULE_EL_IMAGES", "MOLECULE_UBUNTU_IMAGES")}
    env.update(variables)
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--results", str(results)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=60,
    )


def cases(report: Path) -> dict[str, tuple[set[str], str]]:
    """{test case name: (outcome tags, skip message)} of a JUnit report."""
    found = {}
    for case in ET.parse(report).iter("testcase"):
        skipped = case.find("skipped")
        found[case.get("name", "")] = ({child.tag for child in case}, "" if skipped is None else skipped.get("message"))
    return found


@pytest.mark.parametrize("blank", ["", " , "])
def test_without_images_every_platform_is_skipped_not_passed(tmp_path: Path, blank: str) -> None:
    done = run(tmp_path, MOLECULE_EL_IMAGES=blank)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [EL_NOT_RUN, UBUNTU_NOT_RUN]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["molecule-el.xml"]
    assert cases(tmp_path / "molecule-el.xml") == {
        "EL 8": ({"skipped"}, EL_NOT_RUN),
        "EL 9": ({"skipped"}, EL_NOT_RUN),
        "EL 10": ({"skipped"}, EL_NOT_RUN),
        "Ubuntu 22.04": ({"skipped"}, UBUNTU_NOT_RUN),
        "Ubuntu 24.04": ({"skipped"}, UBUNTU_NOT_RUN),
    }


def test_with_images_molecule_runs_and_the_missing_kind_is_skipped(tmp_path: Path) -> None:
    """A stand-in `molecule` records how it is called: this checks the wiring, not a scenario result."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "called.json"
    stand_in = bin_dir / "molecule"
    stand_in.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "keys = ('MOLECULE_EL_IMAGES', 'MOLECULE_JUNIT_XML')\n"
        f"json.dump({{'argv': sys.argv[1:], 'cwd': os.getcwd(), **{{k: os.environ.get(k) for k in keys}}}},"
        f" open({str(record)!r}, 'w'))\n"
        "sys.exit(3)\n"
    )
    stand_in.chmod(0o755)
    results = tmp_path / "results"
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    done = run(results, MOLECULE_EL_IMAGES="local/el9:1, local/el8:1", PATH=path)
    assert done.returncode == 3, "molecule's exit status is the script's"
    assert done.stdout.splitlines()[0] == UBUNTU_NOT_RUN
    assert EL_NOT_RUN not in done.stdout
    called = json.loads(record.read_text())
    assert called["argv"] == ["test", "--scenario-name", "el"]
    assert Path(called["cwd"]) == ROOT
    assert called["MOLECULE_EL_IMAGES"] == "local/el9:1, local/el8:1"
    assert called["MOLECULE_JUNIT_XML"] == str(results.resolve() / "molecule-el.xml")
    assert cases(results / "molecule-el-not-run.xml") == {
        "Ubuntu 22.04": ({"skipped"}, UBUNTU_NOT_RUN),
        "Ubuntu 24.04": ({"skipped"}, UBUNTU_NOT_RUN),
    }
