#!/usr/bin/env python3
"""Build the carried-in mirror: the libraries the private side asked for, for every client platform.

Inputs, in ``offline_artifacts/mirror/``: ``requirements.in`` (the libraries, with pins or ranges)
and ``platforms.txt`` (one ``<CPython version> <uv platform triple>`` a line, e.g.
``3.12 aarch64-manylinux_2_28``). For each platform, ``uv pip compile`` resolves the libraries and
all their dependencies for that platform (markers evaluated for it, wheels only) into a hash lock
``locks/cp3XX-<triple>.txt``; pip downloads exactly the locked wheels into ``files/`` (shared by
all platforms: a file is stored once) and ``SHA256SUMS`` lists files and locks.

Where a package (listed or a dependency) has no wheel for a platform but an sdist, that platform
is resolved again with ``--no-binary NAME`` for just those packages: the sdist is carried
(hash-checked against the lock) together with the build requirements it declares
(``[build-system] requires`` of its pyproject.toml, PEP 518's ``setuptools>=40.8.0`` and ``wheel``
without one), themselves hash-locked as wheels for that platform in ``locks/<label>-build.txt``.
After the download, the public index's yank marks (PEP 592) of the carried files are read from the index pip
downloads from, one simple-API page a project (PEP 691 JSON, or data-yanked in HTML), and written to
``yanked.json`` ({file name: reason}, listed in SHA256SUMS): site.yml yanks those releases in the private index.
A requirement with neither (it does not exist, no release satisfies it there, no wheel and no
sdist) is reported in a table and fails the build unless allowed with
``--allow-missing NAME@PLATFORM`` (or ``NAME`` for every platform).
This machine's pip/uv configuration is ignored. The pypi_server role loads ``files/`` into the index.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import json
import re
import sys
import tarfile
import tempfile
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags, mac_platforms
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)

if __package__:  # imported: from scripts import build_mirror
    from . import build_bundle as bb
else:  # run as a file, python scripts/build_mirror.py: python puts its folder, scripts/, first on sys.path
    import build_bundle as bb

ROOT = Path(__file__).resolve().parent.parent

BuildError = bb.BuildError

DEFAULT_ROOT = ROOT / "offline_artifacts" / "mirror"
UV_OPTIONS: tuple[str, ...] = (
    "--no-config",
    "--no-python-downloads",
    "--only-binary",
    ":all:",
    "--generate-hashes",
    "--no-header",
)
MACOS_VERSION = (13, 0)  # uv's default deployment target for the darwin triples
FINGERPRINT_FORMAT = 1
ARCHES = {"x86_64": "x86_64", "aarch64": "aarch64"}
MANYLINUX_FLOOR = {"x86_64": 5, "aarch64": 17}
MANYLINUX_LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
WINDOWS = {
    "x86_64-pc-windows-msvc": "win_amd64",
    "aarch64-pc-windows-msvc": "win_arm64",
    "i686-pc-windows-msvc": "win32",
}
DARWIN = {"aarch64-apple-darwin": "arm64", "x86_64-apple-darwin": "x86_64"}
LOCK_NAME_RE = re.compile(r"cp3(\d+)-(.+?)(?:-build)?\.txt")
SDISTS_PREFIX = "# airgap-pypi-sdists: "
PEP518_DEFAULT: tuple[str, ...] = ("setuptools>=40.8.0", "wheel")  # no pyproject.toml / no [build-system]
NO_WHEEL_RE = re.compile(
    r"(?:all versions of )?([A-Za-z0-9][\w.-]*?)(?:[=<>!~]=\S+)? ha(?:s|ve) no (?:usable wheels|wheels with a matching)"
)


@dataclass(frozen=True, order=True)
class Platform(bb.Target):
    """A client platform: the bundle's CPython target (version, tag) on one OS/architecture."""

    triple: str  # a uv --python-platform value

    @property
    def label(self) -> str:
        return f"{self.tag}-{self.triple}"

    def pip_platforms(self) -> list[str]:
        """The wheel platform tags a client of this platform installs (pip does not widen them itself)."""
        manylinux = re.fullmatch(r"(x86_64|aarch64)-manylinux(?:_2_(\d+)|(2014))", self.triple)
        if manylinux:
            arch = manylinux.group(1)
            glibc = int(manylinux.group(2) or 17)
            tags = [f"manylinux_2_{m}_{arch}" for m in range(glibc, MANYLINUX_FLOOR[arch] - 1, -1)]
            tags += [
                f"{legacy}_{arch}" for m, legacy in MANYLINUX_LEGACY.items() if MANYLINUX_FLOOR[arch] <= m <= glibc
            ]
            return tags
        musl = re.fullmatch(r"(x86_64|aarch64)-unknown-linux-musl", self.triple)
        if musl:
            return [f"musllinux_1_2_{musl.group(1)}", f"musllinux_1_1_{musl.group(1)}"]
        if self.triple in WINDOWS:
            return [WINDOWS[self.triple]]
        if self.triple in DARWIN:
            return list(mac_platforms(MACOS_VERSION, DARWIN[self.triple]))
        raise ValueError(
            f"platform {self.triple!r} is not supported here; use one of ARCH-manylinux_2_NN, ARCH-manylinux2014, "
            f"ARCH-unknown-linux-musl (ARCH x86_64 or aarch64), {', '.join([*WINDOWS, *DARWIN])}"
        )

    def tags(self) -> frozenset[Tag]:
        py = (3, self.minor)
        platforms = [*self.pip_platforms(), "any"]
        return frozenset(
            [*cpython_tags(py, abis=[self.tag], platforms=platforms), *compatible_tags(py, self.tag, platforms)]
        )


