"""pypi_common's platform search list: most specific first, the same for every role."""

from __future__ import annotations

from conftest import ROOT, load_module

common = load_module("pypi_common_filters", ROOT / "roles" / "pypi_common" / "filter_plugins" / "pypi_common.py")


def test_most_specific_first() -> None:
    facts = {"distribution": "Rocky", "os_family": "RedHat", "distribution_major_version": "9"}
    assert common.platform_files(facts) == ["Rocky_9.yml", "Rocky.yml", "RedHat_9.yml", "RedHat.yml"]


def test_debian_names_itself_once() -> None:
    facts = {"distribution": "Debian", "os_family": "Debian", "distribution_major_version": "12"}
    assert common.platform_files(facts) == ["Debian_12.yml", "Debian.yml"]


def test_every_role_loads_its_platform_vars_through_it() -> None:
    loaders = [p for p in (ROOT / "roles").rglob("tasks/*.yml") if "first_found" in p.read_text()]
    assert loaders, "no platform vars loader found"
    for path in loaders:
        assert "pypi_common_platform_files" in path.read_text(), path
