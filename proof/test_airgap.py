"""The air gap, end to end: an offline controller unpacks the archive, installs its toolchain and runs site.yml.

The controller is a container with `--network none` (only a loopback interface): it reaches the index host
through the docker socket (community.docker.docker_api connection), which is not a network route. The index
host and the client sit on a docker network created `--internal` (no route out). The client then installs
libraries of the carried-in mirror with `--index-url` only. Run by scripts/test.sh (make test).

The archives are signed with a throwaway key whose public half is pinned in the controller, beside the installed
unpack script (docs/bundle.md). After the full archive (v1) a delta (v2: a changed file and a new library in the
mirror) is carried, verified, unpacked onto v1's directory and used; bad media (a flipped byte, an unpinned key,
a delta on another base, a missing part, v1 again after v2) are each refused with the controller's tree unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import airgap_transfer as transfer
from scripts.containers import SYSTEMD_RUN_OPTIONS
from scripts.demo_wheel import build_wheel
from scripts.gpg_keys import throwaway_signing_key
from scripts.pack_archive import pack, source_date_epoch, version

ROOT = Path(__file__).resolve().parent.parent

NETWORK = "airgap-pypi-proof"
INDEX = "airgap-pypi-proof-index"
CLIENT = "airgap-pypi-proof-client"
CONTROLLER = "airgap-pypi-proof-controller"
VERSION = version(ROOT)
REPO = f"/work/airgap-pypi-{VERSION}"
# The toolchain lives outside the tree, so it outlives the tree's replacement by a delta (docs/bundle.md).
VENV = "/work/venv-controller"
PLAYBOOK = [f"{VENV}/bin/ansible-playbook", "site.yml", "-i", "/work/inventory.yml"]
# The verifier as an operator installs it once, with the pinned public key beside it (docs/bundle.md).
PINNED = "/opt/airgap-pypi-unpack"
UNPACK = ["sh", f"{PINNED}/unpack_archive.sh"]
# A new library that v2 carries into the mirror, and a line v2 adds to a file of v1.
NEW_LIBRARY, NEW_VERSION = "airgap-delta-demo", "2.0.0"
CHANGED_LINE = "Carried by the air-gap proof's delta.\n"
INVENTORY = f"""all:
  children:
    pypi_servers:
      hosts:
        {INDEX}:
      vars:
        ansible_connection: community.docker.docker_api
        pypi_bootstrap_expected_version: "{VERSION}"
"""
TIMES: dict[str, float] = {}


def docker(*args: str, check: bool = False, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def on(container: str, *args: str, workdir: str | None = None) -> subprocess.CompletedProcess[str]:
    return docker("exec", *(["-w", workdir] if workdir else []), container, *args)


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"rc={result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def remove_all() -> None:
    docker("rm", "-f", INDEX, CLIENT, CONTROLLER)
    docker("network", "rm", NETWORK)


def copy_tree(manifest: Path, target: Path) -> None:
    """The files the manifest lists, hard-linked from this repository (copied where a link cannot be made), in a
    fresh git repository: pack() takes the files git would track. Change a file only by replacing it."""
    for entry in transfer.load(manifest)[0].files:
        dst = target / entry.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(ROOT / entry.path, dst)
        except OSError:
            shutil.copy2(ROOT / entry.path, dst)
    subprocess.run(["git", "init", "-q", str(target)], check=True)


def replace(path: Path, data: bytes) -> None:
    path.unlink()  # a hard link to this repository's file: never written through
    path.write_bytes(data)


def flip_byte(path: Path, offset: int) -> None:
    """One byte inverted (never rewritten with a byte it may already hold)."""
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


@dataclasses.dataclass(frozen=True)
class Carried:
    """What the proof carries into the controller's /carry (each archive in its own folder)."""

    v1: Path  # the full archive of this tree, signed
    v1_sequence: int
    v2: transfer.Manifest  # the delta on v1, signed: /carry/v2
    stranger: str  # the fingerprint of a key that is not pinned (it signed /carry/stranger)
    other_base: transfer.Manifest  # v3, a delta on v2 (not on v1): /carry/otherbase
    parts: transfer.Manifest  # v2 again, split into parts, the second not carried: /carry/parts


