#!/usr/bin/env python3
"""Static read path of airgap-pypi: pre-generated simple index pages served in front of pypiserver.

The tree (one directory, written only by this module) holds, for the packages directory:

    simple/index.html, simple/index.json            PEP 503 / PEP 691 project list
    simple/<project>/index.html, index.json         PEP 503 / PEP 691 (+ PEP 700 sizes) file lists with sha256,
                                                    data-requires-python and PEP 658/714 core-metadata hashes
    metadata/<file>.metadata                        the METADATA of each wheel (PEP 658)
    descriptions/<file>.html                        each file's description rendered by readme_renderer (once,
                                                    when the file arrives); project pages show the newest's
    index.html, browse/<project>.html               the browse and search pages (inline CSS and JS only; the
                                                    front page sits outside browse/, where a project may be
                                                    named "index"); the front page lists the first FRONT_ROWS
                                                    projects and searches search.json (one compact row each)
    state.json, state.journal                       sha256 and metadata by (file, size, mtime): no re-hashing;
                                                    the yanked releases the pages show; the pages' format; each
                                                    project's front-page row. A sync appends what it changed to
                                                    the journal (one line); state.json is written whole only when
                                                    the journal outgrows a quarter of it
    stamp.json                                      the package directories' mtimes (and the yank file's) at the
                                                    last sync; whether the lists are still to be written after
                                                    an upload (lists_stale)

`sync()` compares the packages directory with the state and rewrites only the pages of projects whose files
changed, and the lists (every write goes to a temporary file then os.replace, so no reader sees half a page),
under an flock; after an upload it looks again only at the files of the upload's project (and at new names), and
leaves the lists naming every project to `flush_lists()`, which the upload's worker runs once its response is sent
(the stamp marks them due first: a later sync writes them when the worker died before).
Yanked releases (PEP 592) come from a small JSON file beside the data (`--yanked`, written only by the `yank` and
`unyank` commands): a project's pages are rewritten when its entries there differ from what state.json says its
pages show.
`StaticIndex` is a WSGI layer in front of pypiserver: it serves GET/HEAD of the pages, metadata files and package
files from the tree, sends everything else (uploads, removals, /health, ...) to pypiserver, and syncs after a
successful POST before the response is returned, so a file is on its page when `twine upload` returns.
`UploadChecks`, in front of pypiserver, refuses an upload that is not a whole distribution of the name it has, and
one by an account that may not upload to the project (`ProjectOwners`: the inventory's owner map, admins, and the
claims of first uploads in a small JSON file of their own).
`MetricsLayer`, outermost, counts every request and upload and answers /metrics (Prometheus text format) with
the counts of every worker summed (`WorkerFiles`); `sync()` records when it ended and how long it took (sync.json).

Runs in the index's virtualenv on CPython 3.9-3.13: standard library plus `packaging` (pypiserver's dependency),
and `readme_renderer` for the descriptions when it is there (the server lock has it).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import bisect
import bz2
import calendar
import contextlib
import email.message
import email.parser
import email.utils
import errno
import fcntl
import functools
import gc
import gzip
import hashlib
import hmac
import html
import html.parser
import importlib.util
import io
import json
import logging
import lzma
import math
import mimetypes
import os
import pwd
import re
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import unicodedata
import warnings
import zipfile
from stat import S_ISDIR, S_ISREG
from typing import Any, BinaryIO, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Set, Tuple
from urllib.parse import quote, urlsplit

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

STATE_VERSION = 1
# What the pages look like: state.json records it, and a sync by a release that writes them otherwise (or that can
# now render descriptions, or no longer can) writes every page again, from the cached hashes.
PAGES_FORMAT = 3
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_V1_TYPE = "application/vnd.pypi.simple.v1+html"
# Files pypiserver lists (its pkg_helpers._archive_suffix_rx, plus wheels).
ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".zip", ".egg", ".tar")
# A file changed this recently may still be being written by hand: a read-triggered sync leaves it for later.
YOUNG_SECONDS = 2.0
RECHECK_SECONDS = 1.0
LOG = logging.getLogger("airgap_pypi_index")
# The characters a served file name may hold: an upload's name, and each part of a path under /packages/.
_NAME = r"[A-Za-z0-9_.!+~-]+"
_SAFE_PATH = re.compile(rf"^{_NAME}(/{_NAME})*$")

Entry = Dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Dict[str, Any], StartResponse], Iterable[bytes]]
# (body: bytes, an open package file or None for "Not Found", headers, status)
Response = Tuple[Any, List[Tuple[str, str]], str]
NOT_FOUND: Response = (None, [("Content-Type", "text/plain")], "404 Not Found")


def normalize(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_filename(filename: str) -> Optional[Tuple[str, str]]:
    """(project name as written, version) of a distribution file name; None for a file pypiserver ignores."""
    lower = filename.lower()
    if filename.startswith(".") or not lower.endswith(ARCHIVE_SUFFIXES):
        return None
    try:
        if lower.endswith(".whl"):
            name, version, _, _ = parse_wheel_filename(filename)
            return filename.split("-", 1)[0], str(version)
        if lower.endswith((".tar.gz", ".zip")):
            name, version = parse_sdist_filename(filename)
            return filename.rsplit("-", 1)[0], str(version)
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        pass
    stem = filename
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            stem = filename[: -len(suffix)]
            break
    if lower.endswith(".egg"):
        stem = "-".join(stem.split("-")[:2])
    name, sep, version = stem.rpartition("-")
    if not sep or not name:
        return None
    return name, version


@functools.lru_cache(maxsize=1 << 16)
def version_key(version: str) -> Tuple[int, Any]:
    """Sort key: PEP 440 versions in order, anything else before them, by text."""
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


@functools.lru_cache(maxsize=1 << 16)
def is_prerelease(version: str) -> bool:
    try:
        return Version(version).is_prerelease
    except InvalidVersion:
        return False


class BadDistribution(ValueError):
    """A distribution file that is not what its name says (the message says why, for twine and the log)."""


# Kinds of refused uploads, for the metrics' reason label (any other BadDistribution is a "bad_archive").
class BadName(BadDistribution):
    """An upload's file name the index does not take."""

    metrics_reason = "bad_name"


class MetadataMismatch(BadDistribution):
    """An upload whose metadata lacks, or contradicts, the name or version of its file name."""

    metrics_reason = "metadata_mismatch"


class AlreadyStored(BadDistribution):
    """An upload the index already holds under another spelling of its file name."""

    metrics_reason = "exists"


# Bounds on what is read from an archive: a METADATA or PKG-INFO, a zip's central directory, and the bytes a
# sdist's tar stream is decompressed for while looking for its PKG-INFO.
MAX_METADATA_BYTES = 4 << 20
MAX_ZIP_DIRECTORY_BYTES = 8 << 20
MAX_TAR_SCAN_BYTES = 1 << 30
_EOCD = struct.Struct("<4s4H2LH")


def _zip_directory_size(handle: BinaryIO) -> int:
    """The central directory's size from a zip's end record, read before zipfile parses the directory."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - (_EOCD.size + 0xFFFF)))
    tail = handle.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise BadDistribution("not a zip archive")
    _, _, _, _, entries, directory, _, _ = _EOCD.unpack_from(tail, at)
    # zipfile reads a zip64 end record wherever its locator stands before this one, whatever this one says.
    if entries == 0xFFFF or directory == 0xFFFFFFFF or tail.rfind(b"PK\x06\x07", 0, at) >= 0:
        raise BadDistribution("zip64 archives (over 65,535 members) are not accepted")
    return int(directory)


def _bounded_read(stream: BinaryIO, what: str) -> bytes:
    data = stream.read(MAX_METADATA_BYTES + 1)
    if len(data) > MAX_METADATA_BYTES:
        raise BadDistribution(f"{what} is larger than {MAX_METADATA_BYTES >> 20} MiB")
    return data


class _Budget(io.RawIOBase):
    """A read-only stream that refuses to give more than `limit` bytes (a decompression bomb stops here)."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self.stream, self.left = stream, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(min(len(buffer), 1 << 16))
        self.left -= len(data)
        if self.left < 0:
            raise BadDistribution(f"no PKG-INFO in the first {MAX_TAR_SCAN_BYTES >> 20} MiB of the archive")
        buffer[: len(data)] = data
        return len(data)


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar header whose long-name or pax extension is read into memory only up to 1 MiB."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:
        extended = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE)
        if self.type in extended and self.size > 1 << 20:
            raise tarfile.HeaderError(f"an extended tar header of {self.size} bytes")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


# Tar sdists by suffix: the decompressor (a file object), so the budget counts the bytes tarfile is given.
_TAR_OPENERS: Tuple[Tuple[Tuple[str, ...], Callable[[BinaryIO], Any]], ...] = (
    ((".tar.gz", ".tgz"), lambda handle: gzip.GzipFile(fileobj=handle, mode="rb")),
    ((".tar.bz2", ".tbz"), bz2.BZ2File),
    ((".tar.xz", ".txz"), lzma.LZMAFile),
    ((".tar",), contextlib.nullcontext),
)


def core_metadata(handle: BinaryIO, filename: str) -> Tuple[bytes, bool]:
    """(METADATA or PKG-INFO bytes, is a wheel's METADATA) of an open distribution, every read bounded.

    Raises BadDistribution when the archive is not what its name says or holds no single metadata file."""
    lower = filename.lower()
    try:
        if lower.endswith((".whl", ".zip")):
            if _zip_directory_size(handle) > MAX_ZIP_DIRECTORY_BYTES:
                raise BadDistribution(f"the zip directory is larger than {MAX_ZIP_DIRECTORY_BYTES >> 20} MiB")
            handle.seek(0)
            wheel = lower.endswith(".whl")
            pattern = r"^[^/]+\.dist-info/METADATA$" if wheel else r"^[^/]+/PKG-INFO$"
            with zipfile.ZipFile(handle) as archive:
                names = [n for n in archive.namelist() if re.match(pattern, n)]
                if len(names) != 1 if wheel else not names:
                    what = "a single .dist-info/METADATA" if wheel else "a PKG-INFO"
                    raise BadDistribution(f"the archive holds {len(names)} metadata files, not {what}")
                with archive.open(names[0]) as member:
                    return _bounded_read(member, names[0]), wheel
        opener = next((o for suffixes, o in _TAR_OPENERS if lower.endswith(suffixes)), None)
        if opener is not None:
            handle.seek(0)
            with opener(handle) as unpacked:
                stream = io.BufferedReader(_Budget(unpacked, MAX_TAR_SCAN_BYTES))  # type: ignore[arg-type]
                with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo) as archive:
                    for member in archive:
                        if member.isfile() and re.match(r"^[^/]+/PKG-INFO$", member.name):
                            extracted = archive.extractfile(member)
                            if extracted is not None:
                                return _bounded_read(extracted, member.name), False
            raise BadDistribution("no PKG-INFO at the top of the archive")
    except (
        OSError,
        EOFError,
        lzma.LZMAError,
        zipfile.BadZipFile,
        tarfile.TarError,
        RuntimeError,
        NotImplementedError,
    ) as error:
        raise BadDistribution(f"the archive cannot be read ({error.__class__.__name__}: {error})") from error
    raise BadDistribution("not a wheel (.whl) or a source distribution (.tar.gz, .zip)")


def read_core_metadata(path: str) -> Tuple[Optional[bytes], bool]:
    """(metadata bytes, is a wheel's METADATA) of a file in the packages directory; (None, False) when it has none
    that can be read within the bounds (it is still listed, without PEP 658 metadata)."""
    try:
        with open(path, "rb") as handle:
            return core_metadata(handle, os.path.basename(path))
    except (OSError, BadDistribution):
        return None, False


def parse_metadata(raw: Optional[bytes]) -> Dict[str, str]:
    """Name, Version, Summary, Requires-Python, Description-Content-Type and Description of core metadata (email
    header format, UTF-8)."""
    if not raw:
        return {}
    message = email.parser.Parser().parsestr(raw.decode("utf-8", errors="replace"))
    fields = {}
    for key in ("Name", "Version", "Summary", "Requires-Python", "Description-Content-Type"):
        value = message.get(key)
        if value is not None:
            fields[key.lower()] = " ".join(str(value).split())
    body = message.get_payload()
    description = body if isinstance(body, str) and body.strip() else str(message.get("Description") or "")
    fields["description"] = description
    return fields


def file_entry(
    path: str, stat: os.stat_result, project: str, version: str
) -> Tuple[Entry, Optional[bytes], Dict[str, str]]:
    """Hash a file and read its metadata: the state entry, for a wheel the METADATA to serve, and the metadata's
    fields (parse_metadata)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    raw, is_wheel_metadata = read_core_metadata(path)
    fields = parse_metadata(raw)
    entry: Entry = {
        "size": stat.st_size,
        "mtime": stat.st_mtime_ns,
        "sha256": digest.hexdigest(),
        "project": normalize(project),
        "name": fields.get("name") or project,
        "version": version,
        "requires_python": fields.get("requires-python"),
        "summary": fields.get("summary", ""),
        "metadata_sha256": hashlib.sha256(raw).hexdigest() if raw is not None and is_wheel_metadata else None,
    }
    return entry, (raw if is_wheel_metadata else None), fields


# --- rendered descriptions -------------------------------------------------------------------------------------

# A description is rendered once, when its file arrives, by readme_renderer (PyPI's own renderer, its output
# sanitised with nh3) and stored in the tree as descriptions/<file>.html; the project page shows the newest
# release's. Without readme_renderer (a virtualenv from an older bundle) the page shows the text escaped.
MAX_DESCRIPTION_BYTES = 1 << 20
MAX_RENDERED_BYTES = 16 << 20  # what a stored rendering is read back up to
# Bounds on what reaches the renderers, which run inside the upload's sync: nh3's cost grows faster than linearly with
# nested raw HTML (40,000 nested elements take seconds), and email's parameter parsing is quadratic in a content type
# full of quoted ";". A description beyond them is shown with a note, not rendered.
MAX_DESCRIPTION_TAGS = 10000  # "<" characters
MAX_CONTENT_TYPE_CHARS = 256
MAX_RENDERING_BYTES = 2 << 20  # a rendering larger than this (markup can multiply the text) is not kept
DESCRIPTIONS_DIR = "descriptions"
MARKDOWN_VARIANTS = ("GFM", "CommonMark")
_REMOTE_LINK_SCHEMES = ("http", "https")


@functools.lru_cache(maxsize=None)
def description_renderers() -> Optional[Tuple[Any, Any]]:
    """readme_renderer's (markdown, rst) modules, or None when it cannot be imported (said once in the log)."""
    try:
        with warnings.catch_warnings():  # its own warning when it has no Markdown engine: logged below instead
            warnings.simplefilter("ignore")
            import readme_renderer.markdown  # noqa: PLC0415 - optional: not in the virtualenvs of older bundles
            import readme_renderer.rst  # noqa: PLC0415
    except Exception as error:  # ImportError, or a broken install: the pages show the text escaped
        LOG.warning("readme_renderer cannot be imported (%s): descriptions are shown as plain text", error)
        return None
    if not getattr(readme_renderer.markdown, "variants", True):
        LOG.warning("readme_renderer has no Markdown engine (readme_renderer[md]): Markdown is shown as text")
    return readme_renderer.markdown, readme_renderer.rst


@functools.lru_cache(maxsize=None)
def renderer_origin() -> Optional[str]:
    """Where readme_renderer is installed (its file and that file's mtime), found without importing it: a sync
    never imports it (the render command does); None when it is not installed."""
    try:
        spec = importlib.util.find_spec("readme_renderer")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    origin = spec.origin or ""
    try:
        stamp = os.stat(origin).st_mtime_ns
    except OSError:
        stamp = -1
    return f"{origin}:{stamp}"


def renderer_installed() -> bool:
    return renderer_origin() is not None


def is_remote(url: str) -> bool:
    """Whether a URL in a description leaves this index: it has a scheme or a host (//host, /\\host)."""
    cleaned = re.sub(r"[\x00-\x20\x7f]", "", url).replace("\\", "/")
    if cleaned.startswith("//"):
        return True
    try:
        parts = urlsplit(cleaned)
    except ValueError:
        return True
    return bool(parts.scheme or parts.netloc)


class _LocalImages(html.parser.HTMLParser):
    """Writes sanitised HTML out again with every image from outside this index made a link to it (its alt text
    alone inside a link, which cannot hold another): nothing on a page loads from elsewhere."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.out: List[str] = []
        self.links = 0

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        self.start(tag, attrs, closed=False)

    def handle_startendtag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        self.start(tag, attrs, closed=True)

    def start(self, tag: str, attrs: List[Tuple[str, Optional[str]]], closed: bool) -> None:
        values = dict(attrs)
        source = values.get("src")
        if tag == "img" and source is not None and is_remote(source):
            text = values.get("alt") or ""
            scheme = urlsplit(source.strip()).scheme.lower() if not self.links else ""
            if scheme in _REMOTE_LINK_SCHEMES:
                self.out.append(f'<a href="{esc(source.strip())}" rel="nofollow">{esc(text or "image")}</a>')
            else:
                self.out.append(esc(text))
            return
        if tag == "a" and not closed:
            self.links += 1
        shown = "".join(f" {name}" if value is None else f' {name}="{esc(value)}"' for name, value in attrs)
        self.out.append(f"<{tag}{shown}{' /' if closed else ''}>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self.links = max(0, self.links - 1)
        self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        self.out.append(html.escape(data, quote=False))

    def handle_entityref(self, name: str) -> None:
        self.out.append(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self.out.append(f"&#{name};")


def local_images(fragment: str) -> str:
    """fragment (HTML nh3 has sanitised) with no image that loads from outside this index."""
    parser = _LocalImages()
    parser.feed(fragment)
    parser.close()
    return "".join(parser.out)


def unrendered(text: str, reason: str) -> str:
    """A description that could not be rendered: a note why, and the text escaped."""
    note = f'<p class="render-note">this description could not be rendered: {esc(reason)}</p>\n'
    return note + (f'<pre class="description-text">{esc(text)}</pre>' if text else "")


def beyond_bounds(text: str, content_type: Optional[str]) -> Optional[str]:
    """The note shown instead of a description that is never rendered (too large, too much markup, an overlong
    content type), or None. Cheap: a sync checks it, so such a description is never queued."""
    size = len(text.encode("utf-8", errors="replace"))
    note = None
    if size > MAX_DESCRIPTION_BYTES:
        note = f"it is {size:,} bytes, more than {MAX_DESCRIPTION_BYTES >> 20} MiB"
    elif text.count("<") > MAX_DESCRIPTION_TAGS:
        note = f"it has more than {MAX_DESCRIPTION_TAGS:,} '<' characters"
    elif content_type is not None and len(content_type) > MAX_CONTENT_TYPE_CHARS:
        note = f"its Description-Content-Type is longer than {MAX_CONTENT_TYPE_CHARS} characters"
    return None if note is None else f'<p class="render-note">this description could not be rendered: {esc(note)}</p>'


def render_description(text: str, content_type: Optional[str]) -> str:
    """The description as HTML to show on a page, by its Description-Content-Type as PyPI renders it: Markdown
    (variant GFM or CommonMark), reStructuredText (also when no type is given), anything else as plain text. Never
    raises: what cannot be rendered is shown escaped, with a note why. "" for no description."""
    if not text.strip():
        return ""
    note = beyond_bounds(text, content_type)
    if note is not None:
        return note
    try:
        rendered, reason = _render_by_type(text, content_type or "text/x-rst")
    except (KeyboardInterrupt, SystemExit, MemoryError):  # MemoryError: the child's limit, named by its parent
        raise
    except BaseException as error:  # a renderer's bug (a Rust panic is a BaseException) must never stop an upload
        rendered, reason = None, f"{error.__class__.__name__}: {str(error)[:200]}"
    if rendered is not None and len(rendered) > MAX_RENDERING_BYTES:
        too_large = f"rendered, it is more than {MAX_RENDERING_BYTES >> 20} MiB"
        return f'<p class="render-note">this description could not be rendered: {esc(too_large)}</p>'
    return unrendered(text, reason) if rendered is None else rendered


# --- rendering in a child process, off the upload's path -----------------------------------------------------

# A sync renders nothing: it queues each arriving file that has a description (state.json's "pending") and the
# page shows the text escaped with RENDERING_NOTE. The `render` command (started by the worker after an upload's
# response is ready, by each worker when it starts and by the CLI sync) takes the queue in order, one description at
# a time per tree, each in a forked child under hard limits, then stores the HTML and rewrites the project's page.
RENDER_COMMAND = "render"
# The lists naming every project (flush_lists) are written by this command after an upload's response: a process of
# its own, so that the requests a worker's threads serve meanwhile never wait for its GIL (one json.dumps of the
# search index holds it for tens of milliseconds at 100,000 files).
LISTS_COMMAND = "lists"
LISTS_TIMEOUT_SECONDS = 600
LISTS_TRIES = 3  # runs of the command, and renderings within one run when a sync changes the state meanwhile
LISTS_RUN_LOCK = ".lists.lock"  # held by the one lists command at work on this tree (the others wait for it)
# The niceness the lists command adds: the cores go to the requests first. (Not the renderer: its children have a
# wall-clock limit, and a rendering past it is stored for good.)
BACKGROUND_NICENESS = 10
RENDERING_NOTE = '<p class="render-note">this description is being rendered; it is shown as text until then</p>\n'
RENDER_RUN_LOCK = ".render.lock"  # held by the one renderer at work on this tree
RENDER_WAIT_LOCK = ".render-wait.lock"  # held by at most one renderer waiting for it (it reads the queue after)
RENDERER_BROKEN = "renderer-broken.json"  # readme_renderer found but not importable: pages show plain text


class RenderLimits(NamedTuple):
    """Hard limits of one description's rendering child: CPU seconds (RLIMIT_CPU), address space in MiB
    (RLIMIT_AS) and wall-clock seconds after which it is killed."""

    cpu_seconds: int = 10
    memory_mb: int = 1024
    wall_seconds: int = 30

    def argv(self) -> List[str]:
        return [
            f"--cpu-seconds={self.cpu_seconds}",
            f"--memory-mb={self.memory_mb}",
            f"--wall-seconds={self.wall_seconds}",
        ]


MAX_CHILD_FILE_BYTES = 1 << 20  # what a rendering child may write to a file (its stderr is one)


def _limit_child(limits: RenderLimits) -> None:
    """In the forked child, before it renders: the limits, no core file, no file (its stderr) past 1 MiB."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the size fails instead of killing the child
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_CHILD_FILE_BYTES, MAX_CHILD_FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    memory = limits.memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


def _read_child(descriptor: int, deadline: float, limit: int) -> Tuple[Optional[bytes], str]:
    """(the child's output, "") or (None, why there is none): at most limit bytes, until the deadline."""
    chunks: List[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, "timeout"
        ready, _, _ = select.select([descriptor], [], [], left)
        if not ready:
            continue
        chunk = os.read(descriptor, 1 << 16)
        if not chunk:
            return b"".join(chunks), ""
        size += len(chunk)
        if size > limit:
            return None, "size"
        chunks.append(chunk)


MAX_CHILD_ERRORS = 4096  # what is read of a rendering child's stderr (a Rust allocator names a failed allocation)
# What a renderer says on stderr when an allocation failed: Rust's allocator (comrak, nh3), cmark's, Python's.
_OUT_OF_MEMORY = (b"memory allocation of", b"returned null pointer", b"out of memory", b"MemoryError")


class ChildEnd(NamedTuple):
    """How a rendering child ended: its output (None when it was stopped), why it was stopped ("timeout", "size"
    or ""), its wait status, the CPU seconds it used and the start of its stderr."""

    output: Optional[bytes]
    stopped: str
    status: int
    cpu: float
    errors: bytes


def _close_inherited() -> None:
    """In the forked child: close every descriptor but 0, 1 and 2 (the renderer's locks above all: a child left
    running must not hold the turn of the next renderer)."""
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        descriptors = list(range(3, 1024))
    for descriptor in descriptors:
        if descriptor > 2:
            with contextlib.suppress(OSError):
                os.close(descriptor)


def _run_child(text: str, content_type: Optional[str], limits: RenderLimits) -> ChildEnd:
    """Fork a child that renders under limits and read its output (bounded in size and time; killed past them)."""
    with tempfile.TemporaryFile() as errors:
        reading, writing = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: render, write, exit without running the parent's clean-ups
            code = 0
            try:
                os.dup2(writing, 1)
                os.dup2(errors.fileno(), 2)
                _close_inherited()
                _limit_child(limits)
                data = render_description(text, content_type).encode("utf-8", errors="replace")
                view = memoryview(data)
                while view:
                    view = view[os.write(1, view[: 1 << 16]) :]
            except MemoryError:
                code = 3
            except BaseException:
                code = 4
            finally:
                os._exit(code)
        os.close(writing)
        try:
            output, stopped = _read_child(reading, time.monotonic() + limits.wall_seconds, MAX_RENDERING_BYTES + 1)
        finally:
            os.close(reading)
        if output is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
        errors.seek(0)
        return ChildEnd(output, stopped, status, usage.ru_utime + usage.ru_stime, errors.read(MAX_CHILD_ERRORS))


def render_in_child(text: str, content_type: Optional[str], limits: RenderLimits) -> str:
    """render_description in a forked child under limits (never raises): the HTML, or the text escaped with a note
    naming the limit the child went past, or how it died. Only from a single-threaded process (the render
    command): fork copies no other thread's locks there."""
    end = _run_child(text, content_type, limits)
    killed = os.WTERMSIG(end.status) if os.WIFSIGNALED(end.status) else 0
    code = os.WEXITSTATUS(end.status) if os.WIFEXITED(end.status) else None
    if end.stopped == "timeout":
        return unrendered(text, f"its rendering took more than {limits.wall_seconds} seconds (the limit)")
    if end.stopped == "size":
        return unrendered(text, f"rendered, it is more than {MAX_RENDERING_BYTES >> 20} MiB")
    # SIGXCPU: the soft CPU limit; SIGKILL with the CPU used: the hard one (a kill by anyone else names its signal).
    if killed == signal.SIGXCPU or (killed == signal.SIGKILL and end.cpu >= limits.cpu_seconds * 0.9):
        return unrendered(text, f"its rendering took more than {limits.cpu_seconds} CPU seconds (the limit)")
    if code == 3 or (code != 0 and any(sign in end.errors for sign in _OUT_OF_MEMORY)):
        return unrendered(text, f"its rendering needed more than {limits.memory_mb} MiB of memory (the limit)")
    if code != 0 or end.output is None:
        how = f"signal {killed}" if killed else f"exit code {code}"
        return unrendered(text, f"the renderer stopped ({how})")
    return end.output.decode("utf-8", errors="replace")


def _render_by_type(text: str, content_type: str) -> Tuple[Optional[str], str]:
    """(the HTML, or None and why not) of a description of this content type."""
    header = email.message.Message()
    header["Content-Type"] = content_type
    kind = header.get_content_type()
    renderers = description_renderers()
    if renderers is None:
        return None, "readme_renderer is not installed in the index's virtualenv"
    markdown, rst = renderers
    if kind == "text/markdown":
        variant = str(header.get_param("variant") or "GFM")
        if variant not in MARKDOWN_VARIANTS:
            return None, f"unknown Markdown variant {shown(variant)} (GFM or CommonMark)"
        rendered = markdown.render(text, variant=variant)
        return (None if rendered is None else local_images(rendered)), "the Markdown renderer gave nothing"
    if kind == "text/x-rst":
        messages = io.StringIO()
        rendered = rst.render(text, stream=messages)
        reason = " ".join(messages.getvalue().split())[:300] or "the reStructuredText renderer gave nothing"
        return (None if rendered is None else local_images(rendered)), reason
    return f'<pre class="description-text">{esc(text)}</pre>', ""


def description_path(tree: str, relfn: str) -> Optional[str]:
    """Where the rendered description of the package file relfn is stored in the tree; None for a name that is not
    a plain relative path of servable names (never stored: no path leaves the descriptions directory)."""
    if not _SAFE_PATH.match(relfn) or any(part.startswith(".") for part in relfn.split("/")):
        return None
    return os.path.join(tree, DESCRIPTIONS_DIR, relfn + ".html")


def read_rendered(path: str) -> Optional[str]:
    """A stored rendering (at most MAX_RENDERED_BYTES, no link followed), or None when there is none to use."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as handle:
        if not S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        data = handle.read(MAX_RENDERED_BYTES + 1)
    return None if len(data) > MAX_RENDERED_BYTES else data.decode("utf-8", errors="replace")


# --- writing ---------------------------------------------------------------------------------------------------


def write_atomic(
    path: str, data: bytes, durable: bool = False, mode: int = 0o644, owner: Optional[Tuple[int, int]] = None
) -> None:
    """Write data to path so that a reader sees either the old or the new file, never a part. durable: on disk
    (the file and the rename synced) before this returns, for data that cannot be generated again. owner: (uid,
    gid) given to the new file before it is renamed (root writing a file another account reads and replaces)."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.chmod(temporary, mode)
        if owner is not None:
            os.chown(temporary, *owner, follow_symlinks=False)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if durable:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def esc(text: Optional[str]) -> str:
    """HTML-escape untrusted text (quotes too: it is also used in attributes)."""
    return html.escape(text or "", quote=True)


# --- yanked releases (PEP 592) ---------------------------------------------------------------------------------

# The yank file: {"format": 1, "projects": {normalised name: {version: {"reason": text, "when": UTC time}}}}.
YANK_FORMAT = 1
YANK_COMMANDS = ("yank", "unyank")
MAX_YANK_FILE_BYTES = 4 << 20
MAX_REASON_CHARS = 512
MAX_VERSION_CHARS = 128
MAX_PROJECT_CHARS = 200
# What a reason, version or name may not hold: control and format characters (a bidi override shows other text
# than is stored), lone surrogates (bytes of the command line that are not UTF-8) and line or paragraph breaks.
_REFUSED_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))
_PROJECT_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")  # PEP 508

Yanks = Dict[str, Dict[str, str]]  # normalised project -> version -> reason ("" when none was given)


class YankFileError(ValueError):
    """The yank file cannot be used (the message names the file and what is wrong with it)."""


def shown(text: str, limit: int = 60) -> str:
    """A value for a message: quoted, escaped, shortened."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def text_problem(text: str, limit: int) -> Optional[str]:
    """Why text is unfit as a yank reason, version or project name (too long, a control character), or None."""
    if len(text) > limit:
        return f"{len(text)} characters, at most {limit} are taken"
    for position, char in enumerate(text, 1):
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            return f"the control character U+{ord(char):04X} at position {position}"
    return None


@functools.lru_cache(maxsize=1 << 16)
def release_id(version: str) -> Any:
    """What names a release: PEP 440 equality (1.0 is 1.0.0) for a valid version, else the text."""
    try:
        return Version(version)
    except InvalidVersion:
        return version


def yank_reasons(yanked: Optional[Dict[str, str]]) -> Dict[Any, str]:
    """A project's yank entries by release: {release_id(version): reason}."""
    return {release_id(version): reason for version, reason in (yanked or {}).items()}


