"""The example inventory lists every variable an operator may change, once, with its default.

inventories/production/group_vars/*.yml says so of itself, and operators copy it: a missing variable is a setting
nobody finds, a wrong default makes them believe the index does something it does not, and a name no role defines
(a typo) silently does nothing. The listing is commented lines in YAML, e.g.

    # pypi_server_port: 8080           # below 1024: ...
    # pypi_network_interfaces:         # example, not the default ([])
    #   - name: eth0

(a line "# NAME:" starts a variable; the lines after it that start with "#" and two or more spaces continue its
value), plus the variables the file sets for real. Each value is parsed as YAML with the leading "# " removed and
must equal the role's default in roles/<role>/defaults/main.yml: same type, same value, Jinja strings character
for character.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
INVENTORY = ROOT / "inventories" / "production" / "group_vars"

# The roles an operator configures through site.yml (pypi_common is every role's dependency and holds the settings
# they share). The variables of pypi_client go to the clients group, all others to the index servers.
SITE_ROLES = (
    "pypi_common",
    "pypi_network",
    "pypi_bootstrap",
    "pypi_supervisor",
    "pypi_server",
    "pypi_front",
    "pypi_firewall",
    "pypi_client",
    "pypi_replica",
    "pypi_balancer",
)
FILE_OF_ROLE = {role: "clients.yml" if role == "pypi_client" else "pypi_servers.yml" for role in SITE_ROLES}
FILE_OF_ROLE["pypi_replica"] = "pypi_replicas.yml"
FILE_OF_ROLE["pypi_balancer"] = "pypi_balancers.yml"

# pypi_backup runs from playbooks/backup.yml and restore.yml against the same inventory. Its own settings
# (pypi_backup_dir, _archive, _replace, ...) are the operator's and belong in the listing. Its layout variables do
# not: those playbooks set them as play vars from the pypi_server_* ones, and play vars outrank the inventory, so an
# inventory value would be ignored. They are read from the playbooks, not repeated here.
BACKUP_ROLE = "pypi_backup"
BACKUP_PLAYBOOKS = ("playbooks/backup.yml", "playbooks/restore.yml")
FILE_OF_ROLE[BACKUP_ROLE] = "pypi_servers.yml"

# Variables the inventory may show with an example instead of the default. The example must be marked: the word
# "example" on the variable's line.
EXAMPLES = {
    # Interfaces differ per host (host_vars); the default [] configures nothing, so only an example shows the keys.
    "pypi_network_interfaces": "set per host; the default [] shows nothing of the keys an interface takes",
    # Uploads need at least one account and passwords have no default: the file sets one for real, its password
    # from the controller's environment, so that a copied inventory works once the password is exported.
    "pypi_server_users": "accounts must be set per site; the default [] has no account to upload with",
    # Local users that upload differ per client; the default [] writes no ~/.pypirc, the example shows the keys.
    "pypi_client_upload_users": "set per site; the default [] shows nothing of the keys an entry takes",
}

START = re.compile(r"^# ([a-z][a-z0-9]*_[a-z0-9_]*):(?:\s|$)")  # "# pypi_server_port: 8080"
CONTINUED = re.compile(r"^#  +\S")  # "#   - name: eth0", "#                 # more comment"
LIVE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):(?:\s|$)")


@dataclass(frozen=True)
class Listed:
    """One variable as the inventory lists it."""

    name: str
    value: Any
    where: str  # file:line
    line: str  # the line that names it
    commented: bool


def commented_variables(text: str, filename: str) -> Iterator[Listed]:
    """The commented variable lines of a group_vars file, each with its continuation lines, parsed as YAML."""
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        match = START.match(lines[number])
        if not match:
            number += 1
            continue
        first = number
        number += 1
        while number < len(lines) and CONTINUED.match(lines[number]):
            number += 1
        block = "\n".join(line[2:] for line in lines[first:number])
        where = f"{filename}:{first + 1}"
        try:
            parsed = yaml.safe_load(block)
        except yaml.YAMLError as error:
            raise AssertionError(f"{where}: {match[1]} does not parse as YAML once uncommented: {error}") from error
        assert isinstance(parsed, dict) and list(parsed) == [match[1]], f"{where}: not one variable: {block!r}"
        yield Listed(match[1], parsed[match[1]], where, lines[first], commented=True)


def live_variables(text: str, filename: str) -> Iterator[Listed]:
    """The variables the file sets for real (uncommented)."""
    values = yaml.safe_load(text) or {}
    for number, line in enumerate(text.splitlines(), 1):
        match = LIVE.match(line)
        if match:
            yield Listed(match[1], values[match[1]], f"{filename}:{number}", line, commented=False)


def inventory_listing(directory: Path = INVENTORY) -> list[Listed]:
    listed = []
    for path in sorted(directory.glob("*.yml")):
        text = path.read_text()
        listed += [*commented_variables(text, path.name), *live_variables(text, path.name)]
    return listed


def defaults_of(role: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text()) or {}


def set_by_backup_playbooks() -> set[str]:
    names = set()
    for playbook in BACKUP_PLAYBOOKS:
        for play in yaml.safe_load((ROOT / playbook).read_text()):
            names |= set(play.get("vars") or {})
    return names


def operator_defaults() -> dict[str, tuple[str, Any]]:
    """Every variable the inventory must list: name -> (role, default)."""
    wanted = {name: (role, value) for role in SITE_ROLES for name, value in defaults_of(role).items()}
    skipped = set_by_backup_playbooks()
    wanted |= {name: (BACKUP_ROLE, value) for name, value in defaults_of(BACKUP_ROLE).items() if name not in skipped}
    return wanted


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type all the way down (YAML's true is not 1, "1.2" is not 1.2)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def shown(value: Any) -> str:
    """A value as YAML on one line, as the inventory would write it."""
    return yaml.safe_dump(value, default_flow_style=True, width=1_000_000).removesuffix("\n...\n").strip()


def test_every_role_is_accounted_for() -> None:
    """A new role with defaults must be placed here: in SITE_ROLES, or handled apart like pypi_backup."""
    with_defaults = {path.parent.parent.name for path in ROOT.glob("roles/*/defaults/main.yml")}
    assert with_defaults == {*SITE_ROLES, BACKUP_ROLE}
    site = yaml.safe_load((ROOT / "site.yml").read_text())
    in_site = {role["role"] for play in site for role in play.get("roles", [])}
    assert in_site <= set(SITE_ROLES), in_site - set(SITE_ROLES)


def test_every_default_is_listed_once_with_its_value() -> None:
    listed = inventory_listing()
    problems = []
    for name, (role, default) in sorted(operator_defaults().items()):
        entries = [entry for entry in listed if entry.name == name]
        defaults_file = f"roles/{role}/defaults/main.yml"
        if not entries:
            problems.append(
                f"{name} ({defaults_file}) is missing from group_vars/{FILE_OF_ROLE[role]}: "
                f"add `# {name}: {shown(default)}` in the {role} section"
            )
            continue
        if len(entries) > 1:
            problems.append(f"{name} is listed {len(entries)} times: {', '.join(entry.where for entry in entries)}")
            continue
        (entry,) = entries
        if not entry.where.startswith(FILE_OF_ROLE[role] + ":"):
            problems.append(f"{name} is listed in {entry.where}; it belongs in group_vars/{FILE_OF_ROLE[role]}")
        if name in EXAMPLES:
            if "example" not in entry.line.lower():
                problems.append(f"{name} ({entry.where}) shows an example: mark it on its line with the word 'example'")
            if type(entry.value) is not type(default):
                problems.append(
                    f"{name} ({entry.where}): the example {shown(entry.value)} is not of the default's type "
                    f"({type(default).__name__}, {shown(default)} in {defaults_file})"
                )
        elif not same(entry.value, default):
            problems.append(
                f"{name}: the inventory ({entry.where}) shows {shown(entry.value)}, "
                f"the default ({defaults_file}) is {shown(default)}: write `# {name}: {shown(default)}`"
            )
    if problems:
        pytest.fail(
            "the example inventory drifted from the roles' defaults:\n  " + "\n  ".join(problems), pytrace=False
        )


def test_every_listed_variable_is_one_a_role_reads() -> None:
    """A typo, or a variable a role no longer has, would do nothing at all: no role reads it."""
    known = operator_defaults()
    ignored = set_by_backup_playbooks()
    problems = []
    for entry in inventory_listing():
        if entry.name in ignored:
            problems.append(
                f"{entry.name} ({entry.where}): playbooks/backup.yml and restore.yml set it from the pypi_server_* "
                "variables, which outrank the inventory: remove it"
            )
        elif entry.name not in known:
            problems.append(f"{entry.name} ({entry.where}): no role in roles/*/defaults/main.yml defines it")
    if problems:
        pytest.fail("the example inventory lists variables no role reads:\n  " + "\n  ".join(problems), pytrace=False)


def test_the_examples_are_still_variables() -> None:
    """The allow-list names only variables the listing has (a renamed one must leave it)."""
    assert set(EXAMPLES) <= set(operator_defaults()), set(EXAMPLES) - set(operator_defaults())


SAMPLE = """\
---
# Prose: with a colon, not a variable.
# x_port: 8080              # a comment, not part of the value
# x_names:                  # example, not the default
#   - name: eth0            # kept
#     mtu: 1500
#                           # a comment line inside the block
# x_jinja: >-
#   {{ 443 if x_tls | default(false) | bool
#      else 80 }}
#
#   not a continuation: a blank comment line ended the block
x_users:
  - name: up
"""


def test_the_reader_parses_commented_and_live_variables() -> None:
    listed = [*commented_variables(SAMPLE, "s.yml"), *live_variables(SAMPLE, "s.yml")]
    assert [(entry.name, entry.where, entry.commented) for entry in listed] == [
        ("x_port", "s.yml:3", True),
        ("x_names", "s.yml:4", True),
        ("x_jinja", "s.yml:8", True),
        ("x_users", "s.yml:13", False),
    ]
    values = {entry.name: entry.value for entry in listed}
    assert values["x_port"] == 8080
    assert values["x_names"] == [{"name": "eth0", "mtu": 1500}]
    assert values["x_jinja"] == "{{ 443 if x_tls | default(false) | bool\n   else 80 }}"
    assert values["x_users"] == [{"name": "up"}]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (True, 1, False),
        ("1.2", 1.2, False),
        ("{{ x }}", "{{ x }}", True),
        ({"a": [1, True]}, {"a": [1, True]}, True),
        ([1], [True], False),
    ],
)
def test_values_compare_with_their_types(a: Any, b: Any, expected: bool) -> None:
    assert same(a, b) is expected
