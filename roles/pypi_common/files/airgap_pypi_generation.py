"""Generations of the served tree: the manifest a writer publishes and the pull a read replica makes of it.

A generation is every file a reader serves (pages, metadata, package files) at one moment, described by
``generation.json``::

    {"format": 1, "kind": "generation", "origin": "<writer's tree id>", "sequence": N,
     "created": "<UTC ISO time>", "areas": ["packages", "static"],
     "files": {"<relative path>": [size, "<sha256>"], ...}}

(``areas``, files first, is optional: a manifest without it is read as packages, then static.)

The origin names the writer's tree (made once, kept with it); a replica takes a manifest whose sequence is newer
than the one it serves, or any sequence of another origin (a writer rebuilt, or another one promoted).

The writer keeps it true (``Publisher``: a scan of the served areas of its data directory, files first, e.g.
``--area packages --area static``, re-hashes only files whose inode, size or times changed, and writes a new
generation, under a temporary name then renamed, when any entry did; hidden names and links are never listed). It
publishes only a consistent view: the first area (the files) is walked before and after the others (the pages
that list them), and nothing is published when the two walks differ (an upload landed in between; the next scan
looks again), so no generation lists a page naming a file it lacks. The manifest names its areas in that order.

A replica keeps one tree, ``ROOT/tree`` (``static/``, ``packages/``), which ``ROOT/current`` names (a link made
once: nginx serves ``ROOT/current/static`` and ``ROOT/current/packages``), and ``ROOT/applied.json``, the manifest
the tree holds. A pull (``pull``) costs in proportion to what changed: rsync brings the writer's manifest (only
when its size or mtime differ from the copy kept in ``ROOT/.writer``), and when the manifest is newer than the
applied one (or of another origin), the pull asks rsync for exactly the new and changed paths (``--files-from``)
into ``ROOT/.incoming``, checks each against the manifest (size and sha256; one that differs is fetched once more
with ``--ignore-times``, then the pull fails and the tree stays as it was), then applies them with a marker
(``ROOT/.applying``) in place: the first area's files renamed into the tree first, then each later area's
``metadata``, then its other files (the pages), then the removals (pages before files; never a name a new path
took over: a file become a directory, or one under a directory become a file) and the directories left empty, and
the record last. Each rename replaces one name at once; no link in the tree is followed (one at a
destination or a parent is replaced). A reader may see, for the fraction of a second an apply takes, a mix of
old and new pages, each whole; never a page linking to a file the tree lacks (its file came first), never a file
still arriving. A pull that starts with the marker there (a crash mid-apply) checks the tree against the record
first (a stat of every file; the sha256 of those the apply touched or whose size differs) and, when the tree is
not what the record says, records what it holds with no origin, so that the writer's next manifest is applied
over it whatever its sequence. A tree removed by hand takes the record with it (the next pull fetches all).
A replica of the earlier layout (``current`` naming a ``gen-N-<hash>`` directory, one per generation, a copy of
the whole tree each: 1.4 to 1.9 s per pull at 10,000 files) is adopted as it stands: ``current`` keeps naming
that directory, now the tree, and the other generation directories are removed. rsync is the transport
(over SSH with a restricted key, whose forced command starts a read-only rsync daemon for the pull: a source
``HOST::MODULE`` with the remote shell in ``RSYNC_RSH``; or a local path); this module adds no protocol of its own.

A replica's health, for a load balancer (``--status-dir DIR``): nginx answers ``GET /health`` 200 with
``DIR/ok.json`` while it exists, 503 without it. After every pull the loop writes ``DIR/status.json`` (what the
replica serves, what the writer publishes, whether it answered (false only when it or the network did not), the last
error, the lag and a sentence saying why the replica is or is not healthy; ``serving`` names the applied manifest's
sequence, origin and digest, the sha256 of its bytes) and keeps ``DIR/ok.json`` (the same document) there iff the
replica is healthy: it serves a generation and is at most ``--max-lag`` seconds (default 10) behind the writer. The
lag is counted on the replica's monotonic clock (no skew with the writer's) from the start of the last manifest
fetch after which it served exactly the manifest fetched. While the writer does not answer (rsync or ssh exits 255,
10, 12, 30 or 35, rsync runs past its deadline, a local source is not there, or a fetch is not answered yet), the
lag stays what it was when the writer last answered (its manifest came back): reads go on from a replica that was
current when the writer went down; one already behind keeps the lag it had reached and stays out until it catches
up. The status says the writer's newest generation is served only when the digests say so. Any other failure (a full
disk, an unfit manifest, a failed check) lets the lag grow, so a replica that cannot take the writer's generations
leaves the pool once past the bound. A replica is never healthy before its first generation, nor before the writer
first answered since the pull started. A watch thread takes ok.json away as soon as the lag passes the bound, even
in the middle of a long pull. When the pull ends (SIGTERM from supervisord, SIGINT, an error) ok.json is removed and
status.json says the pull is not running; an ok.json left by a run killed outright is removed when the next one
starts. Both files are written under a temporary name in DIR and renamed (a link is never followed); DIR is made
0755 when missing and refused when it is a link or not a directory. With ``--loop 0`` the files tell of that one
pull and stay as it left them.

Run on the writer:  python3 airgap_pypi_generation.py publish ROOT --area packages --area static [--loop SECONDS]
Check a copy:      python3 airgap_pypi_generation.py verify ROOT MANIFEST --area packages
Run on a replica:   python3 airgap_pypi_generation.py pull SOURCE ROOT [--loop SECONDS]
                    [--status-dir DIR] [--max-lag SECONDS]   (--keep N is accepted and ignored)
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
RSYNC_SAID = 2000  # bytes of rsync's output kept (its last ones) to tell why it failed
MAX_MARKER_BYTES = 2 * MAX_MANIFEST_BYTES  # the .applying marker: at most every path of two manifests
CHUNK = 1024 * 1024
_GENERATION_DIR = re.compile(r"^gen-\d{1,18}-[0-9a-f]{12}$")
_ORIGIN = re.compile(r"^[A-Za-z0-9._-]{0,128}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Entry = Tuple[int, str]  # size, sha256


class GenerationError(Exception):
    """A manifest or a pulled tree that cannot be used; the message names what and why."""


class TransportError(GenerationError):
    """The writer or the network did not answer (rsync's or ssh's exit code says so, or rsync ran past its
    deadline): the replica's lag stays as it was; any other failure lets it grow."""


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
                # A restart over an unchanged tree publishes nothing: a new sequence would send every replica
                # to fetch and diff the whole manifest for no change.
                if published["areas"] == self.areas:
                    self.files = dict(published["files"])
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