@dataclass(frozen=True)
class Entry:
    """One lock of a platform: its runtime lock, or the build requirements of its sdists."""

    platform: Platform
    path: Path
    pins: tuple[bb.Pin, ...]
    sdists: frozenset[str]  # canonical names of the pins carried as sdists


@dataclass(frozen=True)
class Missing:
    package: str
    platform: str
    why: str
    allowed: bool


# --------------------------------------------------------------------------- inputs


def parse_platforms(text: str) -> list[Platform]:
    """`<3.X> <triple>` lines (comments and blank lines ignored); every platform checked."""
    found: list[Platform] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"3\.(\d+)\s+(\S+)", line)
        if match is None:
            raise BuildError(f"platforms.txt:{number}: {raw.strip()!r} is not '<3.X> <uv platform triple>'")
        platform = Platform(int(match.group(1)), match.group(2))
        if not 8 <= platform.minor <= 14:
            raise BuildError(f"platforms.txt:{number}: CPython {platform.version} is not a target (3.8-3.14)")
        try:
            platform.pip_platforms()
        except ValueError as exc:
            raise BuildError(f"platforms.txt:{number}: {exc}") from exc
        found.append(platform)
    if not found:
        raise BuildError("platforms.txt lists no platform")
    return sorted(set(found))


def parse_requirements(text: str) -> list[tuple[str, Requirement]]:
    """(line, requirement) of each requirement line; options (-r, --index-url ...) are refused."""
    found: list[tuple[str, Requirement]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            found.append((line, Requirement(line)))
        except InvalidRequirement as exc:
            raise BuildError(f"requirements.in:{number}: {line!r} is not a requirement: {exc}") from exc
    if not found:
        raise BuildError("requirements.in lists no library")
    return found


def parse_allowed(values: Iterable[str]) -> set[tuple[str, str]]:
    """--allow-missing NAME[@LABEL] -> {(canonical name, label or '*')}."""
    allowed = set()
    for value in values:
        name, _, label = value.partition("@")
        allowed.add((canonicalize_name(name), label or "*"))
    return allowed


def is_allowed(allowed: set[tuple[str, str]], package: str, platform: Platform) -> bool:
    name = canonicalize_name(package)
    return (name, "*") in allowed or (name, platform.label) in allowed


# --------------------------------------------------------------------------- resolution


def fingerprint(in_text: str, platform: Platform, dropped: Sequence[str]) -> str:
    payload = {"format": FINGERPRINT_FORMAT, "in": in_text, "platform": platform.label, "uv": list(UV_OPTIONS)}
    payload["dropped"] = sorted(dropped)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def why_unsatisfiable(output: str) -> str:
    """uv's explanation, one line: the `cause:` (or `Because ...`) sentence, else its last error line."""
    lines = [line.strip(" \u2502\u2570\u2500\u25b6\u00d7") for line in output.splitlines()]  # uv's tree marks
    for line in lines:
        if line.startswith("cause: "):
            return line.removeprefix("cause: ")
    for line in lines:
        if line.startswith("Because "):
            return line
    errors = [line for line in lines if line]
    return errors[-1] if errors else "resolution failed"


def culprits(reason: str, requirements: Sequence[tuple[str, Requirement]]) -> list[str]:
    """The listed requirements uv's explanation names (by project name)."""
    names = []
    for _line, req in requirements:
        pattern = re.escape(canonicalize_name(req.name)).replace("\\-", "[-_.]")
        if re.search(rf"(?<![\w.-]){pattern}(?![\w-])", reason, re.IGNORECASE):
            names.append(req.name)
    return names


def no_wheel_names(reason: str) -> set[str]:
    """Canonical names of the packages uv's explanation says have no wheel for the platform."""
    return {canonicalize_name(name) for name in NO_WHEEL_RE.findall(reason)}


def short_why(reason: str) -> str:
    if "not found in the package registry" in reason:
        return "does not exist on the index"
    if "no source distribution" in reason:
        return f"neither a wheel for this platform nor an sdist ({reason})"
    if "no usable wheels" in reason or "no wheels with a matching" in reason:
        return f"no wheel for this platform ({reason})"
    return reason


def read_sdists(path: Path) -> frozenset[str]:
    """The packages a lock carries as sdists (its `# airgap-pypi-sdists:` header line)."""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith(SDISTS_PREFIX):
            return frozenset(line.removeprefix(SDISTS_PREFIX).split())
    return frozenset()


def compile_lock(  # noqa: PLR0917
    uv: str, in_file: Path, platform: Platform, out: Path, upgrade: bool, sdists: Iterable[str] = ()
) -> str | None:
    """Resolve `in_file` for `platform` into `out` (wheels only but for `sdists`); uv's reason when it cannot."""
    with tempfile.TemporaryDirectory(prefix="airgap-mirror-") as tmp:
        body = Path(tmp) / "lock.txt"
        if out.exists() and not upgrade:
            body.write_text(out.read_text())
        cmd = [uv, "pip", "compile", "--quiet", *UV_OPTIONS, "--python-version", platform.version]
        cmd += ["--python-platform", platform.triple, *(["--upgrade"] if upgrade else [])]
        cmd += [arg for name in sorted(sdists) for arg in ("--no-binary", name)]
        cmd += [in_file.name, "--output-file", str(body)]
        try:
            bb.run(cmd, cwd=in_file.parent)
        except BuildError as exc:
            return why_unsatisfiable(str(exc))
        text = body.read_text()
    bb.parse_pins(text)
    out.write_text(text)
    return None


def resolve_platform(  # noqa: PLR0917
    uv: str,
    root: Path,
    platform: Platform,
    requirements: Sequence[tuple[str, Requirement]],
    allowed: set[tuple[str, str]],
    upgrade: bool,
) -> tuple[Path | None, list[Missing]]:
    """The lock of `platform` (None when it cannot be had) and the requirements it lacks."""
    locks = root / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    out = locks / f"{platform.label}.txt"
    missing: list[Missing] = []
    todo = list(requirements)
    sdists: set[str] = set()
    while todo:
        dropped = sorted({r.name for _l, r in requirements} - {r.name for _l, r in todo})
        in_text = "".join(f"{line}\n" for line, _r in todo)
        digest = fingerprint(in_text, platform, dropped)
        if not upgrade and bb.read_fingerprint(out) == digest:
            return out, missing
        reason = compile_into(uv, out, in_text, platform, digest, upgrade, sdists)
        if reason is None:
            return out, missing
        wheel_less = no_wheel_names(reason) - sdists
        if wheel_less:  # try those packages' sdists
            sdists |= wheel_less
            continue
        names = culprits(reason, todo)
        if not names:  # a transitive dependency: nothing to leave out
            missing.append(Missing("(dependencies)", platform.label, short_why(reason), False))
            return None, missing
        for name in names:
            missing.append(Missing(name, platform.label, short_why(reason), is_allowed(allowed, name, platform)))
        if not all(is_allowed(allowed, name, platform) for name in names):
            return None, missing
        todo = [(line, r) for line, r in todo if r.name not in names]
    return None, missing


def lock_header(label: str, digest: str, sdists: Iterable[str], what: str = "lock") -> str:
    carried = sorted(sdists)
    but = " but the sdists named below" if carried else ""
    header = f"# airgap-pypi mirror {what} for {label}, wheels only{but}. Generated by scripts/build_mirror.py.\n"
    header += f"{bb.FINGERPRINT_PREFIX}{digest}\n"
    return header + (f"{SDISTS_PREFIX}{' '.join(carried)}\n" if carried else "")


def compile_into(  # noqa: PLR0917
    uv: str, out: Path, in_text: str, platform: Platform, digest: str, upgrade: bool, sdists: Iterable[str] = ()
) -> str | None:
    """Resolve `in_text` for `platform` into lock `out` (with its header); uv's reason when it cannot."""
    sdists = sorted(sdists)
    with tempfile.TemporaryDirectory(prefix="airgap-mirror-in-") as tmp:
        in_file = Path(tmp) / "requirements.in"
        in_file.write_text(in_text)
        body = Path(tmp) / "body.txt"
        if out.exists():
            body.write_text(out.read_text())
        reason = compile_lock(uv, in_file, platform, body, upgrade, sdists)
        if reason is None:
            what = "build lock" if out.stem.endswith("-build") else "lock"
            text = body.read_text().replace(f"-r {in_file}", "-r requirements.in")
            pinned = {pin.name for pin in bb.parse_pins(text)}
            header = lock_header(platform.label, digest, [n for n in sdists if n in pinned], what)
            out.write_text(header + text)
    return reason


def missing_table(rows: Sequence[Missing]) -> str:
    header = ("package", "platform", "why")
    cells = [header, *((m.package + (" (allowed)" if m.allowed else ""), m.platform, m.why) for m in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(2)]
    return "\n".join(f"{c[0].ljust(widths[0])}  {c[1].ljust(widths[1])}  {c[2]}" for c in cells)


# --------------------------------------------------------------------------- download


def download(platform: Platform, pins: Sequence[object], files_dir: Path) -> list[str]:
    """Fetch the wheels of `pins` for `platform` (hash-checked) into `files_dir`; the names fetched."""
    with tempfile.TemporaryDirectory(prefix="airgap-mirror-dl-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(
            "".join(
                f"{p.name}=={p.version} " + " ".join(f"--hash=sha256:{h}" for h in sorted(p.hashes)) + "\n"
                for p in pins
            )
        )
        dest = Path(tmp) / "dl"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--only-binary=:all:"]
        cmd += ["--implementation", "cp", "--python-version", platform.version, "--abi", platform.tag]
        cmd += [a for plat in [*platform.pip_platforms(), "any"] for a in ("--platform", plat)]
        cmd += ["--dest", str(dest), "--requirement", str(req)]
        bb.run(cmd)
        got = bb.hash_dir(dest)
        files_dir.mkdir(parents=True, exist_ok=True)
        for name, digest in got.items():
            target = files_dir / name
            if target.exists() and bb.sha256_file(target) != digest:
                raise BuildError(f"files/{name}: exists with other bytes than the index serves now")
            (dest / name).replace(target)
    return sorted(got)


# --------------------------------------------------------------------------- sdists and their build requirements


def is_file_of(filename: str, digest: str, pin: bb.Pin, entry: Entry) -> bool:
    """Whether `filename` (sha256 `digest`) is the file `entry` locks for `pin`: its sdist, or a wheel."""
    if pin.name not in entry.sdists:
        return bb.satisfies(filename, digest, pin, entry.platform)
    return is_sdist_of(filename, digest, pin)


def is_sdist_of(filename: str, digest: str, pin: bb.Pin) -> bool:
    try:
        name, version = parse_sdist_filename(filename)
    except InvalidSdistFilename:
        return False
    return name == pin.name and version == pin.version and digest in pin.hashes


def lacking(entry: Entry, files: Mapping[str, str]) -> list[bb.Pin]:
    return [p for p in entry.pins if not any(is_file_of(f, d, p, entry) for f, d in files.items())]


def unused(files: Mapping[str, str], entries: Sequence[Entry]) -> list[str]:
    return sorted(f for f, d in files.items() if not any(is_file_of(f, d, p, e) for e in entries for p in e.pins))


def parse_build_system(pyproject: str | None) -> list[str]:
    """`[build-system] requires` of a pyproject.toml; PEP 518's default without the file or the table."""
    if pyproject is None:
        return list(PEP518_DEFAULT)
    try:
        table = tomllib.loads(pyproject).get("build-system")
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"pyproject.toml is not TOML: {exc}") from exc
    if table is None:
        return list(PEP518_DEFAULT)
    requires = table.get("requires") if isinstance(table, dict) else None
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise BuildError("pyproject.toml: [build-system] has no 'requires' list of strings")
    for text in requires:
        try:
            Requirement(text)
        except InvalidRequirement as exc:
            raise BuildError(f"pyproject.toml: build requirement {text!r} is invalid: {exc}") from exc
    return requires


def sdist_pyproject(path: Path) -> str | None:
    """The top-level pyproject.toml of sdist `path` (.tar.gz or .zip), None when it has none."""

    def top(name: str) -> bool:
        parts = name.strip("/").split("/")
        return len(parts) == 2 and parts[1] == "pyproject.toml"

    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if top(n)]
            return zf.read(names[0]).decode() if names else None
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and top(m.name)]
        handle = tar.extractfile(members[0]) if members else None
        return handle.read().decode() if handle is not None else None


