"""site.yml in check mode on the converged hosts. (Bad input on pristine hosts: inputs/test_bad_inputs.py, a step of
its own in make test's other lane.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import CLIENT, PROJECT_DIR

from scripts.containers import ansible_playbook, recap

INVENTORY_DIR = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent


def playbook(*args: str, inventory: str | Path = INVENTORY_DIR) -> subprocess.CompletedProcess[str]:
    return ansible_playbook(PROJECT_DIR / "site.yml", Path(inventory), *args, project=PROJECT_DIR)


def test_check_mode_on_converged_hosts_changes_nothing() -> None:
    """One run over every converged host: the plain HTTP and TLS index hosts and both clients."""
    result = playbook("--check")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    counts = recap(result.stdout)
    assert set(counts) == {
        "airgap-pypi-deb12",
        "airgap-pypi-deb12-sysv",
        "airgap-pypi-deb11",
        "airgap-pypi-deb13",
        "airgap-pypi-tls-deb12",
        CLIENT,
        "airgap-pypi-tls-client",
    }, counts
    for host, numbers in counts.items():
        assert numbers["changed"] == 0 and numbers["failed"] == 0, (host, numbers)