TREE = "tree"  # the one served tree of a replica made by this program (current -> tree)
APPLIED = "applied.json"  # the manifest the tree holds, written once an apply completed
APPLYING = ".applying"  # present while an apply is under way: the paths it touches
WRITER_COPY = ".writer"  # the last fetched copy of the writer's manifest: rsync's basis for the next fetch
FETCH = ".fetch"  # where a fetch of the manifest lands
INCOMING = ".incoming"  # the new and changed files of one pull, checked before any is renamed into the tree
METADATA = "metadata"  # under a page area (static/metadata): the PEP 658 files, applied before the pages

_read_cache: Dict[Tuple[int, int, int, int], Dict[str, Any]] = {}
READ_CACHE = 4  # manifests kept parsed: the writer's copy and the applied one, by file (inode, size, mtime)


def read_manifest(path: str) -> Dict[str, Any]:
    """The checked manifest in the file at path (opened without following a link); parsed only when no file of
    the same device, inode, size and mtime was (the fetched copy, linked to the last one while the writer's is
    unchanged, and applied.json, a link to a fetched copy, are read once). FileNotFoundError when there is none."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise GenerationError(f"{path}: not a plain file")
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        cached = _read_cache.get(key)
        if cached is not None:
            return cached
        manifest = parse(handle.read(MAX_MANIFEST_BYTES + 1))
    while len(_read_cache) >= READ_CACHE:
        del _read_cache[next(iter(_read_cache))]  # the oldest
    _read_cache[key] = manifest
    return manifest


def served(root: str) -> Optional[Dict[str, Any]]:
    """The manifest the replica's tree holds (root/applied.json), or None (nothing applied yet)."""
    try:
        return read_manifest(os.path.join(root, APPLIED))
    except FileNotFoundError:
        return None


def summary(manifest: Dict[str, Any]) -> Dict[str, Any]:
    """A manifest's sequence, origin and digest (the sha256 of its bytes), without its files."""
    return {key: manifest[key] for key in ("sequence", "origin", "digest")}