def fetch_sdist(pin: bb.Pin, dest: Path) -> Path:
    """Download the sdist `pin` locks (hash-checked by pip and here) into `dest`."""
    with tempfile.TemporaryDirectory(prefix="airgap-mirror-sdist-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{pin.name}=={pin.version} " + " ".join(f"--hash=sha256:{h}" for h in sorted(pin.hashes)))
        got_dir = Path(tmp) / "dl"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--no-binary=:all:"]
        cmd += ["--ignore-requires-python", "--dest", str(got_dir), "--requirement", str(req)]
        bb.run(cmd)
        got = bb.hash_dir(got_dir)
        good = [name for name, digest in got.items() if is_sdist_of(name, digest, pin)]
        if len(good) != 1 or len(got) != 1:
            raise BuildError(f"{pin.name}=={pin.version}: pip did not download exactly its locked sdist: {sorted(got)}")
        dest.mkdir(parents=True, exist_ok=True)
        return (got_dir / good[0]).replace(dest / good[0])


def sdist_note(pin: bb.Pin, requires: Sequence[str]) -> str:
    return (
        f"sdist: {pin.name} {pin.version} (no wheel for this platform; built on the client, which needs "
        f"{', '.join(requires)} and a compiler if it has extension code)"
    )


def build_deps_note(pins: Sequence[bb.Pin]) -> str:
    return "build deps added: " + (", ".join(f"{p.name} {p.version}" for p in pins) or "none")


