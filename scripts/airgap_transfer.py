#!/usr/bin/env python3
"""Signed manifests, incremental archives and media-sized parts for carrying airgap-pypi across the air gap.

One reader and one writer of the manifest format, used by pack_archive.py on the connected side and, carried beside
unpack_archive.sh, by the private side (`python3 airgap_transfer.py unpack ...`). Standard library only: the private
side has nothing else. Everything read from an archive, a manifest or a signature is treated as hostile: reads are
bounded, paths checked, links and device files refused, files written under a temporary name and renamed.

The manifest is text that `sha256sum --check --strict` reads as it is (GNU sha256sum skips lines starting with #):

    # airgap-pypi manifest (sha256sum --check --strict reads this file in the unpacked tree)
    # format: 1
    # kind: full                         full, or delta (carries only what its base lacks or has otherwise)
    # version: 1.2.3                     the repository's VERSION
    # tree: airgap-pypi-1.2.3            the directory the files are unpacked into
    # sequence: 1700000000               monotonic; the private side refuses one not newer than it has
    # base: none                         or: SHA256-OF-THE-BASE-MANIFEST sequence N
    # created: 2023-11-14T22:13:20Z
    # archive: NAME SIZE SHA256          the .tar.gz this manifest describes
    # full-size: SIZE                    what the full archive of this tree weighs (compressed)
    # part: NAME.part001 SIZE SHA256     zero or more: the archive split for media
    # files: N
    # size 1234 mode 644                 then per file: its size and mode, and its sha256sum line
    e3b0c442...  VERSION
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

FORMAT = 1
TITLE = "# airgap-pypi manifest (sha256sum --check --strict reads this file in the unpacked tree)"
PROJECT = "airgap-pypi"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # about 300,000 files
MAX_FILES = 500_000
MAX_SIGNATURE_BYTES = 64 * 1024
MAX_KEYRING_BYTES = 1024 * 1024
MAX_STATE_BYTES = 1024 * 1024
MAX_PATH = 1024
CHUNK = 1024 * 1024
PROGRESS_EVERY = 2000  # files, between progress lines
STATE_NAME = "airgap-pypi-transfer.json"  # in the destination: what was imported last
CURRENT_NAME = "airgap-pypi-transfer.manifest"  # in the destination: the manifest of that import
KEYRING_NAME = "airgap-pypi.keyring"  # beside this script: the pinned public key(s), unless --keyring
MIRROR_FILES = "offline_artifacts/mirror/files/"

SHA256 = re.compile(r"[0-9a-f]{64}")
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,254}")
NUMBER = re.compile(r"0|[1-9][0-9]{0,18}")
CREATED = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
Say = Callable[[str], None]


class TransferError(Exception):
    """A refusal: its text is one line that names the bad value and the fix."""


@dataclass(frozen=True)
class Entry:
    path: str
    size: int
    mode: int  # 0o644 or 0o755
    sha256: str


@dataclass(frozen=True)
class Carried:
    """The archive, or one of its parts: a file carried beside the manifest."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    kind: str  # "full" or "delta"
    version: str
    sequence: int
    base: str | None  # sha256 of the base manifest
    base_sequence: int | None
    created: str
    archive: Carried
    full_size: int
    parts: tuple[Carried, ...]
    files: tuple[Entry, ...]

    @property
    def tree(self) -> str:
        return f"{PROJECT}-{self.version}"

    def by_path(self) -> dict[str, Entry]:
        return {e.path: e for e in self.files}

    def text(self) -> str:
        base = "none" if self.base is None else f"{self.base} sequence {self.base_sequence}"
        a = self.archive
        lines = [
            TITLE,
            f"# format: {FORMAT}",
            f"# kind: {self.kind}",
            f"# version: {self.version}",
            f"# tree: {self.tree}",
            f"# sequence: {self.sequence}",
            f"# base: {base}",
            f"# created: {self.created}",
            f"# archive: {a.name} {a.size} {a.sha256}",
            f"# full-size: {self.full_size}",
            *(f"# part: {p.name} {p.size} {p.sha256}" for p in self.parts),
            f"# files: {len(self.files)}",
        ]
        for e in self.files:
            lines += [f"# size {e.size} mode {e.mode:o}", f"{e.sha256}  {e.path}"]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the format


def check_path(path: str) -> str:
    """A relative path of a regular file inside the tree, or TransferError naming what is wrong with it."""
    why = None
    if not path or len(path) > MAX_PATH:
        why = f"empty or over {MAX_PATH} characters"
    elif any(ord(c) < 32 or ord(c) == 127 for c in path) or "\\" in path:
        why = "a control character or a backslash"
    elif path.startswith("/"):
        why = "an absolute path"
    elif any(part in ("", ".", "..") for part in path.split("/")):
        why = "an empty, '.' or '..' component"
    if why:
        raise TransferError(f"unsafe path {path!r} ({why})")
    return path


