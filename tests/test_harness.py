"""The test harness keeps one copy of each thing it shares: the helpers are one package, imported as such; the
Molecule scenarios create and destroy their containers with one pair of playbooks; the docker run options of each
kind of init are written once (molecule/shared/vars/run-options.yml) and every user reads them from there; the
scenarios are listed once, in scripts/test.sh, which `make molecule` calls."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_playbook

from scripts import containers

ROOT = Path(__file__).resolve().parent.parent
PYTHON_DIRS = ("scripts", "tests", "molecule", "roles", "proof")
# The scripts that import a sibling: each must still run as a file (`python scripts/NAME.py`), not only as
# `scripts.NAME`.
WITH_SIBLINGS = ("bench", "build_controller", "build_mirror", "pack_archive")
MOLECULE = ROOT / "molecule"
SCENARIOS = sorted(path.parent.name for path in MOLECULE.glob("*/molecule.yml"))
SHARED_PLAYBOOKS = {"create": "../shared/create.yml", "destroy": "../shared/destroy.yml"}
# molecule/el has no platforms: it starts the operator's images named by variables and finds its containers by
# label when it destroys them, so it keeps a create and destroy playbook of its own.
OWN_PLAYBOOKS = {"el"}
SHARED_SCENARIOS = sorted(set(SCENARIOS) - OWN_PLAYBOOKS)
RUN_OPTIONS = MOLECULE / "shared" / "vars" / "run-options.yml"
# What only the run options say (the images' recipes in build_images.sh bake container=docker in, which is why
# that one is not here); the SIGINT, NET_ADMIN and SYS_BOOT of build_images.sh's sysv check are its own.
RUN_OPTION_WORDS = ("SIGRTMIN", "/sys/fs/cgroup:/sys/fs/cgroup", "SYS_ADMIN", "cgroupns host")
CODE_SUFFIXES = {".py", ".sh", ".yml", ".yaml"}
NOT_OURS = {".git", ".venv", ".venv-controller", "offline_artifacts", ".test-results", ".sandbox", "dist"}


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


def test_the_scenarios_are_found() -> None:
    assert {"default", "network", "operations", "el"} <= set(SCENARIOS)


@pytest.mark.parametrize("scenario", SHARED_SCENARIOS)
def test_a_scenario_creates_and_destroys_with_the_shared_playbooks(scenario: str) -> None:
    config = yaml.safe_load((MOLECULE / scenario / "molecule.yml").read_text(encoding="utf-8"))
    playbooks = config["provisioner"]["playbooks"]
    for step, shared in SHARED_PLAYBOOKS.items():
        assert playbooks.get(step) == shared, f"molecule/{scenario}/molecule.yml: {step} must be {shared}"
        copy = MOLECULE / scenario / f"{step}.yml"
        assert not copy.exists(), f"{copy.relative_to(ROOT)} copies molecule/shared/{step}.yml: give it parameters"


def test_only_the_shared_and_the_el_create_start_containers() -> None:
    """A copy of the create playbook under another name is a copy too."""
    allowed = {MOLECULE / "shared" / "create.yml", *(MOLECULE / name / "create.yml" for name in OWN_PLAYBOOKS)}
    starting = {
        path
        for path in MOLECULE.rglob("*.yml")
        if "community.docker.docker_container:" in path.read_text(encoding="utf-8")
        and "state: started" in path.read_text(encoding="utf-8")
    }
    assert starting <= allowed, sorted(str(path.relative_to(ROOT)) for path in starting - allowed)


def test_the_systemd_run_options_are_those_the_scenarios_always_used() -> None:
    assert containers.run_options("systemd") == [
        *("--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--cap-add", "SYS_ADMIN"),
        *("--cap-add", "NET_ADMIN", "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp"),
        *("-e", "container=docker", "--stop-signal", "SIGRTMIN+3"),
    ]
    assert containers.run_options("systemd") == containers.SYSTEMD_RUN_OPTIONS


def test_the_sysv_and_client_run_options_are_those_the_scenarios_always_used() -> None:
    common = ["--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp", "-e", "container=docker"]
    assert containers.run_options("sysv") == [
        "--cap-add",
        "NET_ADMIN",
        "--cap-add",
        "SYS_BOOT",
        *common,
        "--stop-signal",
        "SIGINT",
    ]
    assert containers.run_options("none") == [*common, "--stop-signal", "SIGTERM"]


def test_an_unknown_init_has_no_run_options() -> None:
    with pytest.raises(ValueError, match="no run options for init 'upstart'"):
        containers.run_options("upstart")


def test_shell_scripts_get_the_run_options_one_a_line() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "containers.py"), "run-options", "systemd"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.splitlines() == containers.run_options("systemd")


def code_files() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if NOT_OURS & set(parts) or not path.is_file() or path.is_symlink():
            continue
        if path.suffix in CODE_SUFFIXES or path.name == "Makefile":
            yield path


def test_the_run_options_are_written_in_one_place() -> None:
    allowed = {RUN_OPTIONS, Path(__file__).resolve()}
    found = [
        f"{path.relative_to(ROOT)}: {word}"
        for path in code_files()
        if path not in allowed
        for word in RUN_OPTION_WORDS
        if word in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert not found, f"read them from {RUN_OPTIONS.relative_to(ROOT)} (scripts/containers.py): {found}"


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """{container: the docker_container arguments molecule/shared/create.yml starts it with}, for every platform of
    every scenario that uses it, rendered by Ansible on localhost (no docker)."""
    out = tmp_path_factory.mktemp("create")
    create = yaml.safe_load((MOLECULE / "shared" / "create.yml").read_text(encoding="utf-8"))[0]
    start = next(task for task in create["tasks"] if "community.docker.docker_container" in task)
    plays = [
        {
            "name": f"Render the containers of {scenario}",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars_files": [str(MOLECULE / "shared" / path) for path in create["vars_files"]],
            "vars": {
                **create["vars"],
                "molecule_yml": yaml.safe_load((MOLECULE / scenario / "molecule.yml").read_text(encoding="utf-8")),
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            },
            "tasks": [
                {
                    # As a task's arguments, so that Ansible drops the omitted ones as it does for the real task.
                    "name": "Render each container's arguments",
                    "ansible.builtin.debug": {"msg": start["community.docker.docker_container"]},
                    "vars": start.get("vars", {}),
                    "loop": start["loop"],
                    "register": "__rendered",
                },
                {
                    "name": "Write them",
                    "ansible.builtin.copy": {
                        "content": "{{ __rendered.results | map(attribute='msg') | list | to_json }}",
                        "dest": f"{out}/{scenario}.json",
                        "mode": "0644",
                    },
                },
            ],
        }
        for scenario in SHARED_SCENARIOS
    ]
    done = run_playbook(plays, out / "render.json")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    rendered = {}
    for scenario in SHARED_SCENARIOS:
        for arguments in json.loads((out / f"{scenario}.json").read_text()):
            # Older Ansible leaves a placeholder where a value is omitted; docker_container never sees it.
            kept = {k: v for k, v in arguments.items() if not str(v).startswith("__omit_place_holder__")}
            rendered[arguments["name"]] = kept
    return rendered


def platforms() -> list[Any]:
    return [
        pytest.param(scenario, platform, id=platform["name"])
        for scenario in SHARED_SCENARIOS
        for platform in yaml.safe_load((MOLECULE / scenario / "molecule.yml").read_text(encoding="utf-8"))["platforms"]
    ]


@pytest.mark.parametrize(("scenario", "platform"), platforms())
def test_the_shared_create_starts_each_platform_with_its_run_options(
    started: dict[str, dict[str, Any]], scenario: str, platform: dict[str, Any]
) -> None:
    options = yaml.safe_load(RUN_OPTIONS.read_text(encoding="utf-8"))["airgap_pypi_run_options"][platform["init"]]
    assert started[platform["name"]] == {
        "name": platform["name"],
        "hostname": platform["name"],
        "image": platform["image"],
        "state": "started",
        "restart_policy": "no",
        # A network's fixed subnet is the network's (docker network create), not the container's.
        "networks": [{k: v for k, v in network.items() if k != "subnet"} for network in platform["networks"]],
        "network_mode": platform["networks"][0]["name"],
        **options,
        "labels": {"airgap-pypi.molecule": "true"},
    }, scenario


def test_scripts_test_sh_lists_every_scenario_once_and_runs_each() -> None:
    text = (ROOT / "scripts" / "test.sh").read_text(encoding="utf-8")
    lists = re.findall(r"(?m)^scenarios=\(([^)]*)\)$", text)
    assert len(lists) == 1, "scripts/test.sh has one scenarios=(...) line"
    listed = lists[0].split()
    assert sorted(listed) == SCENARIOS, f"scripts/test.sh lists {listed}; molecule/ has {SCENARIOS}"
    for name in listed:
        assert re.search(rf"(?m)^\s*step {name} [AB] ", text), f"scripts/test.sh runs no step {name} in a lane"


def test_make_molecule_runs_the_scenarios_of_scripts_test_sh() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    target = re.search(r"(?ms)^molecule:[^\n]*\n((?:\t[^\n]*\n)+)", makefile)
    assert target, "the Makefile has a molecule target"
    assert target[1].split() == ["@scripts/test.sh", "molecule"]
    assert "--scenario-name" not in makefile, "the Makefile names scenarios again: call scripts/test.sh"


def test_changed_tasks_names_each_task_that_changed_and_its_host() -> None:
    output = (
        "TASK [pypi_replica : Pin the writer's SSH host key] ****\n"
        "ok: [replica2]\n"
        "changed: [replica1]\n"
        "TASK [pypi_front : Write the site] ***\n"
        "changed: [replica1] => (item=/etc/nginx/sites-available/airgap-pypi)\n"
        "RUNNING HANDLER [pypi_front : Reload nginx] ***\n"
        "changed: [replica1]\n"
        "PLAY RECAP ***\nreplica1 : ok=3 changed=3\n"
    )
    assert containers.changed_tasks(output) == [
        "pypi_replica : Pin the writer's SSH host key -> replica1",
        "pypi_front : Write the site -> replica1",
        "pypi_front : Reload nginx -> replica1",
    ]
    assert containers.changed_tasks("") == []