def sdist_pins(entry: Entry) -> list[bb.Pin]:
    return [p for p in entry.pins if p.name in entry.sdists]


def carry_sdists(
    entry: Entry, files_dir: Path, staging: Path, known: dict[str, list[str]]
) -> tuple[list[str], list[str]]:
    """Fetch (into `staging`) the sdists of `entry` not yet in `files_dir`; their build requirements and notes."""
    requires: list[str] = []
    notes: list[str] = []
    for pin in sdist_pins(entry):
        have = {**bb.hash_dir(files_dir), **bb.hash_dir(staging)}
        found = [f for f, d in have.items() if is_file_of(f, d, pin, entry)]
        path = (staging / found[0] if (staging / found[0]).exists() else files_dir / found[0]) if found else None
        key = f"{pin.name}=={pin.version}"
        if key not in known:
            known[key] = parse_build_system(sdist_pyproject(path or fetch_sdist(pin, staging)))
        requires += known[key]
        notes.append(sdist_note(pin, known[key]))
    return requires, notes


def resolve_build(
    uv: str, root: Path, platform: Platform, requires: Sequence[str], upgrade: bool
) -> tuple[Path | None, str | None]:
    """Hash-lock `requires` (wheels only) for `platform` into locks/<label>-build.txt; uv's reason when it cannot."""
    out = root / "locks" / f"{platform.label}-build.txt"
    in_text = "".join(f"{line}\n" for line in sorted(set(requires)))
    digest = fingerprint(in_text, platform, ["(build)"])
    if not upgrade and bb.read_fingerprint(out) == digest:
        return out, None
    reason = compile_into(uv, out, in_text, platform, digest, upgrade)
    return (out, None) if reason is None else (None, reason)


