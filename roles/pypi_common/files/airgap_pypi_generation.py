"""Generations of the served tree: the manifest a writer publishes and the pull a read replica makes of it.

A generation is every file a reader serves (pages, metadata, package files) at one moment, described by
``generation.json``::

    {"format": 1, "kind": "generation", "origin": "<writer's tree id>", "sequence": N,
     "created": "<UTC ISO time>", "files": {"<relative path>": [size, "<sha256>"], ...}}

The origin names the writer's tree (made once, kept with it); a replica takes a manifest whose sequence is newer
than the one it serves, or any sequence of another origin (a writer rebuilt, or another one promoted).

The writer keeps it true (``Publisher``: a scan of the served areas of its data directory, e.g. ``packages`` and
``static``, re-hashes only files whose inode, size or times changed, and writes a new generation, under a temporary
name then renamed, when any entry did; hidden names and links are never listed). A replica pulls (``pull``): it
fetches the manifest, and when its sequence is newer than the one it serves, asks rsync for exactly the files it
lists (``--files-from``) into a new generation directory (files it holds already are hard links, ``--link-dest``),
checks every
file against the manifest (size and sha256; a hard link to a file of the current generation with the same entry
is not read again), removes what the manifest does not list, and only then points ``current`` at the new
directory by renaming a new symbolic link over the old one. A reader of ``current`` therefore never sees a file
that is still arriving, nor a page that lists a file the replica lacks. A failed check leaves ``current`` as it
was; the next pull tries again. rsync is the transport (over SSH with a restricted key, or a local path); this
module adds no protocol of its own.

A replica's health, for a load balancer (``--status-dir DIR``): nginx answers ``GET /health`` 200 with
``DIR/ok.json`` while it exists, 503 without it. After every pull the loop writes ``DIR/status.json`` (what the
replica serves, what the writer publishes, whether it answered, the last error, the lag and a sentence saying why
the replica is or is not healthy) and keeps ``DIR/ok.json`` (the same document) there iff the replica is healthy:
it serves a generation and is at most ``--max-lag`` seconds (default 10) behind the writer. The lag is counted on
the replica's monotonic clock (no skew with the writer's) from the start of the last manifest fetch after which it
served exactly the manifest fetched. While the writer does not answer (a fetch that failed, or is not answered
yet), the lag stays what it was at the last answer: reads go on from a replica that was current when the writer
went down; one already behind stays out. A replica is never healthy before its first generation, nor before the
writer first answered since the pull started. A watch thread takes ok.json away as soon as the lag passes the
bound, even in the middle of a long pull. When the pull ends (SIGTERM from supervisord, SIGINT, an error) ok.json
is removed and status.json says the pull is not running; an ok.json left by a run killed outright is removed when
the next one starts. Both files are written under a temporary name in DIR and renamed (a link is never followed);
DIR is made 0755 when missing and refused when it is a link or not a directory. With ``--loop 0`` the files tell
of that one pull and stay as it left them.

Run on the writer:  python3 airgap_pypi_generation.py publish ROOT --area packages --area static [--loop SECONDS]
Run on a replica:   python3 airgap_pypi_generation.py pull SOURCE ROOT [--loop SECONDS] [--keep N]
                    [--status-dir DIR] [--max-lag SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

FORMAT = 1
KIND = "generation"
MANIFEST = "generation.json"
CURRENT = "current"
DEFAULT_AREAS = ("packages", "static")  # a manifest without "areas": files first, then pages
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # 100,000 files take about 15 MB
MAX_FILES = 1_000_000
RSYNC_DEADLINE = 6 * 3600  # seconds one rsync run may take in all
RSYNC_TIMEOUT = 300  # seconds without progress before rsync gives up (--timeout)
CHUNK = 1024 * 1024
_GENERATION_DIR = re.compile(r"^gen-\d{1,18}-[0-9a-f]{12}$")
_ORIGIN = re.compile(r"^[A-Za-z0-9._-]{0,128}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Entry = Tuple[int, str]  # size, sha256


class GenerationError(Exception):
    """A manifest or a pulled tree that cannot be used; the message names what and why."""


# --------------------------------------------------------------------------- the manifest


def check_path(path: str) -> str:
    """A manifest path: relative, normalized, no part empty, hidden, '.' or '..', no NUL or backslash."""
    if not isinstance(path, str) or not path or len(path) > 4096 or "\\" in path or _CONTROL.search(path):
        raise GenerationError(f"manifest: unfit path {path!r} (too long, a backslash or a control character)")
    parts = path.split("/")
    if any(not part or part.startswith(".") for part in parts):
        raise GenerationError(f"manifest: unfit path {path!r} (absolute, empty, hidden or dot part)")
    return path


def parse(data: bytes) -> Dict[str, Any]:
    """The checked manifest in data; GenerationError naming what is wrong."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise GenerationError(f"manifest: {len(data)} bytes, over the limit of {MAX_MANIFEST_BYTES}")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise GenerationError(f"manifest: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("kind") != KIND:
        raise GenerationError(f"manifest: not a format {FORMAT} {KIND} manifest")
    sequence = doc.get("sequence")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or not 0 <= sequence < 10**18:
        raise GenerationError(f"manifest: sequence {sequence!r} is not a whole number from 0")
    origin = doc.get("origin", "")
    if not isinstance(origin, str) or not _ORIGIN.match(origin):
        raise GenerationError(f"manifest: origin {origin!r} is not up to 128 letters, digits, '.', '_' or '-'")
    files = doc.get("files")
    if not isinstance(files, dict) or len(files) > MAX_FILES:
        raise GenerationError("manifest: files is not an object of at most %d entries" % MAX_FILES)
    checked: Dict[str, Entry] = {}
    for path, entry in files.items():
        check_path(path)
        if path == MANIFEST:
            raise GenerationError(f"manifest: lists {MANIFEST} itself")
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], int)
            or isinstance(entry[0], bool)
            or entry[0] < 0
            or not isinstance(entry[1], str)
            or not _SHA256.match(entry[1])
        ):
            raise GenerationError(f"manifest: entry of {path!r} is not [size, sha256]")
        checked[path] = (entry[0], entry[1])
    names = set(checked)
    for path in checked:  # a path may not also be a directory of another path
        head = path.rsplit("/", 1)[0] if "/" in path else ""
        while head:
            if head in names:
                raise GenerationError(f"manifest: {head!r} is both a file and a directory")
            head = head.rsplit("/", 1)[0] if "/" in head else ""
    digest = hashlib.sha256(data).hexdigest()
    return {"origin": origin, "sequence": sequence, "digest": digest, "files": checked, "areas": parse_areas(doc)}