def _number(text: str, what: str) -> int:
    if not NUMBER.fullmatch(text):
        raise TransferError(f"manifest: {what} {text!r} is not a number")
    return int(text)


def _carried(text: str, what: str) -> Carried:
    fields = text.split(" ")
    if len(fields) != 3 or not NAME.fullmatch(fields[0]) or not SHA256.fullmatch(fields[2]):
        raise TransferError(f"manifest: {what} {text!r} is not 'NAME SIZE SHA256'")
    return Carried(fields[0], _number(fields[1], f"{what} size"), fields[2])


class _Lines:
    """The manifest's lines, taken in order."""

    def __init__(self, lines: list[str]) -> None:
        self.lines, self.pos = lines, 1

    def header(self, key: str) -> str:
        line = self.lines[self.pos] if self.pos < len(self.lines) else ""
        prefix = f"# {key}: "
        if not line.startswith(prefix):
            raise TransferError(f"manifest line {self.pos + 1}: {line[:80]!r} where '{prefix}...' belongs")
        self.pos += 1
        return line[len(prefix) :]

    def at(self, prefix: str) -> bool:
        return self.pos < len(self.lines) and self.lines[self.pos].startswith(prefix)


def _base(text: str, kind: str, sequence: int) -> tuple[str | None, int | None]:
    if text == "none":
        base, base_sequence = None, None
    else:
        fields = text.split(" ")
        if len(fields) != 3 or not SHA256.fullmatch(fields[0]) or fields[1] != "sequence":
            raise TransferError(f"manifest: base {text!r} is not 'none' or 'SHA256 sequence N'")
        base, base_sequence = fields[0], _number(fields[2], "base sequence")
    if (kind == "delta") != (base is not None):
        raise TransferError(f"manifest: a {kind} archive with base {text!r}")
    if base_sequence is not None and base_sequence >= sequence:
        raise TransferError(f"manifest: sequence {sequence} is not newer than its base's {base_sequence}")
    return base, base_sequence


def _files(lines: list[str], pos: int, count: int) -> tuple[Entry, ...]:
    if count > MAX_FILES or len(lines) - pos != 2 * count:
        raise TransferError(f"manifest: says {count} files but has {(len(lines) - pos) / 2:g} file entries")
    files: list[Entry] = []
    size_line = re.compile(r"# size (0|[1-9][0-9]{0,15}) mode (644|755)")
    for i in range(pos, len(lines), 2):
        match = size_line.fullmatch(lines[i])
        sha, sep, path = lines[i + 1].partition("  ")
        if not match or not sep or not SHA256.fullmatch(sha):
            raise TransferError(f"manifest line {i + 1}: {lines[i][:80]!r} {lines[i + 1][:80]!r} is not a file entry")
        check_path(path)
        if files and path <= files[-1].path:
            raise TransferError(f"manifest: {path!r} is out of order or listed twice")
        files.append(Entry(path, int(match[1]), int(match[2], 8), sha))
    dirs = {p for e in files for p in _parents(e.path)}
    clash = next((e.path for e in files if e.path in dirs), None)
    if clash:
        raise TransferError(f"manifest: {clash!r} is listed both as a file and as a directory")
    return tuple(files)


def parse(text: str) -> Manifest:
    """The manifest in text, parsed strictly: every header line in its order, every file line checked."""
    if "\r" in text or not text.endswith("\n"):
        raise TransferError("manifest: not LF-terminated lines (carried in text mode?)")
    lines = _Lines(text[:-1].split("\n"))
    if lines.lines[0] != TITLE:
        raise TransferError(f"manifest: first line {lines.lines[0][:80]!r} is not {TITLE!r}")
    if (fmt := lines.header("format")) != str(FORMAT):
        raise TransferError(f"manifest: format {fmt!r} is not {FORMAT}: unpack it with the script of its archive")
    kind = lines.header("kind")
    if kind not in ("full", "delta"):
        raise TransferError(f"manifest: kind {kind!r} is neither full nor delta")
    version = lines.header("version")
    if not VERSION.fullmatch(version):
        raise TransferError(f"manifest: version {version!r} is not a version")
    if (tree := lines.header("tree")) != f"{PROJECT}-{version}":
        raise TransferError(f"manifest: tree {tree!r} is not {PROJECT}-{version}")
    sequence = _number(lines.header("sequence"), "sequence")
    base, base_sequence = _base(lines.header("base"), kind, sequence)
    if not CREATED.fullmatch(created := lines.header("created")):
        raise TransferError(f"manifest: created {created!r} is not YYYY-MM-DDTHH:MM:SSZ")
    archive = _carried(lines.header("archive"), "archive")
    full_size = _number(lines.header("full-size"), "full-size")
    parts: list[Carried] = []
    while lines.at("# part: "):
        part = _carried(lines.header("part"), "part")
        if part.name != f"{archive.name}.part{len(parts) + 1:03d}":
            raise TransferError(f"manifest: part {part.name!r} is not {archive.name}.part{len(parts) + 1:03d}")
        parts.append(part)
    if parts and sum(p.size for p in parts) != archive.size:
        raise TransferError(f"manifest: its parts add up to {sum(p.size for p in parts)} bytes, not {archive.size}")
    count = _number(lines.header("files"), "files")
    files = _files(lines.lines, lines.pos, count)
    return Manifest(kind, version, sequence, base, base_sequence, created, archive, full_size, tuple(parts), files)