def pack_all(out: Path, keyring: Path, work: Path) -> Carried:
    """Every archive of the proof, signed in a throwaway GNUPGHOME: v1 (this tree) in out, v2 and v3 (copies of
    it, built in work) in folders of out; the public key that signed them in keyring."""
    home = Path(tempfile.mkdtemp(prefix="agpg-"))  # short: gpg-agent's socket path has a length limit
    home.chmod(0o700)
    saved = {k: os.environ.get(k) for k in ("GNUPGHOME", "SOURCE_DATE_EPOCH")}
    try:
        operator = throwaway_signing_key(home, "airgap-pypi proof <proof@example.invalid>")
        stranger = throwaway_signing_key(home, "stranger <stranger@example.invalid>")
        keyring.write_bytes(
            subprocess.run(
                ["gpg", "--export", operator], env={**os.environ, "GNUPGHOME": str(home)}, check=True,
                capture_output=True,
            ).stdout
        )  # fmt: skip
        os.environ["GNUPGHOME"] = str(home)
        v1 = pack(ROOT, out, sign_key=operator, say=lambda _: None)
        v1_manifest = out / f"{v1.name}.manifest"
        # v2: a copy of v1's tree with one file changed and a new library in the mirror. The copies have no commit:
        # their date is v1's, and each delta's sequence one more than its base's.
        os.environ["SOURCE_DATE_EPOCH"] = str(saved["SOURCE_DATE_EPOCH"] or source_date_epoch(ROOT))
        tree = work / "tree"
        copy_tree(v1_manifest, tree)
        replace(tree / "README.md", (ROOT / "README.md").read_bytes() + CHANGED_LINE.encode())
        mirror = tree / "offline_artifacts" / "mirror"
        wheel = build_wheel(mirror / "files", NEW_LIBRARY, NEW_VERSION)
        sums = (mirror / "SHA256SUMS").read_bytes() + f"{transfer.file_sha256(wheel)[0]}  files/{wheel.name}\n".encode()
        replace(mirror / "SHA256SUMS", sums)
        v2 = pack(tree, out / "v2", base=v1_manifest, sign_key=operator, say=lambda _: None)
        v2_manifest = out / "v2" / f"{v2.name}.manifest"
        # The same delta split into parts (about three), the second left out.
        parted = pack(
            tree, out / "parts", base=v1_manifest, sign_key=operator, part_size=v2.stat().st_size // 3 + 1,
            say=lambda _: None,
        )  # fmt: skip
        parts = transfer.load(out / "parts" / f"{parted.name}.manifest")[0]
        (out / "parts" / parts.parts[1].name).unlink()
        # v2 with one byte of the archive flipped; v2 signed by a key that is not pinned.
        shutil.copytree(out / "v2", out / "flipped")
        flip_byte(out / "flipped" / v2.name, 5000)
        shutil.copytree(out / "v2", out / "stranger")
        transfer.sign(out / "stranger" / v2_manifest.name, stranger)
        # v3: a delta on v2, for a controller that has only v1.
        (tree / "docs" / "proof-v3.md").write_text("v3\n")
        v3 = pack(tree, out / "otherbase", base=v2_manifest, sign_key=operator, say=lambda _: None)
        return Carried(
            v1=v1,
            v1_sequence=transfer.load(v1_manifest)[0].sequence,
            v2=transfer.load(v2_manifest)[0],
            stranger=stranger,
            other_base=transfer.load(out / "otherbase" / f"{v3.name}.manifest")[0],
            parts=parts,
        )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(home)}, check=False)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def carried(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Carried]:
    """The archives (what `make bundle` ends with), signed, in the controller's /carry, and the verifier installed
    with the pinned key in /opt/airgap-pypi-unpack."""
    remove_all()
    out = tmp_path_factory.mktemp("media") / "carry"
    keyring = tmp_path_factory.mktemp("pinned") / "airgap-pypi.keyring"
    start = time.monotonic()
    media = pack_all(out, keyring, tmp_path_factory.mktemp("v2"))
    TIMES["pack archives"] = time.monotonic() - start
    docker("network", "create", "--internal", NETWORK, check=True)
    docker("run", "-d", "--name", INDEX, "--hostname", INDEX, "--network", NETWORK, *SYSTEMD_RUN_OPTIONS,
           "airgap-pypi/debian12-systemd:latest", check=True)  # fmt: skip
    docker("run", "-d", "--name", CLIENT, "--network", NETWORK, "airgap-pypi/debian12-client:latest", check=True)
    docker("run", "-d", "--name", CONTROLLER, "--network", "none", "-v", "/var/run/docker.sock:/var/run/docker.sock",
           "airgap-pypi/debian13-controller:latest", check=True)  # fmt: skip
    on(CONTROLLER, "mkdir", "-p", "/work")
    # The media in one copy: /carry (v1 and the scripts), /carry/v2, /carry/parts, ...; the key by another way.
    docker("cp", str(out), f"{CONTROLLER}:/carry", check=True)
    docker("cp", str(keyring), f"{CONTROLLER}:/root/", check=True)
    pin = (
        f"install -d {PINNED} && install -m 0644 /root/airgap-pypi.keyring /carry/airgap_transfer.py {PINNED}/ && "
        f"install -m 0755 /carry/unpack_archive.sh {PINNED}/"
    )
    result = on(CONTROLLER, "sh", "-c", pin)
    assert result.returncode == 0, explain(result)
    on(INDEX, "timeout", "120", "systemctl", "is-system-running", "--wait")
    yield media
    remove_all()
    print("\nproof timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMES.items()))


@pytest.fixture(scope="module")
def archive(carried: Carried) -> Path:
    """v1, the full archive of this tree, in the controller's /carry with its .manifest and .sig."""
    return carried.v1


def test_controller_has_no_network(archive: Path) -> None:
    links = on(CONTROLLER, "ls", "/sys/class/net").stdout.split()
    assert links == ["lo"], links
    probe = "import socket; socket.create_connection(('1.1.1.1', 443), timeout=3)"
    result = on(CONTROLLER, "python3", "-c", probe)
    assert result.returncode != 0 and "unreachable" in result.stderr.lower(), explain(result)


def test_index_host_has_no_route_out(archive: Path) -> None:
    probe = "import socket; socket.create_connection(('1.1.1.1', 443), timeout=3)"
    assert on(INDEX, "python3", "-c", probe).returncode != 0


def test_corrupted_archive_is_refused(archive: Path) -> None:
    # The archive with its signed manifest, one byte of the archive inverted (the manifest's signature is good).
    script = (
        f"mkdir -p /carry/bad && cp /carry/{archive.name} /carry/{archive.name}.manifest "
        f"/carry/{archive.name}.manifest.sig /carry/bad/ && "
        'python3 -c \'import sys; f = open(sys.argv[1], "r+b"); f.seek(5000); b = f.read(1); f.seek(5000); '
        f"f.write(bytes([b[0] ^ 0xFF])); f.close()' /carry/bad/{archive.name} && "
        f"{' '.join(UNPACK)} /carry/bad/{archive.name} /carry/bad"
    )
    result = on(CONTROLLER, "sh", "-c", script)
    assert result.returncode == 1, explain(result)
    assert f"error: {archive.name} is corrupted or incomplete" in result.stderr, explain(result)
    assert on(CONTROLLER, "test", "-e", f"/carry/bad/airgap-pypi-{VERSION}").returncode != 0


def test_archive_of_another_version_is_refused(archive: Path) -> None:
    result = on(CONTROLLER, *UNPACK, "--expect-version", "0.0.1", f"/carry/{archive.name}", "/work")
    assert result.returncode == 1 and f"is version {VERSION}, but version 0.0.1 is expected" in result.stderr


def test_unpack(archive: Path, carried: Carried) -> None:
    result = on(CONTROLLER, *UNPACK, "--expect-version", VERSION, f"/carry/{archive.name}", "/work")
    assert result.returncode == 0, explain(result)
    assert f"ok: {archive.name}.manifest signed by pinned key " in result.stdout, explain(result)
    assert "scripts/install_controller.sh" in result.stdout


def test_toolchain_installs_offline(archive: Path) -> None:
    start = time.monotonic()
    result = on(CONTROLLER, f"{REPO}/scripts/install_controller.sh", VENV)
    TIMES["offline toolchain install"] = time.monotonic() - start
    assert result.returncode == 0, explain(result)
    for line in ("ansible [core 2.2", "ansible.posix ", "community.general ", "community.docker "):
        assert line in result.stdout, explain(result)


def test_inventory_expecting_another_version_stops_the_play(archive: Path) -> None:
    on(CONTROLLER, "sh", "-c", f"cat > /work/inventory.yml <<'EOF'\n{INVENTORY}EOF")
    result = on(CONTROLLER, *PLAYBOOK, "-e", "pypi_bootstrap_expected_version=0.0.1", workdir=REPO)
    assert result.returncode != 0, explain(result)
    assert f"is version {VERSION}" in result.stdout and "expects 0.0.1" in result.stdout, explain(result)


def test_site_yml_from_the_offline_controller(archive: Path) -> None:
    start = time.monotonic()
    result = on(CONTROLLER, *PLAYBOOK, workdir=REPO)
    TIMES["site.yml"] = time.monotonic() - start
    assert result.returncode == 0, explain(result)


def test_rerun_copies_nothing(archive: Path) -> None:
    start = time.monotonic()
    result = on(CONTROLLER, *PLAYBOOK, workdir=REPO)
    TIMES["site.yml re-run"] = time.monotonic() - start
    assert result.returncode == 0 and "changed=0" in result.stdout, explain(result)


def test_client_installs_mirrored_libraries(archive: Path) -> None:
    url = f"http://{INDEX}:8080/simple/"
    script = (
        "rm -rf /var/tmp/v && python3 -m venv /var/tmp/v && PIP_CONFIG_FILE=/dev/null /var/tmp/v/bin/pip install "
        f"--disable-pip-version-check --no-cache-dir --index-url {url} --trusted-host {INDEX} requests click && "
        "/var/tmp/v/bin/python -c 'import requests, click, idna, urllib3, certifi, charset_normalizer; print(\"ok\")'"
    )
    result = on(CLIENT, "sh", "-c", script)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), explain(result)