def check(root: Path) -> list[str]:
    """Offline: files/ and locks against SHA256SUMS, and every lock's pins (wheel or sdist) present in files/."""
    problems = [p for p in bb.check(root) if not p.endswith(("lists no lock", "(<name>-cp3XX.txt)"))]
    sums = root / bb.SUMS_NAME
    listed = (
        {m.group(2) for m in map(bb.SUMS_LINE_RE.match, sums.read_text().splitlines()) if m}
        if sums.is_file()
        else set()
    )
    files = bb.hash_dir(root / "files")
    problems += [f"files/{n}: not listed in {bb.SUMS_NAME}" for n in files if f"files/{n}" not in listed]
    if (root / YANKED_NAME).is_file() and YANKED_NAME not in listed:
        problems.append(f"{YANKED_NAME}: not listed in {bb.SUMS_NAME}")
    problems += check_yanked(root, files)
    for rel in sorted(r for r in listed if r.startswith("locks/")):
        match = LOCK_NAME_RE.fullmatch(rel.removeprefix("locks/"))
        if match is None or not (root / rel).is_file():
            continue
        platform = Platform(int(match.group(1)), match.group(2))
        entry = Entry(platform, root / rel, bb.parse_pins((root / rel).read_text()), read_sdists(root / rel))
        problems += [f"{rel}: no file for {p.name}=={p.version}" for p in lacking(entry, files)]
    return problems


