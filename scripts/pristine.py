"""Bad-input cases as one playbook run over one pristine container per case.

A scenario's test module lists its cases (an id, the host vars that make the input bad, optionally a step that
prepares the container); `bad_input_runs` starts one never-touched container per case on an internal network of
its own (`airgap-pypi-bad-inputs`), named `airgap-pypi-bad-<id>`, writes one inventory where each case is a host
with its own vars, runs the playbook once over all of them, and yields each host's outcome: the messages of its
failed tasks (from the `fatal: [host]: FAILED! =>` blocks of the default callback with result format yaml), its
PLAY RECAP line and `docker diff` of the container before and after the run. The containers and the network are
removed afterwards, also when a test fails. Containers of a run that was killed before its clean-up are removed
when the next run starts (`claim`: its owner surely ended, or, when that cannot be told, they have exited); any
other container of a case's name stops the run with an error.

Cases can also ask for a run of their own (`Case.run`): the preflight reads some inputs once for all hosts of a
run (`run_once` tasks on the controller, such as the bundle's SHA256SUMS check, read the first host's vars), so
a case that makes one of those bad would fail every host of a shared run, or go unchecked when its host is not
the first. Separate runs go side by side.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .containers import docker, recap, run_options

NETWORK = "airgap-pypi-bad-inputs"
PREFIX = "airgap-pypi-bad-"
# Its value names the run that created the container (new_owner): its OWNER_PARTS, joined with "/".
OWNER_LABEL = "airgap-pypi.bad-inputs"
OWNER_PARTS = ("host", "machine", "pid_namespace", "boot", "pid", "started", "random")
MAX_FORKS = 20
LABELS = ["--label", "airgap-pypi.molecule=true"]
# `fatal: [host]: FAILED! =>`, `fatal: [host -> localhost]: UNREACHABLE! =>`, `failed: [host] (item=...) =>`
HEADER = re.compile(
    r"^(?:fatal: \[(?P<host>[^\]\s]+)(?: -> [^\]]+)?\]: (?:FAILED|UNREACHABLE)!"
    r"|failed: \[(?P<item_host>[^\]\s]+)(?: -> [^\]]+)?\] \(item=.*\)) =>(?P<rest>.*)$"
)


@dataclass(frozen=True)
class Case:
    """One bad input: a host of its own with these vars; prepare(container) runs on it before the playbook."""

    id: str
    host_vars: Mapping[str, Any] = field(default_factory=dict)
    prepare: Callable[[str], None] | None = None
    run: str = "shared"  # cases with the same run name share one ansible-playbook run

    @property
    def host(self) -> str:
        return PREFIX + self.id


@dataclass
class Outcome:
    """What one case's host went through in its run."""

    host: str
    messages: list[str]  # the msg of each failed task of this host, whitespace folded
    counts: dict[str, int]  # its PLAY RECAP line
    before: set[str]  # docker diff before the run (without what the scenario's IGNORED pattern matches)
    after: set[str]
    returncode: int  # of the run
    output: str  # the run's whole output, stdout then stderr
    hosts: list[str]  # every host of the run
    recapped: list[str]  # every host of the run's PLAY RECAP

    @property
    def text(self) -> str:
        return " ".join(self.messages)


@dataclass(frozen=True)
class RunResult:
    """One ansible-playbook run."""

    returncode: int
    stdout: str
    stderr: str


def failures(output: str) -> dict[str, list[str]]:
    """{host: [msg of each failed task]} from the default callback's output with result format yaml."""
    found: dict[str, list[str]] = {}
    lines = output.splitlines()
    for index, line in enumerate(lines):
        header = HEADER.match(line)
        if not header:
            continue
        body = []
        for following in lines[index + 1 :]:
            if following and not following[0].isspace():
                break
            body.append(following)
        after = lines[index + 1 + len(body) : index + 2 + len(body)]
        if after == ["...ignoring"]:  # ignore_errors: not a failure of the host
            continue
        document = header["rest"].strip() or textwrap.dedent("\n".join(body))
        found.setdefault(header["host"] or header["item_host"], []).extend(_messages(document))
    return found


