#!/usr/bin/env python3
"""Build the airgap-pypi offline bundle: per-target hash-locked wheel sets.

For every ``offline_artifacts/requirements/<name>.in`` and every target CPython, keep a
hash-locked ``offline_artifacts/locks/<name>-cp3XX.txt`` (resolved by ``uv pip compile``
for that target, not for this machine), download exactly the locked wheels into
``offline_artifacts/wheels/`` and write ``offline_artifacts/SHA256SUMS``.

A lock is re-resolved only when it is missing, when the fingerprint of its inputs
(.in content, target, resolver options) changed, or with ``--upgrade``. This machine's
pip/uv configuration (files and ``PIP_*``/``UV_*`` variables) is ignored.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import (
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import Version

DEFAULT_ARTIFACTS = Path(__file__).resolve().parent.parent / "offline_artifacts"
SUPPORTED_TARGETS: tuple[str, ...] = ("3.9", "3.10", "3.11", "3.12", "3.13")
TOO_OLD_REASON = (
    "Python 3.6-3.8 are not targets of this bundle: pip>=26.0.1 (which pypiserver 2.4 "
    "needs at runtime) and setuptools>=78.1.1 (CVE-2025-47273) need Python >= 3.9, and "
    "3.6 has no gunicorn>=23 nor pypiserver 2.4 either; EL8's platform-python (3.6) "
    "gets its own lock set in a separate issue"
)
# Resolver options; part of every lock's input fingerprint (changing them re-locks).
UV_PLATFORM = "x86_64-manylinux_2_28"
UV_OPTIONS: tuple[str, ...] = (
    "--no-config",
    "--no-python-downloads",
    "--python-platform",
    UV_PLATFORM,
    "--only-binary",
    ":all:",
    "--generate-hashes",
    "--no-header",
)
# pip does not widen a manylinux tag to older ones: name each one.
PIP_PLATFORMS: tuple[str, ...] = (
    "manylinux_2_28_x86_64",
    "manylinux2014_x86_64",
    "any",
)
FINGERPRINT_PREFIX = "# airgap-pypi-input: "
FINGERPRINT_FORMAT = 1
SUMS_NAME = "SHA256SUMS"
SUMMARY_PACKAGES: tuple[str, ...] = (
    "pip",
    "setuptools",
    "virtualenv",
    "pypiserver",
    "gunicorn",
    "passlib",
    "supervisor",
)
LOCK_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)-(?P<tag>cp3\d+)\.txt$")
HASH_RE = re.compile(r"--hash=sha256:([0-9a-f]{64})")
SUMS_LINE_RE = re.compile(r"^([0-9a-f]{64})  (\S.*)$")


class BuildError(Exception):
    """A failure to report to the user as `error: <message>` (exit status 1)."""


@dataclass(frozen=True, order=True)
class Target:
    minor: int  # CPython 3.<minor>

    @property
    def version(self) -> str:
        return f"3.{self.minor}"

    @property
    def tag(self) -> str:
        return f"cp3{self.minor}"

    def tags(self) -> frozenset[Tag]:
        """Wheel tags `pip download` accepts for this target with PIP_PLATFORMS."""
        platforms = [
            *PIP_PLATFORMS,
            "manylinux_2_17_x86_64",
            "manylinux2010_x86_64",
            "manylinux1_x86_64",
        ]
        py = (3, self.minor)
        return frozenset(
            [
                *cpython_tags(py, abis=[self.tag], platforms=platforms),
                *compatible_tags(py, self.tag, platforms),
            ]
        )


@dataclass(frozen=True)
class Pin:
    name: NormalizedName
    version: Version
    hashes: frozenset[str]


@dataclass(frozen=True)
class Lock:
    name: str  # the .in stem
    target: Target
    path: Path
    pins: tuple[Pin, ...]


# --------------------------------------------------------------------------- targets


def parse_target(text: str) -> Target:
    """Parse `3.11` or `cp311`; reject anything outside SUPPORTED_TARGETS."""
    raw = text.strip().lower()
    match = re.fullmatch(r"(?:cp3|3\.)(\d+)", raw)
    if match is None:
        raise ValueError(f"bad target {text!r}: use the form 3.11 or cp311")
    target = Target(int(match.group(1)))
    if target.minor <= 8:
        raise ValueError(f"target {target.version} is not supported. {TOO_OLD_REASON}. Supported: {supported()}")
    if target.version not in SUPPORTED_TARGETS:
        raise ValueError(f"target {target.version} is not supported. Supported: {supported()}")
    return target


def parse_targets(text: str) -> list[Target]:
    targets = sorted({parse_target(part) for part in text.split(",") if part.strip()})
    if not targets:
        raise ValueError(f"no targets given. Supported: {supported()}")
    return targets


def targets_arg(text: str) -> list[Target]:
    """argparse type for --targets: shows our message instead of argparse's generic one."""
    try:
        return parse_targets(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def supported() -> str:
    return ", ".join(SUPPORTED_TARGETS)


# --------------------------------------------------------------------------- environment


def scrubbed_env(base: Mapping[str, str]) -> dict[str, str]:
    """`base` without any PIP_*/UV_* variable, with pip/uv configuration files disabled."""
    env = {k: v for k, v in base.items() if not k.upper().startswith(("PIP_", "UV_"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", UV_NO_CONFIG="1")
    return env


def find_uv(python: str = sys.executable) -> str:
    candidate = Path(python).parent / "uv"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("uv")
    if found is None:
        raise BuildError(f"uv not found next to {python} nor on PATH (install the toolchain venv: `make venv`)")
    return found


def run(cmd: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=scrubbed_env(os.environ),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        raise BuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{output}")
    return proc


# --------------------------------------------------------------------------- locks


def fingerprint(in_text: str, target: Target) -> str:
    payload = {
        "format": FINGERPRINT_FORMAT,
        "in": in_text,
        "target": target.tag,
        "uv": list(UV_OPTIONS),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def lock_path(locks_dir: Path, name: str, target: Target) -> Path:
    return locks_dir / f"{name}-{target.tag}.txt"


def lock_header(name: str, target: Target, digest: str) -> str:
    return (
        f"# airgap-pypi offline bundle lock: requirements/{name}.in for CPython {target.version} ({target.tag}),\n"
        f"# {UV_PLATFORM}, wheels only, hash-checked. Generated by scripts/build_bundle.py: do not edit.\n"
        "# Regenerate with `make lock` (or `make bundle`); `scripts/build_bundle.py --upgrade` takes new releases.\n"
        f"{FINGERPRINT_PREFIX}{digest}\n"
    )


def read_fingerprint(path: Path) -> str | None:
    """The input fingerprint recorded in a lock's header, or None (missing file or line)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        if not line.startswith("#"):
            break
        if line.startswith(FINGERPRINT_PREFIX):
            return line[len(FINGERPRINT_PREFIX) :].strip()
    return None


def needs_lock(path: Path, digest: str, upgrade: bool) -> str | None:
    """Why `path` must be (re)resolved, or None when it is up to date."""
    if upgrade:
        return "upgrade"
    recorded = read_fingerprint(path)
    if recorded is None:
        return "missing" if not path.exists() else "no fingerprint"
    return None if recorded == digest else "inputs changed"


def parse_pins(text: str) -> tuple[Pin, ...]:
    """The `name==version --hash=sha256:...` entries of a requirements lock."""
    pins: list[Pin] = []
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        hashes = frozenset(HASH_RE.findall(line))
        spec = re.sub(r"\s*--hash=\S+", "", line).strip()
        try:
            req = Requirement(spec)
        except InvalidRequirement as exc:
            raise BuildError(f"unparsable lock line {line!r}: {exc}") from exc
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or not hashes:
            raise BuildError(f"lock entry {spec!r} is not an exact pin with hashes")
        pins.append(Pin(canonicalize_name(req.name), Version(specs[0].version), hashes))
    return tuple(pins)


def load_lock(path: Path) -> Lock:
    match = LOCK_RE.match(path.name)
    if match is None:
        raise BuildError(f"{path.name}: not a lock file name (<name>-cp3XX.txt)")
    target = Target(int(match.group("tag")[3:]))
    return Lock(match.group("name"), target, path, parse_pins(path.read_text()))


def resolve(uv: str, in_file: Path, target: Target, out: Path, upgrade: bool) -> None:
    """(Re)write lock `out` for `in_file` and `target`, keeping its pins unless `upgrade`."""
    digest = fingerprint(in_file.read_text(), target)
    with tempfile.TemporaryDirectory(prefix="airgap-lock-") as tmp:
        body_file = Path(tmp) / out.name
        if out.exists() and not upgrade:
            # uv keeps the pins of an existing output file where the inputs allow
            shutil.copyfile(out, body_file)
        cmd = [
            uv,
            "pip",
            "compile",
            "--quiet",
            *UV_OPTIONS,
            "--python-version",
            target.version,
        ]
        cmd += [
            *(["--upgrade"] if upgrade else []),
            in_file.name,
            "--output-file",
            str(body_file),
        ]
        # run next to the .in and name it relatively: `# via -r x.in`, no local path
        run(cmd, cwd=in_file.parent)
        body = body_file.read_text()
    parse_pins(body)  # only exact, hashed pins (no index URL or other option lines)
    text = lock_header(in_file.stem, target, digest) + body.rstrip("\n") + "\n"
    if not out.exists() or out.read_text() != text:
        out.write_text(text)


# --------------------------------------------------------------------------- wheels


def sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def hash_dir(directory: Path) -> dict[str, str]:
    """File name -> sha256 of each file in a flat directory."""
    if not directory.is_dir():
        return {}
    result: dict[str, str] = {}
    for entry in sorted(directory.iterdir()):
        if not entry.is_file() or entry.is_symlink():
            raise BuildError(f"{entry}: only regular files belong in {directory.name}/")
        result[entry.name] = sha256_file(entry)
    return result


def satisfies(filename: str, digest: str, pin: Pin, target: Target) -> bool:
    """Whether wheel `filename` with sha256 `digest` is the file `pin` locks for `target`."""
    try:
        name, version, _build, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    return name == pin.name and version == pin.version and digest in pin.hashes and not tags.isdisjoint(target.tags())


def missing_pins(lock: Lock, files: Mapping[str, str]) -> list[Pin]:
    """Pins of `lock` with no matching file in `files` (name -> sha256)."""
    return [p for p in lock.pins if not any(satisfies(f, d, p, lock.target) for f, d in files.items())]


def unreferenced(files: Mapping[str, str], locks: Iterable[Lock]) -> list[str]:
    """Files (name -> sha256) that satisfy no pin of any lock: stale or corrupt."""
    locks = list(locks)
    return sorted(
        f for f, d in files.items() if not any(satisfies(f, d, p, lk.target) for lk in locks for p in lk.pins)
    )


def download(lock: Lock, pins: Sequence[Pin], wheels_dir: Path) -> tuple[list[str], list[str]]:
    """Fetch the wheels of `pins` for `lock.target` into `wheels_dir`.

    Returns the names fetched and those among them that replaced a file of the same
    name whose hash was not the locked one (corrupt or tampered).
    """
    t = lock.target
    with tempfile.TemporaryDirectory(prefix="airgap-dl-") as tmp:
        tmp_path = Path(tmp)
        req_file = tmp_path / "requirements.txt"
        req_file.write_text(
            "".join(
                f"{p.name}=={p.version} " + " ".join(f"--hash=sha256:{h}" for h in sorted(p.hashes)) + "\n"
                for p in pins
            )
        )
        dest = tmp_path / "dl"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--require-hashes",
            "--only-binary=:all:",
        ]
        cmd += ["--implementation", "cp", "--python-version", t.version, "--abi", t.tag]
        cmd += [arg for plat in PIP_PLATFORMS for arg in ("--platform", plat)]
        cmd += ["--dest", str(dest), "--requirement", str(req_file)]
        run(cmd)
        got = hash_dir(dest)
        bad = [f for f, d in got.items() if not any(satisfies(f, d, p, t) for p in pins)]
        if bad:
            raise BuildError(f"{lock.path.name}: downloaded file(s) whose hash or tags the lock does not allow: {bad}")
        wheels_dir.mkdir(parents=True, exist_ok=True)
        replaced = sorted(n for n in got if (wheels_dir / n).exists())
        for name in got:
            (dest / name).replace(wheels_dir / name)
    return sorted(got), replaced


# --------------------------------------------------------------------------- SHA256SUMS


def sums_text(root: Path, lock_files: Iterable[Path]) -> str:
    """`<sha256>  <path>` for every wheel and the given locks, sorted by path (GNU sha256sum format)."""
    entries: dict[str, str] = {f"wheels/{n}": d for n, d in hash_dir(root / "wheels").items()}
    for path in lock_files:
        entries[path.relative_to(root).as_posix()] = sha256_file(path)
    for rel in entries:
        if "\\" in rel or "\n" in rel or rel.strip() != rel:
            raise BuildError(f"file name unfit for SHA256SUMS: {rel!r}")
    return "".join(f"{entries[rel]}  {rel}\n" for rel in sorted(entries))


def write_sums(root: Path, lock_files: Iterable[Path]) -> Path:
    path = root / SUMS_NAME
    path.write_bytes(sums_text(root, lock_files).encode())
    return path


def check(root: Path) -> list[str]:
    """Offline verification of wheels/ and locks against SHA256SUMS; the problems found."""
    sums_file = root / SUMS_NAME
    if not sums_file.is_file():
        return [f"{SUMS_NAME}: missing (build the bundle first)"]
    problems: list[str] = []
    listed: dict[str, str] = {}
    for number, line in enumerate(sums_file.read_text().splitlines(), 1):
        match = SUMS_LINE_RE.match(line)
        if match is None:
            problems.append(f"{SUMS_NAME}:{number}: malformed line")
            continue
        listed[match.group(2)] = match.group(1)
    for rel, digest in sorted(listed.items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != digest:
            problems.append(f"{rel}: sha256 mismatch")
    wheels = hash_dir(root / "wheels")
    problems += [f"wheels/{n}: not listed in {SUMS_NAME}" for n in wheels if f"wheels/{n}" not in listed]
    lock_rels = sorted(rel for rel in listed if rel.startswith("locks/"))
    if not lock_rels:
        problems.append(f"{SUMS_NAME}: lists no lock")
    for rel in lock_rels:
        if not (root / rel).is_file():
            continue
        try:
            lock = load_lock(root / rel)
        except BuildError as exc:
            problems.append(f"{rel}: {exc}")
            continue
        problems += [f"{rel}: no wheel for {p.name}=={p.version}" for p in missing_pins(lock, wheels)]
        in_file = root / "requirements" / f"{lock.name}.in"
        if in_file.is_file() and read_fingerprint(lock.path) != fingerprint(in_file.read_text(), lock.target):
            print(f"warning: {rel} is out of date with requirements/{lock.name}.in (run `make lock`)")
    return problems


# --------------------------------------------------------------------------- summary


def version_table(locks: Sequence[Lock], targets: Sequence[Target]) -> str:
    cells: dict[tuple[str, Target], set[str]] = {}
    for lock in locks:
        for pin in lock.pins:
            cells.setdefault((pin.name, lock.target), set()).add(str(pin.version))
    header = ["package", *(t.tag for t in targets)]
    rows = [header]
    for pkg in SUMMARY_PACKAGES:
        rows.append(
            [
                pkg,
                *(" / ".join(sorted(cells.get((pkg, t), {"-"}), key=_version_key)) for t in targets),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _version_key(text: str) -> tuple[int, Version | str]:
    try:
        return (0, Version(text))
    except ValueError:
        return (1, text)


# --------------------------------------------------------------------------- main


def build(root: Path, targets: Sequence[Target], upgrade: bool, lock_only: bool) -> None:
    started = time.monotonic()
    req_dir, locks_dir, wheels_dir = (
        root / "requirements",
        root / "locks",
        root / "wheels",
    )
    in_files = sorted(req_dir.glob("*.in"))
    if not in_files:
        raise BuildError(f"no *.in files in {req_dir}")
    uv = find_uv()
    locks_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(in_file, t) for in_file in in_files for t in targets]
    total = len(jobs)

    for step, (in_file, t) in enumerate(jobs, 1):
        out = lock_path(locks_dir, in_file.stem, t)
        print(f"[{step}/{total}] lock {in_file.stem} {t.tag} ... ", end="", flush=True)
        reason = needs_lock(out, fingerprint(in_file.read_text(), t), upgrade)
        if reason is None:
            print("up to date")
            continue
        resolve(uv, in_file, t, out, upgrade)
        print(f"resolved ({reason}, {len(load_lock(out).pins)} pinned)")
    locks = [load_lock(lock_path(locks_dir, f.stem, t)) for f, t in jobs]
    wanted = {lk.path.name for lk in locks}
    others = sorted(p.name for p in locks_dir.glob("*.txt") if p.name not in wanted)
    if others:
        print(
            f"note: {len(others)} lock(s) in locks/ are not part of this bundle (other "
            f"targets or no .in): left alone, not in {SUMS_NAME}: {', '.join(others)}"
        )
    if lock_only:
        print(f"locks done in {time.monotonic() - started:.2f} s")
        return

    files = hash_dir(wheels_dir)
    for step, lock in enumerate(locks, 1):
        print(
            f"[{step}/{total}] download {lock.name} {lock.target.tag} ... ",
            end="",
            flush=True,
        )
        todo = missing_pins(lock, files)
        if todo:
            fetched, replaced = download(lock, todo, wheels_dir)
            files = hash_dir(wheels_dir)
            if missing_pins(lock, files):
                raise BuildError(f"{lock.path.name}: still unsatisfied after download: {missing_pins(lock, files)}")
            print(f"{len(fetched)} fetched, {len(lock.pins) - len(todo)} present")
            for name in replaced:
                print(f"  replaced wheels/{name}: its hash was not the locked one")
        else:
            print(f"all {len(lock.pins)} present (verified)")
    for name in unreferenced(files, locks):
        print(f"removing wheels/{name}: referenced by no lock of this bundle")
        (wheels_dir / name).unlink()
    files = hash_dir(wheels_dir)
    sums = write_sums(root, (lk.path for lk in locks))
    size = sum((wheels_dir / n).stat().st_size for n in files)
    print(f"\n{len(files)} wheels, {size / 1e6:.1f} MB in {wheels_dir.relative_to(root.parent)}/; {len(locks)} locks")
    print(f"wrote {sums.relative_to(root.parent)} (sha256 {sha256_file(sums)[:16]}...)")
    print(version_table(locks, targets))
    print(f"done in {time.monotonic() - started:.2f} s")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_bundle.py",
        description=(__doc__ or "").strip().splitlines()[0],
        epilog=(
            "Locks are committed to git; wheels/ and SHA256SUMS are build output. "
            "Verify a copied bundle with `cd offline_artifacts && sha256sum --check --strict SHA256SUMS`."
        ),
    )
    parser.add_argument(
        "--targets",
        type=targets_arg,
        default=[parse_target(v) for v in SUPPORTED_TARGETS],
        help=f"comma-separated target CPythons, e.g. 3.11,3.12 or cp311 (default: all of {supported()})",
    )
    parser.add_argument(
        "--upgrade",
        action="store_true",
        help="re-resolve every lock to the newest allowed releases",
    )
    parser.add_argument("--lock-only", action="store_true", help="update the locks, download nothing")
    parser.add_argument(
        "--check",
        action="store_true",
        help="offline: verify wheels/ and locks against SHA256SUMS and exit",
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=DEFAULT_ARTIFACTS,
        metavar="DIR",
        help="bundle directory holding requirements/, locks/, wheels/ (default: offline_artifacts/ of this repo)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    root: Path = args.artifacts.resolve()
    try:
        if args.check:
            problems = check(root)
            for problem in problems:
                print(f"BAD: {problem}", file=sys.stderr)
            if problems:
                print(f"check failed: {len(problems)} problem(s)", file=sys.stderr)
                return 1
            print(f"OK: {root.name}/{SUMS_NAME} matches wheels/ and locks; every locked wheel present")
            return 0
        build(root, args.targets, args.upgrade, args.lock_only)
    except BuildError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
