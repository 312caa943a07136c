#!/usr/bin/env python3
"""Build the offline controller's wheelhouse: ansible-core and the collections the roles use.

``offline_artifacts/controller/`` is a bundle of its own, built by build_bundle.py's functions:
``requirements/controller.in`` hash-locked per controller CPython (3.12, 3.13: ansible-core 2.20+
needs >= 3.12) into ``locks/``, the locked wheels in ``wheels/``. The collections come from the
``ansible`` wheel (``collections.in``, hash-locked into ``collections-cp312.txt``): Galaxy is not
reachable on the private side. Each collection is repacked into ``collections/NS-NAME-VERSION.tar.gz``
with its FILES.json trimmed to the files the wheel carries and MANIFEST.json re-hashed, so that
``ansible-galaxy collection install --offline`` accepts it. ``SHA256SUMS`` covers all of it.
scripts/install_controller.sh installs it on the offline controller.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

if __package__:  # imported: from scripts import build_controller
    from . import build_bundle as bb
else:  # run as a file, python scripts/build_controller.py: python puts its folder, scripts/, first on sys.path
    import build_bundle as bb

ROOT = Path(__file__).resolve().parent.parent


DEFAULT_ROOT = ROOT / "offline_artifacts" / "controller"
CONTROLLER_TARGETS: tuple[str, ...] = ("3.12", "3.13")
# The collections site.yml's roles use (ansible.posix: firewalld; community.general: htpasswd, seport,
# sefcontext, dict_kv), community.crypto (pypi_server's TLS: the internal CA, certificate checks) and
# community.docker (the docker connections of the tests and the proof). Their declared dependencies are added.
COLLECTIONS: tuple[str, ...] = ("ansible.posix", "community.crypto", "community.general", "community.docker")
COLLECTIONS_TARGET = bb.Target(12)
CACHE = Path(
    os.environ.get("AIRGAP_PYPI_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "airgap-pypi")
)


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH, else 0: the mtime of every repacked member (reproducible tarballs)."""
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


# --------------------------------------------------------------------------- collections


def read_collection(wheel: zipfile.ZipFile, fqcn: str) -> tuple[dict, dict, dict[str, zipfile.ZipInfo]]:
    """MANIFEST.json, FILES.json and the members (by relative path) of collection `fqcn` in `wheel`."""
    namespace, name = fqcn.split(".")
    prefix = f"ansible_collections/{namespace}/{name}/"
    members = {
        i.filename[len(prefix) :]: i for i in wheel.infolist() if i.filename.startswith(prefix) and not i.is_dir()
    }
    if "MANIFEST.json" not in members or "FILES.json" not in members:
        raise bb.BuildError(f"{fqcn}: not in the ansible wheel (no {prefix}MANIFEST.json / FILES.json)")
    manifest = json.loads(wheel.read(members["MANIFEST.json"]))
    files = json.loads(wheel.read(members["FILES.json"]))
    return manifest, files, members


def trim_files(files: dict, present: Iterable[str]) -> dict:
    """FILES.json without the entries whose file (or every file below a directory) is absent."""
    present = set(present)
    kept = []
    for entry in files["files"]:
        path = entry["name"]
        if path == ".":
            kept.append(entry)
        elif entry["ftype"] == "dir":
            if any(p.startswith(path + "/") for p in present):
                kept.append(entry)
        elif path in present:
            kept.append(entry)
    return {**files, "files": kept}


def collection_tarball(wheel: zipfile.ZipFile, fqcn: str, mtime: int) -> tuple[str, bytes, dict]:
    """(file name, reproducible .tar.gz bytes, MANIFEST.json) of `fqcn` repacked from `wheel`."""
    manifest, files, members = read_collection(wheel, fqcn)
    files = trim_files(files, members)
    files_json = json.dumps(files, indent=4, sort_keys=True).encode() + b"\n"
    manifest["file_manifest_file"]["chksum_sha256"] = hashlib.sha256(files_json).hexdigest()
    manifest_json = json.dumps(manifest, indent=4, sort_keys=True).encode() + b"\n"

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:

        def add(path: str, data: bytes | None, mode: int) -> None:
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))

        add("MANIFEST.json", manifest_json, 0o644)
        add("FILES.json", files_json, 0o644)
        for entry in sorted(files["files"], key=lambda e: e["name"]):
            path = entry["name"]
            if path == ".":
                continue
            if entry["ftype"] == "dir":
                add(path, None, 0o755)
                continue
            data = wheel.read(members[path])
            if hashlib.sha256(data).hexdigest() != entry["chksum_sha256"]:
                raise bb.BuildError(f"{fqcn}: {path} in the ansible wheel does not match its FILES.json checksum")
            executable = (members[path].external_attr >> 16) & 0o111
            add(path, data, 0o755 if executable else 0o644)
    info = manifest["collection_info"]
    name = f"{info['namespace']}-{info['name']}-{info['version']}.tar.gz"
    return name, gzip.compress(raw.getvalue(), compresslevel=9, mtime=0), manifest