def yank_entry_problem(project: str, version: Any, entry: Any) -> Optional[str]:
    """What is wrong with one release's entry in the yank file, or None."""
    problem = text_problem(version, MAX_VERSION_CHARS) if version else "empty"
    if problem:
        return f"{project}: version {shown(version)}: {problem}"
    if not isinstance(entry, dict) or not all(isinstance(entry.get(key), str) for key in ("reason", "when")):
        return f'{project} {version}: not {{"reason": TEXT, "when": TIME}}'
    problem = text_problem(entry["reason"], MAX_REASON_CHARS) or text_problem(entry["when"], 64)
    return f"{project} {version}: {problem}" if problem else None


def projects_document_problem(
    document: Any, kind: str, version: int, entry_problem: Callable[[str, Any], Optional[str]]
) -> Optional[str]:
    """What is wrong with a parsed state file of the shape {"format": version, "projects": {name: entry}} (the
    yank and owners files), or None; entry_problem(project, entry) checks one project's entry."""
    if not isinstance(document, dict) or document.get("format") != version:
        return f'not {kind} of format {version} ({{"format": {version}, "projects": {{...}}}})'
    projects = document.get("projects")
    if not isinstance(projects, dict):
        return '"projects" is not an object'
    for project, entry in projects.items():
        if len(project) > MAX_PROJECT_CHARS or normalize(project) != project or not _PROJECT_NAME.match(project):
            return f"{shown(project)} is not a normalised project name"
        problem = entry_problem(project, entry)
        if problem:
            return problem
    return None


def yank_releases_problem(project: str, releases: Any) -> Optional[str]:
    """What is wrong with one project's releases in the yank file, or None."""
    if not isinstance(releases, dict) or not releases:
        return f"{project}: not an object of versions"
    for version, entry in releases.items():
        problem = yank_entry_problem(project, version, entry)
        if problem:
            return problem
    return None


def yank_document_problem(document: Any) -> Optional[str]:
    """What is wrong with a parsed yank file, or None."""
    return projects_document_problem(document, "a yank file", YANK_FORMAT, yank_releases_problem)


def read_small_json(path: str, limit: int, error: Callable[[str], ValueError]) -> Optional[Any]:
    """The parsed JSON of a small state file of the index (None when there is none), read within limit bytes,
    never through a link and never from a FIFO or device; error(message) is raised when it cannot be used."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as problem:
        if problem.errno == errno.ELOOP:
            raise error(f"{path} is a symbolic link (not followed)") from problem
        raise error(f"{path} cannot be opened: {problem.strerror}") from problem
    with os.fdopen(descriptor, "rb") as handle:
        if not S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise error(f"{path} is not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path} is larger than {limit >> 20} MiB")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as problem:
        raise error(f"{path} is not JSON: {str(problem)[:200]}") from problem


def read_yank_file(path: str) -> Dict[str, Any]:
    """The yank file's document (an empty one when there is no file), read within its bound and never through a
    link; YankFileError says what is wrong with it."""
    document = read_small_json(path, MAX_YANK_FILE_BYTES, YankFileError)
    if document is None:
        return {"format": YANK_FORMAT, "projects": {}}
    problem = yank_document_problem(document)
    if problem:
        raise YankFileError(f"{path}: {problem}")
    return document


def yanks_of(document: Dict[str, Any]) -> Yanks:
    """{project: {version: reason}} of a checked yank file document."""
    return {
        project: {version: entry["reason"] for version, entry in releases.items()}
        for project, releases in document["projects"].items()
    }


def file_url(relfn: str) -> str:
    return "../../packages/" + quote(relfn)


def by_project(files: Dict[str, Entry]) -> Dict[str, List[Tuple[str, Entry]]]:
    """Each project's (file, entry) pairs, oldest version first."""
    grouped: Dict[str, List[Tuple[str, Entry]]] = {}
    for relfn, entry in files.items():
        grouped.setdefault(entry["project"], []).append((relfn, entry))
    for entries in grouped.values():
        entries.sort(key=lambda item: (version_key(item[1]["version"]), item[0]))
    return grouped


def latest(entries: List[Tuple[str, Entry]], yanked: Optional[Dict[str, str]] = None) -> Entry:
    """The entry of the release pip installs by default: the newest final release that is not yanked (the newest
    of the pre-releases when there is no such final, and the newest of the yanked ones when all are yanked)."""
    reasons = yank_reasons(yanked)
    kept = [entry for _, entry in entries if release_id(entry["version"]) not in reasons]
    kept = kept or [entry for _, entry in entries]
    finals = [entry for entry in kept if not is_prerelease(entry["version"])]
    pool = finals or kept
    best = max(pool, key=lambda entry: (version_key(entry["version"]), entry.get("metadata_sha256") is not None))
    return best


def render_project_html(
    project: str, entries: List[Tuple[str, Entry]], yanked: Optional[Dict[str, str]] = None
) -> bytes:
    reasons = yank_reasons(yanked)
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        '    <meta name="pypi:repository-version" content="1.1">',
        f"    <title>Links for {esc(project)}</title>",
        "  </head>",
        "  <body>",
        f"    <h1>Links for {esc(project)}</h1>",
    ]
    for relfn, entry in entries:
        attributes = f'href="{esc(file_url(relfn))}#sha256={entry["sha256"]}"'
        if entry.get("requires_python"):
            attributes += f' data-requires-python="{esc(entry["requires_python"])}"'
        if entry.get("metadata_sha256"):
            value = f"sha256={entry['metadata_sha256']}"
            attributes += f' data-core-metadata="{value}" data-dist-info-metadata="{value}"'
        reason = reasons.get(release_id(entry["version"]))
        if reason is not None:  # PEP 592: the attribute's value is the reason, empty when none was given
            attributes += f' data-yanked="{esc(reason)}"'
        lines.append(f"    <a {attributes}>{esc(os.path.basename(relfn))}</a><br>")
    lines += ["  </body>", "</html>", ""]
    return "\n".join(lines).encode()


def render_project_json(
    project: str, entries: List[Tuple[str, Entry]], yanked: Optional[Dict[str, str]] = None
) -> bytes:
    reasons = yank_reasons(yanked)
    files = []
    for relfn, entry in entries:
        metadata: Any = {"sha256": entry["metadata_sha256"]} if entry.get("metadata_sha256") else False
        reason = reasons.get(release_id(entry["version"]))
        item: Entry = {
            "filename": os.path.basename(relfn),
            "url": file_url(relfn),
            "hashes": {"sha256": entry["sha256"]},
            "size": entry["size"],
            # PEP 714's name only: pip 23.0 (Debian 12's) crashes on a hash dict under the old
            # "dist-info-metadata" key, which is why PEP 714 renamed it. HTML keeps both attributes (strings).
            "core-metadata": metadata,
            # PEP 691: the reason, or true when none was given (PEP 592's empty data-yanked).
            "yanked": False if reason is None else (reason or True),
        }
        if entry.get("requires_python"):
            item["requires-python"] = entry["requires_python"]
        if entry.get("uploaded"):  # PEP 700 (api-version 1.1), from the audit trail; unknown: left out
            item["upload-time"] = entry["uploaded"]["time"]
        files.append(item)
    versions = sorted({entry["version"] for _, entry in entries}, key=version_key)
    document = {"meta": {"api-version": "1.1"}, "name": project, "versions": versions, "files": files}
    return json.dumps(document, indent=1).encode()


@functools.lru_cache(maxsize=1 << 18)
def _root_link(project: str) -> str:
    """A project's line of the simple index (kept: the lists are written again after each upload)."""
    return f'    <a href="{esc(quote(project))}/">{esc(project)}</a><br>'


def render_root_html(projects: List[str]) -> bytes:
    links = "\n".join(map(_root_link, projects))
    return (
        '<!DOCTYPE html>\n<html>\n  <head>\n    <meta name="pypi:repository-version" content="1.1">\n'
        "    <title>Simple Index</title>\n  </head>\n  <body>\n    <h1>Simple Index</h1>\n"
        f"{links}\n  </body>\n</html>\n"
    ).encode()


def render_root_json(projects: List[str]) -> bytes:
    document = {"meta": {"api-version": "1.1"}, "projects": [{"name": p} for p in projects]}
    return json.dumps(document, indent=1).encode()