# Run in the controller: each case's unpack with the pinned verifier, and what changed in /work (every entry's
# mode, a file's size and sha256 (the toolchain's: size and mtime), a link's target) from before it to after it.
# One docker exec for all cases.
REFUSE = r"""
import hashlib, json, os, stat, subprocess, sys

def listing(root):
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            what = ""
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif stat.S_ISREG(st.st_mode) and path.startswith("/work/venv-controller/"):
                what = f"{st.st_size} {st.st_mtime_ns}"  # the toolchain: thousands of files no unpack writes
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    what = f"{st.st_size} {hashlib.file_digest(fh, 'sha256').hexdigest()}"
            out[os.path.relpath(path, root)] = f"{st.st_mode:o} {what}"
    return out

results, before = {}, listing("/work")
for case, args in json.loads(sys.argv[1]).items():
    run = subprocess.run(["sh", "/opt/airgap-pypi-unpack/unpack_archive.sh", *args], capture_output=True, text=True)
    after = listing("/work")
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    results[case] = {"rc": run.returncode, "stderr": run.stderr, "stdout": run.stdout[-3000:], "changed": changed,
                     "entries": len(after)}
    before = after
print(json.dumps(results))
"""


def refuse(cases: dict[str, list[str]]) -> dict[str, dict[str, object]]:
    result = on(CONTROLLER, "python3", "-c", REFUSE, json.dumps(cases))
    assert result.returncode == 0, explain(result)
    return json.loads(result.stdout)