def _messages(document: str) -> list[str]:
    """The msg of a failed result (and of its failed loop items), folded; the raw text when it is not YAML."""
    try:
        result = yaml.safe_load(document)
    except yaml.YAMLError:
        return [" ".join(document.split())]
    if not isinstance(result, dict):
        return [" ".join(str(result).split())]
    messages = [str(result["msg"])] if "msg" in result else []
    messages += [str(item["msg"]) for item in result.get("results") or [] if item.get("failed") and "msg" in item]
    return [" ".join(message.split()) for message in messages] or [" ".join(document.split())]


def _exists(name: str) -> bool:
    return docker("container", "inspect", name, check=False).returncode == 0


def _ensure_network() -> None:
    """Create the internal network unless it is there (another bad-input module may be using it right now)."""
    if docker("network", "inspect", NETWORK, check=False).returncode != 0:
        made = docker("network", "create", "--internal", *LABELS, NETWORK, check=False)
        if made.returncode != 0 and "already exists" not in made.stderr:
            raise RuntimeError(f"docker network create {NETWORK}: {made.stderr.strip()}")


def _remove_network() -> None:
    """Remove the network when no container is attached any more (the last bad-input module out removes it)."""
    attached = docker("network", "inspect", "-f", "{{len .Containers}}", NETWORK, check=False)
    if attached.returncode == 0 and attached.stdout.strip() == "0":
        docker("network", "rm", NETWORK, check=False)


