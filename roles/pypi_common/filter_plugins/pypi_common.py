"""Filters every airgap-pypi role uses."""

from __future__ import annotations

from typing import Any


def platform_files(facts: dict[str, Any]) -> list[str]:
    """The vars files a role looks for, most specific first: Rocky_9.yml, Rocky.yml, RedHat_9.yml, RedHat.yml.

    One search list for every role (the linux-system-roles pattern); a role keeps only the files it needs, and
    ansible.builtin.first_found takes the first that exists.
    """
    distribution = str(facts.get("distribution", ""))
    family = str(facts.get("os_family", ""))
    major = str(facts.get("distribution_major_version", ""))
    names = [f"{distribution}_{major}", distribution, f"{family}_{major}", family]
    return [f"{name}.yml" for name in dict.fromkeys(names) if name and not name.endswith("_")]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"pypi_common_platform_files": platform_files}