def refused(outcome: dict[str, object], message: str) -> None:
    """The unpack stopped with message and left /work as it was."""
    why = json.dumps(outcome, indent=1)[-4000:]
    assert outcome["rc"] == 1, why
    assert f"unpack_archive: error: {message}" in str(outcome["stderr"]), why
    assert outcome["changed"] == [] and int(str(outcome["entries"])) > 300, why


@pytest.fixture(scope="module")
def refusals(carried: Carried) -> dict[str, dict[str, object]]:
    """The bad media tried while the controller has v1 (each case its own test below)."""
    v2, v3, parts = carried.v2.archive.name, carried.other_base.archive.name, carried.parts.archive.name
    return refuse(
        {
            "flipped": [f"/carry/flipped/{v2}", "/work"],
            "stranger": [f"/carry/stranger/{v2}", "/work"],
            "other_base": [f"/carry/otherbase/{v3}", "/work"],
            "missing_part": [f"/carry/parts/{parts}.manifest", "/work"],
        }
    )


def test_delta_is_smaller_than_the_full_archive(carried: Carried, capsys: pytest.CaptureFixture[str]) -> None:
    v2 = carried.v2
    with capsys.disabled():
        print(f"\nv2 (delta on v1): {v2.archive.size} bytes; the full archive of its tree: {v2.full_size} bytes")
    assert v2.kind == "delta" and 0 < v2.archive.size < v2.full_size, (v2.archive.size, v2.full_size)


def test_delta_with_a_flipped_byte_is_refused(carried: Carried, refusals: dict[str, dict[str, object]]) -> None:
    refused(refusals["flipped"], f"{carried.v2.archive.name} is corrupted or incomplete: sha256 ")


def test_delta_signed_by_an_unpinned_key_is_refused(carried: Carried, refusals: dict[str, dict[str, object]]) -> None:
    outcome = refusals["stranger"]
    refused(outcome, f"{carried.v2.archive.name}.manifest is signed by key ")
    assert f"which is not pinned in {PINNED}/airgap-pypi.keyring" in str(outcome["stderr"]), outcome
    key = str(outcome["stderr"]).split("is signed by key ", 1)[1].split(",", 1)[0]
    assert len(key) >= 16 and carried.stranger.endswith(key), (key, carried.stranger)