def _start(name: str, image: str, init: str, owner: str) -> None:
    """docker run one pristine container. Never touches a container of that name that it did not make."""
    argv = ["run", "-d", "--name", name, "--hostname", name, "--network", NETWORK]
    # The docker run options of that kind of init, as the scenarios start their containers (no --privileged).
    argv += [*run_options(init), *LABELS, "--label", f"{OWNER_LABEL}={owner}"]
    for _ in range(2):
        started = docker(*argv, image, check=False)
        if started.returncode == 0:
            return
        # The network may have gone with the last user of another module between our check and this run.
        if "network" in started.stderr and "not found" in started.stderr:
            _ensure_network()
            continue
        break
    # A name conflict means another run made it: not ours to remove. Anything else: remove what we may have made.
    if "Conflict" not in started.stderr and _owner(name) == owner:
        docker("rm", "-f", name, check=False)
    raise RuntimeError(f"docker run {name}: {started.stderr.strip()}")


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """The start time of a process (field 22 of /proc/PID/stat); "" when /proc does not show it."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[-1].split()[19] if stat else ""  # the fields after "(comm)" start at 3


def _pid_namespace() -> str:
    try:
        return str(Path("/proc/self/ns/pid").stat().st_ino)
    except OSError:
        return ""


def _here() -> list[str]:
    """Where a process runs: host name, machine id, PID namespace, boot id ("" for what cannot be read)."""
    machine = _read("/etc/machine-id")
    return [socket.gethostname(), machine, _pid_namespace(), _read("/proc/sys/kernel/random/boot_id")]


def new_owner() -> str:
    """The owner label of this process: where it runs, its PID and start time, and a random part."""
    pid = os.getpid()
    return "/".join([*_here(), str(pid), _process_start(pid), uuid.uuid4().hex])


def owner_state(owner: str) -> str:
    """ "gone" when the process an owner label names surely ended (it ran on this machine, in this PID namespace, and
    the machine has booted since, or its PID is gone or names a process started at another time), "alive" when it
    surely runs, "unknown" otherwise (another machine or namespace, an older label, what /proc does not show)."""
    values = owner.split("/")
    if len(values) != len(OWNER_PARTS):
        return "unknown"
    parts = dict(zip(OWNER_PARTS, values, strict=True))
    here = dict(zip(OWNER_PARTS, _here(), strict=False))
    if not parts["pid"].isdigit() or "" in here.values():
        return "unknown"
    if any(parts[key] != here[key] for key in ("host", "machine", "pid_namespace")):
        return "unknown"
    if parts["boot"] != here["boot"]:
        return "gone"
    return _process_state(int(parts["pid"]), parts["started"])


def _process_state(pid: int, started: str) -> str:
    """ "alive" when PID names the process started at that time, "gone" when it is no more or names another."""
    now = _process_start(pid)
    if now:
        return "alive" if now == started else "gone"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "alive"
    return "unknown"  # it exists, and /proc does not show when it started


def abandoned(name: str) -> str:
    """The id of the container of this name when this harness made it (it has the owner label) and no live run uses
    it: its owner is gone, or, when that cannot be told, it has exited (a killed run's containers stop with the
    docker daemon or the machine); "" otherwise (a live run's, one being created, or not the harness's)."""
    template = f'{{{{.Id}}}} {{{{.State.Status}}}} {{{{index .Config.Labels "{OWNER_LABEL}"}}}}'
    found = docker("container", "inspect", "-f", template, name, check=False)
    ident, status, owner = [*found.stdout.strip().split(" ", 2), "", ""][:3]
    if found.returncode != 0 or not owner or owner == "<no value>":
        return ""
    state = owner_state(owner)
    if state == "gone" or (state == "unknown" and status in ("exited", "dead")):
        return ident
    return ""


def _owner(name: str) -> str:
    label = docker("container", "inspect", "-f", f'{{{{index .Config.Labels "{OWNER_LABEL}"}}}}', name, check=False)
    return label.stdout.strip() if label.returncode == 0 else ""


def _changes(name: str, ignored: re.Pattern[str]) -> set[str]:
    return {line for line in docker("diff", name).stdout.splitlines() if not ignored.match(line)}


def _changes_of_all(names: Sequence[str], ignored: re.Pattern[str]) -> dict[str, set[str]]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(names, pool.map(lambda name: _changes(name, ignored), names), strict=True))


def _environment(project: Path) -> dict[str, str]:
    """ansible's environment: the project's roles, the output format failures() reads, no colour."""
    return dict(
        os.environ,
        ANSIBLE_ROLES_PATH=str(project / "roles"),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default",
        ANSIBLE_CALLBACK_RESULT_FORMAT="yaml",
        # Failed results on stdout with the rest, where failures() reads them: molecule's ansible.cfg sends them
        # to stderr (display_failed_stderr).
        ANSIBLE_DISPLAY_FAILED_STDERR="0",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )


def _start_all(cases: Sequence[Case], image: str, init: str, owner: str, started: list[str]) -> None:
    """Start every case's container (adding each one that runs to started), wait for its init, prepare it."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        starts = {case.host: pool.submit(_start, case.host, image, init, owner) for case in cases}
        errors = [str(start.exception()) for start in starts.values() if start.exception()]
        started += [name for name, start in starts.items() if not start.exception()]
        if errors:
            raise RuntimeError("; ".join(errors))
        # An init is up once the container runs a command; then the cases' own preparation.
        list(pool.map(lambda case: docker("exec", case.host, "true"), cases))
        list(pool.map(lambda case: case.prepare(case.host) if case.prepare else None, cases))


def _run_all(inventories: Mapping[str, Path], playbook: Path, project: Path, timeout: int) -> dict[str, RunResult]:
    """ansible-playbook once per inventory, side by side; {run: result}. A run past the timeout is killed."""
    env = _environment(project)
    processes: dict[str, tuple[subprocess.Popen[str], Path, Path]] = {}
    for run, inventory in inventories.items():
        out, err = inventory.with_suffix(".out"), inventory.with_suffix(".err")
        hosts = len(json.loads(inventory.read_text()).popitem()[1]["hosts"])
        argv = ["ansible-playbook", "-i", str(inventory), "--forks", str(min(hosts, MAX_FORKS)), str(playbook)]
        with out.open("w") as stdout, err.open("w") as stderr:
            process = subprocess.Popen(argv, stdout=stdout, stderr=stderr, text=True, env=env, cwd=project)
        processes[run] = (process, out, err)
    deadline = time.monotonic() + timeout
    results: dict[str, RunResult] = {}
    for run, (process, out, err) in processes.items():
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        results[run] = RunResult(process.returncode, out.read_text(), err.read_text())
    return results