# --------------------------------------------------------------------------- yank state (PEP 592) of the carried files

YANKED_NAME = "yanked.json"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
MAX_PAGE_BYTES = 64 << 20  # one project's simple page (the largest projects' JSON pages are a few MB)
MAX_REASON_CHARS = 512  # as the index takes a yank reason
PAGE_TIMEOUT = 60


class _YankedLinks(html.parser.HTMLParser):
    """The <a> elements of a PEP 503 page that carry data-yanked: {file name: reason}."""

    def __init__(self) -> None:
        super().__init__()
        self.yanked: dict[str, str] = {}
        self._open: str | None = None  # the reason of the <a> being read
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            found = dict(attrs)
            self._open = (found["data-yanked"] or "") if "data-yanked" in found else None
            self._text = ""

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open is not None:
            self.yanked[self._text.strip()] = self._open
            self._open = None


def yanked_in_json(data: bytes) -> dict[str, str]:
    """{file name: reason ("" when none)} of the yanked files of a PEP 691 JSON project page."""
    try:
        page = json.loads(data)
    except ValueError as exc:
        raise BuildError(f"a simple-API page is not JSON: {exc}") from exc
    files = page.get("files") if isinstance(page, dict) else None
    if not isinstance(files, list):
        raise BuildError('a simple-API JSON page has no "files" list')
    yanked: dict[str, str] = {}
    for item in files:
        if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
            raise BuildError('a simple-API JSON page has a file without a "filename"')
        mark = item.get("yanked", False)
        if mark is True or (isinstance(mark, str)):
            yanked[item["filename"]] = "" if mark is True else mark
    return yanked


def yanked_in_html(data: bytes) -> dict[str, str]:
    """{file name: reason} of the links with data-yanked on a PEP 503 HTML project page."""
    parser = _YankedLinks()
    parser.feed(data.decode("utf-8", errors="replace"))
    parser.close()
    return parser.yanked


def index_simple_url() -> str:
    """The simple API of the index pip downloads from here (its built-in default: this machine's pip
    configuration is ignored, as for the downloads)."""
    try:
        from pip._internal.models.index import PyPI  # noqa: PLC0415
    except ImportError as exc:
        raise BuildError(f"pip is needed to know the index to read yank marks from: {exc}") from exc
    return PyPI.simple_url.rstrip("/")


def fetch_page(url: str, limit: int = MAX_PAGE_BYTES) -> tuple[str, bytes]:
    """GET a simple-API page (JSON preferred, HTML accepted): its content type and at most `limit` bytes."""
    request = urllib.request.Request(url, headers={"Accept": f"{SIMPLE_JSON}, text/html;q=0.1"})
    try:
        with urllib.request.urlopen(request, timeout=PAGE_TIMEOUT) as response:  # https: pip's default index
            data = response.read(limit + 1)
            kind = response.headers.get_content_type()
    except OSError as exc:
        raise BuildError(f"{url}: cannot read the project page for its yank marks: {exc}") from exc
    if len(data) > limit:
        raise BuildError(f"{url}: the project page is larger than {limit >> 20} MiB")
    return kind, data


def project_of(filename: str) -> str | None:
    """The canonical project name of a wheel or sdist file name, None for anything else."""
    try:
        return parse_wheel_filename(filename)[0]
    except InvalidWheelFilename:
        pass
    try:
        return parse_sdist_filename(filename)[0]
    except InvalidSdistFilename:
        return None


def yank_state(files: Iterable[str], fetch: Callable[[str], tuple[str, bytes]], base: str) -> dict[str, str]:
    """{file name: reason} of the carried `files` the index at `base` marks yanked: one page a project."""
    by_project: dict[str, set[str]] = {}
    for name in files:
        project = project_of(name)
        if project is not None:
            by_project.setdefault(project, set()).add(name)
    yanked: dict[str, str] = {}
    for project, names in sorted(by_project.items()):
        kind, data = fetch(f"{base}/{project}/")
        marks = yanked_in_json(data) if kind == SIMPLE_JSON else yanked_in_html(data)
        for name in sorted(names & set(marks)):
            reason = " ".join(marks[name].split())[:MAX_REASON_CHARS]  # one line, as the index takes it
            yanked[name] = "".join(c for c in reason if c.isprintable())
    return yanked