def test_delta_for_another_base_is_refused(carried: Carried, refusals: dict[str, dict[str, object]]) -> None:
    v3 = carried.other_base
    refused(
        refusals["other_base"],
        f"{v3.archive.name} is a delta on the archive of sequence {v3.base_sequence} (manifest sha256 {v3.base}), "
        f"but /work has sequence {carried.v1_sequence} ",
    )


def test_delta_with_a_missing_part_is_refused(carried: Carried, refusals: dict[str, dict[str, object]]) -> None:
    parts = carried.parts
    refused(
        refusals["missing_part"],
        f"{parts.parts[1].name} missing: all {len(parts.parts)} parts of {parts.archive.name} must be carried",
    )


def test_delta_unpacks_onto_v1(carried: Carried, refusals: dict[str, dict[str, object]]) -> None:
    start = time.monotonic()
    result = on(CONTROLLER, *UNPACK, "--expect-version", VERSION, f"/carry/v2/{carried.v2.archive.name}", "/work")
    TIMES["delta unpack"] = time.monotonic() - start
    assert result.returncode == 0, explain(result)
    for line in (
        f"ok: {carried.v2.archive.name}.manifest signed by pinned key ",
        "transfer report (delta): 1 new, 2 changed, 0 removed, ",
        f"the tree it replaces is kept as airgap-pypi-{VERSION}.seq{carried.v1_sequence}",
    ):
        assert line in result.stdout, explain(result)
    # The tree is v2's: the changed file and the new library are there, and every file matches the manifest.
    check = on(
        CONTROLLER, "sha256sum", "--check", "--strict", "--quiet", "../airgap-pypi-transfer.manifest", workdir=REPO
    )
    assert check.returncode == 0, explain(check)
    assert on(CONTROLLER, "tail", "-n", "1", f"{REPO}/README.md").stdout == CHANGED_LINE
    wheel = f"{REPO}/offline_artifacts/mirror/files/{NEW_LIBRARY.replace('-', '_')}-{NEW_VERSION}-py3-none-any.whl"
    assert on(CONTROLLER, "test", "-f", wheel).returncode == 0


def test_v1_again_after_v2_is_refused(carried: Carried) -> None:
    outcome = refuse({"replay": [f"/carry/{carried.v1.name}", "/work"]})["replay"]
    refused(
        outcome,
        f"{carried.v1.name} has sequence {carried.v1_sequence}, not newer than sequence {carried.v2.sequence} "
        "imported into /work on ",
    )
    assert "an older or replayed archive" in str(outcome["stderr"]), outcome


def test_site_yml_from_the_delta(carried: Carried) -> None:
    start = time.monotonic()
    result = on(CONTROLLER, *PLAYBOOK, "--tags", "pypi_server", workdir=REPO)
    TIMES["site.yml --tags pypi_server from v2"] = time.monotonic() - start
    assert result.returncode == 0, explain(result)


def test_client_installs_the_library_the_delta_carried(carried: Carried) -> None:
    url = f"http://{INDEX}:8080/simple/"
    module = NEW_LIBRARY.replace("-", "_")
    script = (
        "PIP_CONFIG_FILE=/dev/null /var/tmp/v/bin/pip install --disable-pip-version-check --no-cache-dir "
        f"--index-url {url} --trusted-host {INDEX} {NEW_LIBRARY} && "
        f"/var/tmp/v/bin/python -c 'import {module}; print({module}.VERSION)'"
    )
    result = on(CLIENT, "sh", "-c", script)
    assert result.returncode == 0 and result.stdout.strip().endswith(NEW_VERSION), explain(result)


def test_name_taken_by_other_bytes_stops_before_copying(archive: Path) -> None:
    found = on(INDEX, "sh", "-c", "ls /srv/pypi/packages | grep '^click-'").stdout.split()
    assert found, "click is not in the index"
    on(INDEX, "sh", "-c", f"echo other > /srv/pypi/packages/{found[0]} && rm -f /srv/pypi/packages/idna-*")
    result = on(CONTROLLER, *PLAYBOOK, "--tags", "pypi_server", workdir=REPO)
    assert result.returncode != 0, explain(result)
    assert f"{found[0]} in /srv/pypi/packages" in result.stdout and "nothing was copied" in result.stdout, explain(
        result
    )
    assert not on(INDEX, "sh", "-c", "ls /srv/pypi/packages | grep '^idna-'").stdout.strip()