def parse_areas(doc: Dict[str, Any]) -> List[str]:
    """The manifest's served areas, files first (a manifest without them: packages, then static)."""
    areas = doc.get("areas", list(DEFAULT_AREAS))
    if (
        not isinstance(areas, list)
        or len(areas) > 16
        or not all(isinstance(area, str) and "/" not in area for area in areas)
    ):
        raise GenerationError("manifest: areas is not a list of at most 16 directory names")
    for area in areas:
        check_path(area)
    return areas


def render(origin: str, sequence: int, files: Dict[str, Entry], areas: Optional[List[str]] = None) -> bytes:
    """The manifest's bytes (sorted, so one tree gives one text); areas: the served areas, files first."""
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc: Dict[str, Any] = {
        "format": FORMAT,
        "kind": KIND,
        "origin": origin,
        "sequence": sequence,
        "created": created,
    }
    if areas is not None:
        doc["areas"] = list(areas)
    doc["files"] = {path: [size, digest] for path, (size, digest) in sorted(files.items())}
    return json.dumps(doc, separators=(",", ":")).encode()


def file_entry(path: str, limit: Optional[int] = None) -> Entry:
    """(size, sha256) of the plain file at path, opened without following a link; limit bounds the read."""
    # O_NONBLOCK: a FIFO planted at the name does not hold the open; it is then refused as not a plain file.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise GenerationError(f"{path}: not a plain file")
        digest, size = hashlib.sha256(), 0
        while True:
            chunk = handle.read(CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if limit is not None and size > limit:
                raise GenerationError(f"{path}: longer than the {limit} bytes the manifest lists")
            digest.update(chunk)
    return size, digest.hexdigest()


def walk(root: str) -> Dict[str, os.stat_result]:
    """Every plain file under root by relative path (hidden names and links skipped, nothing followed)."""
    found: Dict[str, os.stat_result] = {}
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                path = f"{rel}/{entry.name}" if rel else entry.name
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    pending.append(path)
                elif stat.S_ISREG(info.st_mode) and path != MANIFEST:
                    found[path] = info
    return found


def manifest_of(root: str) -> Dict[str, Entry]:
    """Every served file under root with its size and sha256 (the writer's reference, and the tests')."""
    return {path: file_entry(os.path.join(root, path)) for path in sorted(walk(root))}


def write_atomic(path: str, data: bytes, sync: bool = True) -> None:
    """data at path: written under a temporary name in the same directory (made anew, O_EXCL: never a link's
    target), flushed (sync: to the disk), then renamed over path (a link at path is replaced, not followed)."""
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            if sync:
                os.fsync(out.fileno())
            os.fchmod(out.fileno(), 0o644)
        os.replace(temporary, path)
    except BaseException:
        with_quiet(os.unlink, temporary)
        raise


def with_quiet(call: Any, *args: Any) -> None:
    """call(*args), an OSError ignored (removing what may not be there)."""
    with contextlib.suppress(OSError):
        call(*args)


def write_manifest(
    root: str, origin: str, sequence: int, files: Dict[str, Entry], areas: Optional[List[str]] = None
) -> None:
    """The writer's generation.json in root."""
    write_atomic(os.path.join(root, MANIFEST), render(origin, sequence, files, areas))


# --------------------------------------------------------------------------- the writer's publisher

ORIGIN_FILE = ".generation-origin"


class Publisher:
    """Keeps root/generation.json true to the files under root's areas (e.g. packages and static): each scan
    re-hashes only files whose inode, size or time changed, and writes a new generation (sequence + 1) when any
    entry did. Hidden names (temporary files) and links are never listed.

    The areas come files first (``--area packages --area static``): the first area holds the files the later ones
    (pages, metadata) list. A generation is published only from a consistent view: the first area is walked, then
    the others, then the first again, and the scan publishes only when both walks of the first area agree (same
    paths, inodes, sizes and mtimes). The index writes a file before the page that lists it, so every page seen by
    the second walk names files the first walk saw; when an upload landed in between, nothing is published this
    time and the next scan (one interval later, not at once) looks again."""

    def __init__(self, root: str, areas: List[str]) -> None:
        for area in areas:
            check_path(area)
        self.root, self.areas = root, list(areas)
        self.origin = self._origin()
        self.sequence = -1
        self.known: Dict[str, Tuple[Tuple[int, int, int, int], Entry]] = {}
        self.files: Optional[Dict[str, Entry]] = None
        try:
            with open(os.path.join(root, MANIFEST), "rb") as handle:
                published = parse(handle.read(MAX_MANIFEST_BYTES + 1))
            if published["origin"] == self.origin:
                self.sequence = published["sequence"]
        except (OSError, GenerationError):
            pass

    def _origin(self) -> str:
        """The tree's origin: made once (random), kept in root/.generation-origin."""
        path = os.path.join(self.root, ORIGIN_FILE)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as handle:
                origin = handle.read(129).decode("ascii", "replace").strip()
            if _ORIGIN.match(origin) and origin:
                return origin
        except FileNotFoundError:
            pass
        origin = hashlib.sha256(os.urandom(32)).hexdigest()[:32]
        write_atomic(path, origin.encode() + b"\n")
        return origin

    def _entry(self, path: str, info: os.stat_result) -> Optional[Entry]:
        """The entry of one file, from the cache when its inode, size and times are those hashed; None when the
        file changed while it was read (the next scan sees it settled)."""
        key = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        cached = self.known.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            entry = file_entry(os.path.join(self.root, path))
            after = os.lstat(os.path.join(self.root, path))
        except (OSError, GenerationError):
            return None
        if (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns) != key or entry[0] != info.st_size:
            return None
        self.known[path] = (key, entry)
        return entry

    def _walk(self, area: str) -> Dict[str, os.stat_result]:
        """The plain files of one area ({} when it is missing or a link)."""
        top = os.path.join(self.root, area)
        if not os.path.isdir(top) or os.path.islink(top):
            return {}
        return walk(top)

    @staticmethod
    def _stamps(found: Dict[str, os.stat_result]) -> Dict[str, Tuple[int, int, int]]:
        return {path: (info.st_ino, info.st_size, info.st_mtime_ns) for path, info in found.items()}

    def scan(self) -> bool:
        """Look at the areas once; True when a new generation was written. The first area (the files) is walked
        before and after the others (the pages that list them): when the two walks differ, a file came or went
        while the pages were walked, and nothing is published this time."""
        walked = [(area, self._walk(area)) for area in self.areas]
        if len(walked) > 1 and self._stamps(self._walk(self.areas[0])) != self._stamps(walked[0][1]):
            return False  # an upload landed between the walks: its page may be in this view, its file not
        files: Dict[str, Entry] = {}
        for area, found in walked:
            for rel, info in found.items():
                entry = self._entry(f"{area}/{rel}", info)
                if entry is None:
                    return False  # something is being written: publish once it is whole
                files[f"{area}/{rel}"] = entry
        self.known = {path: value for path, value in self.known.items() if path in files}
        if files == self.files:
            return False
        self.sequence += 1
        write_manifest(self.root, self.origin, self.sequence, files, self.areas)
        self.files = files
        return True


# --------------------------------------------------------------------------- the replica's pull


def served(root: str) -> Optional[Dict[str, Any]]:
    """The manifest of the generation root/current serves (with "generation": its directory's name), or None (no
    generation yet)."""
    link = os.path.join(root, CURRENT)
    try:
        target = os.readlink(link)
    except OSError:
        return None
    if not _GENERATION_DIR.match(target):
        raise GenerationError(f"{link} points at {target!r}, not at a generation this program made")
    with open(os.path.join(root, target, MANIFEST), "rb") as handle:
        manifest = parse(handle.read(MAX_MANIFEST_BYTES + 1))
    manifest["generation"] = target
    return manifest


def summary(manifest: Dict[str, Any], generation: Optional[str] = None) -> Dict[str, Any]:
    """A manifest's sequence, origin and digest (and the directory serving it), without its files."""
    found = {key: manifest[key] for key in ("sequence", "origin", "digest")}
    if generation is not None:
        found["generation"] = generation
    return found


# rsync's exit codes for files that could not be sent (23) or vanished while it ran (24): the check of the
# manifest's files that follows says which, and the served generation stays.
PARTIAL_TRANSFER = (23, 24)


def rsync(argv: List[str], tolerated: Tuple[int, ...] = ()) -> None:
    """Run rsync; GenerationError with the end of what it said when it fails (exit codes in tolerated pass)."""
    try:
        done = subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False, timeout=RSYNC_DEADLINE
        )
    except subprocess.TimeoutExpired:
        raise GenerationError(f"rsync ran longer than {RSYNC_DEADLINE} s and was stopped") from None
    if done.returncode != 0 and done.returncode not in tolerated:
        said = done.stdout.decode("utf-8", "replace")[-2000:].strip()
        raise GenerationError(f"rsync exited {done.returncode}: {said}")