def _parents(path: str) -> Iterator[str]:
    parts = path.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """A regular file's bytes (no link followed), at most limit of them."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise TransferError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise TransferError(f"{path}: the {what} is not a regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise TransferError(f"{path}: the {what} is over {limit} bytes")
    return data


def load(path: Path) -> tuple[Manifest, str]:
    """The manifest at path and the sha256 of its bytes."""
    return decode(read_bounded(path, MAX_MANIFEST_BYTES, "manifest"), path.name)


def decode(data: bytes, name: str) -> tuple[Manifest, str]:
    """The manifest in data (read once: the bytes checked by gpgv are the bytes parsed) and their sha256."""
    try:
        return parse(data.decode("utf-8")), hashlib.sha256(data).hexdigest()
    except UnicodeDecodeError:
        raise TransferError(f"{name}: the manifest is not UTF-8") from None
    except TransferError as exc:
        raise TransferError(f"{name}: {exc}") from None


def file_sha256(path: Path, limit: int | None = None) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            size += len(chunk)
            if limit is not None and size > limit:
                break
            digest.update(chunk)
    return digest.hexdigest(), size


# --------------------------------------------------------------------------- connected side


def entries(root: Path, names: Iterable[str], say: Say = print) -> list[Entry]:
    """The manifest entries of root's files, hashed (a progress line every PROGRESS_EVERY files)."""
    out = []
    for name in sorted(names):
        path = root / check_path(name)
        sha, size = file_sha256(path)
        out.append(Entry(name, size, 0o755 if os.access(path, os.X_OK) else 0o644, sha))
        if len(out) % PROGRESS_EVERY == 0:
            say(f"  {len(out)} files hashed")
    return out


def changed(files: Sequence[Entry], base: Manifest | None) -> list[Entry]:
    """The files a delta on base carries: those the base lacks or has with other bytes or mode."""
    if base is None:
        return list(files)
    old = base.by_path()
    return [e for e in files if old.get(e.path) != e]


def parse_size(text: str) -> int:
    """650M, 4G, 100K or a number of bytes (powers of 1024)."""
    match = re.fullmatch(r"([1-9][0-9]{0,15})([KMG]?)", text.strip().upper())
    if not match:
        raise TransferError(f"part size {text!r} is not like 650M, 4G, 100K or a number of bytes")
    return int(match[1]) * 1024 ** " KMG".index(match[2] or " ")


