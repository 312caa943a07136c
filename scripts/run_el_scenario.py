#!/usr/bin/env python3
"""Run the real-EL Molecule scenario (molecule/el) on the operator's images, or say plainly that it did not run.

Images come from two variables of comma-separated image references (local, or in the operator's registry),
each image starting systemd as PID 1:

    MOLECULE_EL_IMAGES       EL 8, 9, 10 (Rocky, Alma, RHEL UBI init, CentOS Stream)
    MOLECULE_UBUNTU_IMAGES   Ubuntu 22.04, 24.04

With images, this runs ``molecule test --scenario-name el`` for real and writes its JUnit report to
RESULTS/molecule-el.xml. A kind with no image (EL or Ubuntu) is reported NOT RUN: its platforms are written as
skipped test cases (RESULTS/molecule-el.xml when nothing ran, else RESULTS/molecule-el-not-run.xml), never as
passed. Exit status: molecule's, or 0 when nothing ran.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Kind:
    """One kind of platform and the variable that names its images."""

    label: str
    variable: str
    platforms: tuple[str, ...]

    @property
    def not_run(self) -> str:
        return f"molecule el: NOT RUN — no {self.label} images (set {self.variable}=...)"


KINDS: tuple[Kind, ...] = (
    Kind("EL", "MOLECULE_EL_IMAGES", ("EL 8", "EL 9", "EL 10")),
    Kind("Ubuntu", "MOLECULE_UBUNTU_IMAGES", ("Ubuntu 22.04", "Ubuntu 24.04")),
)


def images_of(kind: Kind, env: Mapping[str, str]) -> list[str]:
    """The image references a variable names (comma-separated; blanks ignored)."""
    return [image.strip() for image in env.get(kind.variable, "").split(",") if image.strip()]


def write_skipped(path: Path, kinds: Sequence[Kind]) -> int:
    """Write a JUnit report with one skipped test case per platform of kinds; return how many."""
    suite = ET.Element("testsuite", name="molecule-el", tests="0", failures="0", errors="0", skipped="0")
    count = 0
    for kind in kinds:
        for platform in kind.platforms:
            case = ET.SubElement(suite, "testcase", classname="molecule.el", name=platform, time="0")
            ET.SubElement(case, "skipped", message=kind.not_run).text = kind.not_run
            count += 1
    suite.set("tests", str(count))
    suite.set("skipped", str(count))
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return count


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--results", type=Path, default=ROOT / ".test-results", help="where JUnit reports go (default: .test-results)"
    )
    args = parser.parse_args(argv)
    env = os.environ if env is None else env
    results: Path = args.results.resolve()
    results.mkdir(parents=True, exist_ok=True)

    given = {kind.variable: images_of(kind, env) for kind in KINDS}
    missing = [kind for kind in KINDS if not given[kind.variable]]
    for kind in missing:
        print(kind.not_run)
    if len(missing) == len(KINDS):
        write_skipped(results / "molecule-el.xml", missing)
        return 0
    if missing:
        write_skipped(results / "molecule-el-not-run.xml", missing)

    for kind in KINDS:
        if given[kind.variable]:
            print(f"molecule el: {kind.label} images: {', '.join(given[kind.variable])}")
    run_env = dict(env, MOLECULE_JUNIT_XML=str(results / "molecule-el.xml"))
    done = subprocess.run(["molecule", "test", "--scenario-name", "el"], cwd=ROOT, env=run_env, check=False)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