def make_dir(path: str) -> None:
    """path a directory, made 0755 when missing; GenerationError when something else is there (a link)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)  # whatever the umask: nginx reads it
        return
    if not stat.S_ISDIR(info.st_mode):
        raise GenerationError(f"{path} is a link or not a directory")


def open_tree(root: str) -> str:
    """The served tree's directory, what root/current names: root/tree, made with the link (a new link renamed
    into place) when there is no current yet. A replica of the earlier layout (current -> gen-N-<hash>, a new
    directory per generation) is adopted as it stands: current keeps naming the served generation directory,
    which becomes the tree (no moment without it), its manifest becomes the applied record, and the other
    generation directories are removed."""
    link = os.path.join(root, CURRENT)
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        target = None
    except OSError:
        raise GenerationError(f"{link} is not a link") from None
    if target is None:
        make_dir(os.path.join(root, TREE))
        new = os.path.join(root, f".{CURRENT}.new")
        with_quiet(os.unlink, new)
        os.symlink(TREE, new)
        os.replace(new, link)
        target = TREE
    elif _GENERATION_DIR.match(target):
        adopt(root, target)
    elif target != TREE:
        raise GenerationError(f"{link} points at {target!r}, not at a tree this program made")
    tree = os.path.join(root, target)
    if not os.path.lexists(tree):  # removed by hand: what the record says is gone, the next pull fetches all
        with_quiet(os.unlink, os.path.join(root, APPLIED))
    make_dir(tree)
    return tree


def adopt(root: str, name: str) -> None:
    """The served generation directory name (earlier layout) taken as the tree: its generation.json becomes
    root/applied.json (when there is none yet), the other generation directories and partial copies go."""
    applied = os.path.join(root, APPLIED)
    own = os.path.join(root, name, MANIFEST)
    if not os.path.lexists(applied):
        with open(own, "rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
        parse(data)
        write_atomic(applied, data)
    with_quiet(os.unlink, own)
    for entry in os.listdir(root):
        old = entry[1:-8] if entry.startswith(".") and entry.endswith(".partial") else entry
        if entry != name and _GENERATION_DIR.match(old):
            remove_tree(os.path.join(root, entry))
    with_quiet(os.unlink, os.path.join(root, ".incoming.json"))


# rsync's exit codes for files that could not be sent (23) or vanished while it ran (24): the check of the
# manifest's files that follows says which, and the tree stays as it was.
PARTIAL_TRANSFER = (23, 24)
# rsync's exit codes when the writer or the network does not answer: ssh's own failure (255), socket I/O (10),
# the protocol data stream (12), a timeout in data send or receive (30) or waiting for the daemon (35). Every
# other code (11, a local file I/O error such as a full disk, among them) is the replica's own failure.
TRANSPORT_FAILURE = (10, 12, 30, 35, 255)


def rsync(argv: List[str], tolerated: Tuple[int, ...] = ()) -> None:
    """Run rsync; GenerationError with the end of what it said when it fails (exit codes in tolerated pass). Its
    output is read as it comes and only the last RSYNC_SAID bytes are kept (a writer may send messages for as long
    as the deadline allows); rsync is killed at the deadline, or when this program is stopped while it runs."""
    tail = bytearray()
    reader: Optional[threading.Thread] = None
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # From here on a stop (SIGTERM raises SystemExit) kills the child: the try opens right after it started.
    try:
        pipe = process.stdout
        assert pipe is not None

        def drain() -> None:
            with contextlib.suppress(OSError, ValueError):
                for chunk in iter(lambda: pipe.read1(CHUNK), b""):
                    tail.extend(chunk)
                    del tail[:-RSYNC_SAID]

        reader = threading.Thread(target=drain, name="rsync-output", daemon=True)
        deadline = time.monotonic() + RSYNC_DEADLINE
        reader.start()
        reader.join(RSYNC_DEADLINE)
        if reader.is_alive():
            raise subprocess.TimeoutExpired(argv, RSYNC_DEADLINE)
        returncode = process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise TransportError(f"rsync ran longer than {RSYNC_DEADLINE} s and was stopped") from None
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        if process.stdout is not None and (reader is None or not reader.is_alive()):
            process.stdout.close()
    if returncode != 0 and returncode not in tolerated:
        said = bytes(tail).decode("utf-8", "replace").strip()
        failure = TransportError if returncode in TRANSPORT_FAILURE else GenerationError
        raise failure(f"rsync exited {returncode}: {said}")


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


def local_source(source: str) -> bool:
    """source is a path on this machine to rsync (no host: no ':' before the first '/', not rsync://)."""
    head = source.split("/", 1)[0]
    return ":" not in head and not source.startswith("rsync://")


def remote_shell(source: str) -> List[str]:
    """rsync's options for the remote shell of source. A source of rsync's daemon syntax (HOST::MODULE) with a
    remote shell in RSYNC_RSH gets it as --rsh: rsync then starts a daemon over that shell (the writer's forced
    command makes it its own read-only one, with its own configuration) instead of connecting to a daemon's TCP
    port, which it would do without --rsh on its command line. Any other source: nothing (rsync reads RSYNC_RSH
    itself for HOST:PATH)."""
    head = source.split("/", 1)[0]
    rsh = os.environ.get("RSYNC_RSH", "")
    return [f"--rsh={rsh}"] if "::" in head and not source.startswith("rsync://") and rsh else []


def fetch_manifest(source: str, root: str, program: str) -> Dict[str, Any]:
    """The writer's manifest, checked. rsync brings it into root/.fetch with the last copy (root/.writer) as
    --link-dest: when the writer's file has the size and mtime (to the nanosecond, --modify-window=-1; an rsync
    older than 3.2 then always copies) of the copy, nothing is sent and the copy is linked; else it is sent (over
    SSH, as a delta against the copy) under a temporary name and renamed. The result then becomes the copy. No
    file there after rsync (none on the writer, a directory, one over the size limit) is an error."""
    keep, fetch = os.path.join(root, WRITER_COPY), os.path.join(root, FETCH)
    make_dir(keep)
    remove_tree(fetch)
    os.mkdir(fetch, 0o755)
    argv = [program, *remote_shell(source), *RSYNC_SAFE, "--modify-window=-1", f"--max-size={MAX_MANIFEST_BYTES}"]
    try:
        rsync([*argv, f"--link-dest={os.path.abspath(keep)}", f"{source.rstrip('/')}/{MANIFEST}", fetch + "/"])
    except TransportError:
        raise
    except GenerationError as exc:
        if local_source(source) and not os.path.isdir(source):  # a writer's tree not mounted: it does not answer
            raise TransportError(f"the writer's tree {source} is not there ({exc})") from None
        raise
    fetched, kept = os.path.join(fetch, MANIFEST), os.path.join(keep, MANIFEST)
    try:
        manifest = read_manifest(fetched)
    except FileNotFoundError:
        raise GenerationError(
            f"the writer has no {MANIFEST} at {source} (or one over {MAX_MANIFEST_BYTES} bytes)"
        ) from None
    except (IsADirectoryError, GenerationError) as exc:
        raise GenerationError(f"{MANIFEST} at {source} is not a file ({exc})") from None
    finally:
        if not os.path.lexists(fetched):
            with_quiet(os.rmdir, fetch)
    new = os.lstat(fetched)
    try:
        same = os.path.samestat(new, os.lstat(kept))
    except FileNotFoundError:
        same = False
    if same:
        os.unlink(fetched)
    else:
        os.replace(fetched, kept)
    os.rmdir(fetch)
    return manifest


def remove_tree(path: str) -> None:
    """Remove a directory this program made (a link there is removed as a link, never followed); a path under what
    is now a file (ENOTDIR) is gone already."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def fetch_listed(argv: List[str], source: str, into: str, paths: List[str]) -> None:
    """rsync these paths of source (relative to it) into the directory into, through a list file beside it."""
    handle, listing = tempfile.mkstemp(dir=os.path.dirname(into), prefix=".files-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write("".join(path + "\0" for path in paths))
        # NUL-separated (--from0): a name is taken whole, never split or read as a comment.
        rsync([*argv, "--from0", f"--files-from={listing}", f"{source.rstrip('/')}/", into + "/"], PARTIAL_TRANSFER)
    finally:
        with_quiet(os.unlink, listing)


def check_staged(staging: str, paths: List[str], wanted: Dict[str, Entry]) -> Dict[str, str]:
    """{path: what differs} for the staged files that are not the manifest's (missing, not a plain file, another
    size or sha256)."""
    differ = {}
    for path in paths:
        size, digest = wanted[path]
        try:
            info = os.lstat(os.path.join(staging, path))
        except FileNotFoundError:
            differ[path] = "it did not arrive"
            continue
        if not stat.S_ISREG(info.st_mode):
            differ[path] = "not a plain file"
        elif info.st_size != size:
            differ[path] = f"{info.st_size} bytes, the manifest says {size}"
        elif file_entry(os.path.join(staging, path), limit=size) != (size, digest):
            differ[path] = "its sha256 is not the manifest's"
    return differ


def stage(source: str, staging: str, program: str, paths: List[str], wanted: Dict[str, Entry]) -> None:
    """Exactly these paths of the writer fetched into staging and checked against the manifest; a file that
    differs is fetched once more whatever its size and time say (--ignore-times), then GenerationError."""
    remove_tree(staging)
    os.mkdir(staging, 0o755)
    if not paths:
        return
    # No file longer than the longest the manifest lists is taken (a file grown since is fetched no further).
    largest = max(wanted[path][0] for path in paths)
    argv = [program, *remote_shell(source), *RSYNC_SAFE, f"--max-size={largest + 1}"]
    fetch_listed(argv, source, staging, paths)
    differ = check_staged(staging, paths, wanted)
    if differ:
        fetch_listed([*argv, "--ignore-times"], source, staging, sorted(differ))
        differ = check_staged(staging, sorted(differ), wanted)
    if differ:
        path = min(differ)
        raise GenerationError(f"{len(differ)} files differ from the manifest, first {path}: {differ[path]}")


def rank(path: str, areas: List[str]) -> Tuple[int, int, str]:
    """The order of the apply: the first area's files (packages), then each later area's metadata directory
    (static/metadata), then the rest of it (the pages that link to both); paths outside the areas last."""
    top, _, rest = path.partition("/")
    index = areas.index(top) if top in areas else len(areas)
    return index, 0 if index > 0 and rest.split("/", 1)[0] == METADATA else 1, path


def make_parents(tree: str, path: str, known: Optional[set] = None) -> None:
    """The directories of path inside tree, made 0755 as needed; anything else found on the way (a link, a file
    the new manifest makes a directory) is removed first: no link inside the tree is ever followed. known: the
    directories this apply found or made already (the tree's only writer is this program), not looked at again."""
    here = tree
    for part in path.split("/")[:-1]:
        here = os.path.join(here, part)
        if known is not None and here in known:
            continue
        if known is not None:
            known.add(here)
        try:
            info = os.lstat(here)
        except FileNotFoundError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode):
            continue
        if info is not None:
            os.unlink(here)
        os.mkdir(here, 0o755)
        os.chmod(here, 0o755)


