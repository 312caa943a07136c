"""Signed, incremental, split archives (airgap_transfer.py, pack_archive.py, unpack_archive.sh) with real gpg/gpgv.

Every refusal is checked to leave the destination as it was: its listing, modes and bytes before and after.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import airgap_transfer as transfer
from scripts import pack_archive as packer
from scripts.gpg_keys import throwaway_signing_key

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
EPOCH = 1_700_000_000
TREE = "airgap-pypi-9.8.7"
pytestmark = pytest.mark.skipif(not (shutil.which("gpg") and shutil.which("gpgv")), reason="needs gpg and gpgv")


# --------------------------------------------------------------------------- fixtures


@dataclasses.dataclass
class Keys:
    home: Path
    operator: str  # fingerprint
    stranger: str
    keyring: Path  # the operator's public key only: what the private side pins


@pytest.fixture(scope="module")
def keys() -> Iterator[Keys]:
    home = Path(tempfile.mkdtemp(prefix="agpg-"))  # short: gpg-agent's socket path has a length limit
    home.chmod(0o700)
    try:
        operator = throwaway_signing_key(home, "Operator <operator@example.invalid>")
        stranger = throwaway_signing_key(home, "Stranger <stranger@example.invalid>")
        keyring = home / "pinned.keyring"
        env = {**os.environ, "GNUPGHOME": str(home)}
        keyring.write_bytes(
            subprocess.run(["gpg", "--export", operator], env=env, check=True, capture_output=True).stdout
        )
        yield Keys(home, operator, stranger, keyring)
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(home)}, check=False)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def _env(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GNUPGHOME", str(keys.home))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))


def _sums(folder: Path, skip: tuple[str, ...] = ()) -> None:
    """folder/SHA256SUMS of the files under it, but for the subfolders in skip (which have their own)."""
    files = [
        p.relative_to(folder).as_posix()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "SHA256SUMS" and p.relative_to(folder).parts[0] not in skip
    ]
    (folder / "SHA256SUMS").write_text(
        "".join(f"{hashlib.sha256((folder / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    )


def write_bundle(root: Path) -> None:
    _sums(root / "offline_artifacts" / "controller")
    _sums(root / "offline_artifacts" / "mirror")
    _sums(root / "offline_artifacts", skip=("controller", "mirror"))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for folder in ("scripts", "offline_artifacts/controller", "offline_artifacts/mirror/files", "docs"):
        (root / folder).mkdir(parents=True)
    (root / "VERSION").write_text("9.8.7\n")
    (root / "site.yml").write_text("---\n")
    (root / "docs" / "bundle.md").write_text("# bundle\n")
    for script in ("unpack_archive.sh", "airgap_transfer.py"):
        (root / "scripts" / script).write_bytes((SCRIPTS / script).read_bytes())
    (root / "scripts" / "run.sh").write_text("#!/bin/sh\n")
    (root / "scripts" / "run.sh").chmod(0o755)
    (root / "offline_artifacts" / "x.whl").write_bytes(b"server wheel")
    (root / "offline_artifacts" / "controller" / "c.whl").write_bytes(b"controller wheel")
    mirror = root / "offline_artifacts" / "mirror" / "files"
    (mirror / "numpy-2.0.0-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(os.urandom(20_000))
    (mirror / "requests-2.32.0-py3-none-any.whl").write_bytes(b"requests")
    (mirror / "python_dateutil-2.9.0-py2.py3-none-any.whl").write_bytes(b"dateutil")
    write_bundle(root)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def pack(root: Path, out: Path, **kwargs: object) -> tuple[Path, Path, list[str]]:
    """The archive's path, its manifest's path and what packing said."""
    said: list[str] = []
    archive = packer.pack(root, out, say=said.append, **kwargs)  # type: ignore[arg-type]
    return archive, out / f"{archive.name}.manifest", said


def unpack(source: Path, dest: Path, keys: Keys, **kwargs: object) -> tuple[Path, list[str]]:
    said: list[str] = []
    kwargs.setdefault("keyring", keys.keyring)
    tree = transfer.unpack(source, dest, say=said.append, **kwargs)  # type: ignore[arg-type]
    return tree, said


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry under folder (itself included) with its mode and its bytes (a link's target)."""
    if not folder.exists():
        return {}
    out = {".": (folder.lstat().st_mode, b"")}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        data = str(path.readlink()).encode() if path.is_symlink() else path.read_bytes() if path.is_file() else b""
        out[path.relative_to(folder).as_posix()] = (st.st_mode, data)
    return out