def claim(names: Sequence[str]) -> None:
    """Make way for containers of these names: remove those a killed run of this harness left; raise when any
    other container has one of the names (never removing it)."""
    taken = [name for name in names if _exists(name)]
    left = {name: ident for name in taken if (ident := abandoned(name))}
    if left:
        # A run killed before its clean-up (a CI job ended, the machine stopped) left these: ours, and in no use.
        # Removed by id: a container another run made under the name since cannot be hit.
        print(f"removing containers a killed bad-input run left: {' '.join(left)}", file=sys.stderr)
        for ident in left.values():
            docker("rm", "-f", ident, check=False)
        taken = [name for name in taken if name not in left]
    if taken:
        raise RuntimeError(
            f"containers {', '.join(taken)} exist already and were not made by this run: another bad-input run "
            f"that still runs is using them, or something else made them (when neither is so: docker rm -f "
            f"{' '.join(taken)})"
        )


@contextmanager
def bad_input_runs(
    cases: Sequence[Case],
    *,
    playbook: Path,
    project: Path,
    workdir: Path,
    group: str,
    group_vars: Mapping[str, Any],
    image: str,
    init: str,
    ignored: re.Pattern[str],
    timeout: int = 900,
) -> Iterator[dict[str, Outcome]]:
    """Start one pristine container per case, run the playbook once per run name over them; {case id: Outcome}."""
    names = [case.host for case in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"case ids must be unique: {names}")
    claim(names)
    owner = new_owner()
    started: list[str] = []
    runs: dict[str, list[Case]] = {}
    for case in cases:
        runs.setdefault(case.run, []).append(case)
    inventories = {run: workdir / f"{run}.json" for run in runs}
    for run, members in runs.items():
        hosts = {case.host: dict(case.host_vars) for case in members}
        inventories[run].write_text(json.dumps({group: {"hosts": hosts, "vars": dict(group_vars)}}))
    _ensure_network()
    try:
        _start_all(cases, image, init, owner, started)
        # Ansible's first contact leaves /root/.ansible behind (so /root changes); that is not the playbook's
        # doing. One ad hoc ping of every host first; a host where it cannot run a module is fine too.
        every = [argument for inventory in inventories.values() for argument in ("-i", str(inventory))]
        subprocess.run(
            ["ansible", *every, "all", "-m", "ansible.builtin.ping", "--forks", str(MAX_FORKS)],
            capture_output=True,
            env=_environment(project),
            cwd=project,
            timeout=300,
            check=False,
        )
        before = _changes_of_all(names, ignored)
        results = _run_all(inventories, playbook, project, timeout)
        after = _changes_of_all(names, ignored)
        outcomes: dict[str, Outcome] = {}
        for run, members in runs.items():
            result = results[run]
            found, counts = failures(result.stdout), recap(result.stdout)
            for case in members:
                outcomes[case.id] = Outcome(
                    host=case.host,
                    messages=found.get(case.host, []),
                    counts=counts.get(case.host, {}),
                    before=before[case.host],
                    after=after[case.host],
                    returncode=result.returncode,
                    output=result.stdout + result.stderr,
                    hosts=[member.host for member in members],
                    recapped=list(counts),
                )
        yield outcomes
    finally:
        with ThreadPoolExecutor(max_workers=8) as pool:
            ours = [name for name, label in zip(started, pool.map(_owner, started), strict=True) if label == owner]
            list(pool.map(lambda name: docker("rm", "-f", name, check=False), ours))
        _remove_network()


def refused(outcome: Outcome, *needles: str) -> str:
    """Assert that the case's own host failed with every needle in its own failure message(s), that the run went
    on past other hosts' failures (each host of it has its PLAY RECAP line), and that the host did not change."""
    tail = outcome.output[-3000:]
    assert outcome.returncode != 0, tail
    assert sorted(outcome.recapped) == sorted(outcome.hosts), (outcome.recapped, tail)
    assert outcome.counts.get("failed") == 1, (outcome.host, outcome.counts, tail)
    assert outcome.messages, f"no failed task of {outcome.host} in the output:\n{tail}"
    for needle in needles:
        assert needle in outcome.text, f"{needle!r} not in the failure of {outcome.host}: {outcome.text}"
    changed = sorted(outcome.after ^ outcome.before)
    assert not changed, f"a failed check must leave the host as it was; docker diff of {outcome.host} now: {changed}"
    return outcome.text