# No --recursive: every run names its files (one file, or --files-from); a name that is a directory on the writer
# is skipped, never copied whole.
RSYNC_SAFE = [
    "--times",
    "--no-links",  # a link from the writer is never created, nor followed
    "--no-devices",
    "--no-specials",
    "--no-owner",
    "--no-group",
    "--chmod=D0755,F0644",
    f"--timeout={RSYNC_TIMEOUT}",
    "--quiet",
]


def fetch_manifest(source: str, root: str, program: str) -> Tuple[Dict[str, Any], bytes]:
    """The writer's manifest (checked) and its bytes, copied through root/.incoming.json."""
    incoming = os.path.join(root, ".incoming.json")
    remove_tree(incoming)
    rsync([program, *RSYNC_SAFE, f"--max-size={MAX_MANIFEST_BYTES}", f"{source.rstrip('/')}/{MANIFEST}", incoming])
    try:
        fd = os.open(incoming, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise GenerationError(
            f"the writer has no {MANIFEST} at {source} (or one over {MAX_MANIFEST_BYTES} bytes)"
        ) from None
    except IsADirectoryError:
        raise GenerationError(f"{MANIFEST} at {source} is not a file") from None
    finally:
        remove_tree(incoming)
    return parse(data), data


def remove_tree(path: str) -> None:
    """Remove a directory this program made (a link there is removed as a link, never followed)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def check_tree(
    new: str, wanted: Dict[str, Entry], old: Optional[str], old_files: Dict[str, Entry]
) -> Tuple[int, Dict[str, str]]:
    """Compare new with wanted: GenerationError when a file is missing; files the manifest does not list (newer
    than it) are removed. Returns how many files were read and {path: what differs} for the others: a hard link
    to the old generation's file with the same entry is that file, checked when it came, and is not read."""
    have = walk(new)
    missing = sorted(set(wanted) - set(have))
    if missing:
        raise GenerationError(f"{len(missing)} files of the manifest did not arrive, first {missing[0]!r}")
    for extra in sorted(set(have) - set(wanted)):  # newer than the manifest: not part of this generation
        os.unlink(os.path.join(new, extra))
    hashed, differ = 0, {}
    for path, (size, digest) in sorted(wanted.items()):
        info = have[path]
        if info.st_size != size:
            differ[path] = f"{info.st_size} bytes, the manifest says {size}"
            continue
        if old is not None and old_files.get(path) == (size, digest):
            try:
                before = os.lstat(os.path.join(old, path))
                if (before.st_ino, before.st_dev) == (info.st_ino, info.st_dev):
                    continue
            except OSError:
                pass
        hashed += 1
        if file_entry(os.path.join(new, path), limit=size) != (size, digest):
            differ[path] = "its sha256 is not the manifest's"
    return hashed, differ


def fetch_listed(argv: List[str], source: str, partial: str, paths: List[str]) -> None:
    """rsync these paths of source (relative to it) into partial, through a list file beside partial."""
    handle, listing = tempfile.mkstemp(dir=os.path.dirname(partial), prefix=".files-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write("".join(path + "\0" for path in paths))
        # NUL-separated (--from0): a name is taken whole, never split or read as a comment.
        rsync([*argv, "--from0", f"--files-from={listing}", f"{source.rstrip('/')}/", partial + "/"], PARTIAL_TRANSFER)
    finally:
        with_quiet(os.unlink, listing)


def pull(
    source: str,
    root: str,
    keep: int = 2,
    program: str = "rsync",
    *,
    seen: Optional[Dict[str, Any]] = None,
    fetched: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> Dict[str, Any]:
    """One pull: {"changed": bool, "sequence": N, "hashed": files read, "serving": ..., "writer": ...}; serving is
    the sequence, origin, digest and generation current serves after it (None: nothing), writer the sequence,
    origin and digest of the writer's manifest it fetched. seen, when given, is filled with these two as they are
    learnt, so that a pull that fails still tells what it knew; fetched(seen) is called once the writer's manifest
    is in, before any file is. GenerationError leaves current as it was."""
    seen = {} if seen is None else seen
    os.makedirs(root, mode=0o755, exist_ok=True)
    if os.path.islink(root) or not os.path.isdir(root):
        raise GenerationError(f"{root} is not a directory")
    current = served(root)  # read before the fetch: known even when the writer cannot be reached
    seen["serving"] = summary(current, current["generation"]) if current is not None else None
    incoming, data = fetch_manifest(source, root, program)
    seen["writer"] = summary(incoming)
    if fetched is not None:
        fetched(seen)
    if current is not None and (
        incoming["digest"] == current["digest"]
        or (incoming["origin"] == current["origin"] and incoming["sequence"] <= current["sequence"])
    ):
        return {"changed": False, "sequence": current["sequence"], "hashed": 0, **seen}
    name = f"gen-{incoming['sequence']}-{incoming['digest'][:12]}"
    partial = os.path.join(root, f".{name}.partial")
    remove_tree(partial)
    # No file longer than the longest the manifest lists is taken (a file grown since is fetched no further).
    largest = max((size for size, _ in incoming["files"].values()), default=0)
    argv = [program, *RSYNC_SAFE, f"--max-size={largest + 1}"]
    old = None
    if current is not None:
        old = os.path.join(root, current["generation"])
        argv.append(f"--link-dest={old}")
    old_files = current["files"] if current else {}
    try:
        # Exactly the manifest's files are asked for (--files-from): nothing else of the writer's directory.
        os.mkdir(partial, 0o755)
        fetch_listed(argv, source, partial, sorted(incoming["files"]))
        hashed, differ = check_tree(partial, incoming["files"], old, old_files)
        if differ:
            # rsync's quick check (size and time) can take a file rewritten in the same second, with the same
            # size, for the old one it links: these are copied again whatever their size and time say.
            again_argv = [program, *RSYNC_SAFE, f"--max-size={largest + 1}", "--ignore-times"]
            fetch_listed(again_argv, source, partial, sorted(differ))
            again, differ = check_tree(partial, incoming["files"], old, old_files)
            hashed += again
        if differ:
            path = min(differ)
            raise GenerationError(f"{len(differ)} files differ from the manifest, first {path}: {differ[path]}")
        write_atomic(os.path.join(partial, MANIFEST), data)
        final = os.path.join(root, name)
        if old is not None and os.path.basename(old) == name:
            raise GenerationError(f"the writer's manifest names the generation served now ({name}) with other content")
        remove_tree(final)  # an earlier pull of the same manifest, never served (current names another)
        os.rename(partial, final)
    except BaseException:
        remove_tree(partial)
        raise
    link = os.path.join(root, f".{CURRENT}.new")
    with_quiet(os.unlink, link)
    os.symlink(name, link)
    os.replace(link, os.path.join(root, CURRENT))
    seen["serving"] = summary(incoming, name)
    prune(root, keep)
    return {"changed": True, "sequence": incoming["sequence"], "hashed": hashed, **seen}


def prune(root: str, keep: int) -> None:
    """Keep the served generation and the newest others up to `keep` directories in all; remove the rest."""
    serving = os.readlink(os.path.join(root, CURRENT))
    made = []
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if _GENERATION_DIR.match(name) and name != serving and not os.path.islink(path):
            made.append((os.lstat(path).st_mtime_ns, name))
    for _, name in sorted(made, reverse=True)[max(keep, 1) - 1 :]:
        remove_tree(os.path.join(root, name))


# --------------------------------------------------------------------------- the replica's health

STATUS = "status.json"
HEALTHY = "ok.json"  # present iff the replica is healthy: nginx answers /health 200 with it, 503 without
MAX_ERROR = 500
NOT_RUNNING = "the pull is not running"


def utc_now() -> str:
    """The wall clock's time, UTC ISO to the second (for people; lags use the monotonic clock)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Health:
    """How far behind the writer a replica is, on its own monotonic clock (no skew with the writer's).

    fresh_at is the start of the latest manifest fetch after which the replica served exactly the manifest fetched
    (same digest). While the writer answers, the lag is now - fresh_at; once a fetch fails it stays at the last
    answered fetch's start - fresh_at: a replica current when it lost the writer stays healthy (reads go on while
    the writer is down), one already behind stays as behind. A fetch not answered yet counts as one that failed
    until it is (begin, then contact). Healthy: serving a generation, lag <= max_lag. Thread-safe: a watch reads
    it while a pull runs."""

    def __init__(self, max_lag: float) -> None:
        self.max_lag = max_lag
        self._lock = threading.Lock()
        self.asking = False  # a manifest fetch is under way, not answered yet
        self.observed = False  # a pull has told what current serves
        self.serving: Optional[Dict[str, Any]] = None  # sequence, origin, digest, generation
        self.writer: Optional[Dict[str, Any]] = None  # the last manifest fetched: sequence, origin, digest
        self.reachable = False
        self.contact_at: Optional[float] = None  # monotonic start of the last fetch that worked
        self.last_contact: Optional[str] = None  # the same moment, UTC ISO
        self.fresh_at: Optional[float] = None
        self.error: Optional[str] = None

    def observe(
        self,
        started: float,
        serving: Optional[Dict[str, Any]],
        writer: Optional[Dict[str, Any]],
        error: Optional[str] = None,
        wall: Optional[str] = None,
    ) -> None:
        """One pull that started (monotonic) at started: what current serves after it (None: nothing), the
        manifest it fetched (None: the fetch failed) and why it failed (None: it worked)."""
        with self._lock:
            self.asking, self.observed = False, True
            self.serving = serving
            self.error = error[:MAX_ERROR] if error else None
            self.reachable = writer is not None
            if writer is not None:
                self._answered(started, serving, writer, wall)

    def begin(self) -> None:
        """A pull starts: until the writer answers, the lag is counted as if it did not."""
        with self._lock:
            self.asking = True

    def contact(
        self, started: float, serving: Optional[Dict[str, Any]], writer: Dict[str, Any], wall: Optional[str] = None
    ) -> None:
        """The writer answered the fetch that started at started with the manifest writer, while the replica
        serves serving; the files may still be to come (a long pull counts its lag from now on)."""
        with self._lock:
            self.asking, self.observed = False, True
            self.serving, self.reachable = serving, True
            self._answered(started, serving, writer, wall)

    def _answered(
        self, started: float, serving: Optional[Dict[str, Any]], writer: Dict[str, Any], wall: Optional[str]
    ) -> None:
        self.writer, self.contact_at, self.last_contact = writer, started, wall or utc_now()
        if serving is not None and serving["digest"] == writer["digest"]:
            self.fresh_at = started

    def lag(self, now: float) -> Optional[float]:
        """Seconds behind the writer at now (monotonic); None when never seen current since the start."""
        if self.fresh_at is None or self.contact_at is None:
            return None
        return (now if self.reachable and not self.asking else self.contact_at) - self.fresh_at

    def reason(self, lag: Optional[float]) -> str:
        """Why the replica is not healthy, or what it serves when it is: one sentence."""
        if not self.observed:
            return "no pull has ended since the program started"
        if self.serving is None:
            return "it serves no generation yet"
        if self.contact_at is None:
            return "the writer has not answered since the pull started, so how far behind it is is not known"
        if lag is None:
            return "it has not served the writer's newest generation since the pull started"
        if lag > self.max_lag:
            return self._behind(lag)
        as_of = "" if self.reachable else " as of its last contact (the writer does not answer)"
        return f"serving the writer's newest generation{as_of}"

    def _behind(self, lag: float) -> str:
        """The reason of a replica behind by more than the bound: a writer gone back to an older generation of the
        tree served (restored from a backup), which a replica does not follow, is named as such."""
        writer, serving = self.writer or {}, self.serving or {}
        if writer and serving and writer["origin"] == serving["origin"] and writer["sequence"] <= serving["sequence"]:
            return (
                f"the writer publishes generation {writer['sequence']} of the tree whose generation"
                f" {serving['sequence']} is served here, which a replica does not go back from; {lag:.3f} s"
                f" without its newest generation, more than the {self.max_lag:g} s allowed"
            )
        return f"it is {lag:.3f} s behind the writer's newest generation, more than the {self.max_lag:g} s allowed"

    def status(self, now: float, running: bool = True, wall: Optional[str] = None) -> Dict[str, Any]:
        """status.json's document at now (monotonic); running False: the pull has stopped, never healthy."""
        with self._lock:
            return self._status(now, running, wall)

    def _status(self, now: float, running: bool, wall: Optional[str]) -> Dict[str, Any]:
        lag = self.lag(now)
        healthy = running and self.serving is not None and lag is not None and lag <= self.max_lag
        writer = self.writer or {}
        return {
            "format": FORMAT,
            "kind": "replica-status",
            "healthy": healthy,
            "reason": self.reason(lag) if running else NOT_RUNNING,
            "serving": {key: self.serving[key] for key in ("sequence", "origin", "generation")}
            if self.serving
            else None,
            "writer": {
                "sequence": writer.get("sequence"),
                "origin": writer.get("origin"),
                "reachable": self.reachable,
                "last_contact": self.last_contact,
                "error": self.error,
            },
            "lag_seconds": None if lag is None else round(lag, 3),
            "max_lag_seconds": float(self.max_lag),
            "checked": wall or utc_now(),
        }


def status_dir(path: str) -> str:
    """path, a directory (made 0755 when missing); GenerationError when it is a link or not a directory."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        os.makedirs(path, mode=0o755, exist_ok=True)
        os.chmod(path, 0o755)  # whatever the umask: nginx reads it
        info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise GenerationError(f"--status-dir {path} is a link or not a directory")
    return path


def write_status(directory: str, doc: Dict[str, Any]) -> None:
    """status.json, and ok.json iff doc is healthy: ok.json is removed before a status that is not is written, and
    written after one that is, so it is never there longer than the replica is healthy."""
    data = json.dumps(doc).encode() + b"\n"
    if not doc["healthy"]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, HEALTHY))
    write_atomic(os.path.join(directory, STATUS), data, sync=False)
    if doc["healthy"]:
        write_atomic(os.path.join(directory, HEALTHY), data, sync=False)


class StatusFiles:
    """The status directory's files, kept true to a Health: written after each pull by the loop and, while a pull
    runs (a long catch-up, an rsync that hangs), by a watch thread as soon as the replica stops being healthy."""

    def __init__(self, directory: str, health: Health) -> None:
        self.directory, self.health = directory, health
        self._lock = threading.Lock()
        self.written: Optional[bool] = None  # healthy as last written (None: unknown)
        self.stopped = False

    def write(self, now: float, running: bool = True, changed_only: bool = False) -> None:
        """Write the status at now; changed_only: only when healthy is not what was last written. Once the status
        of a stopped pull is written, nothing more is."""
        with self._lock:
            if self.stopped:
                return
            doc = self.health.status(now, running)
            if changed_only and doc["healthy"] == self.written:
                return
            self.written = None
            self.stopped = not running
            write_status(self.directory, doc)
            self.written = doc["healthy"]

    def watch(self, tick: float, done: threading.Event) -> None:
        """Every tick until done: rewrite the files when the replica stopped being healthy since they were."""
        while not done.wait(tick):
            try:
                self.write(time.monotonic(), changed_only=True)
            except OSError as exc:
                print(f"the status in {self.directory} could not be written: {exc}", file=sys.stderr, flush=True)


def pull_once(
    source: str, root: str, keep: int, program: str, *, health: Optional[Health] = None, started: float = 0.0
) -> bool:
    """One pass of the replica's loop: pull, say what happened, note it in health (started: the monotonic time
    taken before it). True when the pull worked."""
    wall = utc_now()
    seen: Dict[str, Any] = {}
    error = None
    fetched = None
    if health is not None:
        health.begin()

        def fetched(found: Dict[str, Any]) -> None:
            health.contact(started, found["serving"], found["writer"], wall)

    try:
        done = pull(source, root, keep, program, seen=seen, fetched=fetched)
        if done["changed"]:
            print(f"now serving generation {done['sequence']} ({done['hashed']} files checked)", flush=True)
    except (GenerationError, OSError) as exc:
        error = str(exc) or type(exc).__name__
        print(f"pull failed, current generation kept: {error}", file=sys.stderr, flush=True)
    if health is not None:
        health.observe(started, seen.get("serving"), seen.get("writer"), error, wall)
    return error is None


def stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (supervisord's stop) ends the program through its finally clauses, as SIGINT does."""
    raise SystemExit(128 + signum)


def pull_loop(
    source: str, root: str, keep: int, program: str, *, every: float, directory: Optional[str], max_lag: float
) -> int:
    """The replica's side: pull now, then every `every` seconds (0: once); with a status directory, write the
    health there after each pull, and when the loop ends by a signal or an error, that the pull is not running."""
    health = Health(max_lag) if directory else None
    files = StatusFiles(directory, health) if directory and health else None
    done = threading.Event()
    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        if files is not None:  # an ok.json left by a run killed outright is not taken for this run's
            with_quiet(os.unlink, os.path.join(files.directory, HEALTHY))
            tick = max(0.05, min(1.0, max_lag / 4))
            threading.Thread(target=files.watch, args=(tick, done), name="health-watch", daemon=True).start()
        while True:
            started = time.monotonic()
            worked = pull_once(source, root, keep, program, health=health, started=started)
            if files is not None:
                try:
                    files.write(time.monotonic())
                except OSError as exc:
                    print(f"the status in {directory} could not be written: {exc}", file=sys.stderr, flush=True)
                    with_quiet(os.unlink, os.path.join(files.directory, HEALTHY))
            if not every:
                return 0 if worked else 1
            time.sleep(max(0.0, every - (time.monotonic() - started)))
    except BaseException:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not cut the last status short
        if files is not None:
            with_quiet(os.unlink, os.path.join(files.directory, HEALTHY))
            with_quiet(files.write, time.monotonic(), False)
        raise
    finally:
        done.set()
        signal.signal(signal.SIGTERM, previous)


def publish_loop(root: str, areas: List[str], every: float) -> int:
    """The writer's side: scan now, then every `every` seconds (0: once)."""
    publisher = Publisher(root, areas)
    while True:
        started = time.monotonic()
        try:
            if publisher.scan():
                print(f"published generation {publisher.sequence} ({len(publisher.files or {})} files)", flush=True)
        except (GenerationError, OSError) as exc:
            print(f"publishing failed, generation {publisher.sequence} stays: {exc}", file=sys.stderr, flush=True)
            if not every:
                return 1
        if not every:
            return 0
        time.sleep(max(0.0, every - (time.monotonic() - started)))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Pull the writer's newest generation of the served tree.")
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("pull", help="copy, check, then switch to the writer's newest generation")
    one.add_argument("source", help="rsync source of the writer's tree (user@host:path over SSH, or a path)")
    one.add_argument("root", help="the replica's directory: gen-N directories and the current link")
    one.add_argument("--keep", type=int, default=2, help="generation directories kept (default 2)")
    one.add_argument("--loop", type=float, default=0, help="pull again every so many seconds (0: once)")
    one.add_argument("--rsync", default="rsync", help="the rsync program")
    one.add_argument("--status-dir", help="write status.json there after each pull, and ok.json while healthy")
    one.add_argument(
        "--max-lag", type=float, default=10.0, help="seconds behind the writer a healthy replica may be (default 10)"
    )
    out = sub.add_parser("publish", help="write the writer's generation.json whenever its files change")
    out.add_argument("root", help="the writer's data directory (generation.json is written there)")
    out.add_argument("--area", action="append", required=True, help="a directory under root to publish")
    out.add_argument("--loop", type=float, default=0, help="look again every so many seconds (0: once)")
    args = parser.parse_args(argv)
    if args.command == "publish":
        return publish_loop(args.root, args.area, args.loop)
    if not (args.max_lag > 0 and math.isfinite(args.max_lag)):
        parser.error(f"--max-lag {args.max_lag}: a number of seconds above 0")
    try:
        directory = status_dir(args.status_dir) if args.status_dir else None
    except (GenerationError, OSError) as exc:
        parser.error(str(exc))
    return pull_loop(
        args.source, args.root, args.keep, args.rsync, every=args.loop, directory=directory, max_lag=args.max_lag
    )


if __name__ == "__main__":
    sys.exit(main())