def apply_changes(
    root: str,
    tree: str,
    staging: str,
    changed: List[str],
    removed: List[str],
    *,
    step: Optional[Callable[[str, str], None]] = None,
) -> None:
    """Rename the staged files into the tree in the order given (changed, ranked: files, metadata, pages), then
    remove the removed ones (pages first) and prune the directories left empty. Each rename replaces one name
    atomically (a link at the name is replaced, never followed). The marker root/.applying lists the paths
    touched while this runs. step(what, path), when given, is called after each rename or removal."""
    write_atomic(os.path.join(root, APPLYING), json.dumps({"paths": changed + removed}).encode())
    known: set = set()
    for path in changed:
        make_parents(tree, path, known)
        target = os.path.join(tree, path)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(target).st_mode):
                remove_tree(target)  # a directory of the old tree is a file of the new one
        os.replace(os.path.join(staging, path), target)
        if step is not None:
            step("renamed", path)
    parents = set()
    for path in removed:
        remove_tree(os.path.join(tree, path))
        parents.add(path.rsplit("/", 1)[0] if "/" in path else "")
        if step is not None:
            step("removed", path)
    for deepest in sorted(parents, key=lambda name: -name.count("/")):
        parent = deepest
        while parent:
            try:
                os.rmdir(os.path.join(tree, parent))
            except OSError:
                break
            parent = parent.rsplit("/", 1)[0] if "/" in parent else ""