def with_dependencies(wheel: zipfile.ZipFile, wanted: Sequence[str]) -> list[str]:
    """`wanted` plus every collection they declare as a dependency, transitively, sorted."""
    todo, seen = list(wanted), set()
    while todo:
        fqcn = todo.pop()
        if fqcn in seen:
            continue
        seen.add(fqcn)
        manifest, _files, _members = read_collection(wheel, fqcn)
        todo += list(manifest["collection_info"].get("dependencies") or {})
    return sorted(seen)


def ansible_wheel(root: Path, upgrade: bool) -> Path:
    """The hash-locked `ansible` wheel, downloaded into the cache (outside the bundle) when missing."""
    uv = bb.find_uv()
    in_file = root / "collections.in"
    lock_file = bb.lock_path(root, "collections", COLLECTIONS_TARGET)
    if bb.needs_lock(lock_file, bb.fingerprint(in_file.read_text(), COLLECTIONS_TARGET), upgrade):
        bb.resolve(uv, in_file, COLLECTIONS_TARGET, lock_file, upgrade)
    lock = bb.load_lock(lock_file)
    pins = [p for p in lock.pins if p.name == "ansible"]
    if len(pins) != 1:
        raise bb.BuildError(f"{lock_file.name}: does not pin the ansible release")
    cache = CACHE / "ansible-wheels"
    if bb.missing_pins(bb.Lock(lock.name, lock.target, lock.path, tuple(pins)), bb.hash_dir(cache)):
        print(f"downloading ansible=={pins[0].version} (hash-locked) into the cache ...", flush=True)
        bb.download(lock, pins, cache)
    files = bb.hash_dir(cache)
    return next(cache / f for f, d in files.items() if bb.satisfies(f, d, pins[0], lock.target))


def build_collections(root: Path, wheel_path: Path) -> list[Path]:
    out = root / "collections"
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with zipfile.ZipFile(wheel_path) as wheel:
        for fqcn in with_dependencies(wheel, COLLECTIONS):
            name, data, _manifest = collection_tarball(wheel, fqcn, source_date_epoch())
            path = out / name
            if not path.exists() or path.read_bytes() != data:
                path.write_bytes(data)
            written.append(path)
            print(f"collection {fqcn}: collections/{name} ({len(data) / 1e6:.1f} MB)")
    for stale in sorted(set(out.iterdir()) - set(written)):
        print(f"removing collections/{stale.name}: not a collection of this bundle")
        stale.unlink()
    return written


def write_sums(root: Path, extra: Iterable[Path]) -> None:
    """SHA256SUMS as build_bundle writes it, plus the collections and their lock."""
    locks = sorted((root / "locks").glob("controller-cp3*.txt"))
    lines = bb.sums_text(root, locks).splitlines(keepends=True)
    lines += [f"{bb.sha256_file(p)}  {p.relative_to(root).as_posix()}\n" for p in extra]
    (root / bb.SUMS_NAME).write_text("".join(sorted(lines, key=lambda line: line.split("  ", 1)[1])))


def build(root: Path, targets: Sequence[object], upgrade: bool) -> None:
    bb.build(root, targets, upgrade, lock_only=False)
    wheel = ansible_wheel(root, upgrade)
    tarballs = build_collections(root, wheel)
    write_sums(root, [bb.lock_path(root, "collections", COLLECTIONS_TARGET), *tarballs])
    print(f"wrote {root.name}/{bb.SUMS_NAME}: controller wheelhouse for CPython {', '.join(CONTROLLER_TARGETS)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_controller.py", description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument(
        "--targets",
        type=bb.targets_arg,
        default=[bb.parse_target(v) for v in CONTROLLER_TARGETS],
        help=f"controller CPythons (default {','.join(CONTROLLER_TARGETS)}; ansible-core 2.20+ needs >= 3.12)",
    )
    parser.add_argument("--upgrade", action="store_true", help="re-resolve the locks to the newest releases")
    parser.add_argument("--check", action="store_true", help="offline: verify the wheelhouse against SHA256SUMS")
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_ROOT, metavar="DIR", help="default: %(default)s")
    args = parser.parse_args(argv)
    root: Path = args.artifacts.resolve()
    try:
        too_old = [t.version for t in args.targets if t.minor < 12]
        if too_old:
            raise bb.BuildError(f"controller target(s) {', '.join(too_old)}: ansible-core 2.20+ needs Python >= 3.12")
        if args.check:
            problems = bb.check(root)
            for problem in problems:
                print(f"BAD: {problem}", file=sys.stderr)
            if problems:
                return 1
            print(f"OK: {root.name}/{bb.SUMS_NAME} matches the controller wheelhouse and collections")
            return 0
        build(root, args.targets, args.upgrade)
    except bb.BuildError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