def refused(dest: Path, call: object, *args: object, **kwargs: object) -> str:
    """Run call, which must raise TransferError without changing dest; its message."""
    before = snapshot(dest)
    with pytest.raises(transfer.TransferError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    assert snapshot(dest) == before, "a refusal changed the destination"
    return str(info.value)


def flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    path.write_bytes(bytes(data))


def resign(manifest: Path, key: str) -> None:
    transfer.sign(manifest, key)


def change_repo(root: Path) -> None:
    """A new release of the mirror: one file changed, one new, one removed, one (unchanged) marked yanked, and a
    changed script."""
    mirror = root / "offline_artifacts" / "mirror" / "files"
    yanked = {"numpy-2.0.0-cp312-cp312-manylinux_2_28_x86_64.whl": "broken wheel"}
    (root / "offline_artifacts" / "mirror" / "yanked.json").write_text(json.dumps(yanked))
    (mirror / "requests-2.32.0-py3-none-any.whl").unlink()
    (mirror / "requests-2.33.0-py3-none-any.whl").write_bytes(b"requests 2.33")
    (mirror / "python_dateutil-2.9.0-py2.py3-none-any.whl").write_bytes(b"dateutil, rebuilt")
    (root / "site.yml").write_text("---\n# changed\n")
    write_bundle(root)


def tree_files(tree: Path) -> dict[str, tuple[int, bytes]]:
    return {k: (v[0] & 0o777, v[1]) for k, v in snapshot(tree).items() if k != "." and Path(tree, k).is_file()}


# --------------------------------------------------------------------------- the manifest


def _manifest(**changes: object) -> transfer.Manifest:
    files = (
        transfer.Entry("VERSION", 6, 0o644, "a" * 64),
        transfer.Entry("scripts/run.sh", 10, 0o755, "b" * 64),
    )
    parts = (transfer.Carried("a.tar.gz.part001", 60, "c" * 64), transfer.Carried("a.tar.gz.part002", 40, "d" * 64))
    manifest = transfer.Manifest(
        "delta",
        "9.8.7",
        7,
        "e" * 64,
        6,
        "2023-11-14T22:13:20Z",
        transfer.Carried("a.tar.gz", 100, "f" * 64),
        900,
        parts,
        files,
    )
    return dataclasses.replace(manifest, **changes)  # type: ignore[arg-type]


def test_manifest_round_trip() -> None:
    manifest = _manifest()
    text = manifest.text()
    assert transfer.parse(text) == manifest
    assert "# base: " + "e" * 64 + " sequence 6\n" in text and "# part: a.tar.gz.part002 40 " in text
    full = _manifest(kind="full", base=None, base_sequence=None, parts=())
    assert transfer.parse(full.text()) == full


def test_sha256sum_reads_the_manifest_directly(repo: Path, tmp_path: Path, keys: Keys) -> None:
    _, manifest, _ = pack(repo, tmp_path / "dist", sign_key=keys.operator)
    tree, _ = unpack(manifest, tmp_path / "site", keys)
    out = subprocess.run(
        ["sha256sum", "--check", "--strict", "--quiet", str(manifest)],
        check=False,
        cwd=tree,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    (tree / "site.yml").write_text("tampered\n")
    out = subprocess.run(
        ["sha256sum", "--check", "--strict", str(manifest)], check=False, cwd=tree, capture_output=True, text=True
    )
    assert out.returncode == 1 and "site.yml: FAILED" in out.stdout


def _edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


ENTRY = "a" * 64 + "  VERSION"
STRICT = {
    "headers out of order": (
        lambda t: _edit(t, "# kind: delta\n# version: 9.8.7\n", "# version: 9.8.7\n# kind: delta\n"),
        "where '# kind: ...' belongs",
    ),
    "unknown format": (lambda t: _edit(t, "# format: 1", "# format: 2"), "format '2' is not 1"),
    "unknown kind": (lambda t: _edit(t, "# kind: delta", "# kind: partial"), "neither full nor delta"),
    "version with a slash": (lambda t: _edit(t, "# version: 9.8.7", "# version: 9/8"), "is not a version"),
    "tree of another version": (lambda t: _edit(t, "# tree: airgap-pypi-9.8.7", "# tree: airgap-pypi-1"), "tree"),
    "delta without a base": (
        lambda t: _edit(t, "# base: " + "e" * 64 + " sequence 6", "# base: none"),
        "a delta archive with base 'none'",
    ),
    "base not older": (lambda t: _edit(t, " sequence 6", " sequence 7"), "not newer than its base's 7"),
    "sequence not a number": (lambda t: _edit(t, "# sequence: 7", "# sequence: 07"), "sequence '07' is not a number"),
    "created not UTC": (lambda t: _edit(t, "22:13:20Z", "22:13:20+01:00"), "created"),
    "part misnamed": (lambda t: _edit(t, "a.tar.gz.part002", "b.tar.gz.part002"), "is not a.tar.gz.part002"),
    "parts do not add up": (lambda t: _edit(t, "part002 40", "part002 41"), "add up to 101 bytes, not 100"),
    "file count wrong": (lambda t: _edit(t, "# files: 2", "# files: 3"), "says 3 files but has 2"),
    "absolute path": (lambda t: _edit(t, ENTRY, "a" * 64 + "  /etc/passwd"), "an absolute path"),
    "dot-dot": (lambda t: _edit(t, ENTRY, "a" * 64 + "  ../VERSION"), "'..' component"),
    "control character": (lambda t: _edit(t, ENTRY, "a" * 64 + "  VER\x1bSION"), "control character"),
    "backslash": (lambda t: _edit(t, ENTRY, "a" * 64 + "  VER\\SION"), "backslash"),
    "duplicate path": (lambda t: _edit(t, "  scripts/run.sh", "  VERSION"), "out of order or listed twice"),
    "file and directory": (lambda t: _edit(t, ENTRY, "a" * 64 + "  scripts"), "both as a file and as a directory"),
    "mode other than 644/755": (lambda t: _edit(t, "mode 755", "mode 4755"), "is not a file entry"),
    "one space": (lambda t: _edit(t, ENTRY, "a" * 64 + " VERSION"), "is not a file entry"),
    "CRLF": (lambda t: t.replace("\n", "\r\n"), "not LF-terminated"),
    "no final newline": (lambda t: t[:-1], "not LF-terminated"),
    "trailing line": (lambda t: t + "junk\n", "file entries"),
}


@pytest.mark.parametrize("case", list(STRICT))
def test_manifest_parsing_is_strict(case: str) -> None:
    mutate, message = STRICT[case]
    with pytest.raises(transfer.TransferError, match=None) as info:
        transfer.parse(mutate(_manifest().text()))
    assert message in str(info.value)


# --------------------------------------------------------------------------- full archive


def test_full_archive_signed_verified_unpacked(repo: Path, tmp_path: Path, keys: Keys) -> None:
    archive, manifest, said = pack(repo, tmp_path / "dist", sign_key=keys.operator, sequence=41)
    assert (tmp_path / "dist" / f"{manifest.name}.sig").is_file()
    assert (tmp_path / "dist" / "airgap_transfer.py").read_bytes() == (SCRIPTS / "airgap_transfer.py").read_bytes()
    parsed, sha = transfer.load(manifest)
    assert (parsed.kind, parsed.sequence, parsed.base, parsed.created) == ("full", 41, None, "2023-11-14T22:13:20Z")
    assert parsed.archive == transfer.Carried(
        archive.name, archive.stat().st_size, packer.hashlib.sha256(archive.read_bytes()).hexdigest()
    )
    tree, said = unpack(archive, tmp_path / "site", keys)
    assert tree == tmp_path / "site" / TREE
    assert f"ok: {manifest.name} signed by pinned key {keys.operator}" in said
    expected = {p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert set(tree_files(tree)) == expected
    assert all(tree_files(tree)[p][1] == (repo / p).read_bytes() for p in expected)
    assert os.access(tree / "scripts" / "run.sh", os.X_OK) and not os.access(tree / "site.yml", os.X_OK)
    state = json.loads((tmp_path / "site" / transfer.STATE_NAME).read_text())
    assert state["sequence"] == 41 and state["manifest_sha256"] == sha and state["signer"] == keys.operator
    assert (tmp_path / "site" / transfer.CURRENT_NAME).read_bytes() == manifest.read_bytes()
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == sorted(
        [TREE, transfer.STATE_NAME, transfer.CURRENT_NAME]
    )


def test_pack_is_reproducible_with_a_manifest(repo: Path, tmp_path: Path, keys: Keys) -> None:
    first, m1, _ = pack(repo, tmp_path / "a")
    second, m2, _ = pack(repo, tmp_path / "b")
    assert first.read_bytes() == second.read_bytes() and m1.read_bytes() == m2.read_bytes()
    assert transfer.load(m1)[0].sequence == EPOCH  # the default sequence: SOURCE_DATE_EPOCH


# --------------------------------------------------------------------------- deltas


@pytest.fixture
def cycle(repo: Path, tmp_path: Path, keys: Keys) -> dict[str, Path]:
    """A full archive (sequence 1) imported at site/, then the repo changed and a delta on it (sequence 2) packed,
    and the full archive of that same tree (sequence 2) for comparison."""
    full, full_manifest, _ = pack(repo, tmp_path / "full", sign_key=keys.operator, sequence=1)
    unpack(full, tmp_path / "site", keys)
    change_repo(repo)
    delta, delta_manifest, said = pack(repo, tmp_path / "delta", sign_key=keys.operator, base=full_manifest, sequence=2)
    full2, _, _ = pack(repo, tmp_path / "full2", sign_key=keys.operator, sequence=2)
    return {
        "full": full, "full_manifest": full_manifest, "delta": delta, "delta_manifest": delta_manifest,
        "full2": full2, "site": tmp_path / "site", "pack_said": said,  # type: ignore[dict-item]
    }  # fmt: skip


def test_delta_unpacked_onto_its_base_equals_the_full_tree(cycle: dict[str, Path], tmp_path: Path, keys: Keys) -> None:
    with tarfile.open(cycle["delta"]) as tar:
        carried = sorted(m.name.removeprefix(f"{TREE}/") for m in tar.getmembers())
    assert carried == [
        "offline_artifacts/mirror/SHA256SUMS",
        "offline_artifacts/mirror/files/python_dateutil-2.9.0-py2.py3-none-any.whl",
        "offline_artifacts/mirror/files/requests-2.33.0-py3-none-any.whl",
        "offline_artifacts/mirror/yanked.json",
        "site.yml",
    ]
    parsed = transfer.load(cycle["delta_manifest"])[0]
    assert (
        parsed.kind == "delta" and parsed.base == transfer.load(cycle["full_manifest"])[1] and parsed.base_sequence == 1
    )
    tree, said = unpack(cycle["delta"], cycle["site"], keys)
    reference, _ = unpack(cycle["full2"], tmp_path / "reference", keys)
    assert tree_files(tree) == tree_files(reference)
    old = cycle["site"] / f"{TREE}.seq1"  # the tree it replaced, kept aside
    assert (old / "offline_artifacts" / "mirror" / "files" / "requests-2.32.0-py3-none-any.whl").is_file()
    assert (tree / "VERSION").stat().st_ino == (old / "VERSION").stat().st_ino  # unchanged: hard-linked
    assert not [p for p in cycle["site"].iterdir() if "incoming" in p.name]
    assert json.loads((cycle["site"] / transfer.STATE_NAME).read_text())["sequence"] == 2
    assert "transfer report (delta): 2 new, 3 changed, 1 removed, 10 unchanged, 1 marked yanked" in said
    assert any(line.split() == ["numpy", "0", "0", "0", "1"] for line in said), "the private side's report too"


def test_delta_for_another_base_is_refused(cycle: dict[str, Path], repo: Path, tmp_path: Path, keys: Keys) -> None:
    # A site that imported another full archive (sequence 1, other content) cannot take a delta on the first one.
    (repo / "docs" / "bundle.md").write_text("# another tree\n")
    other, _, _ = pack(repo, tmp_path / "other", sign_key=keys.operator, sequence=1)
    unpack(other, tmp_path / "elsewhere", keys)
    message = refused(tmp_path / "elsewhere", unpack, cycle["delta"], tmp_path / "elsewhere", keys)
    base_sha = transfer.load(cycle["full_manifest"])[1]
    assert f"is a delta on the archive of sequence 1 (manifest sha256 {base_sha})" in message
    assert "carry the full archive" in message
    message = refused(tmp_path / "empty", unpack, cycle["delta"], tmp_path / "empty", keys)
    assert "but " + str(tmp_path / "empty") + " has none" in message


def test_flipped_byte_in_the_delta_is_refused(cycle: dict[str, Path], keys: Keys) -> None:
    flip(cycle["delta"])
    message = refused(cycle["site"], unpack, cycle["delta"], cycle["site"], keys)
    assert f"{cycle['delta'].name} is corrupted or incomplete" in message


def test_manifest_that_does_not_match_a_file_is_refused(cycle: dict[str, Path], keys: Keys) -> None:
    # The operator's own key signs a manifest whose sha256 of site.yml is wrong: the file is named.
    manifest = cycle["delta_manifest"]
    real = hashlib.sha256(b"---\n# changed\n").hexdigest()
    manifest.write_text(_edit(manifest.read_text(), f"{real}  site.yml", f"{'0' * 64}  site.yml"))
    resign(manifest, keys.operator)
    message = refused(cycle["site"], unpack, cycle["delta"], cycle["site"], keys)
    assert message.startswith("site.yml in ") and "does not match its manifest" in message


def test_changed_base_tree_is_refused(cycle: dict[str, Path], keys: Keys) -> None:
    (cycle["site"] / TREE / "VERSION").write_text("edited by hand\n")
    message = refused(cycle["site"], unpack, cycle["delta"], cycle["site"], keys)
    assert f"{TREE}/VERSION does not match the manifest" in message


def test_base_file_behind_a_link_is_not_followed(cycle: dict[str, Path], keys: Keys) -> None:
    # Same bytes, but a link the unpacker did not make: it is not followed, and the delta is refused.
    base = cycle["site"] / TREE
    (base / "docs" / "bundle.md").rename(base / "moved.md")
    (base / "docs" / "bundle.md").symlink_to(base / "moved.md")
    message = refused(cycle["site"], unpack, cycle["delta"], cycle["site"], keys)
    assert f"{TREE}/docs/bundle.md is missing, not a regular file or behind a link" in message


def test_replay_is_refused_and_downgrade_is_recorded(cycle: dict[str, Path], keys: Keys) -> None:
    unpack(cycle["delta"], cycle["site"], keys)  # site at sequence 2
    shutil.rmtree(cycle["site"] / f"{TREE}.seq1")
    message = refused(cycle["site"], unpack, cycle["full"], cycle["site"], keys)
    assert "has sequence 1, not newer than sequence 2 imported into" in message and "--allow-downgrade" in message
    message = refused(cycle["site"], unpack, cycle["delta"], cycle["site"], keys)  # the same one again
    assert "(it is the one imported last)" in message
    tree, said = unpack(cycle["full"], cycle["site"], keys, allow_downgrade=True)
    state = json.loads((cycle["site"] / transfer.STATE_NAME).read_text())
    assert state["sequence"] == 1
    [record] = state["downgrades"]
    assert (record["from_sequence"], record["to_sequence"]) == (2, 1) and record["time"].endswith("Z")
    assert any(line.startswith("downgrade: sequence 2 -> 1") for line in said)
    assert (tree / "site.yml").read_text() == "---\n"


# --------------------------------------------------------------------------- signatures


def test_signature_by_an_unpinned_key_is_refused(cycle: dict[str, Path], keys: Keys) -> None:
    resign(cycle["delta_manifest"], keys.stranger)
    message = refused(cycle["site"], unpack, cycle["delta"], cycle["site"], keys)
    assert f"is signed by key {keys.stranger[-16:]}, which is not pinned in {keys.keyring}" in message


def test_bad_signature_is_refused(cycle: dict[str, Path], keys: Keys) -> None:
    manifest = cycle["delta_manifest"]
    manifest.write_text(_edit(manifest.read_text(), "# sequence: 2", "# sequence: 3"))
    message = refused(cycle["site"], unpack, cycle["delta"], cycle["site"], keys)
    assert "bad signature by key" in message


def test_unsigned_archive_is_refused_where_a_keyring_is_pinned(cycle: dict[str, Path], keys: Keys) -> None:
    sig = cycle["delta_manifest"].with_name(f"{cycle['delta_manifest'].name}.sig")
    sig.unlink()
    message = refused(cycle["site"], unpack, cycle["delta"], cycle["site"], keys)
    assert f"is not signed ({sig.name} is missing)" in message
    # Without --keyring too: the site imported a signed archive before.
    message = refused(cycle["site"], unpack, cycle["delta"], cycle["site"], keys, keyring=None)
    assert "is not signed" in message


def test_unsigned_archive_is_refused_unless_allowed_and_then_recorded(repo: Path, tmp_path: Path, keys: Keys) -> None:
    """No key pinned anywhere, a new destination: still refused, unless the operator says --allow-unsigned."""
    _, manifest, _ = pack(repo, tmp_path / "dist")
    site = tmp_path / "site"
    message = refused(site, unpack, manifest, site, keys, keyring=None)
    assert "is not signed" in message and "no keyring is pinned" in message and "--allow-unsigned" in message
    tree, said = unpack(manifest, site, keys, keyring=None, allow_unsigned=True)
    assert (tree / "VERSION").read_text() == "9.8.7\n"
    assert any(line.startswith("warning:") and "not signed" in line for line in said)
    state = json.loads((site / transfer.STATE_NAME).read_text())
    assert [entry["sequence"] for entry in state["unsigned"]] == [transfer.load(manifest)[0].sequence]
    assert state["signer"] is None


def test_unsigned_legacy_archive_is_refused_by_the_shell_entry_point(repo: Path, tmp_path: Path, keys: Keys) -> None:
    # An archive of before manifests (only its .sha256): refused where a keyring is pinned, by --keyring or by
    # airgap-pypi.keyring beside the script; the destinations are new, so no state file is what refuses it.
    archive, manifest, _ = pack(repo, tmp_path / "dist")
    manifest.unlink()
    pinned = tmp_path / "pinned"
    pinned.mkdir()
    for script in ("unpack_archive.sh", "airgap_transfer.py"):
        shutil.copy(SCRIPTS / script, pinned / script)
    for args, script in (
        (["--keyring", str(keys.keyring)], SCRIPTS / "unpack_archive.sh"),
        ([], pinned / "unpack_archive.sh"),
    ):
        if not args:
            shutil.copy(keys.keyring, pinned / transfer.KEYRING_NAME)
        dest = tmp_path / f"site{len(args)}"
        out = run_sh(*args, str(archive), str(dest), script=script)
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith("unpack_archive: error: ") and "is not signed (no " in out.stderr
        assert not dest.exists()


# --------------------------------------------------------------------------- parts


def test_parts_split_and_join(repo: Path, tmp_path: Path, keys: Keys) -> None:
    archive, manifest, said = pack(repo, tmp_path / "dist", sign_key=keys.operator, part_size=8192)
    parsed = transfer.load(manifest)[0]
    assert not archive.exists() and not archive.with_name(archive.name + ".sha256").exists()
    assert len(parsed.parts) >= 3 and all(p.size == 8192 for p in parsed.parts[:-1])
    joined = b"".join((tmp_path / "dist" / p.name).read_bytes() for p in parsed.parts)
    assert len(joined) == parsed.archive.size and hashlib.sha256(joined).hexdigest() == parsed.archive.sha256
    first = next(line for line in said if line.startswith("part "))
    assert first == f"part 1/{len(parsed.parts)}: {archive.name}.part001 (0.0 MB)"
    tree, said = unpack(manifest, tmp_path / "site", keys)
    assert (tree / "VERSION").read_text() == "9.8.7\n"
    assert sum(line.startswith("ok: part ") for line in said) == len(parsed.parts)
    assert transfer.parse_size("650M") == 650 * 1024**2 and transfer.parse_size("4g") == 4 * 1024**3
    with pytest.raises(transfer.TransferError, match="is not like 650M"):
        transfer.parse_size("0.5G")


def test_missing_part_is_refused(repo: Path, tmp_path: Path, keys: Keys) -> None:
    _, manifest, _ = pack(repo, tmp_path / "dist", sign_key=keys.operator, part_size=8192)
    part = tmp_path / "dist" / transfer.load(manifest)[0].parts[1].name
    part.unlink()
    message = refused(tmp_path / "site", unpack, manifest, tmp_path / "site", keys)
    assert message.startswith(f"{part.name} missing: all ") and "nothing was unpacked" in message


def test_corrupted_part_is_refused(repo: Path, tmp_path: Path, keys: Keys) -> None:
    _, manifest, _ = pack(repo, tmp_path / "dist", sign_key=keys.operator, part_size=8192)
    part = tmp_path / "dist" / transfer.load(manifest)[0].parts[1].name
    flip(part, 100)
    (tmp_path / "site").mkdir()
    message = refused(tmp_path / "site", unpack, manifest, tmp_path / "site", keys)
    assert message.startswith(f"{part.name} is corrupted or incomplete") and "carry that part again" in message


# --------------------------------------------------------------------------- hostile archives


def _hostile(tmp_path: Path, add: object) -> Path:
    """An unsigned archive whose manifest matches its bytes, holding what add() puts in (no keyring pinned)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        add(tar)  # type: ignore[operator]
    data = raw.getvalue()
    carry = tmp_path / "carry"
    carry.mkdir()
    archive = carry / "evil.tar.gz"
    archive.write_bytes(data)
    body = b"9.8.7\n"
    manifest = transfer.Manifest(
        "full", "9.8.7", 5, None, None, "2023-11-14T22:13:20Z",
        transfer.Carried(archive.name, len(data), hashlib.sha256(data).hexdigest()), len(data), (),
        (transfer.Entry("VERSION", len(body), 0o644, hashlib.sha256(body).hexdigest()),),
    )  # fmt: skip
    (carry / "evil.tar.gz.manifest").write_text(manifest.text())
    return archive


def _member(name: str, data: bytes = b"9.8.7\n", kind: bytes = tarfile.REGTYPE, link: str = "") -> object:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    return add


def _twice(name: str) -> object:
    one = _member(name)

    def add(tar: tarfile.TarFile) -> None:
        one(tar)  # type: ignore[operator]
        one(tar)  # type: ignore[operator]

    return add


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member(f"{TREE}/VERSION", kind=tarfile.SYMTYPE, link="/etc/passwd"), "which its manifest does not carry"),
        (_member(f"{TREE}/VERSION", kind=tarfile.CHRTYPE), "which its manifest does not carry"),
        (_member(f"{TREE}/../VERSION"), "which its manifest does not carry"),
        (_member(f"{TREE}/VERSION", b"9.8.7\nand more"), "is 14 bytes, its manifest says 6"),
        (_member(f"{TREE}/VERSION", b"1.0.0\n"), "VERSION in evil.tar.gz does not match its manifest"),
        (_twice(f"{TREE}/VERSION"), f"evil.tar.gz holds '{TREE}/VERSION' twice"),
    ],
)
def test_hostile_members_are_refused(tmp_path: Path, keys: Keys, member: object, message: str) -> None:
    archive = _hostile(tmp_path, member)
    got = refused(tmp_path / "site", unpack, archive, tmp_path / "site", keys, keyring=None, allow_unsigned=True)
    assert message in got
    assert not (tmp_path / "etc").exists()


# --------------------------------------------------------------------------- the report


def test_report_counts_per_area_and_project(cycle: dict[str, Path]) -> None:
    said = cycle["pack_said"]
    assert "packed 5 of 15 files: airgap-pypi-9.8.7-20231114-delta2.tar.gz (0.0 MB)" in said
    said = said[next(i for i, line in enumerate(said) if line.startswith("transfer report")) :]
    assert said[0] == "transfer report (delta): 2 new, 3 changed, 1 removed, 10 unchanged, 1 marked yanked"
    rows = {line.split()[0]: line.split()[1:] for line in said[1:-1]}
    assert rows["(top"] == ["level)", "0", "1", "0"]  # site.yml
    assert rows["offline_artifacts"] == ["2", "2", "1"]  # yanked.json is new
    assert rows["requests"] == ["1", "0", "1", "0"] and rows["python-dateutil"] == ["0", "1", "0", "0"]
    assert rows["numpy"] == ["0", "0", "0", "1"], "an unchanged file the mirror now marks yanked"
    delta, full = cycle["delta"].stat().st_size, transfer.load(cycle["delta_manifest"])[0].full_size
    assert full == cycle["full2"].stat().st_size > delta
    assert (
        said[-1]
        == f"  carried: {delta / 1e6:.1f} MB, the full archive: {full / 1e6:.1f} MB ({100 * delta / full:.1f}%)"
    )


# --------------------------------------------------------------------------- the shell entry point


def run_sh(*args: str, script: Path = SCRIPTS / "unpack_archive.sh") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(script), *args], capture_output=True, text=True, check=False)


def test_shell_entry_point_takes_signed_archives_and_refuses_in_one_line(cycle: dict[str, Path], keys: Keys) -> None:
    before = snapshot(cycle["site"])
    resign(cycle["delta_manifest"], keys.stranger)
    out = run_sh("--keyring", str(keys.keyring), str(cycle["delta"]), str(cycle["site"]))
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and out.stderr.startswith("unpack_archive: error: ")
    assert snapshot(cycle["site"]) == before
    resign(cycle["delta_manifest"], keys.operator)
    out = run_sh("--keyring", str(keys.keyring), str(cycle["delta_manifest"]), str(cycle["site"]))
    assert out.returncode == 0, out.stderr
    assert "transfer report (delta)" in out.stdout and "scripts/install_controller.sh" in out.stdout


def test_legacy_archive_without_a_manifest_unpacks_only_when_unsigned_is_allowed(repo: Path, tmp_path: Path) -> None:
    archive, manifest, _ = pack(repo, tmp_path / "dist")
    manifest.unlink()
    out = run_sh("--expect-version", "9.8.7", str(archive), str(tmp_path / "site"))
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "is not signed" in out.stderr and "--allow-unsigned" in out.stderr
    assert not (tmp_path / "site").exists()
    out = run_sh("--expect-version", "9.8.7", "--allow-unsigned", str(archive), str(tmp_path / "site"))
    assert out.returncode == 0, out.stderr
    assert f"ok: {archive.name} matches {archive.name}.sha256" in out.stdout  # the shell's own check
    assert not (tmp_path / "site" / transfer.STATE_NAME).exists()


def test_progress_lines_on_long_work(repo: Path, tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "PROGRESS_EVERY", 5)
    _, manifest, said = pack(repo, tmp_path / "dist", sign_key=keys.operator)
    assert "  10 files hashed" in said
    _, said = unpack(manifest, tmp_path / "site", keys)
    assert f"  10/14 files unpacked from {transfer.load(manifest)[0].archive.name}" in said


def test_a_state_file_not_written_here_is_refused(cycle: dict[str, Path], keys: Keys) -> None:
    state = cycle["site"] / transfer.STATE_NAME
    record = json.loads(state.read_text())
    state.write_text(json.dumps({**record, "tree": "../../etc"}))
    message = refused(cycle["site"], unpack, cycle["delta"], cycle["site"], keys)
    assert message == f"{state} is not a state file this script wrote: move it away, or restore it"


def test_pack_command_line(
    repo: Path, tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What make bundle SIGN_KEY=... PART_SIZE=... SEQUENCE=... and then BASE=... run.
    monkeypatch.setattr(packer, "ROOT", repo)
    out = tmp_path / "dist"
    assert packer.main(["--out", str(out), "--sign-key", keys.operator, "--part-size", "8K", "--sequence", "5"]) == 0
    manifest = out / "airgap-pypi-9.8.7-20231114.tar.gz.manifest"
    text = capsys.readouterr().out
    assert f"{manifest.name} (sequence 5, sha256 " in text and f"and {manifest.name}.sig" in text
    assert f"sh unpack_archive.sh {manifest.name}" in text and f"BASE=dist/{manifest.name}" in text
    change_repo(repo)
    assert packer.main(["--out", str(out), "--base", str(manifest)]) == 0
    text = capsys.readouterr().out
    assert "UNSIGNED: pass SIGN_KEY=" in text and "(unpacking it then needs --allow-unsigned)" in text
    assert "sh unpack_archive.sh --allow-unsigned airgap-pypi-9.8.7-20231114-delta" in text
    delta = transfer.load(out / f"airgap-pypi-9.8.7-20231114-delta{EPOCH}.tar.gz.manifest")[0]
    assert (delta.kind, delta.sequence, delta.base_sequence) == ("delta", EPOCH, 5)
    with pytest.raises(SystemExit, match=r"^error: part size '0.5G' is not like 650M"):
        packer.main(["--out", str(out), "--part-size", "0.5G"])
    with pytest.raises(SystemExit, match=r"^error: sequence 3 is not newer than the base's 5"):
        packer.main(["--out", str(out), "--base", str(manifest), "--sequence", "3"])