def ancestors(path: str) -> List[str]:
    """The directories above path: a/b/c gives a/b, a."""
    found = []
    while "/" in path:
        path = path.rsplit("/", 1)[0]
        found.append(path)
    return found


def removals(have: Dict[str, Entry], wanted: Dict[str, Entry]) -> List[str]:
    """The paths of have that wanted lacks, less those a new path replaces: a file that becomes a directory of new
    paths (the apply makes the directory in its place) and a file under a directory that becomes a file (the apply
    removes the directory with it). Removing either after the renames would lose what they brought."""
    directories = {parent for path in wanted for parent in ancestors(path)}
    return [
        path
        for path in have
        if path not in wanted and path not in directories and not any(parent in wanted for parent in ancestors(path))
    ]


def record_applied(root: str) -> None:
    """root/applied.json: the writer's manifest just applied (a hard link to the fetched copy, renamed into place:
    the next fetch replaces the copy by rename and leaves this one as it is), then the marker removed."""
    new = os.path.join(root, f".{APPLIED}.new")
    with_quiet(os.unlink, new)
    os.link(os.path.join(root, WRITER_COPY, MANIFEST), new)
    os.replace(new, os.path.join(root, APPLIED))
    with_quiet(os.unlink, os.path.join(root, APPLYING))