def write_yanked(root: Path, yanked: Mapping[str, str]) -> Path:
    """yanked.json, written under a temporary name and renamed."""
    path = root / YANKED_NAME
    temporary = root / f".{YANKED_NAME}.tmp"
    temporary.write_text(json.dumps(dict(sorted(yanked.items())), indent=1, ensure_ascii=False) + "\n")
    temporary.replace(path)
    return path


def check_yanked(root: Path, files: Iterable[str]) -> list[str]:
    """What is wrong with yanked.json: not an object of {carried file name: reason}."""
    path = root / YANKED_NAME
    if not path.is_file():
        return []
    try:
        document = json.loads(path.read_bytes()[: MAX_PAGE_BYTES + 1])
    except ValueError as exc:
        return [f"{YANKED_NAME}: not JSON: {exc}"]
    if not isinstance(document, dict):
        return [f"{YANKED_NAME}: not an object of {{file name: reason}}"]
    carried = set(files)
    problems = [f"{YANKED_NAME}: names {name!r}, not in files/" for name in document if name not in carried]
    return problems + [
        f"{YANKED_NAME}: reason of {n!r} is not a text" for n, r in document.items() if not isinstance(r, str)
    ]


# --------------------------------------------------------------------------- summary


def sums_text(root: Path, locks: Iterable[Path]) -> str:  # locks: and yanked.json
    entries = {f"files/{n}": d for n, d in bb.hash_dir(root / "files").items()}
    entries.update({p.relative_to(root).as_posix(): bb.sha256_file(p) for p in locks})
    return "".join(f"{entries[rel]}  {rel}\n" for rel in sorted(entries))


