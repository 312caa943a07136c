#!/usr/bin/python
"""A virtualenv holding exactly one lock of the bundle, checked and (re)built in one call."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: pypi_bootstrap_venv
short_description: A virtualenv that holds exactly one lock of the offline bundle
description:
  - The virtualenv at I(path) is current when it holds the file I(marker) (named after the lock's sha256). When it does
    not, it is created anew (C(virtualenv --clear --no-seed) run by I(python) with the bootstrap tools on its path)
    and the lock is installed into it by pip run from its wheel, with C(--no-index --require-hashes) from the
    bundle's wheels only; the marker is written last, so a cut-off build is rebuilt on the next run.
  - pip installs without compiling; the virtualenv's Python then compiles all of it at once on every CPU
    (C(compileall) with one worker per CPU): compiling file by file inside pip was most of a build's time. A file
    that does not compile (code for another Python in a package's tests) is left as pip would leave it.
  - One round trip when nothing changes (the stat), instead of a task each for the check, the build and the record.
  - Supports check mode (reports the build, does nothing).
options:
  path:
    description: Where the virtualenv goes.
    type: path
    required: true
  python:
    description: The host's Python that runs the bootstrap virtualenv.
    type: path
    required: true
  tools_dir:
    description: The bootstrap tools (virtualenv), put on that Python's path.
    type: path
    required: true
  bundle_dir:
    description: The host's copy of the bundle (wheels/ and locks/).
    type: path
    required: true
  lock:
    description: The lock, relative to I(bundle_dir) (C(locks/<name>-<tag>.txt)).
    type: str
    required: true
  marker:
    description: The name of the file, in the virtualenv, that says it holds the lock (written last).
    type: str
    required: true
  pip_wheel:
    description: pip's wheel, relative to I(bundle_dir); pip runs from it.
    type: str
    required: true
  pip_launcher:
    description: The Python code that runs pip from its wheel (the role's vars).
    type: str
    required: true
  environment:
    description: Environment for virtualenv and pip (no config files, no prompts, no network).
    type: dict
    default: {}
author: airgap-pypi
"""

RETURN = r"""
marker:
  description: The marker file that says which lock the virtualenv holds.
  type: str
  returned: always
"""


# Every .py of the virtualenv to bytecode, one worker per CPU (workers=0), errors quiet (quiet=2) as pip's are.
COMPILE = "import compileall, sys; compileall.compile_dir(sys.argv[1], quiet=2, workers=0)"


def run(module: AnsibleModule, argv: list[str], environ: dict[str, str], what: str) -> None:
    rc, out, err = module.run_command(argv, environ_update=environ)
    if rc != 0:
        module.fail_json(msg=f"{what} failed (exit {rc}): {(err or out)[-2000:]}", rc=rc, cmd=argv)


def build(module: AnsibleModule, params: dict[str, Any], marker: str) -> None:
    environ = {str(key): str(value) for key, value in params["environment"].items()}
    tools_env = dict(environ, PYTHONPATH=params["tools_dir"], VIRTUALENV_CONFIG_FILE="/dev/null")
    path = params["path"]
    bundle = params["bundle_dir"]
    run(
        module,
        [params["python"], "-m", "virtualenv", "--clear", "--no-seed", "--no-download", "--no-periodic-update", path],
        tools_env,
        f"Creating the virtualenv {path}",
    )
    run(
        module,
        [
            os.path.join(path, "bin", "python"),
            "-c",
            params["pip_launcher"],
            os.path.join(bundle, params["pip_wheel"]),
            "install",
            "--no-compile",
            "--no-index",
            f"--find-links={os.path.join(bundle, 'wheels')}",
            "--require-hashes",
            f"--requirement={os.path.join(bundle, params['lock'])}",
        ],
        environ,
        f"Installing {params['lock']} into {path}",
    )
    # Its result is not checked: pip ignores files that do not compile too. A crash still fails the build.
    run(
        module,
        [os.path.join(path, "bin", "python"), "-c", COMPILE, os.path.join(path, "lib")],
        environ,
        f"Compiling the virtualenv {path}",
    )
    handle, temporary = tempfile.mkstemp(dir=path, prefix=".pypi_bootstrap_venv.")
    with os.fdopen(handle, "w") as out:
        out.write(params["lock"] + "\n")
    os.chmod(temporary, 0o644)
    os.rename(temporary, marker)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "python": {"type": "path", "required": True},
            "tools_dir": {"type": "path", "required": True},
            "bundle_dir": {"type": "path", "required": True},
            "lock": {"type": "str", "required": True},
            "marker": {"type": "str", "required": True},
            "pip_wheel": {"type": "str", "required": True},
            "pip_launcher": {"type": "str", "required": True},
            "environment": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    params = module.params
    name = params["marker"]
    if not name or "/" in name or name in (".", ".."):
        module.fail_json(msg=f"marker {name!r} is not a plain file name")
    marker = os.path.join(params["path"], name)
    # lstat: a link planted at the marker's name does not count as a built virtualenv.
    try:
        current = os.path.isfile(marker) and not os.path.islink(marker)
    except OSError:
        current = False
    if not current and not module.check_mode:
        build(module, params, marker)
    module.exit_json(changed=not current, marker=marker)


if __name__ == "__main__":
    main()