def recover(root: str, tree: str, record: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """After an apply that did not end (the marker is there): the tree checked against the record. A file that
    is not a plain file, has another size, was touched by the apply (the marker lists those) or is not in the
    record is read (sha256); when the tree is not what the record says, the record becomes what the tree holds,
    with no origin, so that the writer's next manifest, whatever its sequence, is applied over it. The marker is
    opened without following a link and read up to MAX_MARKER_BYTES; one that is not a plain file, is longer or
    does not parse is taken as cut short (every file is read)."""
    marker = os.path.join(root, APPLYING)
    touched: Optional[set] = None  # a marker cut short, over the bound or not this program's: every file is read
    try:
        fd = os.open(marker, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return record
    except OSError:
        fd = -1  # a link (ELOOP) planted at the name: never followed
    if fd >= 0:
        with os.fdopen(fd, "rb") as handle, contextlib.suppress(ValueError, KeyError, TypeError, GenerationError):
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise GenerationError(f"{marker}: not a plain file")
            data = handle.read(MAX_MARKER_BYTES + 1)
            if len(data) <= MAX_MARKER_BYTES:
                paths = json.loads(data.decode("utf-8"))["paths"]
                touched = set(paths) if isinstance(paths, list) and all(isinstance(p, str) for p in paths) else None
    files = record["files"] if record is not None else {}
    actual: Dict[str, Entry] = {}
    for path, info in walk(tree).items():
        entry = files.get(path)
        if entry is not None and info.st_size == entry[0] and touched is not None and path not in touched:
            actual[path] = entry
            continue
        with contextlib.suppress(OSError, GenerationError):
            actual[path] = file_entry(os.path.join(tree, path))
    if record is None or actual != files:
        sequence = record["sequence"] if record is not None else 0
        write_atomic(os.path.join(root, APPLIED), render("", sequence, actual))
        record = served(root)
    with_quiet(os.unlink, marker)
    return record


def pull(
    source: str,
    root: str,
    keep: int = 2,
    program: str = "rsync",
    *,
    seen: Optional[Dict[str, Any]] = None,
    fetched: Optional[Callable[[Dict[str, Any]], None]] = None,
    step: Optional[Callable[[str, str], None]] = None,
) -> Dict[str, Any]:
    """One pull: {"changed": bool, "sequence": N, "hashed": files read, "fetched": files copied, "removed": files
    removed, "serving": ..., "writer": ...}; serving is the sequence, origin and digest of the manifest the tree
    holds after it (None: nothing), writer those of the writer's manifest it fetched. seen, when given, is filled
    with these two as they are learnt, so that a pull that fails still tells what it knew; fetched(seen) is called
    once the writer's manifest is in, before any file is; step is apply_changes'. keep is not used (one tree).
    GenerationError before the apply leaves the tree as it was."""
    seen = {} if seen is None else seen
    os.makedirs(root, mode=0o755, exist_ok=True)
    if os.path.islink(root) or not os.path.isdir(root):
        raise GenerationError(f"{root} is not a directory")
    tree = open_tree(root)
    current = recover(root, tree, served(root))  # read before the fetch: known even when the writer is not
    seen["serving"] = summary(current) if current is not None else None
    incoming = fetch_manifest(source, root, program)
    seen["writer"] = summary(incoming)
    if fetched is not None:
        fetched(seen)
    if current is not None and (
        incoming["digest"] == current["digest"]
        or (incoming["origin"] == current["origin"] and incoming["sequence"] <= current["sequence"])
    ):
        return {"changed": False, "sequence": current["sequence"], "hashed": 0, "fetched": 0, "removed": 0, **seen}
    have, wanted, areas = current["files"] if current else {}, incoming["files"], incoming["areas"]
    changed = sorted((path for path, entry in wanted.items() if have.get(path) != entry), key=lambda p: rank(p, areas))
    removed = sorted(removals(have, wanted), key=lambda p: rank(p, areas), reverse=True)
    staging = os.path.join(root, INCOMING)
    try:
        # Exactly the new and changed files are asked for (--files-from): nothing else of the writer's directory.
        stage(source, staging, program, changed, wanted)
        apply_changes(root, tree, staging, changed, removed, step=step)
        record_applied(root)
    finally:
        remove_tree(staging)
    seen["serving"] = summary(incoming)
    return {
        "changed": True,
        "sequence": incoming["sequence"],
        "hashed": len(changed),
        "fetched": len(changed),
        "removed": len(removed),
        **seen,
    }


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
    (same digest); answered_at is when the writer last answered (its manifest came back). While the writer
    answers, or a pull fails for a reason of the replica's own (a full disk, an unfit manifest), the lag is
    now - fresh_at; once the writer or the network does not answer it stays at answered_at - fresh_at: a replica
    current when it lost the writer stays healthy (reads go on while the writer is down). One already behind (the
    writer's last manifest is not the one it serves) stays as behind: its lag never goes back below what it had
    reached when the writer stopped answering (held_at, the start of the pull that got no answer, or the end of
    one cut off by the network). A fetch not answered yet counts as one that failed until it is (begin, then
    contact). Healthy: serving a generation, lag <= max_lag. Thread-safe: a watch reads it while a pull runs."""

    def __init__(self, max_lag: float) -> None:
        self.max_lag = max_lag
        self._lock = threading.Lock()
        self.asking = False  # a manifest fetch is under way, not answered yet
        self.observed = False  # a pull has told what current serves
        self.serving: Optional[Dict[str, Any]] = None  # sequence, origin, digest of the manifest applied
        self.writer: Optional[Dict[str, Any]] = None  # the last manifest fetched: sequence, origin, digest
        self.reachable = False
        self.answered_at: Optional[float] = None  # monotonic time the writer's manifest last came back
        self.last_contact: Optional[str] = None  # the same moment, UTC ISO
        self.fresh_at: Optional[float] = None
        self.held_at: Optional[float] = None  # a replica behind: when the writer stopped answering, as far as known
        self.error: Optional[str] = None

    def observe(
        self,
        started: float,
        serving: Optional[Dict[str, Any]],
        writer: Optional[Dict[str, Any]],
        error: Optional[str] = None,
        wall: Optional[str] = None,
        *,
        down: Optional[bool] = None,
        answered: Optional[float] = None,
        ended: Optional[float] = None,
    ) -> None:
        """One pull that started (monotonic) at started and ended at ended (None: not known): what current serves
        after it (None: nothing), the manifest it fetched (None: not fetched) and when it came back (answered;
        None: at started), why it failed (None: it worked) and whether it failed because the writer or the
        network did not answer (down; None: when no manifest was fetched). Only such a failure freezes the lag;
        any other (a full disk, an unfit manifest, a failed check) lets it grow."""
        with self._lock:
            counting = self.reachable and not self.asking
            self.asking, self.observed = False, True
            self.serving = serving
            self.error = error[:MAX_ERROR] if error else None
            if writer is not None:
                self._answered(started, serving, writer, wall, answered)
                counting = True  # from its answer on, the lag was counted as the writer's
            down = writer is None if down is None else down
            if down and counting and ended is not None:
                self._hold(ended)
            self.reachable = not down

    def begin(self, at: Optional[float] = None) -> None:
        """A pull starts (at: its monotonic time, when known): until the writer answers, the lag is counted as if
        it did not; a replica behind keeps the lag it had reached by then."""
        with self._lock:
            if at is not None and self.reachable and not self.asking:
                self._hold(at)
            self.asking = True

    def contact(
        self,
        started: float,
        serving: Optional[Dict[str, Any]],
        writer: Dict[str, Any],
        wall: Optional[str] = None,
        *,
        answered: Optional[float] = None,
    ) -> None:
        """The writer answered (at answered; None: at started) the fetch that started at started with the
        manifest writer, while the replica serves serving; the files may still be to come (a long pull counts its
        lag from now on)."""
        with self._lock:
            self.asking, self.observed = False, True
            self.serving, self.reachable = serving, True
            self._answered(started, serving, writer, wall, answered)

    def _answered(
        self,
        started: float,
        serving: Optional[Dict[str, Any]],
        writer: Dict[str, Any],
        wall: Optional[str],
        answered: Optional[float],
    ) -> None:
        self.writer, self.last_contact, self.held_at = writer, wall or utc_now(), None
        self.answered_at = started if answered is None else answered
        if serving is not None and serving["digest"] == writer["digest"]:
            self.fresh_at = started

    def _current(self) -> bool:
        """The replica serves the manifest the writer last answered with."""
        return self.serving is not None and self.writer is not None and self.serving["digest"] == self.writer["digest"]

    def _hold(self, at: float) -> None:
        """The writer stops answering at at, as far as the replica knows: a replica behind keeps its lag so far."""
        if not self._current() and (self.held_at is None or at > self.held_at):
            self.held_at = at

    def lag(self, now: float) -> Optional[float]:
        """Seconds behind the writer at now (monotonic); None when never seen current since the start."""
        if self.fresh_at is None or self.answered_at is None:
            return None
        if self.reachable and not self.asking:
            return now - self.fresh_at
        frozen = self.answered_at if self.held_at is None else max(self.answered_at, self.held_at)
        return frozen - self.fresh_at

    def reason(self, lag: Optional[float]) -> str:
        """Why the replica is not healthy, or what it serves when it is: one sentence."""
        if not self.observed:
            return "no pull has ended since the program started"
        if self.serving is None:
            return "it serves no generation yet"
        if self.answered_at is None:
            return "the writer has not answered since the pull started, so how far behind it is is not known"
        if lag is None:
            return "it has not served the writer's newest generation since the pull started"
        if lag > self.max_lag:
            return self._behind(lag)
        return self._within(lag)

    def _within(self, lag: float) -> str:
        """The reason of a replica within the bound: the writer's newest generation is said to be served only when
        the digests say so."""
        as_of = "" if self.reachable else " as of its last contact (the writer does not answer)"
        if self._current():
            return f"serving the writer's newest generation{as_of}"
        writer, serving = self.writer or {}, self.serving or {}
        return (
            f"it serves generation {serving.get('sequence')} and the writer's newest is {writer.get('sequence')}"
            f"{as_of}: {lag:.3f} s without it, within the {self.max_lag:g} s allowed"
        )

    def _behind(self, lag: float) -> str:
        """The reason of a replica behind by more than the bound: a writer gone back to an older generation of the
        tree served (restored from a backup), which a replica does not follow, is named as such."""
        writer, serving = self.writer or {}, self.serving or {}
        if writer and serving and writer["digest"] == serving["digest"]:  # its pulls fail before the manifest
            return (
                f"its pulls have failed for {lag:.3f} s since it last served the writer's newest generation, more"
                f" than the {self.max_lag:g} s allowed"
            )
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
            "serving": {key: self.serving[key] for key in ("sequence", "origin", "digest")} if self.serving else None,
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
        # What was last written: healthy, and the digests of the manifests served and last fetched (None: unknown).
        self.written: Optional[Tuple[Any, ...]] = None
        self.stopped = False

    @staticmethod
    def _key(doc: Dict[str, Any]) -> Tuple[Any, ...]:
        return (doc["healthy"], (doc["serving"] or {}).get("digest"), doc["writer"].get("sequence"))

    def write(self, now: float, running: bool = True, changed_only: bool = False) -> None:
        """Write the status at now; changed_only: only when healthy, the generation served or the writer's newest
        is not what was last written (a pull that hangs after fetching a newer manifest still tells it). Once the
        status of a stopped pull is written, nothing more is."""
        with self._lock:
            if self.stopped:
                return
            doc = self.health.status(now, running)
            if changed_only and self._key(doc) == self.written:
                return
            self.written = None
            self.stopped = not running
            write_status(self.directory, doc)
            self.written = self._key(doc)

    def watch(self, tick: float, done: threading.Event) -> None:
        """Every tick until done: rewrite the files when the replica's health, the generation it serves or the
        writer's newest changed since they were written."""
        while not done.wait(tick):
            try:
                self.write(time.monotonic(), changed_only=True)
            except OSError as exc:
                print(f"the status in {self.directory} could not be written: {exc}", file=sys.stderr, flush=True)


def pull_once(
    source: str,
    root: str,
    keep: int,
    program: str,
    *,
    health: Optional[Health] = None,
    started: float = 0.0,
    clock: Optional[Callable[[], float]] = None,
) -> bool:
    """One pass of the replica's loop: pull, say what happened, note it in health (started: the monotonic time
    taken before it; clock: the monotonic clock that times the writer's answer and the pull's end, None: both
    taken as started, for made-up times). True when the pull worked."""
    wall = utc_now()
    now = clock if clock is not None else lambda: started
    seen: Dict[str, Any] = {}
    error = None
    down = False  # the writer or the network did not answer
    answered: List[float] = []  # when the writer's manifest came back
    fetched = None
    if health is not None:
        health.begin(started)

        def fetched(found: Dict[str, Any]) -> None:
            answered.append(now())
            health.contact(started, found["serving"], found["writer"], wall, answered=answered[-1])

    try:
        done = pull(source, root, keep, program, seen=seen, fetched=fetched)
        if done["changed"]:
            print(
                f"now serving generation {done['sequence']} ({done['fetched']} files fetched and checked,"
                f" {done['removed']} removed)",
                flush=True,
            )
    except (GenerationError, OSError) as exc:
        error = str(exc) or type(exc).__name__
        down = isinstance(exc, TransportError)
        print(f"pull failed: {error}", file=sys.stderr, flush=True)
    if health is not None:
        health.observe(
            started,
            seen.get("serving"),
            seen.get("writer"),
            error,
            wall,
            down=down,
            answered=answered[-1] if answered else None,
            ended=now(),
        )
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
            worked = pull_once(source, root, keep, program, health=health, started=started, clock=time.monotonic)
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


def differences(root: str, manifest_path: str, areas: List[str]) -> List[str]:
    """How the plain files under root's areas differ from the manifest's entries for those areas: a file missing,
    one the manifest does not list, a size or sha256 not the manifest's (empty: the same). The manifest is read
    without following a link, within its bound; every file is read whole."""
    fd = os.open(manifest_path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        manifest = parse(handle.read(MAX_MANIFEST_BYTES + 1))
    wanted = {path: entry for path, entry in manifest["files"].items() if path.split("/", 1)[0] in areas}
    have: Dict[str, os.stat_result] = {}
    for area in areas:
        if os.path.isdir(os.path.join(root, area)) and not os.path.islink(os.path.join(root, area)):
            have.update({f"{area}/{rel}": info for rel, info in walk(os.path.join(root, area)).items()})
    found = [f"{path}: missing" for path in sorted(set(wanted) - set(have))]
    found += [f"{path}: not in the manifest" for path in sorted(set(have) - set(wanted))]
    for path in sorted(set(wanted) & set(have)):
        size, digest = wanted[path]
        try:
            if file_entry(os.path.join(root, path), limit=size) != (size, digest):
                found.append(f"{path}: its size or sha256 is not the manifest's")
        except (OSError, GenerationError) as exc:
            found.append(f"{path}: {exc}")
    return found


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Pull the writer's newest generation of the served tree.")
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("pull", help="fetch, check, then apply the writer's newest generation to the tree")
    one.add_argument(
        "source",
        help="rsync source of the writer's tree (HOST::MODULE over the remote shell in RSYNC_RSH, user@host:path "
        "over SSH, or a path)",
    )
    one.add_argument("root", help="the replica's directory: the tree, the current link, applied.json")
    one.add_argument("--keep", type=int, default=2, help="ignored: kept for compatibility (one tree is kept)")
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
    check = sub.add_parser("verify", help="say whether the files under ROOT's areas are exactly a manifest's")
    check.add_argument("root", help="the directory holding the areas")
    check.add_argument("manifest", help="a generation.json (or a replica's applied.json)")
    check.add_argument("--area", action="append", required=True, help="an area to compare (e.g. packages)")
    args = parser.parse_args(argv)
    if args.command == "publish":
        return publish_loop(args.root, args.area, args.loop)
    if args.command == "verify":
        for area in args.area:
            check_path(area)
        try:
            found = differences(args.root, args.manifest, args.area)
        except (OSError, GenerationError) as exc:
            print(f"cannot compare {args.root} with {args.manifest}: {exc}", file=sys.stderr)
            return 2
        if found:
            print(f"{len(found)} files of {args.root} differ from {args.manifest}, first: {found[0]}", file=sys.stderr)
            return 1
        print(f"{args.root}: {', '.join(args.area)} exactly as {args.manifest} lists them")
        return 0
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