def split(archive: Path, part_size: int, say: Say = print) -> list[Carried]:
    """Write ARCHIVE.part001... of at most part_size bytes each; ARCHIVE itself stays."""
    parts: list[Carried] = []
    total = archive.stat().st_size
    count = max(1, -(-total // part_size))
    with archive.open("rb") as src:
        for i in range(1, count + 1):
            target = archive.with_name(f"{archive.name}.part{i:03d}")
            digest, size = hashlib.sha256(), 0
            with target.open("wb") as out:
                while size < part_size and (chunk := src.read(min(CHUNK, part_size - size))):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            parts.append(Carried(target.name, size, digest.hexdigest()))
            say(f"part {i}/{count}: {target.name} ({size / 1e6:.1f} MB)")
    return parts


def sign(manifest: Path, key: str, gpg: str = "gpg") -> Path:
    """A detached binary signature MANIFEST.sig by key, from the operator's GnuPG keyring."""
    sig = manifest.with_name(f"{manifest.name}.sig")
    cmd = [gpg, "--batch", "--yes", "--local-user", key, "--detach-sign", "--output", str(sig), str(manifest)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise TransferError(
            f"gpg could not sign with key {key!r}: {last} (is the key in GNUPGHOME, without a passphrase prompt?)"
        )
    return sig


# --------------------------------------------------------------------------- the report


@dataclass
class Changes:
    new: list[str]
    changed: list[str]
    removed: list[str]
    unchanged: int


def compare(old: Mapping[str, Entry] | None, files: Sequence[Entry]) -> Changes:
    old = old or {}
    now = {e.path for e in files}
    return Changes(
        new=[e.path for e in files if e.path not in old],
        changed=[e.path for e in files if e.path in old and old[e.path] != e],
        removed=sorted(p for p in old if p not in now),
        unchanged=sum(1 for e in files if old.get(e.path) == e),
    )


def area(path: str) -> str:
    return path.split("/", 1)[0] if "/" in path else "(top level)"


def project(path: str) -> str | None:
    """The mirror project a path of offline_artifacts/mirror/files/ belongs to (from the wheel or sdist name)."""
    if not path.startswith(MIRROR_FILES):
        return None
    name = re.split(r"-(?=[0-9])", path[len(MIRROR_FILES) :], maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


MIRROR_YANKED = "offline_artifacts/mirror/yanked.json"  # {carried file name: reason} (build_mirror.py)
MAX_YANKED_BYTES = 4 << 20  # as site.yml reads it


def yank_marks(tree: Path) -> dict[str, int]:
    """How many files of each mirror project the tree's carried mirror marks yanked; {} when it has no readable
    yanked.json (site.yml checks that file strictly; here it only feeds the report)."""
    try:
        marks = json.loads(read_bounded(tree / MIRROR_YANKED, MAX_YANKED_BYTES, "yanked.json"))
    except (TransferError, ValueError):
        return {}
    counts: Counter[str] = Counter()
    for name in marks if isinstance(marks, dict) else ():
        found = project(MIRROR_FILES + str(name))
        if found:
            counts[found] += 1
    return dict(counts)


def report(changes: Changes, carried: int, full: int, kind: str, yanked: Mapping[str, int] | None = None) -> list[str]:
    """The transfer report: counts per area and per mirror project (new, changed, removed, and the files of the
    project the archive's mirror marks yanked), and the carried size against the full archive's."""
    yanked = yanked or {}
    lines = [
        f"transfer report ({kind}): {len(changes.new)} new, {len(changes.changed)} changed, "
        f"{len(changes.removed)} removed, {changes.unchanged} unchanged, {sum(yanked.values())} marked yanked"
    ]
    for title, key in (("area", area), ("mirror project", project)):
        rows: dict[str, Counter[str]] = {}
        for what, paths in (("new", changes.new), ("changed", changes.changed), ("removed", changes.removed)):
            for path in paths:
                name = key(path)
                if name is not None:
                    rows.setdefault(name, Counter())[what] += 1
        columns = ("new", "changed", "removed")
        if key is project:
            for name, count in yanked.items():
                rows.setdefault(name, Counter())["yanked"] = count
            columns += ("yanked",)
        if rows:
            width = max(len(title), *map(len, rows))
            lines.append(f"  {title:<{width}}  " + " ".join(f"{c:>7}" for c in columns))
            lines += [
                f"  {name:<{width}}  " + " ".join(f"{c[column]:>7}" for column in columns)
                for name, c in sorted(rows.items())
            ]
    share = f" ({100 * carried / full:.1f}%)" if full else ""
    lines.append(f"  carried: {carried / 1e6:.1f} MB, the full archive: {full / 1e6:.1f} MB{share}")
    return lines


# --------------------------------------------------------------------------- private side


def verify_signature(data: bytes, manifest: Path, sig: Path, keyring: Path, gpgv: str = "gpgv") -> str:
    """The fingerprint of the pinned key that signed data (the manifest's bytes), or TransferError saying why not.

    gpgv checks copies of the bytes read here, in a private directory: what is parsed afterwards is what was checked."""
    signature = read_bounded(sig, MAX_SIGNATURE_BYTES, "signature")
    pinned = read_bounded(keyring, MAX_KEYRING_BYTES, "keyring")
    with tempfile.TemporaryDirectory(prefix="airgap-gpgv-") as home:  # no default keyring, no agent
        for name, content in (("manifest", data), ("manifest.sig", signature), ("pinned.keyring", pinned)):
            Path(home, name).write_bytes(content)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GNUPGHOME": home, "LC_ALL": "C"}
        cmd = [gpgv, "--status-fd", "1", "--keyring", f"{home}/pinned.keyring", f"{home}/manifest.sig"]
        try:
            out = subprocess.run(
                [*cmd, f"{home}/manifest"], capture_output=True, text=True, env=env, timeout=60, check=False
            )
        except FileNotFoundError:
            raise TransferError(
                f"{gpgv} not found: install the gpgv package (Debian/Ubuntu: gpgv; EL: gnupg2) to check signatures"
            ) from None
    status = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("[GNUPG:] ")]
    words = {s[0]: s[1:] for s in status if s}
    if out.returncode == 0 and "VALIDSIG" in words and "GOODSIG" in words and "BADSIG" not in words:
        return words["VALIDSIG"][-1]  # the primary key's fingerprint (the first field is the signing subkey's)
    if "BADSIG" in words:
        raise TransferError(
            f"{manifest.name}: bad signature by key {words['BADSIG'][0]}: the manifest or its .sig was altered; "
            "carry both again"
        )
    if "NO_PUBKEY" in words or ("ERRSIG" in words and words["ERRSIG"][-2:-1] == ["9"]):
        key = (words.get("NO_PUBKEY") or words.get("ERRSIG") or ["?"])[0]
        raise TransferError(
            f"{manifest.name} is signed by key {key}, which is not pinned in {keyring}: carry an archive signed by a "
            "pinned key, or pin that key (gpg --export KEY >> the keyring) if you trust it"
        )
    detail = "; ".join(" ".join(s) for s in status) or (out.stderr.strip().splitlines() or ["no output"])[-1]
    raise TransferError(f"{sig.name} is not a valid signature of {manifest.name} ({detail}): carry both again")


def load_state(dest: Path) -> dict[str, Any] | None:
    path = dest / STATE_NAME
    if not path.exists() and not path.is_symlink():
        return None
    try:
        state = json.loads(read_bounded(path, MAX_STATE_BYTES, "state file"))
    except ValueError:
        state = None
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("sequence"), int)
        or not NAME.fullmatch(str(state.get("tree")))
    ):
        raise TransferError(f"{path} is not a state file this script wrote: move it away, or restore it")
    return state


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


class Parts:
    """The carried parts read as one stream (for tarfile)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._fh: IO[bytes] | None = None

    def read(self, n: int = -1) -> bytes:
        while self._paths or self._fh:
            if self._fh is None:
                self._fh = self._paths.pop(0).open("rb")
            data = self._fh.read(n if n >= 0 else CHUNK)
            if data:
                return data
            self._fh.close()
            self._fh = None
        return b""

    def close(self) -> None:
        if self._fh:
            self._fh.close()


def check_carried(manifest: Manifest, folder: Path, say: Say) -> list[Path]:
    """The archive or its parts, each checked for size and sha256 against the manifest before anything is read."""
    if not manifest.parts:
        path = folder / manifest.archive.name
        if not path.is_file() or path.is_symlink():
            raise TransferError(f"{path}: no such file (the archive its manifest names): carry it with the manifest")
        sha, size = file_sha256(path, manifest.archive.size)
        if (sha, size) != (manifest.archive.sha256, manifest.archive.size):
            raise TransferError(
                f"{path.name} is corrupted or incomplete: sha256 {sha}, but its manifest says "
                f"{manifest.archive.sha256}. Carry it again."
            )
        say(f"ok: {path.name} matches its manifest")
        return [path]
    missing = [p.name for p in manifest.parts if not (folder / p.name).is_file() or (folder / p.name).is_symlink()]
    if missing:
        raise TransferError(
            f"{', '.join(missing)} missing: all {len(manifest.parts)} parts of {manifest.archive.name} must be carried "
            "into one folder; nothing was unpacked"
        )
    whole = hashlib.sha256()
    for i, part in enumerate(manifest.parts, 1):
        path = folder / part.name
        digest, size = hashlib.sha256(), 0
        with path.open("rb") as fh:
            while size <= part.size and (chunk := fh.read(CHUNK)):
                size += len(chunk)
                digest.update(chunk)
                whole.update(chunk)
        if (digest.hexdigest(), size) != (part.sha256, part.size):
            raise TransferError(
                f"{part.name} is corrupted or incomplete ({size} bytes, sha256 {digest.hexdigest()}; its manifest "
                f"says {part.size} bytes, {part.sha256}): carry that part again; nothing was unpacked"
            )
        say(f"ok: part {i}/{len(manifest.parts)} {part.name} ({part.size / 1e6:.1f} MB)")
    if whole.hexdigest() != manifest.archive.sha256:
        raise TransferError(f"the parts of {manifest.archive.name} join into other bytes than its manifest says")
    return [folder / p.name for p in manifest.parts]


def _safe_source(root: Path, path: str) -> Path | None:
    """root/path if it and every directory above it inside root is real (no link), else None."""
    current = root
    for part in path.split("/"):
        current = current / part
        try:
            mode = current.lstat().st_mode
        except OSError:
            return None
        if stat.S_ISLNK(mode):
            return None
    return current if stat.S_ISREG(mode) else None


def _new_file(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "wb")


def extract(stream: IO[bytes], manifest: Manifest, wanted: Mapping[str, Entry], tmp: Path, say: Say = print) -> None:
    """Write the archive's members into tmp, each exactly one wanted file, checked while it is written."""
    prefix = f"{manifest.tree}/"
    seen: set[str] = set()
    name = manifest.archive.name
    try:
        with tarfile.open(fileobj=stream, mode="r|gz") as tar:
            for member in tar:
                path = member.name[len(prefix) :] if member.name.startswith(prefix) else None
                if path is None or path not in wanted or not member.isreg():
                    raise TransferError(f"{name} holds {member.name!r}, which its manifest does not carry")
                if path in seen:
                    raise TransferError(f"{name} holds {member.name!r} twice")
                seen.add(path)
                entry = wanted[path]
                if member.size != entry.size:
                    raise TransferError(f"{path} in {name} is {member.size} bytes, its manifest says {entry.size}")
                src = tar.extractfile(member)
                assert src is not None
                target = tmp / path
                incoming = target.with_name(f".{target.name}.incoming")
                digest, left = hashlib.sha256(), entry.size
                with _new_file(incoming) as out:
                    while left and (chunk := src.read(min(CHUNK, left))):
                        digest.update(chunk)
                        out.write(chunk)
                        left -= len(chunk)
                if left or digest.hexdigest() != entry.sha256:
                    raise TransferError(
                        f"{path} in {name} does not match its manifest (sha256 {digest.hexdigest()}, manifest says "
                        f"{entry.sha256}): carry the archive again"
                    )
                incoming.chmod(entry.mode)
                incoming.rename(target)
                if len(seen) % PROGRESS_EVERY == 0:
                    say(f"  {len(seen)}/{len(wanted)} files unpacked from {name}")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise TransferError(f"{name}: not a readable tar.gz ({exc})") from None
    lacking = sorted(set(wanted) - seen)
    if lacking:
        raise TransferError(f"{name} lacks {lacking[0]} (and {len(lacking) - 1} more) that its manifest carries")


def link_from_base(base_dir: Path, keep: Sequence[Entry], tmp: Path, say: Say) -> None:
    """The files a delta does not carry, hard-linked (else copied) from the base's tree, each checked."""
    for i, entry in enumerate(keep, 1):
        src = _safe_source(base_dir, entry.path)
        if src is None:
            raise TransferError(
                f"{base_dir.name}/{entry.path} is missing, not a regular file or behind a link: the base tree was "
                "changed since its import; carry the full archive"
            )
        target = tmp / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, target, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            incoming = target.with_name(f".{target.name}.incoming")
            with src.open("rb") as fh, _new_file(incoming) as out:
                shutil.copyfileobj(fh, out, CHUNK)
            incoming.chmod(entry.mode)
            incoming.rename(target)
        sha, size = file_sha256(target, entry.size)
        if (sha, size) != (entry.sha256, entry.size) or stat.S_IMODE(target.stat().st_mode) != entry.mode:
            raise TransferError(
                f"{base_dir.name}/{entry.path} does not match the manifest (sha256 {sha}, manifest says "
                f"{entry.sha256}, or its mode changed): the base tree was changed since its import; carry the full "
                "archive"
            )
        if i % PROGRESS_EVERY == 0:
            say(f"  {i}/{len(keep)} files taken from {base_dir.name}")


def check_bundles(tree: Path, say: Say) -> None:
    """What unpack_archive.sh checked after unpacking: every SHA256SUMS of offline_artifacts/."""
    for folder in ("offline_artifacts", "offline_artifacts/controller", "offline_artifacts/mirror"):
        sums = tree / folder / "SHA256SUMS"
        if not sums.is_file():
            if folder == "offline_artifacts/mirror":
                continue
            raise TransferError(f"{tree.name}/{folder}/SHA256SUMS is missing: the archive was built without its bundle")
        out = subprocess.run(
            ["sha256sum", "--check", "--strict", "--quiet", "SHA256SUMS"],
            cwd=sums.parent,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            detail = ";".join((out.stdout + out.stderr).strip().splitlines()[:5])
            raise TransferError(f"{tree.name}/{folder} failed its checksum check: {detail}")
        lines = sum(1 for _ in sums.open())
        say(f"ok: {tree.name}/{folder}/SHA256SUMS ({lines} files)")


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class _Plan:
    """What an import will do, decided before anything at the destination changes."""

    old: dict[str, Entry] | None  # the files the destination has now (from its manifest), for the report
    base_dir: Path | None  # a delta's base tree
    keep: list[Entry]  # files taken from base_dir
    wanted: dict[str, Entry]  # files taken from the archive
    aside: Path | None  # where the tree it replaces goes


def _signature(
    data: bytes,
    manifest_path: Path,
    pinned: Path | None,
    *,
    required: bool,
    allow_unsigned: bool,
    default: Path | None,
    say: Say,
) -> str | None:
    """The signer's fingerprint; None for an unsigned manifest, taken only with allow_unsigned and no pinned key."""
    sig = manifest_path.with_name(f"{manifest_path.name}.sig")
    if not sig.exists():
        if required:
            raise TransferError(
                f"{manifest_path.name} is not signed ({sig.name} is missing): only signed archives are taken here; "
                "carry the .sig that make bundle SIGN_KEY=... writes beside it"
            )
        if not allow_unsigned:
            raise TransferError(
                f"{manifest_path.name} is not signed ({sig.name} is missing) and no keyring is pinned: whoever could "
                "swap the archive could swap its manifest too. Pin the operator's key (docs/bundle.md, 'Pinning the "
                f"key') and carry the .sig that make bundle SIGN_KEY=... writes, or pass --allow-unsigned to take "
                "it on its manifest alone (recorded)"
            )
        say(f"warning: {manifest_path.name} is not signed; taken on its manifest alone (--allow-unsigned, recorded)")
        return None
    if pinned is None:
        raise TransferError(
            f"{manifest_path.name} is signed, but no keyring is pinned: put the operator's public key in "
            f"{default or KEYRING_NAME} or pass --keyring FILE"
        )
    signer = verify_signature(data, manifest_path, sig, pinned)
    say(f"ok: {manifest_path.name} signed by pinned key {signer}")
    return signer


def _sequence(manifest: Manifest, sha: str, state: dict[str, Any] | None, dest: Path, allow: bool) -> dict[str, Any]:
    """{} when the sequence is newer than the last import, the downgrade record when allowed, else a refusal."""
    if state is None or manifest.sequence > state["sequence"]:
        return {}
    if not allow:
        again = " (it is the one imported last)" if state.get("manifest_sha256") == sha else ""
        raise TransferError(
            f"{manifest.archive.name} has sequence {manifest.sequence}, not newer than sequence {state['sequence']} "
            f"imported into {dest} on {state.get('imported')}{again}: an older or replayed archive; carry the newest, "
            "or pass --allow-downgrade to go back on purpose (it is recorded)"
        )
    return {"time": now_utc(), "from_sequence": state["sequence"], "to_sequence": manifest.sequence, "sha256": sha}


def _plan(manifest: Manifest, state: dict[str, Any] | None, dest: Path) -> _Plan:
    old: dict[str, Entry] | None = None
    if state is not None and (dest / CURRENT_NAME).is_file():
        current, current_sha = load(dest / CURRENT_NAME)
        if current_sha == state.get("manifest_sha256"):
            old = current.by_path()
    keep: list[Entry] = []
    base_dir = None
    if manifest.kind == "delta":
        if state is None or state.get("manifest_sha256") != manifest.base or old is None:
            has = f"sequence {state['sequence']} (manifest sha256 {state.get('manifest_sha256')})" if state else "none"
            raise TransferError(
                f"{manifest.archive.name} is a delta on the archive of sequence {manifest.base_sequence} (manifest "
                f"sha256 {manifest.base}), but {dest} has {has}: carry the full archive, or a delta built with BASE= "
                "the manifest this site has"
            )
        base_dir = dest / str(state["tree"])
        keep = [e for e in manifest.files if old.get(e.path) == e]
    kept = {e.path for e in keep}
    tree = dest / manifest.tree
    aside = None
    if tree.exists() or tree.is_symlink():
        if state is None or state.get("tree") != manifest.tree or tree.is_symlink():
            raise TransferError(f"{tree} exists already: move it away first (keep your inventory outside it)")
        aside = dest / f"{manifest.tree}.seq{state['sequence']}"
        if aside.exists() or aside.is_symlink():
            raise TransferError(f"{aside} exists already (the place for the tree it replaces): move it away first")
    wanted = {e.path: e for e in manifest.files if e.path not in kept}
    return _Plan(old, base_dir, keep, wanted, aside)


def _build(manifest: Manifest, plan: _Plan, carried: Sequence[Path], dest: Path, say: Say) -> Path:
    """The new tree in a temporary directory inside dest, every file checked; removed again on any failure."""
    created_dest = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{manifest.tree}.incoming-", dir=dest))
    try:
        if plan.base_dir is not None:
            link_from_base(plan.base_dir, plan.keep, tmp, say)
        stream = Parts(carried)
        try:
            extract(stream, manifest, plan.wanted, tmp, say)
        finally:
            stream.close()
        say(
            f"ok: {len(manifest.files)} files match the manifest ({len(plan.wanted)} from {manifest.archive.name}, "
            f"{len(plan.keep)} kept)"
        )
        check_bundles(tmp, _renamed(say, tmp.name, manifest.tree))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_dest:
            with contextlib.suppress(OSError):
                dest.rmdir()
        raise
    return tmp


def unpack(
    source: Path,
    dest: Path | None = None,
    *,
    expect_version: str | None = None,
    keyring: Path | None = None,
    allow_downgrade: bool = False,
    allow_unsigned: bool = False,
    default_keyring: Path | None = None,
    say: Say = print,
) -> Path:
    """Check the signed manifest, the archive or its parts, the sequence and the base; build the tree beside dest;
    move it into place. Raises TransferError, with dest untouched, on any refusal. Returns the tree."""
    manifest_path = source if source.name.endswith(".manifest") else source.with_name(f"{source.name}.manifest")
    dest = dest if dest is not None else manifest_path.parent
    state = load_state(dest) if dest.is_dir() else None
    if keyring is not None and not keyring.is_file():
        raise TransferError(f"keyring {keyring} not found: pass the file of the pinned public key(s)")
    pinned = keyring or (default_keyring if default_keyring and default_keyring.is_file() else None)
    required = pinned is not None or bool(state and state.get("signer"))
    if not manifest_path.is_file():
        if required:
            raise TransferError(
                f"{source.name} is not signed (no {manifest_path.name} and .sig beside it): a keyring is pinned, so "
                "only signed archives are taken; carry the .manifest and .manifest.sig that make bundle SIGN_KEY=... "
                "writes"
            )
        raise TransferError(f"{manifest_path}: no such file: carry the archive's .manifest with it")
    data = read_bounded(manifest_path, MAX_MANIFEST_BYTES, "manifest")
    signer = _signature(
        data, manifest_path, pinned, required=required, allow_unsigned=allow_unsigned, default=default_keyring, say=say
    )
    manifest, manifest_sha = decode(data, manifest_path.name)
    if expect_version is not None and manifest.version != expect_version:
        raise TransferError(
            f"{manifest.archive.name} is version {manifest.version}, but version {expect_version} is expected: carry "
            f"the archive of version {expect_version} (or change what you expect)"
        )
    downgrade = _sequence(manifest, manifest_sha, state, dest, allow_downgrade)
    plan = _plan(manifest, state, dest)
    carried = check_carried(manifest, manifest_path.parent, say)
    tmp = _build(manifest, plan, carried, dest, say)

    tree = dest / manifest.tree
    if plan.aside is not None:
        tree.rename(plan.aside)
    tmp.chmod(0o755)
    tmp.rename(tree)
    write_atomically(dest / CURRENT_NAME, manifest.text().encode())
    record = {
        "format": FORMAT,
        "sequence": manifest.sequence,
        "manifest_sha256": manifest_sha,
        "version": manifest.version,
        "tree": manifest.tree,
        "kind": manifest.kind,
        "signer": signer or (state or {}).get("signer"),
        "imported": now_utc(),
        "downgrades": [*_records(state, "downgrades"), *([downgrade] if downgrade else [])],
        # Every import taken without a signature (--allow-unsigned): when, and which manifest.
        "unsigned": [
            *_records(state, "unsigned"),
            *(
                [{"sequence": manifest.sequence, "manifest_sha256": manifest_sha, "imported": now_utc()}]
                if signer is None
                else []
            ),
        ],
    }
    write_atomically(dest / STATE_NAME, (json.dumps(record, indent=2) + "\n").encode())
    if downgrade:
        say(f"downgrade: sequence {downgrade['from_sequence']} -> {manifest.sequence}, recorded in {STATE_NAME}")
    if plan.aside is not None:
        say(f"the tree it replaces is kept as {plan.aside.name}: remove it when you no longer need it")
    size = sum(p.stat().st_size for p in carried)
    marks = yank_marks(tree)
    for line in report(compare(plan.old, manifest.files), size, manifest.full_size or size, manifest.kind, marks):
        say(line)
    return tree


def _records(state: dict[str, Any] | None, key: str) -> list[Any]:
    """The list of records under key in the state file (none when it holds something else there)."""
    found = (state or {}).get(key)
    return list(found) if isinstance(found, list) else []


def _renamed(say: Say, tmp_name: str, tree: str) -> Callable[[str], None]:
    return lambda line: say(line.replace(tmp_name, tree))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="airgap_transfer.py", description=(__doc__ or "").strip().splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("unpack", help="check and unpack a carried archive (what unpack_archive.sh runs)")
    cmd.add_argument("--expect-version", metavar="V")
    cmd.add_argument("--keyring", type=Path, metavar="FILE", help=f"pinned public key(s); default {KEYRING_NAME} here")
    cmd.add_argument("--allow-downgrade", action="store_true", help="take an older sequence (recorded)")
    cmd.add_argument(
        "--allow-unsigned", action="store_true", help="take an unsigned archive where no key is pinned (recorded)"
    )
    cmd.add_argument("archive", type=Path, help="ARCHIVE.tar.gz or ARCHIVE.tar.gz.manifest")
    cmd.add_argument("dest", type=Path, nargs="?", help="default: the archive's directory")
    args = parser.parse_args(argv)
    try:
        tree = unpack(
            args.archive,
            args.dest,
            expect_version=args.expect_version,
            keyring=args.keyring,
            allow_downgrade=args.allow_downgrade,
            allow_unsigned=args.allow_unsigned,
            default_keyring=Path(__file__).resolve().parent / KEYRING_NAME,
        )
    except TransferError as exc:
        print(f"unpack_archive: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"\nUnpacked {tree.name} into {tree.parent}. Next:\n  cd {tree}\n"
        "  scripts/install_controller.sh              # the Ansible toolchain, offline, into .venv-controller\n"
        "  cp -r inventories/production ../my-inventory  # once; list your hosts and set the passwords\n"
        "  .venv-controller/bin/ansible-playbook site.yml -i ../my-inventory"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