PAGE_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;
color:#1b1f24;background:#f6f7f9}
header{background:#22313f;color:#fff;padding:1rem 2rem}header a{color:#fff;text-decoration:none}
main{max-width:70rem;margin:0 auto;padding:1rem 2rem}h1{margin:.2rem 0;font-size:1.5rem}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #e1e4e8;vertical-align:top}
th{background:#eef1f4}code,pre{font-family:"DejaVu Sans Mono",monospace;font-size:.85rem}
pre{background:#fff;border:1px solid #e1e4e8;padding:.8rem;overflow:auto;white-space:pre-wrap}
input[type=search]{width:100%;box-sizing:border-box;font-size:1.1rem;padding:.5rem;margin:.5rem 0 1rem;
border:1px solid #9aa5b1;border-radius:4px}
.hash{word-break:break-all;font-size:.75rem}.muted{color:#5f6b77}
.yanked{color:#9a3412;font-weight:normal;font-size:.85rem}
.description{background:#fff;border:1px solid #e1e4e8;padding:.2rem 1.2rem;overflow:auto}
.description img{max-width:100%}.render-note{color:#9a3412}
"""

BASE_SCRIPT = """
(function(){var base=location.origin+location.pathname.replace(/\\/(index\\.html|project\\/[^\\/]*\\/?)?$/,'');
document.querySelectorAll('.base').forEach(function(e){e.textContent=base;});
var h=location.hostname,plain=location.protocol==='http:'&&!/^(localhost|127[.]|\\[::1\\]$)/.test(h);
document.querySelectorAll('.trusted').forEach(function(e){e.textContent=plain?'--trusted-host '+h+' ':'';});})();
"""

# The front page lists FRONT_ROWS projects; a search reads the compact index of all of them (search.json, fetched
# once, when the first word is typed) and lists the first FRONT_ROWS that match. Rows are made with textContent
# only: nothing in the index is ever read as HTML.
SEARCH_SCRIPT = """
(function(){
var box=document.getElementById('search'),body=document.querySelector('#projects tbody'),
count=document.getElementById('count'),limit=+body.getAttribute('data-limit'),total=+body.getAttribute('data-total'),
first=body.innerHTML,rows=null,asked=false;
function cell(tr,text){var td=document.createElement('td');td.textContent=text;tr.appendChild(td);return td;}
function row(p){var tr=document.createElement('tr'),td=document.createElement('td'),a=document.createElement('a');
a.href='project/'+encodeURIComponent(p[0])+'/';a.textContent=p[1];td.appendChild(a);tr.appendChild(td);
var v=cell(tr,p[2]);p[5].forEach(function(n){var s=document.createElement('span');s.className='yanked';
s.textContent=n;v.appendChild(document.createTextNode(' '));v.appendChild(s);});
cell(tr,p[3]);cell(tr,String(p[4]));return tr;}
function apply(){var words=box.value.toLowerCase().split(/\\s+/).filter(Boolean);
if(!words.length){body.innerHTML=first;count.textContent=Math.min(limit,total)+' of '+total+' projects';return;}
if(!rows){if(!asked){asked=true;count.textContent='searching '+total+' projects';
fetch('search.json').then(function(r){return r.json();}).then(function(d){rows=d.projects;apply();},
function(){count.textContent='the search index could not be read';});}return;}
var hits=rows.filter(function(p){var text=(p[0]+' '+p[1]+' '+(p[3]||'')).toLowerCase();
return words.every(function(w){return text.indexOf(w)>=0;});});
body.textContent='';hits.slice(0,limit).forEach(function(p){body.appendChild(row(p));});
count.textContent=(hits.length>limit?limit+' shown of ':'')+hits.length+' of '+rows.length+' projects';}
var q=new URLSearchParams(location.search).get('q');if(q){box.value=q;}
box.addEventListener('input',apply);if(q){apply();}})();
"""


def _source_hash(text: str) -> str:
    """A CSP source for an inline <style> or <script> of exactly this text."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# The browse pages' Content-Security-Policy (a meta element in each page, and a header where this module serves
# them): their own inline style and scripts only, images from this index only, nothing else loaded or sent.
PAGE_POLICY = (
    "default-src 'none'; img-src 'self'; "
    f"style-src {_source_hash(PAGE_STYLE)}; "
    f"script-src {_source_hash(BASE_SCRIPT + SEARCH_SCRIPT)} {_source_hash(BASE_SCRIPT)}; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'"
)


def page(title: str, body: str, script: str) -> bytes:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(PAGE_POLICY)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{PAGE_STYLE}</style>\n</head>\n<body>\n"
        '<header><a href="{root}"><strong>airgap-pypi</strong></a> <span>private package index</span></header>\n'
        f"<main>\n{body}\n</main>\n<script>{BASE_SCRIPT}{script}</script>\n</body>\n</html>\n"
    ).encode()


def yank_text(version: str, reason: str) -> str:
    """The visible mark of a yanked release: "yanked", with its reason when one was given."""
    text = f"{version} yanked" if version else "yanked"
    return text + (": " + reason if reason else "")


def yank_note(version: str, reason: str) -> str:
    """yank_text() as HTML (escaped)."""
    return f'<span class="yanked">{esc(yank_text(version, reason))}</span>'


def yanked_releases(entries: List[Tuple[str, Entry]], yanked: Optional[Dict[str, str]]) -> List[Tuple[str, str]]:
    """(version, reason) of the project's yanked releases that have files, newest first."""
    reasons = yank_reasons(yanked)
    found: Dict[str, str] = {}
    for _, entry in entries:
        reason = reasons.get(release_id(entry["version"]))
        if reason is not None:
            found[entry["version"]] = reason
    return sorted(found.items(), key=lambda item: version_key(item[0]), reverse=True)


# The yanked releases newer than a project's latest one that its row on the front page names.
FRONT_YANKED_SHOWN = 3


# The projects the front page lists (the first by name); the search finds the others in search.json.
FRONT_ROWS = 100


def front_notes(row: List[Any]) -> List[str]:
    """The yank notes of a project's row (text): its latest release when yanked, and the yanked releases newer
    than it (FRONT_YANKED_SHOWN of them, then how many more)."""
    version = row[1]
    shown_version = version_key(version)
    notes = [
        yank_text("" if yanked == version else yanked, reason)
        for yanked, reason in row[4]
        if version_key(yanked) >= shown_version
    ]
    if len(notes) > FRONT_YANKED_SHOWN:
        notes[FRONT_YANKED_SHOWN:] = [f"and {len(notes) - FRONT_YANKED_SHOWN} more"]
    return notes


def render_search_index(projects: List[str], summaries: Dict[str, List[Any]]) -> bytes:
    """search.json: per project [project, name, latest version, summary, files, yank notes], in name order."""
    rows = []
    for project in projects:
        row = summaries[project]
        rows.append([project, row[0], row[1], row[2] or "", row[3], front_notes(row)])
    return json.dumps({"projects": rows}, separators=(",", ":")).encode()


def render_browse_index(projects: List[str], summaries: Dict[str, List[Any]]) -> bytes:
    """The front page: the first FRONT_ROWS projects, per project its latest release (see latest()), marked when
    yanked, and the yanked releases newer than it, with their reasons; a search over search.json for the rest."""
    rows = []
    for project in projects[:FRONT_ROWS]:
        row = summaries[project]
        notes = "".join(f' <span class="yanked">{esc(note)}</span>' for note in front_notes(row))
        rows.append(
            f'<tr><td><a href="project/{esc(quote(project))}/">{esc(row[0])}</a></td>'
            f"<td>{esc(row[1])}{notes}</td><td>{esc(row[2])}</td><td>{row[3]}</td></tr>"
        )
    more = (
        f' (the first {FRONT_ROWS} by name: search for the others, or see the <a href="simple/">simple index</a>)'
        if len(projects) > FRONT_ROWS
        else ""
    )
    body = (
        "<h1>Packages</h1>\n"
        '<p class="muted">Install: <code>pip install --index-url <span class="base">http://HOST:PORT</span>/simple/ '
        '<span class="trusted"></span>NAME</code> &middot; Upload: <code>twine upload --repository-url '
        '<span class="base">http://HOST:PORT</span>/ dist/*</code> &middot; <a href="simple/">simple index</a></p>\n'
        '<label for="search">Search names and summaries</label>\n'
        '<input type="search" id="search" placeholder="Search packages" autofocus>\n'
        f'<p class="muted"><span id="count">{len(rows)} of {len(projects)} projects</span>{more}</p>\n'
        '<table id="projects"><thead><tr><th>Project</th><th>Latest</th><th>Summary</th><th>Files</th></tr></thead>\n'
        f'<tbody data-limit="{FRONT_ROWS}" data-total="{len(projects)}">{"".join(rows)}</tbody></table>'
    )
    return page("airgap-pypi packages", body, SEARCH_SCRIPT).replace(b"{root}", b"./")


def uploaded_note(entry: Entry) -> str:
    """ "uploaded by ACCOUNT on DATE TIME UTC" from the audit trail (escaped); "" when unknown (a file of the mirror,
    or uploaded before the index kept an audit trail)."""
    uploaded = entry.get("uploaded")
    if not uploaded:
        return ""
    when = uploaded["time"][:16].replace("T", " ") + " UTC"
    return f'<span class="uploaded">uploaded by {esc(uploaded["account"])} on {esc(when)}</span>'


NO_DESCRIPTION = '<p class="muted">(none)</p>'


def owners_note(owners: Optional[Dict[str, Any]]) -> str:
    """ "owners: alice, bob" (escaped), saying when the owner is a first upload's claim; "" without owners."""
    if not owners:
        return ""
    if not owners.get("accounts"):
        return '<p class="owners">owners: none (only an admin may upload)</p>\n'
    how = " (claimed by the first upload)" if owners.get("claimed") else ""
    return f'<p class="owners">owners: {esc(", ".join(owners["accounts"]))}{how}</p>\n'


def render_browse_project(
    project: str,
    entries: List[Tuple[str, Entry]],
    description: str,
    yanked: Optional[Dict[str, str]] = None,
    owners: Optional[Dict[str, Any]] = None,
) -> bytes:
    """A project's page; description: the newest release's description as HTML (rendered and sanitised, or
    escaped); owners: who may upload to it ({"accounts", "claimed"}), or None."""
    newest = latest(entries, yanked)
    reasons = yank_reasons(yanked)
    by_version: Dict[str, List[Tuple[str, Entry]]] = {}
    for relfn, entry in entries:
        by_version.setdefault(entry["version"], []).append((relfn, entry))
    sections = []
    for version in sorted(by_version, key=version_key, reverse=True):
        rows = "".join(
            f'<tr><td><a href="../../packages/{esc(quote(relfn))}">{esc(os.path.basename(relfn))}</a></td>'
            f"<td>{entry['size']:,}</td><td>{esc(entry.get('requires_python') or '')}</td>"
            f'<td class="hash">{entry["sha256"]}</td><td>{uploaded_note(entry)}</td></tr>'
            for relfn, entry in by_version[version]
        )
        reason = reasons.get(release_id(version))
        mark = "" if reason is None else " " + yank_note("", reason)
        sections.append(
            f"<h3>{esc(version)}{mark}</h3>\n<table><thead><tr><th>File</th><th>Bytes</th><th>Requires-Python</th>"
            f"<th>sha256</th><th>Uploaded</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    newest_reason = reasons.get(release_id(newest["version"]))
    body = (
        f'<h1>{esc(newest["name"])} <span class="muted">{esc(newest["version"])}</span>'
        f"{'' if newest_reason is None else ' ' + yank_note('', newest_reason)}</h1>\n"
        f"<p>{esc(newest.get('summary'))}</p>\n"
        f"{owners_note(owners)}"
        f'<pre>pip install --index-url <span class="base">http://HOST:PORT</span>/simple/ '
        f'<span class="trusted"></span>{esc(project)}=={esc(newest["version"])}\n'
        f'twine upload --repository-url <span class="base">http://HOST:PORT</span>/ dist/*</pre>\n'
        f'<p><a href="../../simple/{esc(quote(project))}/">simple page</a> &middot; '
        f'<a href="../../">all packages</a></p>\n'
        f'<h2>Description</h2>\n<div id="description" class="description">{description or NO_DESCRIPTION}</div>\n'
        f"<h2>Versions and files</h2>\n{chr(10).join(sections)}"
    )
    return page(f"{newest['name']} - airgap-pypi", body, "").replace(b"{root}", b"../../")


# --- the tree --------------------------------------------------------------------------------------------------


_ENTRY_TYPES = {"size": int, "mtime": int, "sha256": str, "project": str, "name": str, "version": str}


def with_upload(entry: Entry, uploaded: Optional[Dict[str, str]]) -> Entry:
    """The entry with who uploaded its file and when (from the audit trail), or without when that is unknown."""
    if entry.get("uploaded") == uploaded:
        return entry
    entry = {key: value for key, value in entry.items() if key != "uploaded"}
    if uploaded:
        entry["uploaded"] = {"time": uploaded["time"], "account": uploaded["account"]}
    return entry


def valid_queue_and_owners(state: Dict[str, Any]) -> bool:
    """state.json's queue of descriptions to render and the owners its pages show, as this module writes them."""
    pending = state.get("pending", [])
    if not isinstance(pending, list) or not all(isinstance(relfn, str) for relfn in pending):
        return False
    owners = state.get("owners", {})
    return isinstance(owners, dict) and all(
        isinstance(entry, dict)
        and isinstance(entry.get("accounts"), list)
        and all(isinstance(account, str) for account in entry["accounts"])
        and isinstance(entry.get("claimed"), bool)
        for entry in owners.values()
    )


def valid_state(state: Dict[str, Any]) -> bool:
    """state.json as this module writes it (anything else is rebuilt, never trusted)."""
    files, skipped = state.get("files"), state.get("skipped", {})
    if not isinstance(files, dict) or not isinstance(skipped, dict):
        return False
    for entry in list(files.values()) + list(skipped.values()):
        if not isinstance(entry, dict):
            return False
    if not valid_queue_and_owners(state):
        return False
    yanked = state.get("yanked", {})
    if not isinstance(yanked, dict) or not all(
        isinstance(releases, dict) and all(isinstance(v, str) and isinstance(r, str) for v, r in releases.items())
        for releases in yanked.values()
    ):
        return False
    optional = ("requires_python", "summary", "metadata_sha256")
    uploaded = [entry["uploaded"] for entry in files.values() if entry.get("uploaded") is not None]
    if any(upload_entry_problem(item) for item in uploaded):
        return False
    return all(
        all(
            isinstance(entry.get(key), kind) and not isinstance(entry.get(key), bool)
            for key, kind in _ENTRY_TYPES.items()
        )
        and all(entry.get(key) is None or isinstance(entry.get(key), str) for key in optional)
        for entry in files.values()
    )


STATE_JOURNAL = "state.journal"
SEARCH_INDEX = "search.json"  # the front page's search reads it (served at /search.json)
MAX_STATE_BYTES = 1 << 30
MAX_JOURNAL_BYTES = 256 << 20
# The journal is folded into state.json once it is larger than this share of it (and MIN_COMPACT_BYTES).
JOURNAL_SHARE = 4
MIN_COMPACT_BYTES = 1 << 20
_WHOLE_KEYS = ("version", "pages", "packages")  # a change of these writes state.json again
_KEYED_KEYS = ("files", "summaries", "yanked", "owners")  # journalled by key (None: removed)
_REPLACED_KEYS = ("skipped", "pending")  # journalled whole when changed


def summary_row(entries: List[Tuple[str, Entry]], yanked: Optional[Dict[str, str]]) -> List[Any]:
    """A project's row on the front page and in its search index: [name, latest version (see latest()), its
    summary, number of files, [[version, reason] of the yanked releases, newest first]]."""
    newest = latest(entries, yanked)
    releases = [[version, reason] for version, reason in yanked_releases(entries, yanked)]
    return [newest["name"], newest["version"], newest.get("summary"), len(entries), releases]


def summaries_of(files: Dict[str, Entry], yanks: Yanks) -> Dict[str, List[Any]]:
    return {project: summary_row(entries, yanks.get(project)) for project, entries in by_project(files).items()}


def valid_summaries(summaries: Any) -> bool:
    """The front page's rows as summary_row() makes them."""
    return isinstance(summaries, dict) and all(
        isinstance(row, list)
        and len(row) == 5
        and isinstance(row[0], str)
        and isinstance(row[1], str)
        and (row[2] is None or isinstance(row[2], str))
        and isinstance(row[3], int)
        and not isinstance(row[3], bool)
        and isinstance(row[4], list)
        and all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair) for pair in row[4]
        )
        for row in summaries.values()
    )


_MISSING = object()


def _differs(before: Any, after: Any) -> bool:
    return before is not after and before != after


def state_patch(old: Dict[str, Any], new: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """What changed from state old to state new as a journal line's fields ({} for nothing); None when the
    change is not journalled (the whole state is written)."""
    if any(old.get(key) != new.get(key) for key in _WHOLE_KEYS):
        return None
    patch: Dict[str, Any] = {}
    for key in _KEYED_KEYS:
        before, after = old.get(key) or {}, new.get(key) or {}
        if before is after:
            continue
        # An entry kept as it was is the same object: compared by identity first (100,000 entries per sync).
        changes = {name: value for name, value in after.items() if _differs(before.get(name, _MISSING), value)}
        changes.update({name: None for name in before if name not in after})
        if changes:
            patch[key] = changes
    for key in _REPLACED_KEYS:
        if (old.get(key) or ({} if key == "skipped" else [])) != (new.get(key) or ({} if key == "skipped" else [])):
            patch[key] = new.get(key)
    return patch


def journal_patch(line: bytes, generation: str) -> Optional[Dict[str, Any]]:
    """A journal line's changes when it is one this module wrote after state.json of this generation; None for
    anything else (never trusted)."""
    try:
        patch = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(patch, dict) or patch.pop("journal", None) != generation:
        return None
    if set(patch) - set(_KEYED_KEYS) - set(_REPLACED_KEYS):
        return None
    if not all(isinstance(patch.get(key, {}), dict) for key in _KEYED_KEYS):
        return None
    kept = {key: {k: v for k, v in patch.get(key, {}).items() if v is not None} for key in _KEYED_KEYS}
    check = dict(kept, skipped=patch.get("skipped") or {}, pending=patch.get("pending") or [])
    if not valid_state(check) or not valid_summaries(kept["summaries"]):
        return None
    return patch


def apply_patch(state: Dict[str, Any], patch: Dict[str, Any]) -> None:
    """Apply a journal line's changes to a state whose "files" and "summaries" are this caller's copies."""
    for key in _KEYED_KEYS:
        changes = patch.get(key)
        if not changes:
            continue
        target = state[key] if key in ("files", "summaries") else dict(state.get(key) or {})
        for name, value in changes.items():
            if value is None:
                target.pop(name, None)
            else:
                target[name] = value
        state[key] = target
    for key in _REPLACED_KEYS:
        if key in patch:
            state[key] = patch[key] if patch[key] is not None else ({} if key == "skipped" else [])


class Fresh(NamedTuple):
    """What a sync read from the files it (re)indexed: their names, those with a description to render, and the
    notes of those whose description is beyond the bounds. (The METADATA of the wheels among them, PEP 658, is
    written as each is read: a rebuild holds none of it.)"""

    read: List[str]
    described: List[str]
    notes: Dict[str, str]

    def add(self, relfn: str, fields: Dict[str, str]) -> None:
        """A file read now, and whether it has a description to render."""
        self.read.append(relfn)
        text, kind = fields.get("description", ""), fields.get("description-content-type")
        if text.strip():
            note = beyond_bounds(text, kind)
            if note is None:
                self.described.append(relfn)
            else:
                self.notes[relfn] = note


# A long step of a sync (a rebuild of a large index) logs how far it is this often.
PROGRESS_SECONDS = 5.0


class Progress:
    """Logs how far a long step is, with counts, every PROGRESS_SECONDS (nothing for a shorter step)."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total, self.count = what, total, 0
        self.started = self.last = time.monotonic()

    def step(self) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= PROGRESS_SECONDS:
            self.last = now
            LOG.info("%s: %d of %d (%.0f s)", self.what, self.count, self.total, now - self.started)

    def done(self) -> None:
        if self.last != self.started:
            LOG.info("%s: %d of %d in %.1f s", self.what, self.count, self.total, time.monotonic() - self.started)


def log_progress() -> None:
    """Let the module's INFO lines (a long sync's progress) reach stderr when nothing else handles them."""
    if not LOG.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)


class Tree:
    """The generated tree for one packages directory.

    yanked: the yank file (PEP 592) the pages follow. None: the pages keep showing the releases they showed as
    yanked (a caller that does not know the file never changes them).
    uploads: the audit trail's uploads.json (who uploaded each file, and when: PEP 700's upload-time). None: the
    pages keep what they show, as for yanked.
    render_limits: given, a sync that leaves descriptions queued starts the render command (a process of its own,
    with these limits) and so does startup(); None: the caller renders the queue itself (the CLI) or never.
    owner_map, owner_claims: the inventory's owner map as the role writes it, and the owners file of first uploads'
    claims: the project pages show the owners. Neither: the pages keep the owners they show, as for yanked."""

    def __init__(
        self,
        packages: str,
        tree: str,
        yanked: Optional[str] = None,
        uploads: Optional[str] = None,
        render_limits: Optional[RenderLimits] = None,
        *,
        owner_map: Optional[str] = None,
        owner_claims: Optional[str] = None,
    ) -> None:
        self.packages = os.path.abspath(packages)
        self.owner_map = os.path.abspath(owner_map) if owner_map else None
        self.owner_claims = os.path.abspath(owner_claims) if owner_claims else None
        self._owners: Optional[Tuple[Any, Owners]] = None
        self.tree = os.path.abspath(tree)
        self.yanked = os.path.abspath(yanked) if yanked else None
        self.uploads = os.path.abspath(uploads) if uploads else None
        self.render_limits = render_limits
        # The descriptions queued for the render command (an ordered set), and whether they are rendered at all:
        # set by each sync (and by the renderer when it stores one) from state.json.
        self._pending: Dict[str, None] = {}
        self.render_queued = False  # whether the last sync left descriptions for the renderer
        self._rendering = False
        self._uploads: Optional[Tuple[Tuple[int, int, int], Dict[str, Dict[str, str]]]] = None
        self._thread_lock = threading.Lock()
        self._seen: Optional[Dict[str, int]] = None
        self._seen_yanked: Optional[List[int]] = None
        self._settle: Optional[float] = None  # when the last sync's young directories are to be listed again
        self._settle_lock = threading.Lock()
        self._settler: Optional[threading.Thread] = None
        self._next_check = 0.0
        self._failed_until = 0.0
        # A worker's tree: the lists a sync leaves are written by the lists command (kick_lists), never by a
        # thread of the worker, whose reads would wait for its GIL.
        self.lists_apart = False
        self._flush_lock = threading.Lock()  # the thread writing the lists an upload's sync left (flush_lists)
        self._flusher: Optional[threading.Thread] = None
        self._flush_again = False
        # (state.json's inode, mtime and size; the state with the journal applied; the journal's bytes applied, or
        # -1 after a line that cannot be used, which the next save compacts)
        self._state: Optional[Tuple[Tuple[int, int, int], Dict[str, Any], int]] = None

    def path(self, *parts: str) -> str:
        return os.path.join(self.tree, *parts)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One sync at a time: threads of this process, and other processes (flock on a file of the tree)."""
        os.makedirs(self.tree, exist_ok=True)
        with self._thread_lock, open(self.path(".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def dir_stamps(self, dirs: Iterable[str]) -> Dict[str, int]:
        stamps = {}
        for rel in dirs:
            try:
                stamps[rel] = os.stat(os.path.join(self.packages, rel)).st_mtime_ns
            except OSError:
                stamps[rel] = -1
        return stamps

    def yank_stamp(self) -> Optional[List[int]]:
        """What tells a changed yank file: its inode, size and mtime ([] when missing; None without one)."""
        if self.yanked is None:
            return None
        try:
            stat = os.lstat(self.yanked)
        except OSError:
            return []
        return [stat.st_ino, stat.st_size, stat.st_mtime_ns]

    def current_yanks(self, shown_now: Yanks) -> Yanks:
        """The yanked releases the pages are to show: the yank file's; what they show now when this tree has no
        yank file; none when the file cannot be used (logged: a bad file never stops the index)."""
        if self.yanked is None:
            return shown_now
        try:
            return yanks_of(read_yank_file(self.yanked))
        except YankFileError as error:
            LOG.warning("%s: no release is shown as yanked until it is fixed", error)
            return {}

    def current_uploads(self, old: Dict[str, Entry]) -> Dict[str, Dict[str, str]]:
        """{file: {"time", "account"}} the pages are to show: uploads.json's (parsed again only when it changed);
        what they show now when this tree has none or it cannot be used (logged: it never stops the index)."""
        shown_now = {relfn: entry["uploaded"] for relfn, entry in old.items() if entry.get("uploaded")}
        if self.uploads is None:
            return shown_now
        try:
            stat = os.lstat(self.uploads)
        except FileNotFoundError:
            return {}
        except OSError as error:
            LOG.warning("%s cannot be read (%s): the pages keep the upload times they show", self.uploads, error)
            return shown_now
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if self._uploads is not None and self._uploads[0] == key:
            return self._uploads[1]
        try:
            uploads = read_uploads_file(self.uploads)
        except AuditError as error:
            LOG.warning("%s: the pages keep the upload times they show until it is fixed", error)
            return shown_now
        self._uploads = (key, uploads)
        return uploads

    def current_owners(self, shown_now: Owners) -> Owners:
        """The owners the pages are to show, from the owner map and the claims (read again only when either
        changed); what they show now when this tree has neither or one cannot be used (logged)."""
        if self.owner_map is None and self.owner_claims is None:
            return shown_now
        key = []
        for path in (self.owner_map, self.owner_claims):
            try:
                stat = os.lstat(path) if path else None
            except FileNotFoundError:
                stat = None
            except OSError as error:
                LOG.warning("%s cannot be read (%s): the pages keep the owners they show", path, error)
                return shown_now
            key.append(None if stat is None else (stat.st_ino, stat.st_mtime_ns, stat.st_size))
        if self._owners is not None and self._owners[0] == key:
            return self._owners[1]
        try:
            owner_map = read_owner_map(self.owner_map) if self.owner_map else {}
            document = read_owners_file(self.owner_claims) if self.owner_claims else {"projects": {}}
        except OwnersFileError as error:
            LOG.warning("%s: the pages keep the owners they show until it is fixed", error)
            return shown_now
        claims = {project: entry["owner"] for project, entry in document["projects"].items()}
        owners = shown_owners(owner_map, claims)
        self._owners = (key, owners)
        return owners

    def load_state(self) -> Optional[Dict[str, Any]]:
        """The state (state.json and the changes journalled after it), parsed again only when another process
        replaced state.json since this one last read or wrote it; journal lines appended since are applied alone."""
        try:
            stat = os.stat(self.path("state.json"))
        except OSError:
            self._state = None
            return None
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = self._state
        if cached is None or cached[0] != key:
            state = self.read_state_base()
            if state is None:
                self._state = None
                return None
            cached = (key, state, 0)
            # Its million objects (100,000 files) hold no cycles: out of the collector's sight, a full collection
            # no longer stops a worker's threads for a walk over them (each about a second); refcounts free them.
            gc.freeze()
        self._state = self.replay_journal(*cached)
        return self._state[1] if self._state else None

    def read_state_base(self) -> Optional[Dict[str, Any]]:
        """state.json when it has the shape this module writes (anything else is rebuilt, never trusted)."""
        try:
            data = read_bounded_file(self.path("state.json"), MAX_STATE_BYTES)
            state = json.loads(data) if data is not None else None
        except (Refusal, ValueError, RecursionError) as error:
            LOG.warning("%s cannot be used (%s): every page is written again", self.path("state.json"), error)
            return None
        if state is None:
            return None
        if not isinstance(state, dict) or not valid_state(state) or not isinstance(state.get("journal", ""), str):
            LOG.warning("%s has an unexpected shape: every page is written again", self.path("state.json"))
            return None
        state.setdefault("journal", "")  # written by a release before the journal: its next save writes it whole
        if not valid_summaries(state.get("summaries")):
            state["summaries"] = summaries_of(state["files"], state.get("yanked", {}))  # written by 0.x: derived
        return state

    def replay_journal(
        self, key: Tuple[int, int, int], state: Dict[str, Any], offset: int
    ) -> Optional[Tuple[Tuple[int, int, int], Dict[str, Any], int]]:
        """Apply the journal's whole lines after offset (those of state.json's generation) to the state. A line
        that cannot be used ends the replay and marks the journal for compaction at the next save: the state is
        a cache of the files, so what it misses is found again by the next sync."""
        if offset < 0:  # a bad line was met before: nothing after it is applied
            return key, state, offset
        data = self.journal_after(offset)
        if data is None:
            return key, state, -1
        end = data.rfind(b"\n") + 1  # a line still being appended (or cut short) is not read yet
        if not end:
            return key, state, offset
        patched = dict(state, files=dict(state["files"]), summaries=dict(state["summaries"]))
        for line in data[:end].splitlines():
            patch = journal_patch(line, state["journal"])
            if patch is None:
                LOG.warning("%s has a line that cannot be used: it is compacted at the next sync", STATE_JOURNAL)
                return key, patched, -1
            apply_patch(patched, patch)
        return key, patched, offset + end

    def journal_after(self, offset: int) -> Optional[bytes]:
        """The journal's bytes after offset (b"" when there is no journal); None when it cannot be used: not a
        regular file (no link is followed), shorter than offset (replaced), or larger than MAX_JOURNAL_BYTES."""
        try:
            descriptor = os.open(self.path(STATE_JOURNAL), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return b""
        except OSError as error:
            LOG.warning("%s cannot be read (%s): it is compacted at the next sync", self.path(STATE_JOURNAL), error)
            return None
        with os.fdopen(descriptor, "rb") as handle:
            stat = os.fstat(handle.fileno())
            if not S_ISREG(stat.st_mode) or stat.st_size < offset or stat.st_size > MAX_JOURNAL_BYTES:
                return None
            handle.seek(offset)
            return handle.read(stat.st_size - offset)

    def save_state(self, document: Dict[str, Any]) -> None:
        """Record the state: the changes from the state last read or written appended to the journal (one line),
        or the whole state written to state.json (under a temporary name, then renamed) with a new journal when
        there is no usable state to append to, the journal has grown past a quarter of it, or a line was bad."""
        cached = self._state
        document = dict(document, summaries=document.get("summaries") or {})
        if cached is not None and cached[2] >= 0:
            key, state, offset = cached
            patch = state_patch(state, document)
            if patch == {}:
                return
            if patch is not None:
                line = json.dumps({"journal": state["journal"], **patch}, separators=(",", ":")).encode() + b"\n"
                small = offset + len(line) <= max(MIN_COMPACT_BYTES, key[2] // JOURNAL_SHARE)
                if small and self.append_journal(line, offset):
                    self._state = (key, dict(document, journal=state["journal"]), offset + len(line))
                    return
        document = dict(document, journal=os.urandom(8).hex())
        # The base first, the journal after: a journal line of another generation is never applied.
        write_atomic(self.path("state.json"), json.dumps(document, separators=(",", ":")).encode())
        write_atomic(self.path(STATE_JOURNAL), b"")
        stat = os.stat(self.path("state.json"))
        self._state = ((stat.st_ino, stat.st_mtime_ns, stat.st_size), document, 0)
        gc.freeze()  # as load_state() does

    def append_journal(self, line: bytes, offset: int) -> bool:
        """Append a line to the journal (under the tree's lock) where this process read it up to; False when the
        journal is not the one read (or cannot be written): the caller writes the whole state instead."""
        try:
            descriptor = os.open(self.path(STATE_JOURNAL), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        with os.fdopen(descriptor, "wb") as handle:
            stat = os.fstat(handle.fileno())
            if not S_ISREG(stat.st_mode) or stat.st_size != offset:
                return False
            handle.write(line)
        return True

    def read_json(self, name: str) -> Optional[Dict[str, Any]]:
        try:
            with open(self.path(name), "rb") as handle:
                value = json.load(handle)
            return value if isinstance(value, dict) else None
        except (OSError, ValueError):
            return None

    def scan(
        self, only: Optional[Tuple[Dict[str, Entry], str]] = None
    ) -> Tuple[Dict[str, int], Dict[str, os.stat_result], Dict[str, Entry]]:
        """Directory mtimes (taken before listing) and the files below packages that may be distributions. only:
        (the indexed files, a project): an indexed file whose name cannot be the project's is not looked at (the
        third dict: their entries, kept as they are)."""
        dirs: Dict[str, int] = {}
        found: Dict[str, os.stat_result] = {}
        kept: Dict[str, Entry] = {}
        known, project = only if only is not None else ({}, "")
        if only is None:  # a full sync; an upload's (and a settle) leaves killed writers' files to the others
            remove_leftovers(self.packages)
        pending = [""]
        while pending:
            rel = pending.pop()
            full = os.path.join(self.packages, rel)
            try:
                dirs[rel] = os.stat(full).st_mtime_ns
                entries = list(os.scandir(full))
            except OSError:
                continue
            for item in entries:
                if item.name.startswith("."):
                    continue
                relfn = f"{rel}/{item.name}" if rel else item.name
                if item.is_dir(follow_symlinks=False):
                    pending.append(relfn)
                    continue
                entry = known.get(relfn)
                if entry is not None and entry["project"] != project:  # its name says its project
                    kept[relfn] = entry
                    continue
                if not item.name.lower().endswith(ARCHIVE_SUFFIXES) or not item.is_file(follow_symlinks=False):
                    continue
                try:
                    found[relfn] = item.stat()
                except OSError:
                    continue
        return dirs, found, kept

    def rendering(self) -> bool:
        """Whether descriptions are rendered: readme_renderer is installed, this process did not fail to import it,
        and no renderer found this very install not importable (RENDERER_BROKEN, written by the render command)."""
        origin = renderer_origin()
        if origin is None:
            return False
        if description_renderers.cache_info().currsize and description_renderers() is None:
            return False
        broken = self.read_json(RENDERER_BROKEN)
        return not (broken and broken.get("origin") == origin)

    def pages_format(self) -> List[Any]:
        """The pages' format as state.json records it: PAGES_FORMAT, and whether descriptions are rendered."""
        return [PAGES_FORMAT, self.rendering()]

    def sync(
        self,
        rebuild: bool = False,
        skip_young: bool = False,
        project: Optional[str] = None,
        render: bool = True,
        *,
        if_stale: bool = False,
    ) -> List[str]:
        """Bring the tree up to date with the packages directory; return the projects whose pages changed. With
        render_limits, a renderer is started when descriptions are queued (after the lock is released), unless
        render is false: then render_queued says whether the caller should start one (after its response).
        project: the one project an upload changed. Every directory is still listed (a new file of any project
        is found), but of the files already indexed only those whose names may be the project's are looked at
        again: the others keep their entries (a file replaced in place is seen by the next sync without it).
        if_stale: nothing when, once the lock is taken, the stamp says the pages are up to date (a sync another
        read or an upload started first made them so)."""
        with self.locked():
            if if_stale and self.stamp_current(self.read_json("stamp.json"), self.yank_stamp()):
                return []
            started = time.time()
            changed = self._sync(rebuild, skip_young, project)
            note_sync(self.path(SYNC_FILE), started)  # the metrics' last sync time and duration
            self.render_queued = bool(self._pending)
        if self.render_queued and render:
            self.start_renderer()
        return changed

    def after_response(self) -> None:
        """What an upload's response is not held for: the lists its sync left (kick_lists), then the renderer.
        Never raises."""
        self.kick_lists()
        if self.render_queued:
            self.start_renderer()

    def kick_lists(self, repair: bool = False) -> None:
        """When the stamp says the lists are still to be written: have the lists command write them, from one
        thread of this process that waits for it (and runs it once more when kicked again meanwhile). repair (a
        read, a settle or a start that finds the mark): nothing while a lists command is at work on the tree,
        which writes them or is followed by the one the upload's worker started. Never raises."""
        try:
            if not self.lists_stale() or (repair and self.lists_running()):
                return
            with self._flush_lock:
                if self._flusher is not None:
                    self._flush_again = True  # the running one writes them once more when it is done
                    return
                flusher = threading.Thread(target=self._flush_loop, name="airgap-pypi-lists", daemon=True)
                self._flusher = flusher
            flusher.start()
        except Exception:
            with self._flush_lock:
                self._flusher = None
            LOG.exception("the project lists could not be started; the next sync or start writes them")

    def _flush_loop(self) -> None:
        done = False
        try:
            while not done:
                for attempt in range(LISTS_TRIES):
                    if self.flush_lists_apart() or attempt == LISTS_TRIES - 1:
                        break
                    time.sleep(RECHECK_SECONDS * (attempt + 1))
                with self._flush_lock:  # one critical section: a kick in between is never lost
                    if self._flush_again:
                        self._flush_again = False
                    else:
                        self._flusher, done = None, True
        finally:
            if not done:  # an exception: the next kick starts a new thread
                with self._flush_lock:
                    self._flusher, self._flush_again = None, False

    def open_lists_lock(self) -> int:
        """A descriptor of LISTS_RUN_LOCK, made when missing (never through a link)."""
        os.makedirs(self.tree, exist_ok=True)
        return os.open(self.path(LISTS_RUN_LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)

    def lists_running(self) -> bool:
        """Whether a lists command is at work on this tree now (it holds LISTS_RUN_LOCK)."""
        try:
            descriptor = self.open_lists_lock()
        except OSError:
            return False
        try:
            return not _try_lock(descriptor)
        except OSError:
            return False
        finally:
            os.close(descriptor)  # closing it lets a lock taken here go

    def flush_lists_apart(self) -> bool:
        """flush_lists in the lists command (a process of its own, at a lower priority), waited for here. Never
        raises; False when it failed (the mark stays for the next try, sync or start)."""
        command = [sys.executable, os.path.abspath(__file__), LISTS_COMMAND, "--packages", self.packages]
        command += ["--tree", self.tree]
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                close_fds=True,
                timeout=LISTS_TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, ValueError, TypeError, subprocess.SubprocessError):
            LOG.exception("the lists command could not run; the project lists are written by the next try or sync")
            return False
        if done.returncode != 0:
            LOG.error(
                "the lists command exited with %s; the next try or sync writes the project lists", done.returncode
            )
            return False
        return True

    def start_renderer(self) -> None:
        """Start the render command on this tree (a process of its own, never waited for here: the upload's
        response does not wait for it). It exits at once when another renderer already waits for its turn.
        Never raises: the queue stays in state.json for the next sync or start."""
        if self.render_limits is None:
            return
        command = [
            sys.executable,
            os.path.abspath(__file__),
            RENDER_COMMAND,
            *("--packages", self.packages, "--tree", self.tree),
            *self.render_limits.argv(),
        ]
        try:
            # In the index's process group: stopping the program stops it too (its queue waits in state.json).
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True)
        except OSError:
            LOG.exception("the description renderer could not be started; the queue waits for the next sync")
            return
        threading.Thread(target=child.wait, name="airgap-pypi-renderer", daemon=True).start()  # no zombie left

    def _sync(self, rebuild: bool, skip_young: bool, project: Optional[str] = None) -> List[str]:
        state = self.load_state()
        old_yanks: Yanks = state.get("yanked", {}) if state else {}
        old_owners: Owners = state.get("owners", {}) if state else {}
        pages = self.pages_format()
        self._rendering = bool(pages[1])
        self._pending = dict.fromkeys(state.get("pending", [])) if state and self._rendering else {}
        if not state or state.get("version") != STATE_VERSION or state.get("packages") != self.packages:
            state = {"files": {}}
            rebuild = True
        elif state.get("pages") != pages:
            rebuild = True  # the pages were written by another release of this module: all again, hashes cached
        old: Dict[str, Entry] = state["files"]
        old_skipped: Dict[str, Entry] = state.get("skipped", {})
        yank_stamp = self.yank_stamp()  # before the file is read, as the directories' before they are listed
        yanks = self.current_yanks(old_yanks)
        lists_stale = self.lists_stale()
        dirs, found, kept = self.scan(None if rebuild or project is None else (old, project))
        files, fresh, skipped, dirty = self.collect(old, old_skipped, found, rebuild, skip_young, kept=kept)
        uploads = self.current_uploads(old)
        changed = self.apply_uploads(files, old, uploads, None if rebuild or project is None else found)
        changed |= {old[relfn]["project"] for relfn in old.keys() - files.keys()}
        # A project whose yank entries differ from what its pages show (only projects with files have pages).
        listed = {entry["project"] for entry in files.values()}
        changed |= {project for project in listed if yanks.get(project) != old_yanks.get(project)}
        owners = {project: entry for project, entry in self.current_owners(old_owners).items() if project in listed}
        changed |= {project for project in listed if owners.get(project) != old_owners.get(project)}
        if rebuild:
            changed |= listed
        self.write_derived(fresh, old, files)
        queued = [relfn for relfn in self._pending if relfn in files and relfn not in fresh.read]
        self._pending = dict.fromkeys(queued + (fresh.described if self._rendering else []))
        pending_changed = list(self._pending) != (state.get("pending", []) if state else [])
        unchanged = not (changed or rebuild or skipped != old_skipped or yanks != old_yanks or pending_changed)
        unchanged = unchanged and owners == old_owners
        if unchanged and os.path.exists(self.path("index.html")):
            # The lists an upload's sync left to be written after its response.
            self.finish(dirs, dirty, yank_stamp, self.lists_left(lists_stale, state.get("summaries") or {}))
            return []
        summaries: Dict[str, List[Any]] = {} if rebuild else dict(state.get("summaries") or {})
        changed |= listed.symmetric_difference(summaries)  # rows missing (or left over) are made again
        projects = sorted(listed)
        if rebuild:
            with contextlib.suppress(OSError):
                changed |= set(os.listdir(self.path("simple"))) - listed - {"index.html", "index.json"}
        # An upload's sync that only adds to or changes listed projects leaves the lists naming every project (the
        # simple index, the front page, its search index) to be written after its response (flush_lists): they
        # name no project that is not served meanwhile, and the project's own page is complete when it is
        # written. The stamp says so first, so that a worker killed before the lists are written leaves them to
        # the next sync. A project gone is taken off the lists at once.
        defer = self.defer_lists(bool(project) and not rebuild and changed <= listed)
        self.write_projects(changed, files, yanks, owners, summaries)
        if not defer:
            self.write_root(projects, summaries)
        self.save_state(
            {
                "version": STATE_VERSION,
                "pages": pages,
                "packages": self.packages,
                "files": files,
                "skipped": skipped,
                "yanked": yanks,
                "owners": owners,  # who may upload to each project, as its page shows it
                "summaries": summaries,  # each project's row on the front page
                # The pages' descriptions still to render: never cut short (one left out would stay unrendered).
                "pending": list(self._pending),
            }
        )
        self.finish(dirs, dirty, yank_stamp, lists_stale=defer)
        return sorted(changed)

    def apply_uploads(
        self,
        files: Dict[str, Entry],
        old: Dict[str, Entry],
        uploads: Dict[str, Dict[str, str]],
        looked_at: Optional[Iterable[str]],
    ) -> Set[str]:
        """Give the entries who uploaded their files and when (in place), and return the projects of the entries
        that differ from old. looked_at: the files a project's sync looked at again (the others keep their
        entries, upload times included, until a full sync); None: every file."""
        names = files.keys() if looked_at is None else [relfn for relfn in looked_at if relfn in files]
        changed: Set[str] = set()
        for relfn in names:
            entry = files[relfn] = with_upload(files[relfn], uploads.get(relfn))
            if old.get(relfn) != entry:
                changed.add(entry["project"])
        return changed

    def write_projects(
        self, changed: Iterable[str], files: Dict[str, Entry], yanks: Yanks, owners: Owners, summaries: Dict[str, Any]
    ) -> None:
        """The pages of the changed projects, and their rows in summaries. Only their files are grouped (and sorted
        by version): the other projects' rows are kept."""
        changed = set(changed)
        grouped = by_project({relfn: entry for relfn, entry in files.items() if entry["project"] in changed})
        progress = Progress("pages written", len(changed))
        for project in sorted(changed):
            entries = grouped.get(project, [])
            self.write_project(project, entries, yanks.get(project), owners.get(project))
            if entries:
                summaries[project] = summary_row(entries, yanks.get(project))
            else:
                summaries.pop(project, None)
            progress.step()
        progress.done()

    def write_derived(self, fresh: Fresh, old: Dict[str, Entry], files: Dict[str, Entry]) -> None:
        """The notes of the descriptions beyond the bounds of the files read now (the others' stored renderings
        removed: they are queued); the metadata files (PEP 658) and renderings of files gone (or that no longer
        have metadata) removed."""
        for relfn in fresh.read:  # rendered once, after the file arrives (or changes)
            stored, note = description_path(self.tree, relfn), fresh.notes.get(relfn)
            if stored is not None and note is not None and self._rendering:
                write_atomic(stored, note.encode())
            elif stored is not None:
                remove_quietly(stored)
        for relfn in fresh.read:  # a file not read now has the entry it had
            if old.get(relfn, {}).get("metadata_sha256") and not files[relfn].get("metadata_sha256"):
                remove_quietly(self.path("metadata", relfn + ".metadata"))
        for relfn in old.keys() - files.keys():
            remove_quietly(self.path("metadata", relfn + ".metadata"))
            stored = description_path(self.tree, relfn)
            if stored is not None:
                remove_quietly(stored)

    def finish(
        self, dirs: Dict[str, int], dirty: bool, yank_stamp: Optional[List[int]], lists_stale: bool = False
    ) -> None:
        """Write the stamp that reads compare the directories and the yank file with (and whether the lists are
        still to be written: flush_lists)."""
        if dirty:
            dirs[""] = -1  # something was left for later: the next read-triggered check syncs again
        stamp: Dict[str, Any] = {"dirs": dirs, "yanked": yank_stamp}
        if lists_stale:
            stamp["lists_stale"] = True
        # A directory changed within the clock's granularity of this scan could change again unseen by its mtime
        # (a name added or removed): a read once it is no longer young lists the directories again (settle()).
        if not dirty and any(0 <= time.time_ns() - mtime < YOUNG_SECONDS * 1e9 for mtime in dirs.values()):
            stamp["settle"] = time.time() + YOUNG_SECONDS
        write_atomic(self.path("stamp.json"), json.dumps(stamp).encode())
        self._seen, self._seen_yanked, self._settle = dirs, yank_stamp, stamp.get("settle")

    def lists_stale(self) -> bool:
        """Whether the stamp says an upload's sync left the lists naming every project to be written."""
        stamp = self.read_json("stamp.json")
        return bool(stamp and stamp.get("lists_stale") is True)

    def defer_lists(self, defer: bool) -> bool:
        """When defer: say in the stamp (under the tree's lock, before any page changes) that the lists are to be
        written. Returns defer."""
        if not defer:
            return False
        stamp = self.read_json("stamp.json") or {"dirs": {"": -1}, "yanked": None}
        if stamp.get("lists_stale") is not True:
            write_atomic(self.path("stamp.json"), json.dumps(dict(stamp, lists_stale=True)).encode())
        return True

    def write_lists(self, summaries: Dict[str, List[Any]]) -> None:
        """The lists naming every project, from the front page's rows (one per project listed)."""
        self.write_root(sorted(summaries), summaries)

    def lists_left(self, stale: bool, summaries: Dict[str, List[Any]]) -> bool:
        """A sync that changed nothing: the lists an upload's sync left (stale) are written now, unless this is a
        worker's tree, whose lists the lists command writes (kick_lists). Whether the mark stays."""
        if stale and not self.lists_apart:
            self.write_lists(summaries)
        return stale and self.lists_apart

    def flush_lists(self) -> bool:
        """Write the lists an upload's sync left (the simple index, the front page and its search index) from the
        state, and take the mark off the stamp; nothing when another sync wrote them meanwhile. The state is read
        and the lists rendered before the tree's lock is taken, so that an upload's sync never waits for that:
        under the lock they are only written. When a sync changed the state in between, they are rendered again
        outside the lock, and under it on the last of LISTS_TRIES. Never raises: the mark stays for the next sync.
        False when they could not be written."""
        try:
            for attempt in range(LISTS_TRIES):
                state = self.load_state() if self.lists_stale() else None
                if not state:
                    return True  # nothing left, or no state: the next sync rebuilds, lists and all
                read = self.state_position()
                summaries = state.get("summaries") or {}
                rendered = self.root_lists(sorted(summaries), summaries)
                if self.write_lists_locked(read, rendered, last=attempt == LISTS_TRIES - 1):
                    return True
        except Exception:
            LOG.exception("the project lists could not be written; the next sync writes them")
            return False
        return True

    def write_lists_locked(
        self, read: Optional[Tuple[Tuple[int, int, int], int]], rendered: List[Tuple[str, bytes]], last: bool
    ) -> bool:
        """Under the tree's lock, write the lists rendered from the state at read and take the mark off the stamp;
        True when done or nothing is left to do. False when a sync changed the state since read (render again),
        except on the last try: then they are rendered from the state here."""
        with self.locked():
            stamp = self.read_json("stamp.json")
            state = self.load_state()
            if not stamp or stamp.get("lists_stale") is not True or not state:
                return True
            summaries = state.get("summaries") or {}
            # A journal line that could not be used (offset -1) hides later lines: never taken as unchanged.
            if self.state_position() != read or read is None or read[1] < 0:
                if not last:
                    return False
                rendered = self.root_lists(sorted(summaries), summaries)
            self.write_root(sorted(summaries), summaries, rendered)
            del stamp["lists_stale"]
            write_atomic(self.path("stamp.json"), json.dumps(stamp).encode())
        return True

    def state_position(self) -> Optional[Tuple[Tuple[int, int, int], int]]:
        """Which state this process last read: state.json's identity and how far into the journal."""
        return (self._state[0], self._state[2]) if self._state else None

    def collect(
        self,
        old: Dict[str, Entry],
        old_skipped: Dict[str, Entry],
        found: Dict[str, os.stat_result],
        rebuild: bool,
        skip_young: bool,
        *,
        kept: Optional[Dict[str, Entry]] = None,
    ) -> Tuple[Dict[str, Entry], Fresh, Dict[str, Entry], bool]:
        """State entries of the files found (cached when name, size and mtime match), what was read from the files
        read now (their rendered descriptions), the files left off every page (with why,
        kept until they change), and whether a file was left out because it may still be being written."""
        now = time.time()
        files: Dict[str, Entry] = kept if kept is not None else {}  # those scan did not look at
        fresh = Fresh([], [], {})
        progress = Progress("files checked", len(found))
        skipped: Dict[str, Entry] = {}
        dirty = False
        longest = name_max(self.tree) - len(_DERIVED_SUFFIX)
        for relfn, stat in found.items():
            progress.step()
            known = old.get(relfn)
            bad = old_skipped.get(relfn)
            if known and known["size"] == stat.st_size and known["mtime"] == stat.st_mtime_ns:
                files[relfn] = known
                if not (rebuild and known.get("metadata_sha256")):
                    continue
                if os.path.exists(self.path("metadata", relfn + ".metadata")):
                    continue
            elif bad and bad.get("size") == stat.st_size and bad.get("mtime") == stat.st_mtime_ns:
                skipped[relfn] = bad
                continue
            elif skip_young and now - stat.st_mtime < YOUNG_SECONDS:
                dirty = True
                continue
            parsed = parse_filename(os.path.basename(relfn))
            if parsed is None:
                continue
            name, version = parsed
            path = os.path.join(self.packages, relfn)
            try:
                if len(os.path.basename(relfn).encode()) > longest:
                    raise BadDistribution(f"file name longer than {longest} bytes")
                entry, metadata, fields = file_entry(path, stat, name, version)
                after = os.stat(path)
            except OSError:
                dirty = True
                continue
            except Exception as error:  # one bad file must never stop the index
                skipped[relfn] = {"size": stat.st_size, "mtime": stat.st_mtime_ns, "reason": str(error)[:300]}
                LOG.warning("left off the index: %s: %s", relfn, error)
                continue
            if (after.st_size, after.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                dirty = True  # still being written: its own upload's sync, or the next check, takes it
                continue
            if metadata is not None:
                write_atomic(self.path("metadata", relfn + ".metadata"), metadata)
            files[relfn] = entry
            fresh.add(relfn, fields)
        progress.done()
        return files, fresh, skipped, dirty

    def write_project(
        self,
        project: str,
        entries: List[Tuple[str, Entry]],
        yanked: Optional[Dict[str, str]] = None,
        owners: Optional[Dict[str, Any]] = None,
    ) -> None:
        html_path = self.path("simple", project, "index.html")
        json_path = self.path("simple", project, "index.json")
        browse_path = self.path("browse", project + ".html")
        if not entries:
            for path in (html_path, json_path, browse_path):
                remove_quietly(path)
            with contextlib.suppress(OSError):
                os.rmdir(self.path("simple", project))
            return
        newest = latest(entries, yanked)
        newest_files = [relfn for relfn, entry in reversed(entries) if entry["version"] == newest["version"]]
        description = self.description_of(newest_files)
        write_atomic(html_path, render_project_html(project, entries, yanked))
        write_atomic(json_path, render_project_json(project, entries, yanked))
        write_atomic(browse_path, render_browse_project(project, entries, description, yanked, owners))

    def description_of(self, relfns: List[str]) -> str:
        """The description (HTML) of the first of these files (one release's) that has one: its stored rendering;
        else the text escaped in <pre>, with RENDERING_NOTE while it is queued (a file indexed before descriptions
        were rendered is queued now). Without readme_renderer, the text escaped. "" when none has a description."""
        for relfn in relfns:
            path = description_path(self.tree, relfn)
            usable = self._rendering and path is not None and relfn not in self._pending
            rendered = read_rendered(path) if usable and path is not None else None
            if rendered is None:
                fields = parse_metadata(read_core_metadata(os.path.join(self.packages, relfn))[0])
                text = fields.get("description", "")
                note = beyond_bounds(text, fields.get("description-content-type")) if text.strip() else None
                if not text.strip():
                    rendered = ""
                elif note is not None and self._rendering:
                    rendered = note
                else:
                    rendered = f'<pre class="description-text">{esc(text)}</pre>'
                    if self._rendering and path is not None:
                        self._pending[relfn] = None
                        rendered = RENDERING_NOTE + rendered
            if rendered:
                return rendered
        return ""

    def store_renderings(self, done: List[Tuple[str, Entry, str]]) -> None:
        """Store what the renderer made (under the tree's lock, each rendering under a temporary name then
        renamed), take those files off the queue and write their projects' pages again, with what the last sync
        put in state.json. A file changed (or gone) since it was read is left to its own queue entry."""
        with self.locked():
            state = self.load_state()
            if not state:
                return
            files: Dict[str, Entry] = state["files"]
            self._rendering = True
            self._pending = dict.fromkeys(state.get("pending", []))
            projects = set()
            for relfn, entry, rendered in done:
                path = description_path(self.tree, relfn)
                current = files.get(relfn) or {}
                same = all(current.get(key) == entry.get(key) for key in ("size", "mtime", "sha256"))
                if relfn not in self._pending or not same:
                    continue
                if path is not None:
                    write_atomic(path, rendered.encode())
                del self._pending[relfn]
                projects.add(entry["project"])
            # Files gone, or with a name never stored, leave the queue too.
            self._pending = {
                relfn: None for relfn in self._pending if relfn in files and description_path(self.tree, relfn)
            }
            grouped = by_project({relfn: entry for relfn, entry in files.items() if entry["project"] in projects})
            for project in sorted(projects):
                self.write_project(
                    project,
                    grouped.get(project, []),
                    state.get("yanked", {}).get(project),
                    state.get("owners", {}).get(project),
                )
            self.save_state(dict(state, pending=list(self._pending)))

    def root_lists(self, projects: List[str], summaries: Dict[str, List[Any]]) -> List[Tuple[str, bytes]]:
        """The project lists, rendered (path, bytes): the simple index (PEP 503, 691), the front page and its search
        index."""
        return [
            (self.path("simple", "index.html"), render_root_html(projects)),
            (self.path("simple", "index.json"), render_root_json(projects)),
            (self.path(SEARCH_INDEX), render_search_index(projects, summaries)),
            (self.path("index.html"), render_browse_index(projects, summaries)),
        ]

    def write_root(
        self, projects: List[str], summaries: Dict[str, List[Any]], rendered: Optional[List[Tuple[str, bytes]]] = None
    ) -> None:
        """Write the project lists (rendered: as root_lists made them for these summaries)."""
        for path, data in rendered if rendered is not None else self.root_lists(projects, summaries):
            write_atomic(path, data)
        if "index" not in summaries:
            remove_quietly(self.path("browse", "index.html"))  # the front page's place before 0.4.0

    def ensure_fresh(self) -> None:
        """Cheap check on a read: sync when a package directory (files by hand) or the yank file changed since the
        last sync."""
        seen = self._seen
        yank_stamp = self.yank_stamp()
        # The stamp is gone when the tree was deleted: then the pages are written again.
        if (
            seen is not None
            and self.dir_stamps(seen) == seen
            and yank_stamp == self._seen_yanked
            and os.path.exists(self.path("stamp.json"))
        ):
            self.settle()
            return
        stamp = self.read_json("stamp.json")
        if stamp and self.stamp_current(stamp, yank_stamp):
            settle = stamp.get("settle")
            self._seen, self._seen_yanked = stamp["dirs"], yank_stamp
            self._settle = settle if isinstance(settle, (int, float)) and not isinstance(settle, bool) else None
            if stamp.get("lists_stale") is True and self.lists_apart:
                self.kick_lists(repair=True)  # left by a sync or a lists command that did not end well
            self.settle()
            return
        now = time.monotonic()
        # A file being written by hand, or a failed sync: look again in a second, not on every request. A tree
        # without its stamp (deleted) is written again at once.
        if (stamp is not None and now < self._next_check) or now < self._failed_until:
            return
        if stamp is not None and self.sync_running():
            # Another sync is at work (an upload's, a yank's, a rebuild) or the lists are being written: the read is
            # served from the pages as they are, never held for it; the next read looks again.
            return
        self._next_check = now + RECHECK_SECONDS
        try:
            self.sync(skip_young=True, if_stale=True)
        except Exception:
            self._failed_until = now + RECHECK_SECONDS
            LOG.exception("the index pages could not be brought up to date; they are served as they are")
            return
        if self.lists_apart:
            self.kick_lists(repair=True)

    def stamp_current(self, stamp: Optional[Dict[str, Any]], yank_stamp: Optional[List[int]]) -> bool:
        """Whether the stamp's directories and yank file (yank_stamp: the file's now) are as they are now: the
        pages are up to date."""
        dirs = stamp.get("dirs") if stamp else None
        return bool(
            stamp and isinstance(dirs, dict) and self.dir_stamps(dirs) == dirs and stamp.get("yanked") == yank_stamp
        )

    def sync_running(self) -> bool:
        """Whether a sync holds the tree's lock now (in this process or another). A lock that cannot be opened
        is not taken for one: the sync that follows says what is wrong."""
        try:
            with open(self.path(".lock"), "a") as handle:
                return not _try_lock(handle.fileno())  # closing it lets a lock taken here go
        except OSError:
            return False

    def settle(self) -> None:
        """Once the directories the last sync saw young are old enough, list them again: a name added or removed
        in the same tick of their mtime is found. Only new names are read (a names-only sync, project ""), in a
        thread of its own: the read that finds it due is not held up."""
        with self._settle_lock:  # one thread of this process settles; the others serve meanwhile
            if self._settle is None or time.time() < self._settle:
                return
            stamp = self.read_json("stamp.json")
            if not stamp or stamp.get("settle") != self._settle or self.sync_running():
                self._seen = self._settle = None  # another process syncs, or did: its stamp counts
                return
            self._settle = None
            self._settler = threading.Thread(target=self.settle_now, name="airgap-pypi-settle", daemon=True)
            self._settler.start()

    def settle_now(self) -> None:
        try:
            self.sync(skip_young=True, project="")
        except Exception:
            self._failed_until = time.monotonic() + RECHECK_SECONDS
            LOG.exception("the index pages could not be brought up to date; they are served as they are")
            return
        if self.lists_apart:
            self.kick_lists(repair=True)

    def startup(self) -> None:
        """When a worker starts: remove what killed writers left, then check the pages. Never raises, so the
        WSGI module always imports and the index serves what it has."""
        try:
            # Every writer of the tree holds this lock: any temporary file is a leftover. (UploadChecks clears the
            # packages directory's when the worker starts.)
            with self.locked():
                for directory, _, _ in os.walk(self.tree):
                    remove_leftovers(directory, ".tmp-", locked_only=False)
        except Exception:
            LOG.exception("leftover temporary files could not be removed")
        self.ensure_fresh()  # it also has the lists command write lists a killed worker or lists command left
        state = self.load_state()
        if state and state.get("pending"):  # queued before a restart (a sync above starts one itself)
            self.start_renderer()

    def listed(self, relfn: str) -> bool:
        """Whether a file is on the pages (a file reached through a link, or left off, is not served)."""
        state = self.load_state()
        return bool(state) and relfn in state.get("files", {})


# --- uploads ---------------------------------------------------------------------------------------------------

# What an upload may be: wheels and the two sdist formats PyPI takes. Its name must also be servable as is.
UPLOAD_SUFFIXES = (".whl", ".tar.gz", ".zip")
_UPLOAD_NAME = re.compile(rf"^{_NAME}$")
# Uploads are written under this name beside their target, locked while written, then renamed.
UPLOAD_TEMP_PREFIX = ".tmp-upload-"
# Derived names: metadata/<file>.metadata in the tree (and a temporary name beside it).
_DERIVED_SUFFIX = ".metadata"


def name_max(directory: str) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


_NO_SEPARATORS = str.maketrans("", "", "-_.")


def names_of_project(names: List[str], project: str) -> List[str]:
    """The names that may be files of a project (its PEP 503 name): those that start with its name whatever the
    case and the separators (-, _, . and runs of them), found by one regular expression over all the names at
    once. A necessary condition only: the caller parses what it returns."""
    squeezed = project.translate(_NO_SEPARATORS)
    if not squeezed or not names:
        return list(names)
    joined = "\x00" + "\x00".join(names)  # no file name holds a NUL: each name follows one
    pattern = re.compile("\x00[-_.]*" + "[-_.]*".join(map(re.escape, squeezed)), re.IGNORECASE)
    found = []
    for match in pattern.finditer(joined):
        start = match.start() + 1
        end = joined.find("\x00", start)
        found.append(joined[start : len(joined) if end < 0 else end])
    return found


def canonical_filename(filename: str) -> Optional[str]:
    """One spelling for the file names that denote the same distribution (GoodPkg-1.0 and goodpkg-1.0)."""
    lower = filename.lower()
    try:
        if lower.endswith(".whl"):
            name, version, build, tags = parse_wheel_filename(filename)
            return f"{name}-{version}-{build!r}-{'.'.join(sorted(str(tag) for tag in tags))}.whl"
        for suffix in (".tar.gz", ".zip"):
            if lower.endswith(suffix):
                name, version = parse_sdist_filename(filename)
                return f"{name}-{version}{suffix}"
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None
    return None


def check_upload_name(filename: str, packages: str) -> Tuple[str, Version]:
    """(normalised project name, version) of an upload's file name; BadDistribution says what is wrong."""
    if not _UPLOAD_NAME.match(filename) or filename.startswith("."):
        raise BadName(f"bad file name {filename[:80]!r}: letters, digits and _.!+~- only, not starting with .")
    if not filename.lower().endswith(UPLOAD_SUFFIXES):
        raise BadName(f"{filename}: only wheels (.whl) and source distributions (.tar.gz, .zip) are taken")
    longest = name_max(packages) - len(_DERIVED_SUFFIX)
    if len(filename.encode()) > longest:
        raise BadName(f"file name of {len(filename.encode())} bytes: at most {longest} fit this index")
    try:
        if filename.lower().endswith(".whl"):
            name, version, _, _ = parse_wheel_filename(filename)
        else:
            name, version = parse_sdist_filename(filename)
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion) as error:
        raise BadName(f"{filename}: {error}") from error
    return str(name), version


def check_upload(filename: str, handle: BinaryIO, packages: str) -> str:
    """Refuse (BadDistribution, with the reason) an upload that is not a whole distribution of the name it has,
    or that another spelling of its name is already stored under. Every read is bounded; handle is left at 0.
    Returns the normalised project name."""
    project, version = check_upload_name(filename, packages)
    try:
        raw, _ = core_metadata(handle, filename)
    finally:
        handle.seek(0)
    fields = parse_metadata(raw)
    if not fields.get("name") or not fields.get("version"):
        raise MetadataMismatch(f"{filename}: its metadata has no Name or no Version")
    if normalize(fields["name"]) != project:
        raise MetadataMismatch(f"{filename}: its metadata says Name {fields['name'][:80]!r}, the file name {project!r}")
    try:
        same_version = Version(fields["version"]) == version
    except InvalidVersion:
        same_version = False
    if not same_version:
        raise MetadataMismatch(
            f"{filename}: its metadata says Version {fields['version'][:40]!r}, the file name {version}"
        )
    wanted = canonical_filename(filename)
    for _root, files in listed_below(packages):
        for other in names_of_project(files, project):  # the others are passed over without being parsed
            if other != filename and other.lower().endswith(UPLOAD_SUFFIXES) and canonical_filename(other) == wanted:
                raise AlreadyStored(f"{filename}: the index already has this file as {other}")
    return project


# What store_whole stored in this thread ({file name: sha256}), while UploadChecks watches a request (else None).
_STORED = threading.local()


def store_whole(source: BinaryIO, destination: Any) -> None:
    """Write an upload under a temporary name beside destination (locked while written) and rename it when
    complete: a reader never sees part of it, and a killed upload leaves only a temporary file to remove. The
    sha256 of what was written is noted for the audit trail."""
    directory, target = os.path.split(os.fspath(destination))
    handle, temporary = tempfile.mkstemp(prefix=UPLOAD_TEMP_PREFIX, dir=directory)
    offset = source.tell()
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out:
            fcntl.flock(out.fileno(), fcntl.LOCK_EX)
            for chunk in iter(lambda: source.read(1 << 20), b""):
                out.write(chunk)
                digest.update(chunk)
            out.flush()
            os.fsync(out.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, os.path.join(directory, target))
        stored = getattr(_STORED, "files", None)
        if stored is not None:
            stored[target] = digest.hexdigest()
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    finally:
        source.seek(offset)


def remove_leftovers(directory: str, prefix: str = UPLOAD_TEMP_PREFIX, locked_only: bool = True) -> List[str]:
    """Remove temporary files of killed writers: not locked by a writer and older than YOUNG_SECONDS (a writer
    locks its file at once). Links and directories are left alone."""
    removed = []
    now = time.time()
    try:
        names = listed_names(directory)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        path = os.path.join(directory, name)
        try:
            stat = os.lstat(path)
            if not S_ISREG(stat.st_mode) or (locked_only and now - stat.st_mtime < YOUNG_SECONDS):
                continue
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if locked_only:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
            removed.append(name)
        except OSError:
            continue  # still being written (locked), or already gone
        finally:
            os.close(descriptor)
    return removed


# An upload's checks list the packages directory once (listed_below, while one_listing() is open in the request's
# thread): the check for another spelling, the removal of killed uploads and pypiserver's "already exists" share
# it (each listing of 100,000 names takes 0.1 s or more).
_LISTINGS = threading.local()


@contextlib.contextmanager
def one_listing() -> Iterator[None]:
    """Within this, listed_below() lists each directory tree once in this thread."""
    _LISTINGS.cache = {}
    try:
        yield
    finally:
        _LISTINGS.cache = None


def listed_below(root: str) -> List[Tuple[str, List[str]]]:
    """(directory, the names in it) for root and the directories below it whose names do not start with a dot
    (links not followed); within one_listing(), listed once."""
    cache: Optional[Dict[str, List[Tuple[str, List[str]]]]] = getattr(_LISTINGS, "cache", None)
    key = os.fspath(root)
    if cache is not None and key in cache:
        return cache[key]
    listing = []
    for directory, dirs, files in os.walk(key):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        listing.append((directory, files))
    if cache is not None:
        cache[key] = listing
    return listing


def listed_names(directory: str) -> List[str]:
    """The names in directory: from the listing of one_listing() when it holds it, else listed now."""
    cache = getattr(_LISTINGS, "cache", None) or {}
    for _directory, names in cache.get(os.fspath(directory), [])[:1]:
        return names
    return os.listdir(directory)


def stored_below(roots: Iterable[Any], filename: str) -> bool:
    """pypiserver's SimpleFileBackend.exists (a file of that name below a root, no part starting with a dot): the
    directories from the listing (listed_below), and in each, the file of that name looked for now, where
    pypiserver's checks every file (a stat and a path object each: seconds at 100,000 files, in every upload)."""
    if filename.startswith("."):
        return False
    return any(
        os.path.isfile(os.path.join(directory, filename)) for root in roots for directory, _ in listed_below(root)
    )


def atomic_uploads() -> None:
    """Make pypiserver store uploads with store_whole instead of writing straight to the final name, and look for
    an upload's name already stored with stored_below()."""
    import pypiserver.backend  # noqa: PLC0415 - only in the index's virtualenv

    pypiserver.backend.write_file = store_whole
    pypiserver.backend.SimpleFileBackend.exists = lambda backend, filename: stored_below(backend.roots, filename)


# The form fields besides the files (twine's metadata, the description among them) are held in memory when
# the form is parsed: their sum is bounded before that.
MAX_FORM_FIELD_BYTES = 8 << 20
_MAX_PARTS = 256


def multipart_boundary(content_type: str) -> Optional[bytes]:
    """The boundary parameter as the form parser reads it (parameter names in any case, quotes removed)."""
    message = email.message.Message()
    message["Content-Type"] = content_type
    if message.get_content_maintype() != "multipart":
        return None
    boundary = message.get_param("boundary")
    return str(boundary).encode("latin-1", errors="replace") if isinstance(boundary, str) and boundary else None


def form_field_bytes(body: BinaryIO, content_type: str) -> int:
    """Bytes in the parts of a multipart body that are not files, found by scanning the body for its delimiter
    lines (the body stays where bottle spooled it; nothing is parsed into memory). 0 when it is not multipart."""
    boundary = multipart_boundary(content_type)
    if boundary is None:
        return 0
    delimiter = b"\r\n--" + boundary
    starts: List[int] = []
    body.seek(0)
    if body.read(len(delimiter) - 2) == delimiter[2:]:
        starts.append(0)
    body.seek(0)
    offset, carry = 0, b""
    while chunk := body.read(1 << 20):
        window = carry + chunk
        base = offset - len(carry)
        at = window.find(delimiter)
        while at >= 0:
            if base + at + 2 not in starts:
                starts.append(base + at + 2)
            if len(starts) > _MAX_PARTS:
                body.seek(0)
                return MAX_FORM_FIELD_BYTES + 1
            at = window.find(delimiter, at + 1)
        offset += len(chunk)
        carry = window[-len(delimiter) :]
    total = 0
    for index in range(len(starts) - 1):  # the last start is the closing delimiter
        start, end = starts[index], starts[index + 1]
        body.seek(start)
        head = body.read(min(end - start, 16 << 10)).split(b"\r\n\r\n", 1)[0].split(b"\r\n", 1)[-1]
        headers = email.parser.BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
        if headers.get_param("filename", header="content-disposition") is None:
            total += end - start
    body.seek(0)
    return total


def _reason(text: str) -> str:
    """A status line's reason phrase (twine prints it): printable ASCII on one line."""
    return re.sub(r"[^ -~]", "?", text)[:300]


# --- owners per project ----------------------------------------------------------------------------------------

# Who may upload to a project: the inventory's map (pypi_server_project_owners: normalised name -> accounts), the
# admins (pypi_server_users entries with admin: true) anywhere, and, with pypi_server_owners_claim_first_upload, the
# first account to upload a project that is not in the map. Those claims are kept in the owners file:
# {"format": 1, "projects": {normalised name: {"owner": account, "when": UTC time}}}, written only by the workers
# (under a temporary name, then renamed) and by hand.
OWNERS_FORMAT = 1
MAX_OWNERS_FILE_BYTES = 4 << 20
MAX_ACCOUNT_CHARS = 128
OWNERS_SHOWN = 5  # names in a refusal's reason phrase, at most
_ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9._@-]+$")  # an upload account's name (the preflight's rule)


class OwnersFileError(ValueError):
    """The owners file cannot be used (the message names the file and what is wrong with it)."""


def owner_entry_problem(project: str, entry: Any) -> Optional[str]:
    """What is wrong with one project's entry in the owners file, or None."""
    if not isinstance(entry, dict) or not all(isinstance(entry.get(key), str) for key in ("owner", "when")):
        return f'{project}: not {{"owner": ACCOUNT, "when": TIME}}'
    owner = entry["owner"]
    if len(owner) > MAX_ACCOUNT_CHARS or not _ACCOUNT_NAME.match(owner):
        return f"{project}: {shown(owner)} is not an account name"
    problem = text_problem(entry["when"], 64)
    return f"{project}: when: {problem}" if problem else None


def owners_document_problem(document: Any) -> Optional[str]:
    """What is wrong with a parsed owners file, or None."""
    return projects_document_problem(document, "an owners file", OWNERS_FORMAT, owner_entry_problem)


def read_owners_file(path: str) -> Dict[str, Any]:
    """The owners file's document (an empty one when there is no file), read within its bound and never through a
    link; OwnersFileError says what is wrong with it."""
    try:
        document = read_small_json(path, MAX_OWNERS_FILE_BYTES, OwnersFileError)
    except OSError as error:
        raise OwnersFileError(f"{path} cannot be read: {error.strerror}") from error
    if document is None:
        return {"format": OWNERS_FORMAT, "projects": {}}
    problem = owners_document_problem(document)
    if problem:
        raise OwnersFileError(f"{path}: {problem}")
    return document


# The inventory's owner map as the role writes it for the pages (pypi_server_accounts, in the configuration
# directory): {"format": 1, "projects": {normalised name: [account, ...]}}.
OWNER_MAP_FORMAT = 1
MAX_OWNERS_PER_PROJECT = 1000
Owners = Dict[str, Dict[str, Any]]  # what the pages show: {project: {"accounts": [...], "claimed": bool}}


def owner_map_problem(document: Any) -> Optional[str]:
    """What is wrong with a parsed owner map file, or None."""
    if not isinstance(document, dict) or document.get("format") != OWNER_MAP_FORMAT:
        return f"not an owner map of format {OWNER_MAP_FORMAT}"
    projects = document.get("projects")
    if not isinstance(projects, dict):
        return "projects: not a mapping"
    for project, accounts in projects.items():
        if len(project) > MAX_PROJECT_CHARS or not _PROJECT_NAME.match(project) or normalize(project) != project:
            return f"{shown(project)}: not a normalised project name"
        if not isinstance(accounts, list) or len(accounts) > MAX_OWNERS_PER_PROJECT:
            return f"{project}: not a list of at most {MAX_OWNERS_PER_PROJECT} accounts"
        for account in accounts:
            if not isinstance(account, str) or len(account) > MAX_ACCOUNT_CHARS or not _ACCOUNT_NAME.match(account):
                return f"{project}: {shown(str(account))} is not an account name"
    return None


def read_owner_map(path: str) -> Dict[str, List[str]]:
    """{project: [accounts]} of the owner map file ({} when there is none), read within its bound and never
    through a link; OwnersFileError says what is wrong with it."""
    try:
        document = read_small_json(path, MAX_OWNERS_FILE_BYTES, OwnersFileError)
    except OSError as error:
        raise OwnersFileError(f"{path} cannot be read: {error.strerror}") from error
    if document is None:
        return {}
    problem = owner_map_problem(document)
    if problem:
        raise OwnersFileError(f"{path}: {problem}")
    return {project: list(accounts) for project, accounts in document["projects"].items()}


def shown_owners(owner_map: Dict[str, List[str]], claims: Dict[str, str]) -> Owners:
    """The owners each project's page shows: the map's accounts (none: only admins may upload); for a project not
    in the map, its first uploader's claim (the map wins, as for uploads)."""
    owners: Owners = {project: {"accounts": accounts, "claimed": False} for project, accounts in owner_map.items()}
    for project, account in claims.items():
        owners.setdefault(project, {"accounts": [account], "claimed": True})
    return owners


def named(accounts: List[str]) -> str:
    """Account names for a reason phrase: a few, each shortened, then how many more."""
    names = [name[:40] for name in accounts[:OWNERS_SHOWN]]
    more = len(accounts) - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


class OwnerDecision(NamedTuple):
    """Whether an account may upload to a project, whether that upload claims it, and why not."""

    allowed: bool
    claim: bool = False
    reason: str = ""


def owned_by(project: str, listed: List[str]) -> str:
    """The reason phrase for an account the map does not list."""
    if not listed:
        return f"only an admin may upload {project}"
    return f"{project} is owned by {named(listed)}: ask one of them or an admin"


def owner_decision(
    project: str,
    account: str,
    *,
    owners: Dict[str, List[str]],
    admins: Iterable[str],
    claim_first_upload: bool,
    claims: Optional[Dict[str, str]],
) -> OwnerDecision:
    """May account upload to project (normalised)? owners is the inventory's map (normalised names), claims the
    owners file's {project: account}, None when it cannot be read. An admin may upload anywhere; a project in the
    map takes its accounts only; any other project, with claim_first_upload, its first uploader only (the upload
    that finds it unclaimed claims it, also when files of it are stored already, and an admin's too), else anyone."""
    if account in admins:
        unclaimed = claim_first_upload and project not in owners and claims is not None and project not in claims
        return OwnerDecision(True, claim=unclaimed)
    if project in owners:
        listed = owners[project]
        return OwnerDecision(True) if account in listed else OwnerDecision(False, reason=owned_by(project, listed))
    if not claim_first_upload:
        return OwnerDecision(True)
    if claims is None:
        return OwnerDecision(
            False, reason=f"{project} has no owner in the inventory and the owners file is unreadable: ask an admin"
        )
    owner = claims.get(project, account)
    if owner == account:
        return OwnerDecision(True, claim=project not in claims)
    return OwnerDecision(False, reason=f"{project} is owned by {owner[:40]} (its first uploader): ask them or an admin")


class ProjectOwners:
    """The upload checks' owner rules (owner_decision) with the owners file they read and write."""

    def __init__(
        self,
        owners: Optional[Dict[str, Iterable[str]]] = None,
        admins: Iterable[str] = (),
        claims_file: Optional[str] = None,
        claim_first_upload: bool = False,
    ) -> None:
        self.owners: Dict[str, List[str]] = {}
        for project, accounts in (owners or {}).items():
            listed = self.owners.setdefault(normalize(str(project)), [])  # any spelling; two spellings add up
            listed += [str(account) for account in accounts if str(account) not in listed]
        self.admins = frozenset(str(admin) for admin in admins)
        self.claims_file = claims_file
        if claim_first_upload and not claims_file:
            raise ValueError("claims of first uploads need an owners file (claims_file)")
        self.claim_first_upload = bool(claim_first_upload)

    @property
    def active(self) -> bool:
        """Whether any upload can be refused (an empty map without claims is the index without owners)."""
        return bool(self.owners) or self.claim_first_upload

    def claims(self) -> Optional[Dict[str, str]]:
        """{project: account} of the owners file; None when it cannot be used (logged)."""
        assert self.claims_file is not None
        try:
            document = read_owners_file(self.claims_file)
        except OwnersFileError as error:
            LOG.error("%s; uploads to projects not in pypi_server_project_owners are refused until it is fixed", error)
            return None
        return {project: entry["owner"] for project, entry in document["projects"].items()}

    def decide(self, project: str, account: str) -> OwnerDecision:
        unmapped = self.claim_first_upload and project not in self.owners
        claims = self.claims() if unmapped else {}
        return self.decision(project, account, self.claim_first_upload, claims)

    def decision(
        self, project: str, account: str, claim_first_upload: bool, claims: Optional[Dict[str, str]]
    ) -> OwnerDecision:
        return owner_decision(
            project,
            account,
            owners=self.owners,
            admins=self.admins,
            claim_first_upload=claim_first_upload,
            claims=claims,
        )

    def claim(self, project: str, account: str) -> OwnerDecision:
        """Record account as the owner of project unless another account was first (under the owners file's lock,
        the one yank_file_lock takes); the decision for account afterwards."""
        assert self.claims_file is not None
        os.makedirs(os.path.dirname(self.claims_file), exist_ok=True)
        with yank_file_lock(self.claims_file):
            try:
                document = read_owners_file(self.claims_file)
            except OwnersFileError as error:
                LOG.error("%s; %s was not claimed by %s", error, project, account)
                return self.decision(project, account, True, None)
            claims = {name: entry["owner"] for name, entry in document["projects"].items()}
            decision = self.decision(project, account, True, claims)
            if decision.claim:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                document["projects"][project] = {"owner": account, "when": when}
                data = json.dumps(document, indent=1, sort_keys=True) + "\n"
                write_atomic(self.claims_file, data.encode(), durable=True)
                LOG.warning("%s claimed %s by its first upload (%s)", account, project, self.claims_file)
        return decision


# --- audit trail -----------------------------------------------------------------------------------------------

# Every accepted upload, removal, yank, unyank and owner claim is appended to DIR/audit.jsonl as one JSON line:
# {"time": UTC, "account", "client", "action", "project", "version", "file", "sha256"} (null where one does not
# apply). DIR is the index user's, in the data directory (so a backup carries it); the log is rotated by size to
# audit.jsonl.1 .. .KEEP. DIR/uploads.json keeps, per file in the packages directory, when and by whom it was
# uploaded ({"format": 1, "files": {relative path: {"time", "account"}}}): the pages read that small file, never
# the log.
AUDIT_FILE = "audit.jsonl"
UPLOADS_FILE = "uploads.json"
UPLOADS_FORMAT = 1
MAX_UPLOADS_FILE_BYTES = 32 << 20
MAX_UPLOADS_ENTRIES = 200_000  # the oldest are dropped beyond this (the log still has them)
MAX_AUDIT_KEEP = 100
MIN_AUDIT_BYTES = 64 << 10
# Each field's length at most (longer values are cut): a line stays small, so one write() appends it whole.
AUDIT_LIMITS = {
    "time": 32,
    "account": MAX_ACCOUNT_CHARS,
    "client": 64,
    "action": 32,
    "project": MAX_PROJECT_CHARS,
    "version": MAX_VERSION_CHARS,
    "file": 255,
    "sha256": 64,
    "subject": MAX_ACCOUNT_CHARS,  # the upload account an account change is about
}
_UPLOAD_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$")  # PEP 700
AUDIT_KEY = "airgap_pypi.audit"  # the environ key UploadChecks notes what a POST would change under
AUDIT_LOST_KEY = "airgap_pypi.audit_lost"  # set when a request's audit record could not be written (for MetricsLayer)


class AuditError(ValueError):
    """The audit trail cannot be used (the message names the file and the fix)."""


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def audit_line(record: Dict[str, Optional[str]]) -> bytes:
    """One JSON line of the fields of AUDIT_LIMITS, each cut to its bound, ASCII only (control characters and
    line breaks escaped), so a line never spans two."""
    fields = {key: None if record.get(key) is None else str(record[key])[:limit] for key, limit in AUDIT_LIMITS.items()}
    return (json.dumps(fields, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")


def uploads_document_problem(document: Any) -> Optional[str]:
    """What is wrong with a parsed uploads.json, or None."""
    if not isinstance(document, dict) or document.get("format") != UPLOADS_FORMAT:
        return f'not an uploads file of format {UPLOADS_FORMAT} ({{"format": {UPLOADS_FORMAT}, "files": {{...}}}})'
    files = document.get("files")
    if not isinstance(files, dict):
        return '"files" is not an object'
    for relfn, entry in files.items():
        if not _SAFE_PATH.match(relfn) or any(part.startswith(".") for part in relfn.split("/")):
            return f"{shown(str(relfn))} is not a file name of the packages directory"
        problem = upload_entry_problem(entry)
        if problem:
            return f"{relfn}: {problem}"
    return None


def upload_entry_problem(entry: Any) -> Optional[str]:
    if not isinstance(entry, dict) or not all(isinstance(entry.get(key), str) for key in ("time", "account")):
        return 'not {"time": UTC TIME, "account": NAME}'
    if not _UPLOAD_TIME.match(entry["time"]):
        return f"time {shown(entry['time'])} is not YYYY-MM-DDTHH:MM:SSZ"
    problem = text_problem(entry["account"], MAX_ACCOUNT_CHARS) if entry["account"] else "empty account"
    return f"account {shown(entry['account'])}: {problem}" if problem else None


def read_uploads_file(path: str) -> Dict[str, Dict[str, str]]:
    """{relative path: {"time", "account"}} of uploads.json ({} when there is none), read within its bound and
    never through a link; AuditError says what is wrong and how to fix it."""
    try:
        document = read_small_json(path, MAX_UPLOADS_FILE_BYTES, AuditError)
    except OSError as error:
        raise AuditError(f"{path} cannot be read: {error.strerror}") from error
    if document is None:
        return {}
    problem = uploads_document_problem(document)
    if problem:
        raise AuditError(f"{path}: {problem}; move it aside (audit.jsonl keeps every upload) and upload again")
    return dict(document["files"])


class AuditLog:
    """The audit trail in one directory: appends under an exclusive flock on the directory (every writer, gunicorn
    worker or command, takes it), one write() per line with O_APPEND, rotation by size under the same lock."""

    def __init__(self, directory: str, max_bytes: int = 10 << 20, keep: int = 5) -> None:
        if max_bytes < MIN_AUDIT_BYTES:
            raise ValueError(f"audit max_bytes {max_bytes}: at least {MIN_AUDIT_BYTES} (pypi_server_audit_max_mb >= 1)")
        if not 1 <= keep <= MAX_AUDIT_KEEP:
            raise ValueError(f"audit keep {keep}: 1 to {MAX_AUDIT_KEEP} rotated files (pypi_server_audit_keep)")
        self.directory = os.path.abspath(directory)
        self.max_bytes = max_bytes
        self.keep = keep
        self.failures = 0  # appends that failed in this process (logged as errors)

    @property
    def uploads_file(self) -> str:
        return os.path.join(self.directory, UPLOADS_FILE)

    @contextlib.contextmanager
    def locked(self) -> Iterator[int]:
        """A descriptor of the audit directory, flocked; never through a link."""
        try:
            descriptor = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as error:
            if os.path.islink(self.directory):
                link = f"{self.directory} is a symbolic link (never followed): make it a directory"
                raise AuditError(link) from error
            raise
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield descriptor
        finally:
            os.close(descriptor)  # releases the lock

    def append(
        self,
        action: str,
        *,
        account: Optional[str],
        client: Optional[str],
        project: Optional[str] = None,
        version: Optional[str] = None,
        filename: Optional[str] = None,
        sha256: Optional[str] = None,
        subject: Optional[str] = None,
        forget: Iterable[str] = (),
    ) -> Dict[str, Optional[str]]:
        """Append one record (an upload also enters uploads.json; forget: files removed, taken out of it) and
        return it. OSError or AuditError when it could not be written (the caller logs it: see failed())."""
        record = {"time": utc_now(), "account": account, "client": client, "action": action, "project": project}
        record.update(version=version, file=filename, sha256=sha256, subject=subject)
        line = audit_line(record)
        with self.locked() as directory:
            owner = self.owner(directory)
            self.write_line(directory, line, owner)
            forget = list(forget)
            if (action == "upload" and filename and account) or forget:
                self.update_uploads(record if action == "upload" else None, forget, owner)
        return record

    @staticmethod
    def owner(directory: int) -> Optional[Tuple[int, int]]:
        """The directory's owner, for what root creates in it (a command run as root without --user); else None."""
        if os.geteuid() != 0:
            return None
        stat = os.fstat(directory)
        return stat.st_uid, stat.st_gid

    def open_log(self, directory: int, owner: Optional[Tuple[int, int]]) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            descriptor = os.open(AUDIT_FILE, flags, dir_fd=directory)
        except FileNotFoundError:
            descriptor = os.open(AUDIT_FILE, flags | os.O_CREAT | os.O_EXCL, 0o640, dir_fd=directory)
            os.fchmod(descriptor, 0o640)
            if owner is not None:
                os.fchown(descriptor, *owner)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise AuditError(f"{self.directory}/{AUDIT_FILE} is a symbolic link (never followed)") from error
            raise
        if not S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise AuditError(f"{self.directory}/{AUDIT_FILE} is not a regular file: move it aside")
        return descriptor

    def write_line(self, directory: int, line: bytes, owner: Optional[Tuple[int, int]]) -> None:
        descriptor = self.open_log(directory, owner)
        try:
            size = os.fstat(descriptor).st_size
            if size and size + len(line) > self.max_bytes:
                os.close(descriptor)
                descriptor = -1
                self.rotate(directory)
                descriptor = self.open_log(directory, owner)
            written = os.write(descriptor, line)
            if written != len(line):
                raise OSError(errno.EIO, f"{written} of {len(line)} bytes written", f"{self.directory}/{AUDIT_FILE}")
            os.fsync(descriptor)
        finally:
            if descriptor >= 0:
                os.close(descriptor)

    def rotate(self, directory: int) -> None:
        """audit.jsonl becomes audit.jsonl.1, .1 becomes .2 ... up to .KEEP; the oldest (and any beyond KEEP, left
        by a larger setting before) are deleted. Renames never follow a link."""
        for number in range(MAX_AUDIT_KEEP, self.keep, -1):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{AUDIT_FILE}.{number}", dir_fd=directory)
        for number in range(self.keep, 0, -1):
            source = AUDIT_FILE if number == 1 else f"{AUDIT_FILE}.{number - 1}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(source, f"{AUDIT_FILE}.{number}", src_dir_fd=directory, dst_dir_fd=directory)
        os.fsync(directory)

    def update_uploads(
        self, record: Optional[Dict[str, Optional[str]]], forget: List[str], owner: Optional[Tuple[int, int]]
    ) -> None:
        """uploads.json with record's file entered (or replaced) and the forgotten files taken out (under the
        lock)."""
        files = read_uploads_file(self.uploads_file)
        for relfn in forget:
            files.pop(relfn, None)
        if record is not None:
            files[str(record["file"])] = {"time": str(record["time"]), "account": str(record["account"])}
        if len(files) > MAX_UPLOADS_ENTRIES:
            newest = sorted(files.items(), key=lambda item: item[1]["time"], reverse=True)[:MAX_UPLOADS_ENTRIES]
            files = dict(newest)
        data = json.dumps({"format": UPLOADS_FORMAT, "files": files}, sort_keys=True, separators=(",", ":"))
        write_atomic(self.uploads_file, data.encode() + b"\n", durable=True, mode=0o640, owner=owner)

    def failed(self, error: BaseException, record: Dict[str, Optional[str]]) -> None:
        """An append that failed: counted, and logged as an error with the record (the change itself stands)."""
        self.failures += 1
        LOG.error(
            "AUDIT RECORD LOST (%d in this process): %s: %s",
            self.failures,
            error,
            audit_line(record).decode().strip(),
        )

    def record(self, action: str, **fields: Any) -> bool:
        """append(), a failure logged and counted instead of raised; whether it was written."""
        try:
            self.append(action, **fields)
        except (OSError, AuditError) as error:
            names = {"filename": "file"}
            self.failed(error, dict({names.get(k, k): v for k, v in fields.items() if k != "forget"}, action=action))
            return False
        return True


class UploadChecks:
    """WSGI layer in front of pypiserver: an authenticated upload is checked before anything is stored."""

    def __init__(
        self,
        app: WSGIApp,
        packages: str,
        max_upload_bytes: int,
        owners: Optional[ProjectOwners] = None,
        audit: Optional[AuditLog] = None,
    ) -> None:
        self.app = app
        self.packages = os.path.abspath(packages)
        self.max_upload_bytes = max_upload_bytes
        self.owners = owners if owners is not None and owners.active else None
        self.audit = audit
        config = getattr(app, "_pypiserver_config", None)
        self.auther: Optional[Callable[[str, str], bool]] = getattr(config, "auther", None)
        atomic_uploads()
        remove_leftovers(self.packages)  # of uploads killed before this worker started

    def __call__(self, environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST" and (environ.get("PATH_INFO") or "/") == "/":
            with one_listing():  # the packages directory listed once for the checks and pypiserver's
                return self.checked(environ, start_response)
        return self.app(environ, start_response)

    def checked(self, environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """An upload or removal (pypiserver's form): refused, or passed on with the audit trail."""
        refusal = self.refusal(environ)
        if refusal is not None:
            status, text = refusal
            body = (text + "\n").encode("utf-8", errors="replace")
            start_response(
                f"{status} {_reason(text)}",
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
            )
            return [body]
        remove_leftovers(self.packages)  # the static read path's full syncs do this too; without it, only here
        if self.audit is not None and environ.get(AUDIT_KEY):
            return self.audited(environ, start_response)
        return self.app(environ, start_response)

    def audited(self, environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """pypiserver answers an upload or removal (its handler has run when it returns); a success is appended to
        the audit trail: an upload with the sha256 store_whole computed while writing it. A record that cannot be
        written is logged as an error and counted; the upload stored stands (a refusal now would have twine send
        it again, into a 409)."""
        assert self.audit is not None
        noted: Dict[str, Optional[str]] = environ[AUDIT_KEY]
        statuses: List[str] = []

        def watch(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Any:
            statuses.append(status)
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        _STORED.files = {}
        try:
            result = self.app(environ, watch)
            stored: Dict[str, str] = _STORED.files
        finally:
            _STORED.files = None
        if not statuses or statuses[-1][:1] != "2":
            return result
        fields: Dict[str, Any] = dict(noted, client=environ.get("REMOTE_ADDR"))
        if noted["action"] == "upload":
            if noted["filename"] not in stored:
                return result  # pypiserver answered success without storing this file: nothing to record
            fields["sha256"] = stored[str(noted["filename"])]
        if not self.audit.record(str(fields.pop("action")), **fields):
            environ[AUDIT_LOST_KEY] = True
        return result

    def credentials(self, environ: Dict[str, Any]) -> Optional[Tuple[str, str]]:
        """(user, password) as pypiserver reads them (bottle's own parser, so both see the same request)."""
        from pypiserver.bottle_wrapper.bottle import parse_auth  # noqa: PLC0415 - pypiserver's own parser

        found = parse_auth(environ.get("HTTP_AUTHORIZATION", ""))
        return (str(found[0]), str(found[1])) if found and found[1] is not None else None

    def size_refusal(self, header: Optional[str]) -> Optional[Tuple[int, str]]:
        try:
            length = int(header or -1)
        except ValueError:
            length = -1
        if length < 0:
            return 411, "Length Required: the upload must say its size (Content-Length)"
        if length > self.max_upload_bytes:
            limit = self.max_upload_bytes >> 20
            return 413, f"Payload Too Large: {length >> 20} MiB, this index takes uploads up to {limit} MiB"
        return None

    def refusal(self, environ: Dict[str, Any]) -> Optional[Tuple[int, str]]:
        """(status, reason) for an upload to refuse; None lets pypiserver answer (its 401, its 409s)."""
        found = self.credentials(environ)
        if found is None or self.auther is None:
            return None  # pypiserver answers 401 without reading the body
        if not self.auther(*found):
            return 403, "Forbidden"  # as pypiserver answers, without hashing the wrong password a second time
        from pypiserver.bottle_wrapper.bottle import BaseRequest  # noqa: PLC0415 - pypiserver's own parser

        request = BaseRequest(environ)  # pypiserver reads the same parsed body (bottle keeps it in environ)
        try:
            return self.size_refusal(environ.get("CONTENT_LENGTH")) or self.form_refusal(request, environ, found[0])
        except BadDistribution as error:
            environ[REFUSED_KEY] = getattr(error, "metrics_reason", "bad_archive")  # for MetricsLayer
            return 400, f"Bad Request: {error}"
        except Exception:  # bottle refuses a body it cannot read (its HTTPError), or the body is cut off
            LOG.warning("an upload's form could not be read", exc_info=True)
            return 400, "Bad Request: the upload's form cannot be read"

    @staticmethod
    def form_fields_refusal(request: Any, environ: Dict[str, Any]) -> Optional[Tuple[int, str]]:
        fields = form_field_bytes(request.body, environ.get("CONTENT_TYPE", ""))  # read, not yet parsed
        if fields > MAX_FORM_FIELD_BYTES:
            limit = MAX_FORM_FIELD_BYTES >> 20
            return 413, f"Payload Too Large: {fields >> 20} MiB of form fields besides the file, at most {limit} MiB"
        return None

    def form_refusal(self, request: Any, environ: Dict[str, Any], account: str) -> Optional[Tuple[int, str]]:
        """The form's fields within their bound, then the project's owners (from the file name, before the file
        is read), then the uploaded file's checks (BadDistribution), then the claim of a first upload."""
        too_large = self.form_fields_refusal(request, environ)
        if too_large is not None:
            return too_large
        upload, action = request.files.get("content"), request.forms.get(":action")
        note_upload_form(environ, action, upload, self.packages)  # for MetricsLayer: what was sent
        if action == "doc_upload":  # pypiserver reads the whole file into memory, then keeps nothing
            return 400, "Bad Request: documentation uploads are not kept by this index"
        if action == "remove_pkg":  # pypiserver's removal of a release by name
            name, version = request.forms.get("name"), request.forms.get("version")
            if isinstance(name, str) and _PROJECT_NAME.match(name) and len(name) <= MAX_PROJECT_CHARS:
                environ[AUDIT_KEY] = {"action": "remove", "account": account, "project": normalize(name)}
                environ[AUDIT_KEY]["version"] = version if isinstance(version, str) else None
                if self.owners is not None:
                    return self.owner_refusal(self.owners.decide(normalize(name), account), environ)
        if action == "file_upload" and upload is not None:
            return self.upload_refusal(upload, environ, account)
        return None

    def upload_refusal(self, upload: Any, environ: Dict[str, Any], account: str) -> Optional[Tuple[int, str]]:
        """A file upload: its project's owners from its name, then its checks, then the claim of a first upload."""
        decision = OwnerDecision(True)
        if self.owners is not None:
            project, _ = check_upload_name(upload.raw_filename, self.packages)
            decision = self.owners.decide(project, account)
            if not decision.allowed:
                return self.owner_refusal(decision, environ)
        project = check_upload(upload.raw_filename, upload.file, self.packages)
        _, version = check_upload_name(upload.raw_filename, self.packages)
        environ[AUDIT_KEY] = {"action": "upload", "account": account, "project": project}
        environ[AUDIT_KEY].update(version=str(version), filename=upload.raw_filename)
        if self.owners is None or not decision.claim:
            return None
        try:
            claimed = self.owners.claim(project, account)
            recorded = not (claimed.allowed and claimed.claim and self.audit is not None) or self.audit.record(
                "claim", account=account, client=environ.get("REMOTE_ADDR"), project=project
            )
            if not recorded:
                environ[AUDIT_LOST_KEY] = True
            return self.owner_refusal(claimed, environ)
        except OSError as error:
            LOG.error("%s could not claim %s: %s", account, project, error)
            environ[REFUSED_KEY] = "not_owner"
            return 500, f"{project} cannot be claimed: the owners file cannot be written (see the index log)"

    @staticmethod
    def owner_refusal(decision: OwnerDecision, environ: Dict[str, Any]) -> Optional[Tuple[int, str]]:
        if decision.allowed:
            return None
        environ[REFUSED_KEY] = "not_owner"  # for MetricsLayer
        return 403, decision.reason


# --- WSGI ------------------------------------------------------------------------------------------------------


def preferred_type(accept: Optional[str]) -> Optional[str]:
    """PEP 691 content negotiation: the media type to serve, or None when nothing acceptable is offered."""
    offers = [JSON_TYPE, HTML_V1_TYPE, "text/html"]
    aliases = {
        "application/vnd.pypi.simple.latest+json": JSON_TYPE,
        "application/vnd.pypi.simple.latest+html": HTML_V1_TYPE,
    }
    if not accept or not accept.strip():
        return "text/html"
    best: Optional[Tuple[float, int, str]] = None
    for part in accept.split(","):
        pieces = [p.strip() for p in part.split(";")]
        media = aliases.get(pieces[0].lower(), pieces[0].lower())
        quality = 1.0
        for parameter in pieces[1:]:
            if parameter.lower().startswith("q="):
                try:
                    quality = float(parameter[2:])
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        if media in ("*/*", "text/*"):
            candidate = "text/html"
        elif media == "application/*":
            candidate = JSON_TYPE
        elif media in offers:
            candidate = media
        else:
            continue
        rank = (quality, -offers.index(candidate), candidate)
        if best is None or rank[:2] > best[:2]:
            best = rank
    return best[2] if best else None


def _chunks(handle: Any) -> Iterator[bytes]:
    with handle:
        yield from iter(lambda: handle.read(1 << 16), b"")


class AfterResponse:
    """A response body whose close() (which the WSGI server calls once the response is sent) runs a callback that
    never raises (Tree.after_response)."""

    def __init__(self, body: List[bytes], then: Callable[[], None]) -> None:
        self.body = body
        self.then = then

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        self.then()


class StaticIndex:
    """WSGI layer: the generated tree for reads, pypiserver for everything else."""

    def __init__(
        self,
        app: WSGIApp,
        packages: str,
        tree: str,
        check_password: Optional[Callable[[str, str], bool]] = None,
        yanked: Optional[str] = None,
        *,
        uploads: Optional[str] = None,
        render_limits: Optional[RenderLimits] = None,
        owner_map: Optional[str] = None,
        owner_claims: Optional[str] = None,
    ) -> None:
        self.app = app
        log_progress()
        # Descriptions are rendered by the render command, started after a sync (never in the request).
        self.index = Tree(
            packages,
            tree,
            yanked=yanked,
            uploads=uploads,
            render_limits=render_limits or RenderLimits(),
            owner_map=owner_map,
            owner_claims=owner_claims,
        )
        self.index.lists_apart = True  # a worker: the lists command writes the lists (Tree.kick_lists)
        # When set, every read here needs Basic auth, as pypiserver's authenticate=[list, download] does.
        self.check_password = check_password

    def __call__(self, environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "") or "/"
        if method == "POST" and path == "/":
            return self.after_change(environ, start_response)
        if method not in ("GET", "HEAD") or not self.is_static(path):
            return self.app(environ, start_response)
        denied = self.authenticate(environ, start_response)
        if denied is not None:
            return denied
        self.index.ensure_fresh()
        body, headers, status = self.route(environ, path)
        start_response(status, headers)
        if body is not None and not isinstance(body, bytes):  # a package file
            if method == "HEAD":
                body.close()
                return [b""]
            wrapper = environ.get("wsgi.file_wrapper")
            return wrapper(body, 1 << 16) if wrapper else _chunks(body)
        return [b""] if method == "HEAD" else [b"Not Found\n" if body is None else body]

    @staticmethod
    def is_static(path: str) -> bool:
        return (
            path in ("/", "/simple", "/index.html", "/" + SEARCH_INDEX)
            or path.startswith(("/simple/", "/project/"))
            or (path.startswith("/packages/") and len(path) > len("/packages/"))
        )

    def after_change(self, environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """pypiserver handles the upload or removal; on success the pages are updated before the response, which
        is held back until then (a failed update answers 500 instead, never pypiserver's headers and ours)."""
        held: List[Tuple[str, List[Tuple[str, str]]]] = []

        def hold(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            held[:] = [(status, headers)]  # a later call (with exc_info) replaces an earlier one
            return lambda data: None  # bottle returns its body; it never writes through this

        result = self.app(environ, hold)
        body = list(result)  # bottle has stored (or removed) the file once its body is produced
        close = getattr(result, "close", None)
        if close is not None:
            close()
        status, headers = held[0] if held else ("500 Internal Server Error", [("Content-Type", "text/plain")])
        if status[:1] == "2":
            noted = environ.get(AUDIT_KEY)
            uploaded = noted.get("project") if isinstance(noted, dict) and noted.get("action") == "upload" else None
            try:
                # The renderer starts once the response is sent (AfterResponse), not while it is written: on a
                # host of two cores its start (Python, readme_renderer) would otherwise delay the response.
                self.index.sync(project=uploaded if isinstance(uploaded, str) else None, render=False)
            except Exception as error:
                LOG.exception("the index pages could not be updated after a change")
                text = f"Stored, but the index pages could not be updated: {error}\n".encode(errors="replace")
                start_response(
                    "500 Internal Server Error",
                    [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(text)))],
                )
                return [text]
        start_response(status, headers)
        if status[:1] == "2" and (self.index.render_queued or self.index.lists_stale()):
            return AfterResponse(body, self.index.after_response)
        return body

    def authenticate(self, environ: Dict[str, Any], start_response: StartResponse) -> Optional[List[bytes]]:
        if self.check_password is None:
            return None
        header = environ.get("HTTP_AUTHORIZATION", "")
        user = password = None
        if header[:6].lower() == "basic ":
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
        if user is None:
            start_response(
                "401 Unauthorized", [("WWW-Authenticate", 'Basic realm="pypi"'), ("Content-Type", "text/plain")]
            )
            return [b"Unauthorized\n"]
        if not self.check_password(user, password or ""):
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"Forbidden\n"]
        return None

    def redirect(self, environ: Dict[str, Any], target: str) -> Tuple[bytes, List[Tuple[str, str]], str]:
        location = environ.get("SCRIPT_NAME", "").rstrip("/") + target
        return b"", [("Location", location), ("Content-Type", "text/plain")], "301 Moved Permanently"

    def route(self, environ: Dict[str, Any], path: str) -> Response:
        if "\x00" in path:
            return NOT_FOUND
        if path in ("/", "/index.html", "/" + SEARCH_INDEX):
            return self.front(path)
        if path == "/simple":
            return self.redirect(environ, "/simple/")
        if path.startswith("/project/"):
            return self.route_project(environ, path[len("/project/") :])
        if path.startswith("/packages/"):
            return self.route_file(path[len("/packages/") :])
        return self.route_simple(environ, path[len("/simple/") :])

    def front(self, path: str) -> Response:
        """The front page, or its search index."""
        if path == "/" + SEARCH_INDEX:
            return self.page(self.index.path(SEARCH_INDEX), "application/json")
        return self.browse_page(self.index.path("index.html"))

    def route_project(self, environ: Dict[str, Any], rest: str) -> Response:
        name = rest.strip("/")
        if not name or "/" in name:
            return NOT_FOUND
        wanted = normalize(name)
        if rest != f"{wanted}/":
            return self.redirect(environ, f"/project/{quote(wanted)}/")
        return self.browse_page(self.index.path("browse", wanted + ".html"))

    def route_file(self, relfn: str) -> Response:
        """A package file, or its PEP 658 metadata file."""
        if not _SAFE_PATH.match(relfn) or any(part.startswith(".") for part in relfn.split("/")):
            return NOT_FOUND
        if relfn.endswith(".metadata"):
            path = self.index.path("metadata", relfn)
            body, headers, status = self.page(path, "text/plain; charset=utf-8")
            with contextlib.suppress(OSError):
                if body is not None:
                    headers.append(last_modified(os.stat(path).st_mtime))
            return body, headers, status
        full = os.path.join(self.index.packages, relfn)
        if parse_filename(os.path.basename(relfn)) is None or not self.index.listed(relfn):
            return NOT_FOUND
        try:
            handle = os.fdopen(os.open(full, os.O_RDONLY | os.O_NOFOLLOW), "rb")  # closed by the file wrapper
        except OSError:
            return NOT_FOUND
        found = os.fstat(handle.fileno())
        kind = mimetypes.guess_type(relfn)[0] or "application/octet-stream"
        # A validator, as nginx sends: a cache (the balancers' HAProxy) keeps only answers that have one.
        headers = [("Content-Type", kind), ("Content-Length", str(found.st_size)), last_modified(found.st_mtime)]
        return handle, headers, "200 OK"

    def route_simple(self, environ: Dict[str, Any], rest: str) -> Response:
        """/simple/ and /simple/<project>/ (PEP 503 names; PEP 691 by the Accept header)."""
        name = rest.removesuffix("/")
        if "/" in name:
            return NOT_FOUND
        if name != normalize(name) or (name and not rest.endswith("/")):
            return self.redirect(environ, f"/simple/{quote(normalize(name))}/")
        chosen = preferred_type(environ.get("HTTP_ACCEPT"))
        if chosen is None:
            message = f"Not Acceptable: ask for text/html, {HTML_V1_TYPE} or {JSON_TYPE}\n"
            return message.encode(), [("Content-Type", "text/plain"), ("Vary", "Accept")], "406 Not Acceptable"
        folder = ("simple", name) if name else ("simple",)
        target = self.index.path(*folder, "index.json" if chosen == JSON_TYPE else "index.html")
        body, headers, status = self.page(target, chosen if chosen != "text/html" else "text/html; charset=utf-8")
        headers.append(("Vary", "Accept"))
        return body, headers, status

    def browse_page(self, path: str) -> Tuple[Optional[bytes], List[Tuple[str, str]], str]:
        """The front page or a project's page, with their Content-Security-Policy."""
        body, headers, status = self.page(path, "text/html; charset=utf-8")
        if body is not None:
            headers.append(("Content-Security-Policy", PAGE_POLICY))
        return body, headers, status

    @staticmethod
    def page(path: str, content_type: str) -> Tuple[Optional[bytes], List[Tuple[str, str]], str]:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            return None, [("Content-Type", "text/plain")], "404 Not Found"
        return data, [("Content-Type", content_type), ("Content-Length", str(len(data)))], "200 OK"


def last_modified(mtime: float) -> Tuple[str, str]:
    """The Last-Modified header of a file modified at mtime (seconds since the epoch)."""
    return "Last-Modified", email.utils.formatdate(mtime, usegmt=True)


# A verified password is remembered this long (per worker), so reads with a password cost what reads without
# do; any change to the password file forgets them all. Failed checks are never remembered.
VERIFIED_SECONDS = 300.0
VERIFIED_MAX = 1024
# Longer passwords or user names are refused unhashed (a huge one would keep a worker hashing).
MAX_PASSWORD_CHARS = 1024


def htpasswd_checker(password_file: str) -> Callable[[str, str], bool]:
    """The check pypiserver makes (passlib's HtpasswdFile, re-read when the file changes), with verified
    credentials cached: sha512_crypt at 100,000 rounds costs about 0.1 s a check in pure Python."""
    from passlib.apache import HtpasswdFile  # noqa: PLC0415 - only in the index's virtualenv

    holder = HtpasswdFile(password_file)
    lock = threading.Lock()
    key = os.urandom(32)
    verified: Dict[Tuple[str, bytes], float] = {}
    generation = [0]  # bumped on every reload: a success against an older file is not remembered

    def recall(user: str, token: Tuple[str, bytes], now: float) -> Tuple[bool, Optional[str], int]:
        """(remembered, the stored hash, the file's generation), under the lock."""
        with lock:
            if holder.load_if_changed():
                verified.clear()
                generation[0] += 1
            if verified.get(token, 0.0) > now:
                return True, None, generation[0]
            try:
                return False, holder.get_hash(user), generation[0]
            except ValueError:  # a user name passlib cannot hold (a tab, a colon)
                return False, None, generation[0]

    def matches(password: str, stored: str) -> bool:
        try:  # outside the lock: a slow hash (a wrong or huge password) never holds up the others
            return bool(holder.context.verify(password.encode(holder.encoding), stored))
        except (ValueError, TypeError, UnicodeError):
            return False

    def check(user: str, password: str) -> bool:
        if len(password) > MAX_PASSWORD_CHARS or len(user) > MAX_PASSWORD_CHARS:
            return False
        token = (user, hmac.new(key, password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest())
        now = time.monotonic()
        remembered, stored, seen = recall(user, token, now)
        if remembered:
            return True
        if stored is None or not matches(password, stored):
            return False
        with lock:
            if generation[0] == seen:
                if len(verified) >= VERIFIED_MAX:
                    verified.clear()
                verified[token] = now + VERIFIED_SECONDS
        return True

    return check


# --- metrics (Prometheus) --------------------------------------------------------------------------------------

# /metrics answers in the Prometheus text exposition format 0.0.4, rendered here: the bundle has no
# prometheus_client. Every label value comes from a fixed set below, whatever a client sends, so the number of
# series stays bounded.
METRICS_PATH = "/metrics"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROUTES = ("simple_root", "simple_project", "file", "metadata", "browse", "upload", "health", "metrics", "other")
# Why a POST to / (an upload) was refused: the upload checks' kind of BadDistribution, else by the status code.
REFUSAL_REASONS = (
    "unauthorized",  # no credentials (401) or wrong ones (403)
    "too_large",  # the upload, or its form fields, over their bound (413)
    "no_length",  # no Content-Length (411)
    "bad_name",  # a file name the index does not take
    "bad_archive",  # not a readable wheel or sdist, or not a single metadata file in it
    "metadata_mismatch",  # metadata without, or contradicting, the file name's project or version
    "exists",  # the file, or another spelling of its name, is stored already (pypiserver's 400, or 409)
    "not_owner",  # the account may not upload to the project (pypi_server_project_owners, a claim), or the owners
    # file that says so cannot be read or written
    "bad_request",  # any other 400: a form that cannot be read, a documentation upload
    "other",
)
_REASON_BY_CODE = {
    "400": "bad_request",
    "401": "unauthorized",
    "403": "unauthorized",
    "409": "exists",
    "411": "no_length",
    "413": "too_large",
}
_CODE = re.compile(r"^[1-5][0-9][0-9]$")
# Upper bounds of the request duration histogram, in seconds (the last bucket, +Inf, takes the rest).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# A worker writes its file at most this often (and when /metrics is read, and when it exits).
FLUSH_SECONDS = 1.0
METRICS_FORMAT = 1
MAX_METRICS_FILE_BYTES = 256 << 10
MAX_METRICS_FILES = 256
# How long a scrape tries for the directory's lock (another scrape holds it for milliseconds) before it reads the
# files without it: a worker is never held up longer by another reader, however long that one holds the lock.
COLLECT_WAIT_SECONDS = 0.05
# Reads without the lock, at most, while retired.json keeps changing under them.
UNLOCKED_READS = 3
# Complaints about the same thing are logged at most this often (a broken directory must not flood the log).
COMPLAIN_SECONDS = 300.0
_WORKER_FILE = re.compile(r"^(w-[0-9]{1,10}-[0-9a-f]{16})\.json$")
RETIRED_FILE = "retired.json"
# What the upload checks leave in the WSGI environ for the metrics layer.
REFUSED_KEY = "airgap_pypi.refused"
UPLOAD_KEY = "airgap_pypi.upload"
# In the tree: when the last sync ended and how long it took.
SYNC_FILE = "sync.json"


class MetricsFileError(ValueError):
    """A metrics file that cannot be used (the message says why)."""


def _is_regular(mode: int) -> bool:
    return mode & 0o170000 == 0o100000  # stat.S_ISREG


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MetricsFileError(f"{what} is not a count: {str(value)[:40]!r}")
    return value


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise MetricsFileError(f"{what} is not a number of seconds: {str(value)[:40]!r}")
    return float(value)


def code_of(status: str) -> str:
    """The status code of a status line, as a label value: three digits, or "other"."""
    code = status[:3]
    return code if _CODE.match(code) and status[3:4] in ("", " ") else "other"


_EXACT_ROUTES = {
    METRICS_PATH: "metrics",
    "/health": "health",
    "/simple": "simple_root",
    "/simple/": "simple_root",
    "/index.html": "browse",
}
_PREFIX_ROUTES = (("/simple/", "simple_project"), ("/project/", "browse"))


def route_of(method: str, path: str) -> str:
    """The route label of a request (one of ROUTES), never the path itself."""
    if path in _EXACT_ROUTES:
        return _EXACT_ROUTES[path]
    if path == "/":
        return {"POST": "upload", "GET": "browse", "HEAD": "browse"}.get(method, "other")
    if path.startswith("/packages/") and len(path) > len("/packages/"):
        return "metadata" if path.endswith(".metadata") else "file"
    return next((route for prefix, route in _PREFIX_ROUTES if path.startswith(prefix)), "other")


def note_upload_form(environ: Dict[str, Any], action: Any, upload: Any, packages: str) -> None:
    """Leave for the metrics layer the form's action, the uploaded file's size and whether a file of its name is
    stored already (pypiserver then refuses it with a 400 of its own). Never raises."""
    try:
        size, existed = 0, False
        handle = getattr(upload, "file", None)
        if handle is not None:
            at = handle.tell()
            size = handle.seek(0, os.SEEK_END)
            handle.seek(at)
        name = str(getattr(upload, "raw_filename", "") or "")
        if _UPLOAD_NAME.match(name) and not name.startswith("."):
            existed = os.path.lexists(os.path.join(packages, name))
        environ[UPLOAD_KEY] = (action if isinstance(action, str) else None, int(size), existed)
    except Exception:
        LOG.debug("the upload could not be looked at for the metrics", exc_info=True)


def note_sync(path: str, started: float) -> None:
    """Record when a sync ended and how long it took, for the metrics. Never raises."""
    finished = time.time()
    try:
        write_atomic(path, json.dumps({"finished": finished, "seconds": max(0.0, finished - started)}).encode())
    except OSError as error:
        LOG.warning("%s could not be written: %s", path, error)


class Metrics:
    """Counts of one worker process, or the sum of several: requests by route and status code with their
    durations (a histogram per route), uploads accepted and their bytes, uploads refused by reason. Thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.requests: Dict[Tuple[str, str], int] = {}
            # Per route: a count per bucket of DURATION_BUCKETS, then one for the rest (not cumulative here).
            self.durations: Dict[str, List[int]] = {}
            self.duration_sums: Dict[str, float] = {}
            self.refused: Dict[str, int] = {}
            self.uploads = 0
            self.upload_bytes = 0
            self.audit_lost = 0  # audit records that could not be written (the change stood)
            self.changes = 0  # grows with every change: a worker writes its file when it differs from the last

    def observe(self, route: str, code: str, seconds: float) -> None:
        slot = bisect.bisect_left(DURATION_BUCKETS, seconds)  # the first bound >= seconds: Prometheus' "le"
        with self.lock:
            self.requests[(route, code)] = self.requests.get((route, code), 0) + 1
            self.durations.setdefault(route, [0] * (len(DURATION_BUCKETS) + 1))[slot] += 1
            self.duration_sums[route] = self.duration_sums.get(route, 0.0) + max(0.0, seconds)
            self.changes += 1

    def upload_accepted(self, size: int) -> None:
        with self.lock:
            self.uploads += 1
            self.upload_bytes += max(0, size)
            self.changes += 1

    def record_lost(self) -> None:
        with self.lock:
            self.audit_lost += 1
            self.changes += 1

    def upload_refused(self, reason: str) -> None:
        reason = reason if reason in REFUSAL_REASONS else "other"
        with self.lock:
            self.refused[reason] = self.refused.get(reason, 0) + 1
            self.changes += 1

    def document(self) -> Dict[str, Any]:
        """The counts as JSON data (a worker's file)."""
        with self.lock:
            return {
                "format": METRICS_FORMAT,
                "requests": [[route, code, count] for (route, code), count in sorted(self.requests.items())],
                "durations": {
                    route: {"buckets": list(counts), "sum": self.duration_sums.get(route, 0.0)}
                    for route, counts in sorted(self.durations.items())
                },
                "refused": dict(sorted(self.refused.items())),
                "uploads": self.uploads,
                "upload_bytes": self.upload_bytes,
                "audit_lost": self.audit_lost,
            }

    @classmethod
    def from_document(cls, document: Any) -> Metrics:
        """Counts from a worker's file, every value checked (MetricsFileError says what is wrong)."""
        if not isinstance(document, dict) or document.get("format") != METRICS_FORMAT:
            raise MetricsFileError(f"not a metrics document of format {METRICS_FORMAT}")
        counts = cls()
        requests, durations, refused = document.get("requests"), document.get("durations"), document.get("refused")
        if not isinstance(requests, list) or not isinstance(durations, dict) or not isinstance(refused, dict):
            raise MetricsFileError('"requests", "durations" or "refused" missing or of the wrong type')
        for item in requests:
            if not isinstance(item, list) or len(item) != 3 or item[0] not in ROUTES:
                raise MetricsFileError(f"a request count that is not [route, code, count]: {str(item)[:80]}")
            if not (isinstance(item[1], str) and (_CODE.match(item[1]) or item[1] == "other")):
                raise MetricsFileError(f"a status code that is not one: {str(item[1])[:40]!r}")
            key = (item[0], item[1])
            counts.requests[key] = counts.requests.get(key, 0) + _count(item[2], "a request count")
        for route, histogram in durations.items():
            buckets = histogram.get("buckets") if isinstance(histogram, dict) else None
            if route not in ROUTES or not isinstance(buckets, list) or len(buckets) != len(DURATION_BUCKETS) + 1:
                raise MetricsFileError(f"durations of {str(route)[:40]!r}: not a route with its buckets")
            counts.durations[route] = [_count(value, "a bucket count") for value in buckets]
            counts.duration_sums[route] = _seconds(histogram.get("sum"), "a duration sum")
        for reason, count in refused.items():
            if reason not in REFUSAL_REASONS:
                raise MetricsFileError(f"an unknown refusal reason: {str(reason)[:40]!r}")
            counts.refused[reason] = _count(count, "a refusal count")
        counts.uploads = _count(document.get("uploads"), "uploads")
        counts.upload_bytes = _count(document.get("upload_bytes"), "upload_bytes")
        counts.audit_lost = _count(document.get("audit_lost", 0), "audit_lost")  # 0 in a file of an older worker
        return counts

    def add(self, other: Metrics) -> None:
        """Add other's counts to these."""
        snapshot = other.document()  # under other's lock
        with self.lock:
            for route, code, count in snapshot["requests"]:
                self.requests[(route, code)] = self.requests.get((route, code), 0) + count
            for route, histogram in snapshot["durations"].items():
                mine = self.durations.setdefault(route, [0] * (len(DURATION_BUCKETS) + 1))
                for index, count in enumerate(histogram["buckets"]):
                    mine[index] += count
                self.duration_sums[route] = self.duration_sums.get(route, 0.0) + histogram["sum"]
            for reason, count in snapshot["refused"].items():
                self.refused[reason] = self.refused.get(reason, 0) + count
            self.uploads += snapshot["uploads"]
            self.upload_bytes += snapshot["upload_bytes"]
            self.audit_lost += snapshot["audit_lost"]
            self.changes += 1


def escape_label(value: str) -> str:
    """A label value as the text format writes it: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """A HELP text as the text format writes it: backslash and line feed escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def sample_value(value: float) -> str:
    """A sample value (or an "le" bound) as the text format writes it."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


Sample = Tuple[str, List[Tuple[str, str]], float]  # (name suffix, labels, value)
Gauge = Tuple[str, str, float]  # (name, help, value)


def render_family(name: str, kind: str, text: str, samples: Iterable[Sample]) -> List[str]:
    lines = [f"# HELP {name} {escape_help(text)}", f"# TYPE {name} {kind}"]
    for suffix, labels, value in samples:
        pairs = ",".join(f'{label}="{escape_label(label_value)}"' for label, label_value in labels)
        lines.append(f"{name}{suffix}{'{' + pairs + '}' if pairs else ''} {sample_value(value)}")
    return lines


def histogram_samples(counts: Metrics) -> Iterator[Sample]:
    """The request duration histogram: cumulative buckets per route, then +Inf, sum and count."""
    for route in ROUTES:
        buckets = counts.durations.get(route)
        if buckets is None:
            continue
        total = 0
        for index, bound in enumerate(DURATION_BUCKETS):
            total += buckets[index]
            yield "_bucket", [("route", route), ("le", sample_value(bound))], total
        total += buckets[-1]
        yield "_bucket", [("route", route), ("le", "+Inf")], total
        yield "_sum", [("route", route)], counts.duration_sums.get(route, 0.0)
        yield "_count", [("route", route)], total


def render_metrics(counts: Metrics, gauges: Iterable[Gauge] = ()) -> bytes:
    """The text exposition (format 0.0.4) of counts and gauges."""
    order = {route: index for index, route in enumerate(ROUTES)}
    with counts.lock:
        requests = sorted(counts.requests.items(), key=lambda item: (order[item[0][0]], item[0][1]))
        lines = render_family(
            "airgap_pypi_requests_total",
            "counter",
            "HTTP requests answered by gunicorn, by route (a fixed set) and status code.",
            (("", [("route", route), ("code", code)], count) for (route, code), count in requests),
        )
        lines += render_family(
            "airgap_pypi_request_duration_seconds",
            "histogram",
            "Time from a request's arrival at the index to its response's end, by route.",
            histogram_samples(counts),
        )
        lines += render_family(
            "airgap_pypi_uploads_accepted_total",
            "counter",
            "Uploads stored (twine upload answered with success).",
            [("", [], counts.uploads)],
        )
        lines += render_family(
            "airgap_pypi_uploaded_bytes_total",
            "counter",
            "Bytes of the distribution files of the uploads stored.",
            [("", [], counts.upload_bytes)],
        )
        lines += render_family(
            "airgap_pypi_uploads_refused_total",
            "counter",
            "Uploads (POSTs to /) refused, by reason (a fixed set).",
            (("", [("reason", reason)], counts.refused.get(reason, 0)) for reason in REFUSAL_REASONS),
        )
        lines += render_family(
            "airgap_pypi_audit_records_lost_total",
            "counter",
            "Audit records of uploads, removals and claims that could not be written (the change stood; see the log).",
            [("", [], counts.audit_lost)],
        )
    for name, text, value in gauges:
        lines += render_family(name, "gauge", text, [("", [], value)])
    return ("\n".join(lines) + "\n").encode()


def _read_at(directory: Optional[int], name: str, limit: int) -> bytes:
    """A regular file (in a directory given as a descriptor), never through a link, at most limit bytes."""
    descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
    with os.fdopen(descriptor, "rb") as handle:
        if not _is_regular(os.fstat(handle.fileno()).st_mode):
            raise MetricsFileError("not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise MetricsFileError(f"larger than {limit >> 10} KiB")
    return data


def _write_at(directory: int, name: str, data: bytes) -> None:
    """Write a file in a directory (a descriptor) under a temporary name, then rename it: readers see the old or
    the new file, never a part."""
    temporary = f".tmp-{os.getpid()}-{os.urandom(6).hex()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(temporary, flags, 0o640, dir_fd=directory)
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
        os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=directory)
        raise


def _try_lock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _identity(directory: int, name: str) -> Optional[Tuple[int, int, int]]:
    """(inode, mtime in ns, size) of name in directory, never through a link; None when it is missing."""
    try:
        seen = os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return seen.st_ino, seen.st_mtime_ns, seen.st_size


def _unlink_at(directory: int, *names: str) -> None:
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=directory)


class Collected(NamedTuple):
    """What a scrape read: every worker's counts summed, the living workers counted, the files ignored, and
    whether it read without the directory's lock (partial: nothing retired, counts possibly a moment behind)."""

    total: Metrics
    live: int
    ignored: int
    partial: bool


class WorkerFiles:
    """Every worker's counts, one small file each in one directory, summed when /metrics is read.

    gunicorn runs several worker processes (and with TLS a second gunicorn for plain HTTP): each keeps its counts
    in memory and writes them to w-<pid>-<random>.json here (whole, by rename; at most every FLUSH_SECONDS). It
    holds an flock on w-<...>.lock for as long as it lives: the kernel releases it when the process ends, however
    it ends. A reader sums retired.json and the files of the living workers; the file of a worker whose lock is
    free (it has ended) is added into retired.json once and removed, so counters never go back when workers come
    and go, and the files stay as many as the workers. retired.json names the files it took in until they are
    removed, so a reader killed in between never counts them twice. Every read is bounded, never through a link.
    A reader that cannot have the directory's lock within COLLECT_WAIT_SECONDS reads without it and retires
    nothing (Collected.partial). An unreadable retired.json is logged and its counts start again from zero.
    """

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        self.name = ""  # this process's w-<pid>-<random>, "" until start()
        self.pid = 0
        self.lock_descriptor: Optional[int] = None
        self._warned: Dict[str, float] = {}

    @contextlib.contextmanager
    def opened(self) -> Iterator[int]:
        """The directory as a descriptor: created when missing, never through a link, this user's alone."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.directory, 0o750)
        descriptor = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            seen = os.fstat(descriptor)
            if seen.st_uid != os.geteuid() or seen.st_mode & 0o022:
                raise MetricsFileError(
                    f"{self.directory} is not this user's alone (owner uid {seen.st_uid}, mode "
                    f"{seen.st_mode & 0o777:o}; uid {os.geteuid()} and no group or other write wanted)"
                )
            yield descriptor
        finally:
            os.close(descriptor)

    def forget(self) -> None:
        """Drop this process's name and lock (after a fork: they are the parent's)."""
        if self.lock_descriptor is not None:
            with contextlib.suppress(OSError):
                os.close(self.lock_descriptor)
        self.name, self.pid, self.lock_descriptor = "", 0, None

    def holds_lock(self, directory: int) -> bool:
        """Whether this process has its name and still holds its lock file there."""
        if not self.name or self.pid != os.getpid() or self.lock_descriptor is None:
            return False
        try:
            there = os.stat(self.name + ".lock", dir_fd=directory, follow_symlinks=False)
            return os.fstat(self.lock_descriptor).st_ino == there.st_ino
        except OSError:
            return False

    def start(self, directory: int) -> None:
        """A new name for this process and its lock file: locked under a temporary name, then renamed, so no
        reader ever sees it unlocked."""
        self.forget()
        name = f"w-{os.getpid()}-{os.urandom(8).hex()}"
        temporary = f".tmp-{name}.lock"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        descriptor = os.open(temporary, flags, 0o640, dir_fd=directory)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(temporary, name + ".lock", src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            os.close(descriptor)
            _unlink_at(directory, temporary)
            raise
        self.name, self.pid, self.lock_descriptor = name, os.getpid(), descriptor

    def write(self, directory: int, counts: Metrics) -> None:
        _write_at(directory, self.name + ".json", json.dumps(counts.document()).encode())

    def warn(self, key: str, message: str, *args: Any) -> None:
        """Log a problem with a file, at most once per COMPLAIN_SECONDS for the same file and problem."""
        now = time.monotonic()
        if self._warned.get(key, -COMPLAIN_SECONDS) + COMPLAIN_SECONDS > now:
            return
        if len(self._warned) >= MAX_METRICS_FILES:
            self._warned.clear()
        self._warned[key] = now
        LOG.warning(message, *args)

    @staticmethod
    def alive(directory: int, name: str) -> bool:
        """Whether the worker of name still holds its lock (it lives); True when that cannot be told."""
        try:
            descriptor = os.open(name + ".lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
        except FileNotFoundError:
            return False
        except OSError:
            return True
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(descriptor)  # releases the shared lock, if it was taken

    def read(self, directory: int, name: str) -> Metrics:
        data = _read_at(directory, name, MAX_METRICS_FILE_BYTES)
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            raise MetricsFileError(f"not JSON ({str(error)[:80]})") from error
        return Metrics.from_document(document)

    def read_retired(self, directory: int) -> Tuple[Metrics, List[str]]:
        """The counts of the workers that have ended, and the names of the files they came from."""
        try:
            data = _read_at(directory, RETIRED_FILE, MAX_METRICS_FILE_BYTES + (64 << 10))
            document = json.loads(data.decode("utf-8"))
            folded = document.get("folded") if isinstance(document, dict) else None
            if not isinstance(folded, list) or not all(isinstance(n, str) and _WORKER_FILE.match(n) for n in folded):
                raise MetricsFileError('"folded" is not a list of worker file names')
            return Metrics.from_document(document.get("counts")), folded[:MAX_METRICS_FILES]
        except FileNotFoundError:
            return Metrics(), []
        except (OSError, ValueError, RecursionError) as error:  # MetricsFileError and UnicodeDecodeError too
            self.warn(RETIRED_FILE, "metrics: %s ignored (ended workers' counts start again): %s", RETIRED_FILE, error)
            return Metrics(), []

    def collect(self) -> Collected:
        """Every worker's counts summed, under the directory's lock, the files of ended workers taken into
        retired.json; when another reader holds the lock past COLLECT_WAIT_SECONDS, read without it (partial)."""
        with self.opened() as directory:
            lock = os.open(".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640, dir_fd=directory)
            try:
                # A scrape holds it for milliseconds; one that is stuck, or many at once, never hold up a worker.
                deadline = time.monotonic() + COLLECT_WAIT_SECONDS
                while not _try_lock(lock):
                    if time.monotonic() >= deadline:
                        LOG.debug("metrics: %s/.lock is busy; reading without it", self.directory)
                        return self._collect_unlocked(directory)
                    time.sleep(0.005)
                return Collected(*self._collect(directory), partial=False)
            finally:
                os.close(lock)

    def _collect_unlocked(self, directory: int) -> Collected:
        """The sum read without the directory's lock: nothing is retired or removed. The reader holding the lock
        may fold ended workers into retired.json (written first) and remove their files meanwhile, so the read is
        done again while retired.json changes under it, at most UNLOCKED_READS times."""
        for _ in range(UNLOCKED_READS):
            before = _identity(directory, RETIRED_FILE)
            retired, folded = self.read_retired(directory)
            names, _ = self.scan(directory)
            files = Metrics()
            live = ignored = 0
            for name in names:
                if name in folded:
                    continue  # in retired.json already; its removal was not done yet
                try:
                    counts = self.read(directory, name)
                except FileNotFoundError:
                    continue  # folded meanwhile: retired.json has changed, read again
                except (OSError, MetricsFileError) as error:
                    ignored += 1
                    self.warn(name + str(error), "metrics: %s in %s ignored: %s", name, self.directory, error)
                    continue
                files.add(counts)
                live += self.alive(directory, name[: -len(".json")])
            if _identity(directory, RETIRED_FILE) == before:
                break
        retired.add(files)
        return Collected(retired, live, ignored, partial=True)

    def scan(self, directory: int) -> Tuple[List[str], List[str]]:
        """The workers' files (at most MAX_METRICS_FILES), and temporary files a killed writer left."""
        names: List[str] = []
        stale: List[str] = []
        now = time.time()
        for entry in os.scandir(directory):
            if _WORKER_FILE.match(entry.name):
                names.append(entry.name)
            elif entry.name.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    if now - entry.stat(follow_symlinks=False).st_mtime > 60:
                        stale.append(entry.name)
        if len(names) > MAX_METRICS_FILES:
            self.warn("many", "metrics: %d worker files in %s, %d read", len(names), self.directory, MAX_METRICS_FILES)
            names = sorted(names)[:MAX_METRICS_FILES]
        return names, stale

    def _collect(self, directory: int) -> Tuple[Metrics, int, int]:
        retired, folded_before = self.read_retired(directory)
        names, stale = self.scan(directory)
        living = Metrics()
        live = ignored = 0
        done = [name for name in names if name in folded_before]  # taken in already; removal was cut short
        ended: List[Tuple[str, Optional[Metrics]]] = []
        for name in names:
            if name in folded_before:
                continue
            is_alive = self.alive(directory, name[: -len(".json")])
            try:
                counts: Optional[Metrics] = self.read(directory, name)
            except (OSError, MetricsFileError) as error:
                ignored += 1
                self.warn(name + str(error), "metrics: %s in %s ignored: %s", name, self.directory, error)
                counts = None
            if not is_alive:
                ended.append((name, counts))
            elif counts is not None:
                living.add(counts)
                live += 1
        if ended or done:
            for _, counts in ended:
                if counts is not None:
                    retired.add(counts)
            gone = [name for name, _ in ended] + done
            document = {"format": METRICS_FORMAT, "counts": retired.document(), "folded": gone}
            _write_at(directory, RETIRED_FILE, json.dumps(document).encode())
            for name in gone:
                _unlink_at(directory, name, name[: -len(".json")] + ".lock")
        _unlink_at(directory, *stale)
        retired.add(living)
        return retired, live, ignored


def basic_credentials(environ: Dict[str, Any]) -> Optional[Tuple[str, str]]:
    """(user, password) of a request's HTTP Basic Authorization header; None when it has none that parses."""
    header = str(environ.get("HTTP_AUTHORIZATION", ""))
    if header[:6].lower() != "basic " or len(header) > 4 * MAX_PASSWORD_CHARS:
        return None
    try:
        user, colon, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if colon else None


class _Once:
    """Call a function once, whichever of several ways gets there first."""

    def __init__(self, function: Callable[[], None]) -> None:
        self.function: Optional[Callable[[], None]] = function

    def __call__(self) -> None:
        function, self.function = self.function, None
        if function is not None:
            function()


class _Counted:
    """A response body passed through; done() when the server closes it (the response has been sent)."""

    def __init__(self, body: Iterable[bytes], done: _Once) -> None:
        self.body, self.done = body, done

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.done()


class MetricsLayer:
    """WSGI layer outermost in the stack: counts every request (route, status code, duration) and the uploads
    accepted and refused, and answers GET /metrics in the Prometheus text format with the sum over every worker
    (WorkerFiles) and the index's gauges (files, projects, last sync, from tree, the page generator's).

    check_password set: /metrics needs an upload account's HTTP Basic credentials (401 without or with wrong
    ones). An error here is logged and the request goes on; counting never changes a response."""

    def __init__(
        self,
        app: WSGIApp,
        directory: Optional[str] = None,
        tree: Optional[Tree] = None,
        check_password: Optional[Callable[[str, str], bool]] = None,
    ) -> None:
        self.app = app
        self.tree = tree
        self.check_password = check_password
        self.metrics = Metrics()
        self.files = WorkerFiles(directory) if directory else None
        self.pid = 0
        self._stopped = threading.Event()
        self._process_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._written = -1
        self._complained: Dict[str, float] = {}
        try:
            self.ensure_process()
        except Exception:
            self.complain("the metrics could not be set up; requests are served as ever")

    # -- each process ---------------------------------------------------------------------------------------

    def ensure_process(self) -> None:
        """In a new process (a gunicorn worker, forked): counts from zero, a file of its own, a writer thread."""
        pid = os.getpid()
        if pid == self.pid:
            return
        with self._process_lock:
            if pid == self.pid:
                return
            self.pid = pid
            self.metrics.reset()  # counts inherited over a fork are the parent's
            self._written = -1
            if self.files is None:
                return
            self.files.forget()
            threading.Thread(target=self._flush_loop, args=(pid,), name="airgap-pypi-metrics", daemon=True).start()
            atexit.register(self.flush_quietly)
            self.flush_quietly()  # its file and lock now: /metrics counts every worker from its start

    def _flush_loop(self, pid: int) -> None:
        while not self._stopped.wait(FLUSH_SECONDS) and os.getpid() == pid:
            self.flush_quietly()

    def close(self) -> None:
        """Stop the writer thread after a last write (a process ending writes its counts by itself)."""
        self._stopped.set()
        atexit.unregister(self.flush_quietly)
        self.flush_quietly()

    def flush(self, force: bool = False) -> None:
        """Write this worker's counts to its file, when they changed since the last write (or force)."""
        if self.files is None:
            return
        with self._flush_lock:
            if not force and self.metrics.changes == self._written and self.files.name:
                return
            with self.files.opened() as directory:
                if not self.files.holds_lock(directory):
                    if self.files.name and self.files.pid == os.getpid():
                        LOG.warning("metrics: %s.lock was removed; this worker's counts start again", self.files.name)
                        self.metrics.reset()
                    self.files.start(directory)
                changes = self.metrics.changes
                self.files.write(directory, self.metrics)
            self._written = changes

    def flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception:
            self.complain("this worker's metrics could not be written")

    def complain(self, what: str) -> None:
        """Log what failed, with the exception, at most once per COMPLAIN_SECONDS for the same thing."""
        now = time.monotonic()
        if self._complained.get(what, -COMPLAIN_SECONDS) + COMPLAIN_SECONDS <= now:
            self._complained[what] = now
            LOG.warning("metrics: %s", what, exc_info=True)

    # -- each request ---------------------------------------------------------------------------------------

    def __call__(self, environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.monotonic()
        try:
            self.ensure_process()
            route = route_of(str(environ.get("REQUEST_METHOD", "GET")), str(environ.get("PATH_INFO", "") or "/"))
        except Exception:
            self.complain("a request could not be classified")
            return self.app(environ, start_response)
        if route == "metrics":
            return self.answer_metrics(environ, start_response, started)
        status: List[str] = []

        def capture(line: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Any:
            status[:] = [line]
            return start_response(line, headers) if exc_info is None else start_response(line, headers, exc_info)

        done = _Once(lambda: self.record(environ, route, code_of(status[0]) if status else "500", started))
        try:
            body = self.app(environ, capture)
        except BaseException:
            done()
            raise
        return self.when_sent(body, environ, done)

    def when_sent(self, body: Iterable[bytes], environ: Dict[str, Any], done: _Once) -> Iterable[bytes]:
        """The body, with done() called once it has been sent (a list: now). gunicorn's file wrapper is kept, so
        package files still go out with sendfile."""
        try:
            if isinstance(body, (list, tuple)):
                done()
                return body
            wrapper = environ.get("wsgi.file_wrapper")
            if isinstance(wrapper, type) and isinstance(body, wrapper):
                close = getattr(body, "close", None)

                def close_then_count() -> None:
                    try:
                        if close is not None:
                            close()
                    finally:
                        done()

                body.close = close_then_count  # type: ignore[attr-defined]
                return body
        except Exception:
            self.complain("a response could not be followed")
            return body
        return _Counted(body, done)

    def record(self, environ: Dict[str, Any], route: str, code: str, started: float) -> None:
        try:
            self.metrics.observe(route, code, time.monotonic() - started)
            if route == "upload":
                self.count_upload(environ, code)
            if environ.get(AUDIT_LOST_KEY):
                self.metrics.record_lost()
        except Exception:
            self.complain("a request could not be counted")

    def count_upload(self, environ: Dict[str, Any], code: str) -> None:
        form = environ.get(UPLOAD_KEY)
        action, size, existed = form if isinstance(form, tuple) and len(form) == 3 else (None, 0, False)
        if action not in (None, "file_upload"):
            return  # a removal: among the requests only
        if code.startswith("2"):
            if action == "file_upload":
                self.metrics.upload_accepted(int(size))
            return
        reason = environ.get(REFUSED_KEY)
        if reason not in REFUSAL_REASONS:
            reason = "exists" if existed and code in ("400", "409") else _REASON_BY_CODE.get(code, "other")
        self.metrics.upload_refused(reason)

    # -- /metrics -------------------------------------------------------------------------------------------

    def answer_metrics(self, environ: Dict[str, Any], start_response: StartResponse, started: float) -> List[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET"))
        try:
            status, headers, body = self.metrics_response(environ, method)
        except Exception:
            self.complain("/metrics could not be answered")
            status, headers = "500 Internal Server Error", [("Content-Type", "text/plain")]
            body = b"Internal Server Error: the metrics could not be read (see the index's log)\n"
        start_response(status, headers)
        self.record(environ, "metrics", code_of(status), started)
        return [b"" if method == "HEAD" else body]

    def metrics_response(self, environ: Dict[str, Any], method: str) -> Tuple[str, List[Tuple[str, str]], bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")], b"GET only\n"
        if self.check_password is not None:
            found = basic_credentials(environ)
            if found is None or not self.check_password(*found):
                text = b"Unauthorized: /metrics needs the user name and password of an upload account\n"
                return (
                    "401 Unauthorized",
                    [("WWW-Authenticate", 'Basic realm="pypi"'), ("Content-Type", "text/plain")],
                    text,
                )
        body = self.exposition()
        headers = [("Content-Type", METRICS_CONTENT_TYPE), ("Content-Length", str(len(body)))]
        return "200 OK", [*headers, ("Cache-Control", "no-store")], body

    def exposition(self) -> bytes:
        """Every worker's counts summed, and the gauges."""
        total: Optional[Metrics] = None
        live = ignored = 0
        partial = False
        if self.files is not None:
            try:
                self.flush(force=True)
                total, live, ignored, partial = self.files.collect()
            except Exception:
                self.complain("the workers' metrics could not be read: /metrics shows this worker's counts only")
                total = None
        if total is None:
            total, live, partial = Metrics(), 1, self.files is not None
            total.add(self.metrics)
        gauges: List[Gauge] = [
            ("airgap_pypi_metrics_workers", "Worker processes whose counts are summed here (ended ones kept).", live),
            ("airgap_pypi_metrics_files_ignored", "Workers' metrics files that could not be read (logged).", ignored),
            (
                "airgap_pypi_metrics_partial",
                "1 when this answer was read without the metrics directory's lock (another scrape held it) or holds "
                "this worker's counts only (the files could not be read): counts may be behind; else 0.",
                int(partial),
            ),
        ]
        try:
            gauges += self.index_gauges()
        except Exception:
            self.complain("the index's gauges could not be read")
        return render_metrics(total, gauges)

    def index_gauges(self) -> List[Gauge]:
        """Files and projects on the pages (state.json, parsed again only when it changed) and the last sync."""
        if self.tree is None:
            return []
        gauges: List[Gauge] = []
        state = self.tree.load_state()
        if state is not None:
            files = state.get("files", {})
            gauges.append(("airgap_pypi_index_files", "Distribution files on the index's pages.", len(files)))
            gauges.append(("airgap_pypi_index_projects", "Projects on the index's pages.", len(state["summaries"])))
        try:
            synced = read_sync(self.tree.path(SYNC_FILE))
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            self.complain(f"{self.tree.path(SYNC_FILE)} cannot be read")
            synced = None
        if synced is not None:
            finished, seconds = synced
            gauges.append(("airgap_pypi_last_sync_timestamp_seconds", "When the pages' last sync ended.", finished))
            gauges.append(("airgap_pypi_last_sync_duration_seconds", "How long the pages' last sync took.", seconds))
        return gauges


def read_sync(path: str) -> Optional[Tuple[float, float]]:
    """(end as unix time, seconds) of the last sync, None when there has been none; an error when the file
    cannot be used."""
    try:
        document = json.loads(_read_at(None, path, 4096).decode("utf-8"))
    except FileNotFoundError:
        return None
    return _seconds(document["finished"], "finished"), _seconds(document["seconds"], "seconds")


# --- command line ----------------------------------------------------------------------------------------------


def drop_privileges(user: str) -> None:
    """As root, become user (and its groups) before writing, so the tree stays the index's own."""
    if os.geteuid() != 0:
        return
    account = pwd.getpwnam(user)
    os.initgroups(user, account.pw_gid)
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)


class Refusal(Exception):
    """A yank, unyank or remove refused before any change (exit code 2); the message names the bad value."""


def project_versions(tree: Tree, project: str) -> List[str]:
    """The versions of a project's files in the packages directory (by their names), oldest first."""
    _, found, _ = tree.scan()
    versions = set()
    for relfn in found:
        parsed = parse_filename(os.path.basename(relfn))
        if parsed is not None and normalize(parsed[0]) == project:
            versions.add(parsed[1])
    return sorted(versions, key=version_key)


@contextlib.contextmanager
def yank_file_lock(path: str) -> Iterator[None]:
    """One writer of the yank file (or the removed directory, or the owners file) at a time: an flock on the
    directory it is in (the file itself is replaced)."""
    descriptor = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def check_release_arguments(project: str, version: Optional[str]) -> None:
    """Refuse a project name or version (None: none given) that could never be right, before anything is read."""
    problem = text_problem(project, MAX_PROJECT_CHARS)
    if problem is None and not _PROJECT_NAME.match(project):
        problem = "not a project name (letters, digits, '.', '_' and '-', starting and ending with a letter or digit)"
    if problem:
        raise Refusal(f"--project {shown(project)}: {problem}.")
    problem = None if version is None else text_problem(version, MAX_VERSION_CHARS) if version else "empty"
    if problem and version is not None:
        raise Refusal(f"--version {shown(version)}: {problem}.")


def check_yank_arguments(project: str, version: str, reason: Optional[str]) -> None:
    """Refuse a project name, version or reason that could never be right, before anything is read."""
    check_release_arguments(project, version)
    problem = None if reason is None else text_problem(reason, MAX_REASON_CHARS)
    if problem and reason is not None:
        raise Refusal(f"--reason {shown(reason)}: {problem}.")


def change_yank(tree: Tree, project: str, version: str, reason: Optional[str], check: bool) -> Dict[str, Any]:
    """Yank (reason given, "" for none) or unyank (reason None) a release in tree.yanked, or with check only say
    what would change; the fields of the command's result line. Refusal, before any change, when the project has
    no file in the packages directory, the version is not one of its files' (an entry of a release whose files
    are gone can still be unyanked), a value is unfit or the yank file cannot be used."""
    if tree.yanked is None:
        raise ValueError("change_yank needs a tree with a yank file")
    action = "unyank" if reason is None else "yank"
    check_yank_arguments(project, version, reason)
    name = normalize(project)
    versions = project_versions(tree, name)
    if not versions:
        raise Refusal(f"--project {shown(project)}: the packages directory ({tree.packages}) has no file of {name}.")
    matching = [found for found in versions if release_id(found) == release_id(version)]
    with yank_file_lock(tree.yanked):
        try:
            document = read_yank_file(tree.yanked)
        except YankFileError as error:
            raise Refusal(f"{error}: fix or remove it by hand.") from error
        releases: Dict[str, Dict[str, str]] = document["projects"].get(name, {})
        entered = [key for key in releases if release_id(key) == release_id(version)]
        if not matching and not (action == "unyank" and entered):
            have = ", ".join(versions[-10:]) + (" ..." if len(versions) > 10 else "")
            raise Refusal(f"--version {shown(version)}: {name} has no file of this version (its versions: {have}).")
        key = entered[0] if entered else matching[0]
        would = "would be" if check else "is"
        if action == "yank":
            changed = not entered or releases[key]["reason"] != reason
            told = f": {reason}" if reason else " (no reason given)"
            message = f"{name} {key} {would} yanked{told}" if changed else f"{name} {key} is already yanked{told}"
            if changed:
                for old in entered:
                    del releases[old]
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                releases[key] = {"reason": reason or "", "when": when}
                document["projects"][name] = releases
        else:
            changed = bool(entered)
            no_longer = "would no longer be" if check else "is no longer"
            message = f"{name} {key} {no_longer} yanked" if changed else f"{name} {key} is not yanked"
            for old in entered:
                del releases[old]
            if not releases:
                document["projects"].pop(name, None)
        if changed and not check:
            data = json.dumps(document, indent=1, sort_keys=True) + "\n"
            write_atomic(tree.yanked, data.encode(), durable=True)
    result: Dict[str, Any] = {"changed": changed, "check": check, "action": action, "project": name}
    result.update(version=key, message=message + ("" if changed else ": nothing to do"))
    if reason is not None:
        result["reason"] = reason
    return result


def yank_main(argv: List[str]) -> int:
    """yank / unyank: change the yank file, then bring the pages up to date (as --user) before returning."""
    command = argv[0]
    parser = argparse.ArgumentParser(
        prog=f"{os.path.basename(sys.argv[0] or 'airgap_pypi_index.py')} {command}",
        description=(
            "Mark a release as yanked (PEP 592: pip installs it only when pinned with ==, and prints the reason)."
            if command == "yank"
            else "Take the yanked mark off a release."
        ),
        epilog='Prints one JSON line ({"changed": ..., "message": ...}); exit code 2 when refused (nothing changed).',
    )
    parser.add_argument("--packages", required=True, help="the packages directory pypiserver serves")
    parser.add_argument("--tree", required=True, help="the generated tree (written only by this module)")
    parser.add_argument("--yanked", required=True, help="the yank file (JSON), in the index's data directory")
    parser.add_argument("--user", help="when run as root, write the pages as this user (the yank file as root)")
    parser.add_argument("--project", required=True, help="the project's name (any spelling of it)")
    parser.add_argument("--version", required=True, help="the release's version (PEP 440: 1.0 is 1.0.0)")
    if command == "yank":
        parser.add_argument("--reason", default="", help=f"why, for pip's warning (at most {MAX_REASON_CHARS} chars)")
    parser.add_argument("--check", action="store_true", help="make every check and say what would change, only")
    add_audit_arguments(parser)
    args = parser.parse_args(argv[1:])
    reason = args.reason if command == "yank" else None
    try:
        audit = audit_of(args)
        tree = Tree(args.packages, args.tree, yanked=args.yanked, uploads=audit.uploads_file if audit else None)
        result = change_yank(tree, args.project, args.version, reason, args.check)
    except Refusal as refusal:
        print(f"refused: {refusal} Nothing was changed.", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: the yank file {args.yanked} could not be read or written: {error}", file=sys.stderr)
        return 1
    return bring_pages_up_to_date(tree, result, args.check, args.user, audit=audit_entries(audit, args, result))


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--audit", help="the audit trail's directory (the change is appended to its audit.jsonl)")
    parser.add_argument("--audit-max-mb", type=int, default=10, help="rotate audit.jsonl beyond this size (MiB)")
    parser.add_argument("--audit-keep", type=int, default=5, help="rotated audit files kept")
    parser.add_argument("--account", help="who asked for the change, for the audit trail (default: who ran this)")
    parser.add_argument("--client", default="command line", help="where the change came from, for the audit trail")


def audit_of(args: argparse.Namespace) -> Optional[AuditLog]:
    """The audit trail the command appends to (None without --audit); Refusal for an unfit value, before any
    change."""
    for name in ("account", "client"):
        value = getattr(args, name)
        problem = None if value is None else text_problem(value, AUDIT_LIMITS[name]) if value else "empty"
        if problem:
            raise Refusal(f"--{name} {shown(value)}: {problem}.")
    if not args.audit:
        return None
    try:
        return AuditLog(args.audit, max_bytes=args.audit_max_mb << 20, keep=args.audit_keep)
    except ValueError as error:
        raise Refusal(f"{error}.") from error


def audit_entries(
    audit: Optional[AuditLog], args: argparse.Namespace, result: Dict[str, Any]
) -> Optional[Tuple[AuditLog, List[Dict[str, Any]]]]:
    """The audit records of a command's change: one for a yank or unyank, one per file for a removal."""
    if audit is None or not result.get("changed") or result.get("check"):
        return None
    common = {"account": args.account or who_ran(), "client": args.client, "project": result["project"]}
    common["version"] = result.get("version")
    if result["action"] != REMOVE_COMMAND:
        return audit, [dict(common, action=result["action"])]
    hashes = {item["name"]: item.get("sha256") for item in result.get("record_files", [])}
    records = [
        dict(common, action=REMOVE_COMMAND, filename=relfn, sha256=hashes.get(relfn), forget=[relfn])
        for relfn in result.get("files", [])
    ]
    return audit, records


def bring_pages_up_to_date(
    tree: "Tree",
    result: Dict[str, Any],
    check: bool,
    user: Optional[str],
    audit: Optional[Tuple[AuditLog, List[Dict[str, Any]]]] = None,
) -> int:
    """After a yank, unyank or removal: append its audit records and rewrite the pages (as user, when given) unless
    only checking, then print the result as one JSON line. Exit code 0, or 1 when the change is made but its audit
    record or its pages could not be written."""
    lost = False
    if not check:
        if user:
            drop_privileges(user)
        if audit is not None:
            log, records = audit
            for record in records:
                action = record.pop("action")
                if not log.record(action, **record):
                    lost = True
            if lost:
                print(
                    f"error: {result['message']}, but its audit record could not be written to {log.directory}"
                    " (see above); the change stands",
                    file=sys.stderr,
                )
        try:
            result["pages"] = tree.sync()
        except Exception as error:
            print(
                f"error: {result['message']}, but the pages could not be written ({error}); the next read or sync"
                " writes them",
                file=sys.stderr,
            )
            return 1
    result.pop("record_files", None)
    print(json.dumps(result, sort_keys=True))
    return 1 if lost else 0


# --- removal: files moved aside with a record, kept for a retention period -------------------------------------

# DIR/<UTC time>-<project>-<version>/ holds the removed files (their paths below the packages directory) and
# record.json: {"format": 1, "time": ..., "project": ..., "version": ..., "files": [{"name", "sha256", "size"}],
# "by": who ran it or null}.
REMOVE_COMMAND = "remove"
RECORD_FORMAT = 1
RECORD_FILE = "record.json"
MAX_RECORD_BYTES = 1 << 20
MAX_KEEP_DAYS = 36500
_REMOVED_ENTRY = re.compile(r"^([0-9]{8}T[0-9]{6}Z)-[A-Za-z0-9._+!~-]+$")
_NOT_IN_ENTRY_NAME = re.compile(r"[^A-Za-z0-9._+!~-]+")


def check_remove_arguments(project: str, version: Optional[str], filename: Optional[str], keep_days: int) -> None:
    """Refuse what could never be right (a path or NUL as the file name, a file of another project, a negative
    retention), before anything is read."""
    if version is None and filename is None:
        raise Refusal("name what to remove: --version or --file.")
    check_release_arguments(project, version)
    if filename is not None:
        if "/" in filename or "\x00" in filename or (os.altsep and os.altsep in filename):
            raise Refusal(f"--file {shown(filename)}: a file name, not a path (no '/', no NUL byte).")
        problem = text_problem(filename, 255) if filename else "empty"
        if problem:
            raise Refusal(f"--file {shown(filename)}: {problem}.")
        parsed = parse_filename(filename)
        if parsed is None:
            raise Refusal(f"--file {shown(filename)}: not the name of a distribution file the index lists.")
        if normalize(parsed[0]) != normalize(project):
            raise Refusal(f"--file {shown(filename)}: a file of {normalize(parsed[0])}, not of {normalize(project)}.")
        if version is not None and release_id(parsed[1]) != release_id(version):
            raise Refusal(f"--file {shown(filename)}: a file of version {parsed[1]}, not {version}.")
    if not 0 <= keep_days <= MAX_KEEP_DAYS:
        raise Refusal(f"--keep-days {keep_days}: 0 (keep forever) to {MAX_KEEP_DAYS} days.")


def open_removed_dir(removed: str, create: bool) -> Optional[int]:
    """A descriptor of the removed directory (created, mode 0700, when create and missing; None when missing and
    not create). Refusal when it is a link or not a directory: it is never followed."""
    for attempt in (1, 2):
        try:
            return os.open(removed, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create or attempt == 2:
                return None
            with contextlib.suppress(FileExistsError):
                os.mkdir(removed, 0o700)
        except OSError as error:
            if os.path.islink(removed):
                raise Refusal(f"--removed {removed}: a symbolic link (never followed); make it a directory.") from error
            if error.errno == errno.ENOTDIR:
                raise Refusal(f"--removed {removed}: not a directory.") from error
            raise
    return None


def read_record(directory: int, entry: str) -> Optional[Dict[str, Any]]:
    """The record of one entry of the removed directory (descriptor), or None when the entry or its record is a
    link, not there, too large or not a record."""
    try:
        entry_fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    except OSError:
        return None
    try:
        descriptor = os.open(RECORD_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=entry_fd)
        with os.fdopen(descriptor, "rb") as handle:
            if not S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None
            record = json.loads(handle.read(MAX_RECORD_BYTES + 1).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(entry_fd)
    fine = (
        isinstance(record, dict)
        and isinstance(record.get("project"), str)
        and isinstance(record.get("version"), str)
        and isinstance(record.get("files"), list)
        and all(isinstance(item, dict) and isinstance(item.get("name"), str) for item in record["files"])
    )
    return record if fine else None


def removed_before(directory: Optional[int], name: str, version: Optional[str], filename: Optional[str]) -> str:
    """The entry of the removed directory whose record shows this release (or file) of the project removed, or
    "" when there is none."""
    if directory is None:
        return ""
    for entry in sorted(os.listdir(directory), reverse=True):
        if not _REMOVED_ENTRY.match(entry):
            continue
        record = read_record(directory, entry)
        if record is None or record["project"] != name:
            continue
        if filename is not None:
            if filename in {item["name"].rsplit("/", 1)[-1] for item in record["files"]}:
                return entry
        elif version is not None and release_id(record["version"]) == release_id(version):
            return entry
    return ""


def hash_file(path: str) -> Dict[str, Any]:
    """sha256 and size of a regular file, read without following a link."""
    digest = hashlib.sha256()
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(descriptor, "rb") as handle:
        size = 0
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "size": size}


def who_ran() -> Optional[str]:
    """Who ran the command: the account sudo (Ansible's become) came from, else the one it runs as."""
    for variable in ("SUDO_USER", "DOAS_USER"):
        if os.environ.get(variable):
            return os.environ[variable]
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return None


def fsync_directory(path: str, directory: Optional[int] = None) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=directory)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def expired_entries(directory: Optional[int], keep_days: int, now: float) -> List[str]:
    """The entries of the removed directory older than keep_days (by the time their names start with; 0: none),
    real directories only: a link or anything else there is left alone."""
    if directory is None or keep_days == 0:
        return []
    expired = []
    for entry in sorted(os.listdir(directory)):
        match = _REMOVED_ENTRY.match(entry)
        if not match:
            continue
        try:
            when = calendar.timegm(time.strptime(match[1], "%Y%m%dT%H%M%SZ"))
            mode = os.stat(entry, dir_fd=directory, follow_symlinks=False).st_mode
        except (OSError, ValueError, OverflowError):
            continue
        if S_ISDIR(mode) and now - when > keep_days * 86400:
            expired.append(entry)
    return expired


def project_files(tree: Tree, name: str) -> Tuple[Dict[str, str], Dict[str, os.stat_result]]:
    """{relfn: version} of the normalised project's files in the packages directory (by their names; links and
    hidden files are never among them), and what the scan found."""
    _, found, _ = tree.scan()
    files: Dict[str, str] = {}
    for relfn in found:
        parsed = parse_filename(os.path.basename(relfn))
        if parsed is not None and normalize(parsed[0]) == name:
            files[relfn] = parsed[1]
    return files, found


def refuse_missing(
    tree: Tree, project: str, version: Optional[str], filename: Optional[str], files: Dict[str, str]
) -> None:
    """Refusal naming what is not there: the project, the file (with the project's files) or the version (with
    its versions)."""
    name = normalize(project)
    if not files:
        raise Refusal(f"--project {shown(project)}: the packages directory ({tree.packages}) has no file of {name}.")
    if filename is not None:
        have = sorted(os.path.basename(relfn) for relfn in files)
        listed = ", ".join(have[:10]) + (" ..." if len(have) > 10 else "")
        raise Refusal(f"--file {shown(filename)}: {name} has no file of this name (its files: {listed}).")
    versions = sorted(set(files.values()), key=version_key)
    listed = ", ".join(versions[-10:]) + (" ..." if len(versions) > 10 else "")
    raise Refusal(f"--version {shown(version or '')}: {name} has no file of this version (its versions: {listed}).")


def prune_removed(removed: str, expired: List[str], check: bool) -> List[str]:
    """Delete the expired entries (with check, none): the ones deleted (a failure is a warning)."""
    pruned = []
    for old in expired:
        if not check:
            try:
                shutil.rmtree(os.path.join(removed, old))  # never follows a link (avoids_symlink_attacks)
            except OSError as error:
                print(f"warning: {removed}/{old} could not be deleted: {error}", file=sys.stderr)
                continue
        pruned.append(old)
    return pruned


def remove_release(
    tree: Tree,
    removed: str,
    project: str,
    *,
    version: Optional[str],
    filename: Optional[str],
    keep_days: int,
    check: bool,
) -> Dict[str, Any]:
    """Move a release's files (or one file) of the packages directory into a new entry of the removed directory
    with their record, and delete the entries older than keep_days; with check only say what would change. The
    fields of the command's result line. Refusal, before any change, when the project has no such file (a release
    or file whose record is in the removed directory is "already removed": nothing to do), a value is unfit, or
    the removed directory is a link, not a directory or on another file system. The pages are the caller's."""
    check_remove_arguments(project, version, filename, keep_days)
    removed = os.path.abspath(removed)
    # One removal (or yank: the same lock) at a time: an flock on the data directory the removed one is in.
    with yank_file_lock(removed):
        return _remove_locked(
            tree, removed, project, version=version, filename=filename, keep_days=keep_days, check=check
        )


def _remove_locked(
    tree: Tree,
    removed: str,
    project: str,
    *,
    version: Optional[str],
    filename: Optional[str],
    keep_days: int,
    check: bool,
) -> Dict[str, Any]:
    name = normalize(project)
    directory = open_removed_dir(removed, create=False)
    try:
        files, found = project_files(tree, name)
        wanted = release_id(version) if version is not None else None
        chosen = sorted(
            relfn
            for relfn, found_version in files.items()
            if (os.path.basename(relfn) == filename if filename is not None else release_id(found_version) == wanted)
        )
        result: Dict[str, Any] = {"check": check, "action": REMOVE_COMMAND, "project": name, "keep_days": keep_days}
        result.update(version=files[chosen[0]] if chosen else version or "", files=chosen)
        if not chosen:
            earlier = removed_before(directory, name, version, filename)
            if not earlier:
                refuse_missing(tree, project, version, filename, files)
            result["already"] = os.path.join(removed, earlier)
        device = os.fstat(directory).st_dev if directory is not None else os.stat(os.path.dirname(removed)).st_dev
        elsewhere = [relfn for relfn in chosen if found[relfn].st_dev != device]
        if elsewhere:
            raise Refusal(
                f"--removed {removed}: on another file system than {elsewhere[0]} in the packages directory;"
                " files are moved aside by rename, which needs the same one."
            )
        now = time.time()
        expired = expired_entries(directory, keep_days, now)
        if chosen:
            entry = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}-{name}-"
            entry += _NOT_IN_ENTRY_NAME.sub("_", result["version"])
            if not check:
                if directory is None:  # made only now: a refusal leaves nothing behind
                    directory = open_removed_dir(removed, create=True)
                record = {
                    "format": RECORD_FORMAT,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                    "project": name,
                    "version": result["version"],
                    "by": who_ran(),
                }
                entry = move_aside(tree.packages, directory, entry, record=record, chosen=chosen)
                result["record_files"] = record["files"]  # their sha256, for the audit trail
            result["removed_to"] = os.path.join(removed, entry)
            kept = f"kept {keep_days} days" if keep_days else "kept until deleted by hand"
            moved = "would be moved" if check else "moved"
            parts = [
                f"{name} {result['version']}: {len(chosen)} file(s) {moved} off the index to {result['removed_to']}"
                f" ({kept}): {', '.join(os.path.basename(relfn) for relfn in chosen)}"
            ]
        else:
            parts = [f"{name} {filename or version} was already removed ({result['already']})"]
        pruned = prune_removed(removed, expired, check)
        if pruned:
            deleted = "would be deleted" if check else "deleted"
            parts.append(f"{len(pruned)} removal(s) older than {keep_days} days {deleted}: {', '.join(pruned)}")
        changed = bool(chosen or pruned)
        result.update(changed=changed, pruned=pruned, message="; ".join(parts) + ("" if changed else ": nothing to do"))
        return result
    finally:
        if directory is not None:
            os.close(directory)  # releases the lock


def move_aside(
    packages: str, directory: Optional[int], entry: str, *, record: Dict[str, Any], chosen: List[str]
) -> str:
    """Make the entry (another name when it exists), write its record with each file's sha256 and size
    (temporary name, then renamed), then rename each file into it: a crash leaves every file either in the
    packages directory or beside the record. The entry's name."""
    if directory is None:
        raise FileNotFoundError(errno.ENOENT, "the removed directory could not be made")
    for attempt in range(1, 100):
        candidate = entry if attempt == 1 else f"{entry}-{attempt}"
        try:
            os.mkdir(candidate, 0o700, dir_fd=directory)
        except FileExistsError:
            continue
        entry = candidate
        break
    else:
        raise FileExistsError(errno.EEXIST, "no free name for the removal", entry)
    entry_fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    try:
        record["files"] = [dict(name=relfn, **hash_file(os.path.join(packages, relfn))) for relfn in chosen]
        temporary = ".tmp-" + RECORD_FILE
        descriptor = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=entry_fd
        )
        with os.fdopen(descriptor, "wb") as out:
            out.write((json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
            out.flush()
            os.fsync(out.fileno())
        os.rename(temporary, RECORD_FILE, src_dir_fd=entry_fd, dst_dir_fd=entry_fd)
        sources = set()
        for relfn in chosen:
            parent = ""
            for part in relfn.split("/")[:-1]:  # a file in a subdirectory keeps its path below the entry
                parent = f"{parent}/{part}" if parent else part
                with contextlib.suppress(FileExistsError):
                    os.mkdir(parent, 0o700, dir_fd=entry_fd)
            os.rename(os.path.join(packages, relfn), relfn, dst_dir_fd=entry_fd)
            sources.add(os.path.dirname(os.path.join(packages, relfn)))
        os.fsync(entry_fd)
        for source in sorted(sources):
            fsync_directory(source)
        os.fsync(directory)
    finally:
        os.close(entry_fd)
    return entry


def remove_main(argv: List[str]) -> int:
    """remove: move a release's files (or one file) aside with their record, then bring the pages up to date (as
    --user) before returning."""
    parser = argparse.ArgumentParser(
        prog=f"{os.path.basename(sys.argv[0] or 'airgap_pypi_index.py')} {REMOVE_COMMAND}",
        description=(
            "Take a release's files (or one file) off the index: they are moved, with a record of their sha256,"
            " into a new directory of --removed, and kept there --keep-days days."
        ),
        epilog='Prints one JSON line ({"changed": ..., "message": ...}); exit code 2 when refused (nothing changed).',
    )
    parser.add_argument("--packages", required=True, help="the packages directory pypiserver serves")
    parser.add_argument("--tree", required=True, help="the generated tree (written only by this module)")
    parser.add_argument("--yanked", help="the yank file the pages follow (without it, they keep what they show)")
    parser.add_argument(
        "--removed", required=True, help="where removed files are kept (a directory on the packages' file system)"
    )
    parser.add_argument("--user", help="when run as root, write the pages as this user (the removal as root)")
    parser.add_argument("--project", required=True, help="the project's name (any spelling of it)")
    parser.add_argument("--version", help="remove every file of this version (PEP 440: 1.0 is 1.0.0)")
    parser.add_argument("--file", help="remove this one file (its name, which must be of --project)")
    parser.add_argument(
        "--keep-days", type=int, default=30, help="delete removals older than this many days (0: keep forever)"
    )
    parser.add_argument("--check", action="store_true", help="make every check and say what would change, only")
    add_audit_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        audit = audit_of(args)
        tree = Tree(args.packages, args.tree, yanked=args.yanked, uploads=audit.uploads_file if audit else None)
        result = remove_release(
            tree,
            args.removed,
            args.project,
            version=args.version,
            filename=args.file,
            keep_days=args.keep_days,
            check=args.check,
        )
    except Refusal as refusal:
        print(f"refused: {refusal} Nothing was changed.", file=sys.stderr)
        return 2
    except OSError as error:
        print(
            f"error: the removal stopped ({error}); every file is either still in {args.packages} or beside the"
            f" record in {args.removed}",
            file=sys.stderr,
        )
        return 1
    return bring_pages_up_to_date(tree, result, args.check, args.user, audit=audit_entries(audit, args, result))


# --- the carried-in mirror: its yank state and the record of its files ----------------------------------------

# mirror-input (on the controller) reads the mirror's SHA256SUMS and yanked.json ({file name: reason}, written by
# scripts/build_mirror.py from the public index's PEP 592 marks) and prints one checked document; mirror-state (on
# each index host) reads that document on stdin, adds the file names to the host's mirrored.json (every name a
# carried mirror ever listed: what prune may take off) and applies the yanks. A yank the mirror made is marked
# "origin": "mirror" in the yank file; one made by hand never is, and mirror-state never changes or removes it.
MIRROR_INPUT_COMMAND = "mirror-input"
MIRROR_STATE_COMMAND = "mirror-state"
MIRROR_ORIGIN = "mirror"
MIRRORED_FORMAT = 1
MAX_MIRROR_SUMS_BYTES = 16 << 20
MAX_MIRROR_YANKED_BYTES = 4 << 20
MAX_MIRROR_DOCUMENT_BYTES = 32 << 20
_MIRROR_SUMS_LINE = re.compile(r"^[0-9a-f]{64}  files/([^/]+)$")


def read_bounded_file(path: str, limit: int) -> Optional[bytes]:
    """The bytes of a regular file (None when there is none), at most limit, never through a link; Refusal
    naming the file otherwise."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise Refusal(f"{path}: cannot be opened ({error.strerror}; a link is never followed).") from error
    with os.fdopen(descriptor, "rb") as handle:
        if not S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise Refusal(f"{path}: not a regular file.")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise Refusal(f"{path}: larger than {limit >> 20} MiB.")
    return data


def mirror_document_problem(document: Any) -> Optional[str]:
    """What is wrong with a mirror document ({"files": [names], "yanked": {name: reason}}), naming the value."""
    if not isinstance(document, dict) or not isinstance(document.get("files"), list):
        return 'not {"files": [NAME, ...], "yanked": {NAME: REASON}}'
    names = set()
    for name in document["files"]:
        if not isinstance(name, str) or parse_filename(name) is None or "/" in name or name.startswith("."):
            return f"{shown(str(name))} is not a distribution file name"
        names.add(name)
    return mirror_yanked_problem(document.get("yanked"), names)


def mirror_yanked_problem(yanked: Any, names: Iterable[str]) -> Optional[str]:
    """What is wrong with the yanked.json of a mirror whose files are names, naming the value."""
    names = set(names)
    if not isinstance(yanked, dict):
        return "yanked.json is not an object of {file name: reason}"
    for name, reason in yanked.items():
        if name not in names:
            return f"yanked.json names {shown(name)}, a file the mirror does not carry (not in its SHA256SUMS)"
        if not isinstance(reason, str):
            return f"yanked.json: the reason of {shown(name)} is not a text"
        problem = text_problem(reason, MAX_REASON_CHARS)
        if problem:
            return f"yanked.json: the reason of {shown(name)} {shown(reason)}: {problem}"
    return None


def read_mirror_input(mirror: str) -> Dict[str, Any]:
    """The checked document of the mirror directory: the names its SHA256SUMS lists under files/, and its
    yanked.json ({} without one). Refusal naming the bad value."""
    sums = read_bounded_file(os.path.join(mirror, "SHA256SUMS"), MAX_MIRROR_SUMS_BYTES)
    if sums is None:
        raise Refusal(f"{mirror}/SHA256SUMS: missing.")
    try:
        lines = sums.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise Refusal(f"{mirror}/SHA256SUMS: not UTF-8.") from error
    files = sorted({m[1] for m in map(_MIRROR_SUMS_LINE.match, lines) if m})
    raw = read_bounded_file(os.path.join(mirror, "yanked.json"), MAX_MIRROR_YANKED_BYTES)
    try:
        yanked = {} if raw is None else json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise Refusal(f"{mirror}/yanked.json: not JSON ({str(error)[:200]}).") from error
    document = {"format": MIRRORED_FORMAT, "files": files, "yanked": yanked}
    problem = mirror_document_problem(document)
    if problem:
        raise Refusal(f"{mirror}: {problem}.")
    return document


def mirror_input_main(argv: List[str]) -> int:
    """mirror-input: check the mirror's yanked.json against its SHA256SUMS; print the document mirror-state
    reads."""
    parser = argparse.ArgumentParser(prog=f"airgap_pypi_index.py {MIRROR_INPUT_COMMAND}")
    parser.add_argument("--mirror", required=True, help="the carried mirror directory (SHA256SUMS, yanked.json)")
    args = parser.parse_args(argv[1:])
    try:
        document = read_mirror_input(args.mirror)
    except Refusal as refusal:
        print(f"refused: {refusal} Nothing was changed.")
        return 2
    print(json.dumps(document, sort_keys=True))
    return 0


def mirror_releases(names: Iterable[str]) -> Dict[Tuple[str, Any], Tuple[str, str]]:
    """{(project, release id): (project, version as in the file name)} of distribution file names."""
    releases: Dict[Tuple[str, Any], Tuple[str, str]] = {}
    for name in sorted(names):
        parsed = parse_filename(name)
        if parsed is not None:
            project = normalize(parsed[0])
            releases.setdefault((project, release_id(parsed[1])), (project, parsed[1]))
    return releases


def read_mirrored_file(path: str) -> List[str]:
    """The names in the host's mirrored.json ([] without one); Refusal when it cannot be used."""
    document = read_small_json(path, MAX_MIRROR_DOCUMENT_BYTES, Refusal)
    if document is None:
        return []
    files = document.get("files") if isinstance(document, dict) else None
    if (
        not isinstance(files, list)
        or document.get("format") != MIRRORED_FORMAT
        or not all(isinstance(name, str) for name in files)
    ):
        raise Refusal(f'{path}: not {{"format": {MIRRORED_FORMAT}, "files": [NAME, ...]}}; fix or remove it by hand.')
    return files


def plan_mirror_yanks(
    document: Dict[str, Any], releases: Dict[str, Dict[str, Dict[str, str]]], present: Dict[str, List[str]]
) -> List[Tuple[str, str, str, Optional[str]]]:
    """The changes that bring the yank file's releases in line with the mirror: (action, project, version,
    reason). A release yanked by hand (no "origin") is never touched; a mirror yank is taken off only when the
    mirror still carries the release and no longer marks it; a release not in the packages directory is left."""
    yanked = {}
    for name, reason in sorted(document["yanked"].items()):
        parsed = parse_filename(name)
        if parsed is not None:
            yanked.setdefault((normalize(parsed[0]), release_id(parsed[1])), reason)
    carried = mirror_releases(document["files"])
    changes: List[Tuple[str, str, str, Optional[str]]] = []
    for key, (project, _version) in sorted(carried.items(), key=lambda item: (item[0][0], version_key(item[1][1]))):
        entries = releases.get(project, {})
        entered = [found for found in entries if release_id(found) == key[1]]
        entry = entries[entered[0]] if entered else None
        if entry is not None and entry.get("origin") != MIRROR_ORIGIN:
            continue  # yanked by hand: the operator's
        if key in yanked:
            if entry is not None and entry["reason"] == yanked[key]:
                continue
            on_disk = [found for found in present.get(project, []) if release_id(found) == key[1]]
            if on_disk:
                changes.append(("yank", project, entered[0] if entered else on_disk[0], yanked[key]))
        elif entry is not None:
            changes.append(("unyank", project, entered[0], None))
    return changes


def files_by_project(tree: Tree, project: Optional[str]) -> Tuple[Dict[str, Dict[str, str]], Dict[str, os.stat_result]]:
    """{project: {relfn: version}} of the packages directory's distribution files (of project only, when given),
    and what the scan found."""
    files: Dict[str, Dict[str, str]] = {}
    _, found, _ = tree.scan()
    for relfn in found:
        parsed = parse_filename(os.path.basename(relfn))
        if parsed is not None and (project is None or normalize(parsed[0]) == normalize(project)):
            files.setdefault(normalize(parsed[0]), {})[relfn] = parsed[1]
    return files, found


def move_plan_aside(
    packages: str,
    directory: Optional[int],
    plan: Dict[str, List[Tuple[str, List[str]]]],
    *,
    keep: int,
    now: float,
    check: bool,
) -> List[Dict[str, Any]]:
    """Move each release of the plan into its own entry of the removed directory with its record (move_aside);
    with check, nothing. What was moved: [{"project", "version", "files": [{"name", "sha256", "size"}]}]."""
    moved: List[Dict[str, Any]] = []
    for name, releases in plan.items():
        for version, chosen in releases:
            entry = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}-{name}-{_NOT_IN_ENTRY_NAME.sub('_', version)}"
            record: Dict[str, Any] = {"format": RECORD_FORMAT, "project": name, "version": version}
            record.update(time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), by=who_ran())
            record["why"] = f"prune: beyond the {keep} newest mirrored releases"
            if not check:
                move_aside(packages, directory, entry, record=record, chosen=chosen)
            moved.append({"project": name, "version": version, "files": record.get("files", [])})
    return moved


def apply_mirror_state(
    tree: Tree, mirrored: str, document: Dict[str, Any], check: bool
) -> Tuple[Dict[str, Any], List[Tuple[str, str, str, Optional[str]]]]:
    """Record the mirror's file names in mirrored.json and apply its yanks to the yank file (with check, only
    say what would change): the command's result and the yank changes."""
    if tree.yanked is None:
        raise ValueError("apply_mirror_state needs a tree with a yank file")
    present = {project: list(found.values()) for project, found in files_by_project(tree, None)[0].items()}
    with yank_file_lock(tree.yanked):
        known = read_mirrored_file(mirrored)
        new_names = sorted(set(document["files"]) - set(known))
        try:
            yank_document = read_yank_file(tree.yanked)
        except YankFileError as error:
            raise Refusal(f"{error}: fix or remove it by hand.") from error
        changes = plan_mirror_yanks(document, yank_document["projects"], present)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for action, project, version, reason in changes:
            releases = yank_document["projects"].setdefault(project, {})
            if action == "yank":
                releases[version] = {"reason": reason or "", "when": when, "origin": MIRROR_ORIGIN}
            else:
                del releases[version]
                if not releases:
                    del yank_document["projects"][project]
        if not check:
            if new_names:
                data = {"format": MIRRORED_FORMAT, "files": sorted(set(known) | set(new_names))}
                write_atomic(mirrored, (json.dumps(data, indent=1) + "\n").encode(), durable=True)
            if changes:
                write_atomic(tree.yanked, (json.dumps(yank_document, indent=1, sort_keys=True) + "\n").encode(), True)
    result: Dict[str, Any] = {"changed": bool(changes or new_names), "check": check, "action": MIRROR_STATE_COMMAND}
    result.update(project=None, yanks=[list(change) for change in changes])
    result["message"] = mirror_state_message(changes, new_names, mirrored, check)
    return result, changes


def mirror_state_message(
    changes: List[Tuple[str, str, str, Optional[str]]], new_names: List[str], mirrored: str, check: bool
) -> str:
    would = "would be " if check else ""
    told = []
    for action, project, version, reason in changes:
        if action == "yank":
            told.append(f"{project} {version} {would}yanked by the mirror: {reason or '(no reason given)'}")
        else:
            told.append(f"{project} {version} {would}no longer yanked (the public index took the mark off)")
    if new_names:
        told.append(f"{len(new_names)} mirror file name(s) {would}recorded in {mirrored}")
    return "; ".join(told) if told else "the mirror's yanks are in place: nothing to do"


def read_mirror_document() -> Dict[str, Any]:
    """mirror-input's document on stdin (read within its bound), checked; Refusal when it is unfit."""
    raw = sys.stdin.buffer.read(MAX_MIRROR_DOCUMENT_BYTES + 1)
    if len(raw) > MAX_MIRROR_DOCUMENT_BYTES:
        raise Refusal(f"stdin: larger than {MAX_MIRROR_DOCUMENT_BYTES >> 20} MiB.")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise Refusal(f"stdin: not the JSON of mirror-input ({str(error)[:200]}).") from error
    problem = mirror_document_problem(document)
    if problem:
        raise Refusal(f"stdin: {problem}.")
    return document


def mirror_state_main(argv: List[str]) -> int:
    """mirror-state: the document of mirror-input on stdin; record the file names, apply the yanks, then bring the
    pages up to date (as --user) before returning."""
    parser = argparse.ArgumentParser(prog=f"airgap_pypi_index.py {MIRROR_STATE_COMMAND}")
    parser.add_argument("--packages", required=True, help="the packages directory pypiserver serves")
    parser.add_argument("--tree", required=True, help="the generated tree (written only by this module)")
    parser.add_argument("--yanked", required=True, help="the yank file (JSON), in the index's data directory")
    parser.add_argument("--mirrored", required=True, help="the record of mirror file names, beside the yank file")
    parser.add_argument("--user", help="when run as root, write the pages as this user (the state files as root)")
    parser.add_argument("--check", action="store_true", help="make every check and say what would change, only")
    parser.add_argument(
        "--stamp",
        help="once the state is applied, make this file (named after what was applied, as root) and "
        f"remove the other {MIRROR_STAMP_PREFIX}* files beside it: site.yml skips this command while it is there",
    )
    add_audit_arguments(parser)
    args = parser.parse_args(argv[1:])
    if args.stamp and not os.path.basename(args.stamp).startswith(MIRROR_STAMP_PREFIX):
        print(f"error: --stamp={args.stamp}: the name must start with {MIRROR_STAMP_PREFIX}", file=sys.stderr)
        return 2
    try:
        document = read_mirror_document()
        audit = audit_of(args)
        tree = Tree(args.packages, args.tree, yanked=args.yanked, uploads=audit.uploads_file if audit else None)
        result, changes = apply_mirror_state(tree, args.mirrored, document, args.check)
    except Refusal as refusal:
        print(f"refused: {refusal} Nothing was changed.", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: the mirror state could not be read or written: {error}", file=sys.stderr)
        return 1
    records = [
        {
            "action": action,
            "account": args.account or MIRROR_ORIGIN,
            "client": args.client,
            "project": project,
            "version": version,
        }
        for action, project, version, _reason in changes
    ]
    entries = (audit, records) if audit is not None and records and not args.check else None
    if args.stamp and not args.check:
        # Applied: a run again would change nothing (its records and pages follow, as the index user, below).
        try:
            write_mirror_stamp(args.stamp)
        except OSError as error:  # without its stamp the next run only checks and applies it again
            print(f"error: the stamp {args.stamp} could not be written: {error}", file=sys.stderr)
            return 1
    return bring_pages_up_to_date(tree, result, args.check, args.user, audit=entries)


# The stamp of the mirror state last applied: a file named after it (site.yml names it after the mirror's
# SHA256SUMS, which lists yanked.json, and the release), so the role's one pypi_common_files call tells by its
# existence whether this command has anything to do, at no extra round trip.
MIRROR_STAMP_PREFIX = ".mirror-applied-"


def write_mirror_stamp(path: str) -> None:
    """Make the stamp (temporary name, then rename; nothing followed) and remove the older ones beside it."""
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    os.close(descriptor)
    os.rename(temporary, os.path.join(directory, name))
    for other in os.listdir(directory):
        if other.startswith(MIRROR_STAMP_PREFIX) and other != name:
            os.unlink(os.path.join(directory, other))  # unlink never follows a link


# --- prune: mirrored releases beyond the N newest of each project, moved aside as remove does -----------------

# A file is mirrored when the host's mirrored.json lists its name (mirror-state adds every name of each carried
# mirror site.yml loads) and uploads.json has no record of it: an uploaded file is never pruned, nor one copied
# in by hand. Of each project, the releases with a mirrored file are ordered by version (PEP 440, as the pages
# order them); the keep newest stay, and the mirrored files of the others are moved aside with a record, one
# entry of the removed directory per release, exactly as remove moves them.
PRUNE_COMMAND = "prune"
MAX_PRUNE_KEEP = 10000


def plan_prune(
    files: Dict[str, Dict[str, str]],
    mirrored: Iterable[str],
    uploaded: Iterable[str],
    keep: int,
    current: Iterable[str] = (),
) -> Dict[str, List[Tuple[str, List[str]]]]:
    """{project: [(version, [relfn, ...]), ...]} to move aside: of files ({project: {relfn: version}}), the
    mirrored ones (named in mirrored, at the top of the packages directory, not uploaded) of each project's
    releases beyond its keep newest mirrored releases, oldest first. A file the current mirror carries stays:
    some platform's lock still needs it, and site.yml would copy it back."""
    mirrored_names = set(mirrored)
    uploaded_names = set(uploaded)
    plan: Dict[str, List[Tuple[str, List[str]]]] = {}
    for project, found in sorted(files.items()):
        releases: Dict[Any, List[str]] = {}
        versions: Dict[Any, str] = {}
        for relfn, version in found.items():
            if relfn in mirrored_names and relfn not in uploaded_names and "/" not in relfn:
                releases.setdefault(release_id(version), []).append(relfn)
                versions.setdefault(release_id(version), version)
        newest_first = sorted(releases, key=lambda key: version_key(versions[key]), reverse=True)
        still = set(current)
        beyond = [
            (versions[key], sorted(set(releases[key]) - still))
            for key in reversed(newest_first[keep:])
            if set(releases[key]) - still
        ]
        if beyond:
            plan[project] = beyond
    return plan


def prune_releases(
    tree: Tree,
    removed: str,
    mirrored: str,
    *,
    keep: int,
    project: Optional[str],
    keep_days: int,
    check: bool,
    current: Iterable[str] = (),
) -> Dict[str, Any]:
    """Move aside the mirrored releases beyond the keep newest of each project (or of project only), and delete
    removals older than keep_days; with check only say what would change. Refusal, before any change, for an unfit
    value, a project without files, or an unusable state file or removed directory."""
    if not 1 <= keep <= MAX_PRUNE_KEEP:
        raise Refusal(f"--keep {keep}: keep 1 to {MAX_PRUNE_KEEP} releases of each project.")
    if project is not None:
        check_release_arguments(project, None)
    if not 0 <= keep_days <= MAX_KEEP_DAYS:
        raise Refusal(f"--keep-days {keep_days}: 0 (keep forever) to {MAX_KEEP_DAYS} days.")
    removed = os.path.abspath(removed)
    files, found = files_by_project(tree, project)
    if project is not None and not files:
        raise Refusal(f"--project {shown(project)}: the packages directory ({tree.packages}) has no file of it.")
    try:
        uploaded = read_uploads_file(tree.uploads) if tree.uploads else {}
    except AuditError as error:
        raise Refusal(f"{error}.") from error
    with yank_file_lock(removed):
        names = read_mirrored_file(mirrored)
        plan = plan_prune(files, names, uploaded, keep, current)
        directory = open_removed_dir(removed, create=False)
        try:
            device = os.fstat(directory).st_dev if directory is not None else os.stat(os.path.dirname(removed)).st_dev
            elsewhere = [
                f for releases in plan.values() for _, chosen in releases for f in chosen if found[f].st_dev != device
            ]
            if elsewhere:
                raise Refusal(
                    f"--removed {removed}: on another file system than {elsewhere[0]}; files are moved by rename."
                )
            now = time.time()
            expired = expired_entries(directory, keep_days, now)
            if plan and not check and directory is None:  # made only now: a refusal leaves nothing behind
                directory = open_removed_dir(removed, create=True)
            moved = move_plan_aside(tree.packages, directory, plan, keep=keep, now=now, check=check)
            parts = []
            for name, releases in plan.items():
                done = "would be moved off the index" if check else "moved off the index"
                listed = ", ".join(f"{version} ({len(chosen)} file(s))" for version, chosen in releases)
                parts.append(f"{name}: {len(releases)} mirrored release(s) {done}: {listed}")
            pruned = prune_removed(removed, expired, check)
        finally:
            if directory is not None:
                os.close(directory)
    if plan:
        kept = f"kept {keep_days} days" if keep_days else "kept until deleted by hand"
        parts.append(f"{'to be ' if check else ''}kept aside in {removed} ({kept})")
    if pruned:
        deleted = "would be deleted" if check else "deleted"
        parts.append(f"{len(pruned)} removal(s) older than {keep_days} days {deleted}: {', '.join(pruned)}")
    changed = bool(plan or pruned)
    result: Dict[str, Any] = {"changed": changed, "check": check, "action": PRUNE_COMMAND, "project": project}
    result.update(keep=keep, releases={name: [v for v, _ in rel] for name, rel in plan.items()}, moved=moved)
    result["message"] = (
        "; ".join(parts) if changed else f"no project has more than {keep} mirrored release(s): nothing to do"
    )
    return result


def prune_main(argv: List[str]) -> int:
    """prune: move mirrored releases beyond the --keep newest of each project aside, then bring the pages up to
    date (as --user) before returning."""
    parser = argparse.ArgumentParser(
        prog=f"airgap_pypi_index.py {PRUNE_COMMAND}",
        description="Take mirrored releases beyond the --keep newest of each project off the index (as remove does).",
        epilog='Prints one JSON line ({"changed": ..., "message": ...}); exit code 2 when refused (nothing changed).',
    )
    parser.add_argument("--packages", required=True, help="the packages directory pypiserver serves")
    parser.add_argument("--tree", required=True, help="the generated tree (written only by this module)")
    parser.add_argument("--yanked", help="the yank file the pages follow")
    parser.add_argument("--removed", required=True, help="where removed files are kept (same file system)")
    parser.add_argument("--mirrored", required=True, help="the record of mirror file names (mirror-state writes it)")
    parser.add_argument("--user", help="when run as root, write the pages as this user (the removal as root)")
    parser.add_argument("--keep", type=int, required=True, help="mirrored releases kept of each project (newest)")
    parser.add_argument(
        "--current", action="store_true", help="read mirror-input's document on stdin: files it lists are kept"
    )
    parser.add_argument("--project", help="prune this project only (any spelling of its name)")
    parser.add_argument("--keep-days", type=int, default=30, help="delete removals older than this (0: never)")
    parser.add_argument("--check", action="store_true", help="make every check and say what would change, only")
    add_audit_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        audit = audit_of(args)
        tree = Tree(args.packages, args.tree, yanked=args.yanked, uploads=audit.uploads_file if audit else None)
        current = read_mirror_document()["files"] if args.current else []
        result = prune_releases(
            tree,
            args.removed,
            args.mirrored,
            keep=args.keep,
            project=args.project,
            keep_days=args.keep_days,
            check=args.check,
            current=current,
        )
    except Refusal as refusal:
        print(f"refused: {refusal} Nothing was changed.", file=sys.stderr)
        return 2
    except OSError as error:
        print(
            f"error: the prune stopped ({error}); every file is either still in {args.packages} or beside its"
            f" record in {args.removed}",
            file=sys.stderr,
        )
        return 1
    moved = result.pop("moved")
    entries = None
    if audit is not None and not args.check and moved:
        common = {"account": args.account or who_ran(), "client": args.client}
        records = [
            dict(
                common,
                action=REMOVE_COMMAND,
                project=item["project"],
                version=item["version"],
                filename=one["name"],
                sha256=one["sha256"],
            )
            for item in moved
            for one in item["files"]
        ]
        entries = (audit, records)
    return bring_pages_up_to_date(tree, result, args.check, args.user, audit=entries)


# --- account changes: recorded in the audit trail after Ansible set the password file -----------------------------

STORE_SECONDS = 1.0  # the renderer stores what it made (and rewrites pages, state.json) at most this often


@contextlib.contextmanager
def renderer_turn(tree: Tree, wait: bool) -> Iterator[bool]:
    """One renderer at work per tree, at most one waiting: yields True once this one may render (the queue is read
    after that, so nothing queued before this call is missed), False at once when another already waits and wait
    is false (that one will read the queue after this caller's sync wrote it)."""
    os.makedirs(tree.tree, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    waiting = os.open(tree.path(RENDER_WAIT_LOCK), flags, 0o644)
    try:
        try:
            fcntl.flock(waiting, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        running = os.open(tree.path(RENDER_RUN_LOCK), flags, 0o644)
        try:
            fcntl.flock(running, fcntl.LOCK_EX)
            fcntl.flock(waiting, fcntl.LOCK_UN)
            yield True
        finally:
            os.close(running)
    finally:
        os.close(waiting)


def queued_description(tree: Tree, relfn: str) -> Tuple[str, Optional[str]]:
    """The description and its content type of a queued file (its metadata read with the usual bounds)."""
    try:
        fields = parse_metadata(read_core_metadata(os.path.join(tree.packages, relfn))[0])
    except (OSError, BadDistribution):
        return "", None
    return fields.get("description", ""), fields.get("description-content-type")


def render_queue(tree: Tree, limits: RenderLimits) -> int:
    """Render the tree's queued descriptions in order, each in a child under limits, until the queue is empty
    (work queued meanwhile included); the number stored. Call it holding renderer_turn. When readme_renderer
    cannot be imported, that install is marked (RENDERER_BROKEN) and every page is written again as plain text."""
    stored = 0
    while True:
        state = tree.load_state()
        queue = list(state.get("pending", [])) if state else []
        if not queue:
            return stored
        if description_renderers() is None:
            write_atomic(tree.path(RENDERER_BROKEN), json.dumps({"origin": renderer_origin()}).encode())
            tree.sync(rebuild=True)
            return stored
        done: List[Tuple[str, Entry, str]] = []
        last = time.monotonic()
        for relfn in queue:
            entry = state["files"].get(relfn) if state else None
            if entry is not None:
                text, kind = queued_description(tree, relfn)
                done.append((relfn, entry, render_in_child(text, kind, limits)))
            if time.monotonic() - last >= STORE_SECONDS:
                tree.store_renderings(done)
                stored, done, last = stored + len(done), [], time.monotonic()
        tree.store_renderings(done)  # also takes the files gone off the queue
        stored += len(done)


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = RenderLimits()
    parser.add_argument("--cpu-seconds", type=int, default=defaults.cpu_seconds, help="CPU seconds per rendering")
    parser.add_argument("--memory-mb", type=int, default=defaults.memory_mb, help="address space per rendering (MiB)")
    parser.add_argument("--wall-seconds", type=int, default=defaults.wall_seconds, help="seconds per rendering")


def limits_of(args: argparse.Namespace) -> RenderLimits:
    for name in ("cpu_seconds", "memory_mb", "wall_seconds"):
        if not 1 <= getattr(args, name) <= 1 << 20:
            raise SystemExit(f"--{name.replace('_', '-')} must be between 1 and {1 << 20}")
    return RenderLimits(args.cpu_seconds, args.memory_mb, args.wall_seconds)


def render_main(argv: List[str]) -> int:
    """render: the tree's queued descriptions, one at a time per tree (started by the index after a sync)."""
    parser = argparse.ArgumentParser(
        prog=f"{os.path.basename(sys.argv[0] or 'airgap_pypi_index.py')} {RENDER_COMMAND}",
        description="Render the queued descriptions of the tree, each in a child process under hard limits.",
    )
    parser.add_argument("--packages", required=True, help="the packages directory pypiserver serves")
    parser.add_argument("--tree", required=True, help="the generated tree (written only by this module)")
    parser.add_argument("--wait", action="store_true", help="wait for a turn even when another renderer waits")
    parser.add_argument("--user", help="when run as root, write as this user")
    add_limit_arguments(parser)
    args = parser.parse_args(argv[1:])
    limits = limits_of(args)
    if args.user:
        drop_privileges(args.user)
    tree = Tree(args.packages, args.tree)
    with renderer_turn(tree, wait=args.wait) as turn:
        stored = render_queue(tree, limits) if turn else 0
    print(json.dumps({"rendered": stored, "turn": turn}, sort_keys=True))
    return 0


def background_priority() -> None:
    """Lower this process's priority by BACKGROUND_NICENESS (a command the index starts after a response)."""
    with contextlib.suppress(OSError):
        os.nice(BACKGROUND_NICENESS)


def lists_main(argv: List[str]) -> int:
    """lists: the lists an upload's sync left to after its response (started by the index's worker)."""
    parser = argparse.ArgumentParser(
        prog=f"{os.path.basename(sys.argv[0] or 'airgap_pypi_index.py')} {LISTS_COMMAND}",
        description="Write the lists naming every project (the simple index, the front page, its search index) "
        "when an upload's sync left them to be written; nothing otherwise.",
        epilog="Exit code 1 when they could not be written (the next sync writes them).",
    )
    parser.add_argument("--packages", required=True, help="the packages directory pypiserver serves")
    parser.add_argument("--tree", required=True, help="the generated tree (written only by this module)")
    args = parser.parse_args(argv[1:])
    background_priority()
    tree = Tree(args.packages, args.tree)
    try:
        descriptor = tree.open_lists_lock()
    except OSError as error:  # a link in its place is never followed
        print(f"lists: {tree.path(LISTS_RUN_LOCK)}: {error}; the next sync writes the lists", file=sys.stderr)
        return 1
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # one at a time per tree: a read that finds it held starts none
        return 0 if tree.flush_lists() else 1
    finally:
        os.close(descriptor)


ACCOUNTS_COMMAND = "accounts"
ACCOUNT_ACTIONS = {"added": "account-add", "changed": "account-change", "removed": "account-remove"}


def accounts_main(argv: List[str]) -> int:
    """accounts: one audit record per upload account Ansible added, changed or removed (never a password)."""
    parser = argparse.ArgumentParser(
        prog=f"{os.path.basename(sys.argv[0] or 'airgap_pypi_index.py')} {ACCOUNTS_COMMAND}",
        description="Record changes of the upload accounts (made by the pypi_server role) in the audit trail.",
        epilog='Prints one JSON line ({"recorded": N}); exit code 2 when refused, 1 when a record was lost.',
    )
    for kind, action in ACCOUNT_ACTIONS.items():
        parser.add_argument(f"--{kind}", action="append", default=[], metavar="NAME", help=f"an account: {action}")
    parser.add_argument("--user", help="when run as root, write as this user")
    add_audit_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        audit = audit_of(args)
        if audit is None:
            raise Refusal("--audit is required: the audit trail's directory.")
        for kind in ACCOUNT_ACTIONS:
            for name in getattr(args, kind):
                if len(name) > MAX_ACCOUNT_CHARS or not _ACCOUNT_NAME.match(name):
                    raise Refusal(f"--{kind} {shown(name)}: not an upload account's name.")
    except Refusal as refusal:
        print(f"refused: {refusal} Nothing was recorded.", file=sys.stderr)
        return 2
    by = args.account or who_ran()  # before dropping privileges: who ran this, not the index user
    if args.user:
        drop_privileges(args.user)
    recorded = lost = 0
    for kind, action in ACCOUNT_ACTIONS.items():
        for name in getattr(args, kind):
            if audit.record(action, account=by, client=args.client, subject=name):
                recorded += 1
            else:
                lost += 1
    print(json.dumps({"recorded": recorded, "lost": lost}, sort_keys=True))
    return 1 if lost else 0


OWNERS_COMMAND = "owners"
OWNER_ACTIONS = {"added": "owner-add", "removed": "owner-remove"}


def owner_change(kind: str, value: str) -> Tuple[str, str]:
    """(normalised project, account) of a --added/--removed PROJECT:ACCOUNT; Refusal when it is not one."""
    project, _, account = value.partition(":")
    if len(project) > MAX_PROJECT_CHARS or not _PROJECT_NAME.fullmatch(project):  # fullmatch: no "\n" after it
        raise Refusal(f"--{kind} {shown(value)}: not PROJECT:ACCOUNT (a project name first).")
    if len(account) > MAX_ACCOUNT_CHARS or not _ACCOUNT_NAME.fullmatch(account):
        raise Refusal(f"--{kind} {shown(value)}: not PROJECT:ACCOUNT (an upload account's name after the colon).")
    return normalize(project), account


def owners_main(argv: List[str]) -> int:
    """owners: one audit record per project and account the inventory's owner map gained or lost."""
    parser = argparse.ArgumentParser(
        prog=f"{os.path.basename(sys.argv[0] or 'airgap_pypi_index.py')} {OWNERS_COMMAND}",
        description="Record changes of the owner map (made by the pypi_server role) in the audit trail.",
        epilog='Prints one JSON line ({"recorded": N, "lost": N}); exit code 2 when refused, 1 when a record was lost.',
    )
    for kind, action in OWNER_ACTIONS.items():
        parser.add_argument(f"--{kind}", action="append", default=[], metavar="PROJECT:ACCOUNT", help=action)
    parser.add_argument("--user", help="when run as root, write as this user")
    add_audit_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        audit = audit_of(args)
        if audit is None:
            raise Refusal("--audit is required: the audit trail's directory.")
        changes = [
            (action, *owner_change(kind, value))
            for kind, action in OWNER_ACTIONS.items()
            for value in getattr(args, kind)
        ]
    except Refusal as refusal:
        print(f"refused: {refusal} Nothing was recorded.", file=sys.stderr)
        return 2
    by = args.account or who_ran()  # before dropping privileges: who ran this, not the index user
    if args.user:
        drop_privileges(args.user)
    recorded = sum(
        audit.record(action, account=by, client=args.client, project=project, subject=account)
        for action, project, account in changes
    )
    lost = len(changes) - recorded
    print(json.dumps({"recorded": recorded, "lost": lost}, sort_keys=True))
    return 1 if lost else 0


def main(argv: Optional[List[str]] = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    log_progress()
    commands: Dict[str, Callable[[List[str]], int]] = {
        ACCOUNTS_COMMAND: accounts_main,
        OWNERS_COMMAND: owners_main,
        RENDER_COMMAND: render_main,
        LISTS_COMMAND: lists_main,
        REMOVE_COMMAND: remove_main,
        MIRROR_INPUT_COMMAND: mirror_input_main,
        MIRROR_STATE_COMMAND: mirror_state_main,
        PRUNE_COMMAND: prune_main,
        **dict.fromkeys(YANK_COMMANDS, yank_main),
    }
    if arguments and arguments[0] in commands:
        return commands[arguments[0]](arguments)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Commands: yank, unyank (PEP 592), remove, accounts, owners, render, lists; for the carried mirror:"
            " mirror-input, mirror-state, prune. See `%(prog)s COMMAND --help`."
        ),
    )
    parser.add_argument("--packages", required=True, help="the packages directory pypiserver serves")
    parser.add_argument("--tree", required=True, help="the generated tree (written only by this module)")
    parser.add_argument("--yanked", help="the yank file the pages follow (without it, they keep what they show)")
    parser.add_argument("--audit", help="the audit trail's directory: its uploads.json gives the upload times")
    parser.add_argument("--owner-map", help="the inventory's owner map as the role writes it (the pages show it)")
    parser.add_argument("--owner-claims", help="the owners file of first uploads' claims (the pages show them)")
    parser.add_argument("--rebuild", action="store_true", help="rewrite every page (hashes stay cached)")
    parser.add_argument("--user", help="when run as root, write as this user")
    parser.add_argument("--no-render", action="store_true", help="leave queued descriptions to the index's renderer")
    add_limit_arguments(parser)
    args = parser.parse_args(arguments)
    limits = limits_of(args)
    if args.user:
        drop_privileges(args.user)
    uploads = os.path.join(args.audit, UPLOADS_FILE) if args.audit else None
    tree = Tree(
        args.packages,
        args.tree,
        yanked=args.yanked,
        uploads=uploads,
        owner_map=args.owner_map,
        owner_claims=args.owner_claims,
    )
    started = time.monotonic()
    changed = tree.sync(rebuild=args.rebuild)
    files = len((tree.load_state() or {}).get("files", {}))
    print(
        f"changed: {len(changed)} project(s); {files} file(s) indexed in {time.monotonic() - started:.2f} s"
        + (f" ({', '.join(changed[:10])}{' ...' if len(changed) > 10 else ''})" if changed else "")
    )
    if not args.no_render:  # a carried-in mirror's descriptions, in a batch through the same bounded children
        started = time.monotonic()
        with renderer_turn(tree, wait=True):
            stored = render_queue(tree, limits)
        if stored:
            print(f"rendered: {stored} description(s) in {time.monotonic() - started:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