def summary(entries: Sequence[Entry], files: Mapping[str, str], files_dir: Path) -> str:
    rows = [("platform", "files", "MB")]
    for platform in sorted({e.platform for e in entries}):
        mine = [e for e in entries if e.platform == platform]
        used = [f for f, d in files.items() if any(is_file_of(f, d, p, e) for e in mine for p in e.pins)]
        rows.append((platform.label, str(len(used)), f"{sum((files_dir / f).stat().st_size for f in used) / 1e6:.1f}"))
    size = sum((files_dir / f).stat().st_size for f in files)
    rows.append(("all (each file once)", str(len(files)), f"{size / 1e6:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0].ljust(widths[0])}  {r[1].rjust(widths[1])}  {r[2].rjust(widths[2])}" for r in rows)


# --------------------------------------------------------------------------- main


def resolve_all(  # noqa: PLR0917
    uv: str,
    root: Path,
    platforms: Sequence[Platform],
    requirements: Sequence[tuple[str, Requirement]],
    allowed: set[tuple[str, str]],
    upgrade: bool,
) -> tuple[list[tuple[Platform, Path]], list[Missing]]:
    resolved: list[tuple[Platform, Path]] = []
    missing: list[Missing] = []
    for step, platform in enumerate(platforms, 1):
        print(f"[{step}/{len(platforms)}] resolve {platform.label} ... ", end="", flush=True)
        lock, lacks = resolve_platform(uv, root, platform, requirements, allowed, upgrade)
        missing += lacks
        if lock is not None:
            resolved.append((platform, lock))
        sdists = read_sdists(lock) if lock else frozenset()
        state = "ok" if lock and not lacks else ("ok, leaving out allowed" if lock else "FAILED")
        print(state + (f", sdists: {' '.join(sorted(sdists))}" if sdists else ""))
    return resolved, missing


def refuse(missing: Sequence[Missing]) -> None:
    if missing:
        print("\nNo distribution for these platforms:\n" + missing_table(missing))
    refused = [m for m in missing if not m.allowed]
    if refused:
        raise BuildError(
            f"{len(refused)} requirement/platform pair(s) above cannot be carried; nothing was downloaded. Fix "
            "requirements.in or platforms.txt, or allow a gap explicitly: --allow-missing NAME@PLATFORM (or NAME)"
        )


def add_build_locks(  # noqa: PLR0917
    uv: str, root: Path, entries: Sequence[Entry], staging: Path, upgrade: bool, notes: dict[str, list[str]]
) -> list[Entry]:
    """The build-requirement locks of the platforms with sdists (fetched into `staging`); fails when one cannot be."""
    added: list[Entry] = []
    missing: list[Missing] = []
    known: dict[str, list[str]] = {}
    for entry in entries:
        if not entry.sdists:
            continue
        requires, lines = carry_sdists(entry, root / "files", staging, known)
        path, reason = resolve_build(uv, root, entry.platform, requires, upgrade)
        if path is None:
            names = ", ".join(sorted(entry.sdists))
            missing.append(Missing(f"(build deps of {names})", entry.platform.label, short_why(reason or ""), False))
            continue
        build = Entry(entry.platform, path, bb.parse_pins(path.read_text()), frozenset())
        notes[entry.platform.label] = [*lines, build_deps_note(build.pins)]
        added.append(build)
    refuse(missing)
    return added


def download_all(entries: Sequence[Entry], files_dir: Path) -> None:
    files = bb.hash_dir(files_dir)
    for step, entry in enumerate(entries, 1):
        todo = [p for p in lacking(entry, files) if p.name not in entry.sdists]
        print(f"[{step}/{len(entries)}] download {entry.path.stem} ... ", end="", flush=True)
        fetched = download(entry.platform, todo, files_dir) if todo else []
        files = bb.hash_dir(files_dir)
        still = lacking(entry, files)
        if still:
            raise BuildError(f"{entry.path.stem}: no file downloaded for {[f'{p.name}=={p.version}' for p in still]}")
        print(f"{len(fetched)} fetched, {len(entry.pins) - len(todo)} already present")


def build(root: Path, allowed: set[tuple[str, str]], upgrade: bool) -> None:
    started = time.monotonic()
    platforms = parse_platforms((root / "platforms.txt").read_text())
    requirements = parse_requirements((root / "requirements.in").read_text())
    uv = bb.find_uv()
    resolved, missing = resolve_all(uv, root, platforms, requirements, allowed, upgrade)
    refuse(missing)
    entries = [Entry(p, path, bb.parse_pins(path.read_text()), read_sdists(path)) for p, path in resolved]
    files_dir = root / "files"
    notes: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="airgap-mirror-stage-") as tmp:
        entries += add_build_locks(uv, root, entries, Path(tmp), upgrade, notes)
        files_dir.mkdir(parents=True, exist_ok=True)
        for staged in Path(tmp).iterdir():
            staged.replace(files_dir / staged.name)
    download_all(entries, files_dir)
    files = bb.hash_dir(files_dir)
    for name in unused(files, entries):
        print(f"removing files/{name}: no platform's lock uses it")
        (files_dir / name).unlink()
    wanted = {e.path for e in entries}
    for stale in sorted(set((root / "locks").glob("*.txt")) - wanted):
        print(f"removing locks/{stale.name}: no listed platform uses it")
        stale.unlink()
    files = bb.hash_dir(files_dir)
    print("reading the yank marks of the carried files ... ", end="", flush=True)
    yanked = write_yanked(root, yank_state(files, fetch_page, index_simple_url()))
    print(f"{len(json.loads(yanked.read_text()))} yanked")
    (root / bb.SUMS_NAME).write_text(sums_text(root, [*sorted(wanted), yanked]))
    print("\n" + summary(entries, files, files_dir))
    for label, lines in sorted(notes.items()):
        print("\n".join(f"{label}: {line}" for line in lines))
    print(f"wrote {root.name}/{bb.SUMS_NAME}; done in {time.monotonic() - started:.2f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_mirror.py", description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_ROOT, metavar="DIR", help="default: %(default)s")
    parser.add_argument(
        "--allow-missing",
        action="append",
        default=[],
        metavar="NAME[@PLATFORM]",
        help="carry the mirror without NAME for PLATFORM (a label like cp312-x86_64-pc-windows-msvc), or everywhere",
    )
    parser.add_argument("--upgrade", action="store_true", help="re-resolve every platform to the newest releases")
    parser.add_argument("--check", action="store_true", help="offline: verify files/ and locks against SHA256SUMS")
    args = parser.parse_args(argv)
    root: Path = args.artifacts.resolve()
    try:
        if args.check:
            problems = check(root)
            for problem in problems:
                print(f"BAD: {problem}", file=sys.stderr)
            return 1 if problems else 0
        build(root, parse_allowed(args.allow_missing), args.upgrade)
    except BuildError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
