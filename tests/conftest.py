"""Test set-up: load_module loads a file that is in no package (the helpers in scripts/ import as a package); the
roles' shared module_utils import as Ansible ships them, and module_argv runs a module so; run_playbook runs plays on
localhost with the toolchain's ansible-playbook."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import ansible.module_utils

ROOT = Path(__file__).resolve().parent.parent


def load_module(name: str, path: Path) -> ModuleType:
    """Import path as module name (a role's module or filter plugin)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# The roles' module_utils (roles/*/module_utils) import as Ansible ships them to a host: as
# ansible.module_utils.<name>.
MODULE_UTILS = [str(path) for path in sorted(ROOT.glob("roles/*/module_utils"))]
ansible.module_utils.__path__.extend(MODULE_UTILS)

# A module run as Ansible runs it on a host: a Python process of its own with its arguments file, and the
# roles' module_utils where the AnsiballZ payload puts them.
_RUN_MODULE = (
    "import ansible.module_utils, os, runpy, sys; "
    "ansible.module_utils.__path__.extend(sys.argv.pop(1).split(os.pathsep)); "
    "sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def module_argv(module: Path, args: Path) -> list[str]:
    """The command that runs module with its arguments file args (subprocess.run it)."""
    return [
        sys.executable,
        "-c",
        _RUN_MODULE,
        os.pathsep.join(MODULE_UTILS),
        str(module),
        str(args),
    ]


def run_playbook(
    plays: list[dict[str, Any]], path: Path, inventory: str = "localhost,"
) -> subprocess.CompletedProcess[str]:
    """Write plays to path (as JSON, which Ansible reads as YAML) and run them on localhost (or the inventory
    given): the ansible-playbook beside the tests' Python (else on PATH), the repository's roles, no colour."""
    path.write_text(json.dumps(plays, indent=1))
    beside = Path(sys.executable).with_name("ansible-playbook")
    command = str(beside) if beside.exists() else shutil.which("ansible-playbook")
    assert command, "ansible-playbook is not installed: run scripts/venv.sh"
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(ROOT / "roles"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(
        [command, "-i", inventory, str(path)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=ROOT,
        timeout=180,
    )
