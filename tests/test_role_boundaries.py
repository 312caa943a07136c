"""Roles read only their own variables, pypi_common's and documented facts: no other role's private (__) variables,
and no walking out of the role to find the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROLES = sorted(path.name for path in (ROOT / "roles").iterdir() if (path / "meta" / "main.yml").exists())
PRIVATE = re.compile(r"__(" + "|".join(ROLES) + r")_[a-z0-9_]+")
WALK_OUT = re.compile(r"role_path\s*(?:\}\}\s*)?(?:~\s*)?['\"]?/\.\./\.\.|role_path\s*\|\s*dirname\s*\|\s*dirname")


def role_files(role: str) -> list[Path]:
    return [path for path in (ROOT / "roles" / role).rglob("*") if path.is_file() and path.suffix != ".md"]


def test_no_role_reads_another_roles_private_variables() -> None:
    found = []
    for role in ROLES:
        for path in role_files(role):
            for match in PRIVATE.finditer(path.read_text(errors="replace")):
                if match.group(1) != role:
                    found.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert not found, "a role reads another role's private variable: " + "; ".join(found)


def test_no_role_walks_out_of_its_directory() -> None:
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for role in ROLES
        for path in role_files(role)
        for match in WALK_OUT.finditer(path.read_text(errors="replace"))
    ]
    assert not found, "use pypi_common_project_dir or pypi_common_artifacts_dir instead: " + "; ".join(found)


def test_the_checks_find_what_they_look_for() -> None:
    assert PRIVATE.search("{{ __pypi_bootstrap_sum_of['x'] }}").group(1) == "pypi_bootstrap"
    assert WALK_OUT.search('default: "{{ role_path }}/../../offline_artifacts"')
    assert WALK_OUT.search("lookup('file', role_path ~ '/../../VERSION')")
    assert WALK_OUT.search("{{ role_path | dirname | dirname }}/VERSION")
