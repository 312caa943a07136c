#!/usr/bin/env python3
"""Pack the repository and offline_artifacts/ into one reproducible archive to carry across the air gap.

Writes ``dist/airgap-pypi-<VERSION>-<YYYYMMDD>.tar.gz``, ``<same>.sha256`` and ``<same>.manifest`` (every file's
path, size, mode and sha256, the sequence number and the base; see airgap_transfer.py) beside it, with
``--sign-key`` its detached signature ``<same>.manifest.sig``, and ``dist/unpack_archive.sh`` with
``dist/airgap_transfer.py`` (the private side's verify-and-unpack scripts, carried next to the archive). With
``--base`` (the manifest of the last archive carried) it packs only the files that base lacks or has otherwise,
as ``...-deltaSEQUENCE.tar.gz``; with ``--part-size`` it splits the archive into ``.part001``... for media.
The date is SOURCE_DATE_EPOCH, else the last commit's date. Members are sorted, owned by 0:0, dated that same
moment, mode 0644/0755, gzip header without name or time: the same inputs give the same bytes. Repository files
are the ones git tracks or would track (not ignored); offline_artifacts/ is taken whole (its wheels are
git-ignored build output). The sequence number is --sequence, else the date as seconds, raised past the base.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

if __package__:  # imported: from scripts import pack_archive
    from . import airgap_transfer as transfer
else:  # run as a file, python scripts/pack_archive.py: python puts its folder, scripts/, first on sys.path
    import airgap_transfer as transfer

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "airgap-pypi"


def version(root: Path) -> str:
    text = (root / "VERSION").read_text().strip()
    if not text or any(c.isspace() or c == "/" for c in text):
        raise SystemExit(f"error: VERSION holds {text!r}, not a version")
    return text


def source_date_epoch(root: Path) -> int:
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    out = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=root, capture_output=True, text=True, check=False)
    if out.returncode != 0 or not out.stdout.strip():
        raise SystemExit("error: no SOURCE_DATE_EPOCH and no git commit to take the archive's date from")
    return int(out.stdout.strip())


def repo_files(root: Path) -> list[str]:
    """Files git tracks or would track (untracked but not ignored), plus all of offline_artifacts/."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    )
    names = {n for n in out.stdout.decode().split("\0") if n and (root / n).is_file()}
    names |= {p.relative_to(root).as_posix() for p in (root / "offline_artifacts").rglob("*") if p.is_file()}
    return sorted(n for n in names if not n.startswith("dist/"))


def add_members(tar: tarfile.TarFile, root: Path, names: Iterable[str], prefix: str, mtime: int) -> None:
    for name in sorted(names):
        path = root / name
        info = tarfile.TarInfo(f"{prefix}/{name}")
        info.size = path.stat().st_size
        info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
        info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
        with path.open("rb") as fh:
            tar.addfile(info, fh)


def tar_bytes(root: Path, names: Iterable[str], prefix: str, mtime: int) -> bytes:
    """The uncompressed tar in memory (what gzip.compress(..., compresslevel=9, mtime=0) made the archive of)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add_members(tar, root, names, prefix, mtime)
    return raw.getvalue()


class _Sink:
    """Where the compressed archive goes: counted and hashed, and written to out unless out is None."""

    def __init__(self, out: BinaryIO | None) -> None:
        self.out, self.size, self.digest = out, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.size += len(data)
        self.digest.update(data)
        if self.out is not None:
            self.out.write(data)
        return len(data)

    def flush(self) -> None:
        if self.out is not None:
            self.out.flush()


def write_archive(root: Path, names: Iterable[str], prefix: str, mtime: int, target: Path | None) -> tuple[int, str]:
    """Stream the tar.gz of names to target (or only measure it): its size and sha256. The bytes are those of
    gzip.compress(tar_bytes(...), compresslevel=9, mtime=0), without holding the archive in memory."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(target.open("wb")) if target is not None else None
        sink = _Sink(out)
        gz = stack.enter_context(gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=sink, mtime=0))
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            add_members(tar, root, names, prefix, mtime)
        gz.close()
        return sink.size, sink.digest.hexdigest()


def pack(
    root: Path,
    out_dir: Path,
    *,
    base: Path | None = None,
    part_size: int | None = None,
    sign_key: str | None = None,
    sequence: int | None = None,
    say: transfer.Say = print,
) -> Path:
    """Write the archive (a delta on base if given), its .sha256, .manifest (and .sig), and the unpack scripts.

    The sequence number is the one given, else the archive's date (SOURCE_DATE_EPOCH, else the last commit's date),
    raised to one more than the base's when it is not newer. Returns the archive's path (with part_size the parts
    are written beside it and the whole archive removed)."""
    ver, epoch = version(root), source_date_epoch(root)
    day = time.strftime("%Y%m%d", time.gmtime(epoch))
    prefix = f"{PROJECT}-{ver}"
    missing = [
        d
        for d in ("offline_artifacts/SHA256SUMS", "offline_artifacts/controller/SHA256SUMS")
        if not (root / d).is_file()
    ]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} missing: build the bundle first (make bundle)")
    names = repo_files(root)
    files = transfer.entries(root, names, say)
    base_manifest, base_sha = transfer.load(base) if base is not None else (None, None)
    if sequence is None:
        sequence = max(epoch, base_manifest.sequence + 1) if base_manifest else epoch
    if base_manifest and sequence <= base_manifest.sequence:
        raise SystemExit(f"error: sequence {sequence} is not newer than the base's {base_manifest.sequence}")
    carry = transfer.changed(files, base_manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / f"{prefix}-{day}{f'-delta{sequence}' if base else ''}.tar.gz"
    for stale in out_dir.glob(f"{glob_escape(archive.name)}.part*"):  # of an earlier run with other parts
        stale.unlink()
    size, digest = write_archive(root, [e.path for e in carry], prefix, epoch, archive)
    say(f"packed {len(carry)} of {len(files)} files: {archive.name} ({size / 1e6:.1f} MB)")
    # A delta's report compares it with what the full archive would weigh: the whole tree is compressed once more.
    full_size = size if base is None else write_archive(root, names, prefix, epoch, None)[0]
    parts = transfer.split(archive, part_size, say) if part_size else []
    if parts:
        archive.unlink()
    else:
        (out_dir / f"{archive.name}.sha256").write_text(f"{digest}  {archive.name}\n")
    created = epoch if os.environ.get("SOURCE_DATE_EPOCH") else int(time.time())
    manifest = transfer.Manifest(
        kind="delta" if base_manifest else "full",
        version=ver,
        sequence=sequence,
        base=base_sha,
        base_sequence=base_manifest.sequence if base_manifest else None,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
        archive=transfer.Carried(archive.name, size, digest),
        full_size=full_size,
        parts=tuple(parts),
        files=tuple(files),
    )
    manifest_path = out_dir / f"{archive.name}.manifest"
    manifest_path.write_text(manifest.text())
    if sign_key:
        transfer.sign(manifest_path, sign_key)
    for script in ("unpack_archive.sh", "airgap_transfer.py"):
        shutil.copyfile(root / "scripts" / script, out_dir / script)
        (out_dir / script).chmod(0o755)
    changes = transfer.compare(base_manifest.by_path() if base_manifest else None, files)
    for line in transfer.report(changes, size, full_size, manifest.kind, transfer.yank_marks(root)):
        say(line)
    return archive


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pack_archive.py", description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", metavar="DIR", help="default: dist/ of this repo")
    parser.add_argument(
        "--base", type=Path, metavar="MANIFEST", help="pack a delta on this manifest (of the last archive carried)"
    )
    parser.add_argument("--part-size", metavar="SIZE", help="split into parts of SIZE (650M, 4G, 100K, bytes)")
    parser.add_argument("--sign-key", metavar="KEY", help="sign the manifest with this GnuPG key (id or fingerprint)")
    parser.add_argument(
        "--sequence", type=int, metavar="N", help="default: the archive's date as seconds (SOURCE_DATE_EPOCH)"
    )
    args = parser.parse_args(argv)
    try:
        part_size = transfer.parse_size(args.part_size) if args.part_size else None
        archive = pack(
            ROOT, args.out, base=args.base, part_size=part_size, sign_key=args.sign_key, sequence=args.sequence
        )
    except transfer.TransferError as exc:
        raise SystemExit(f"error: {exc}") from None
    manifest = args.out / f"{archive.name}.manifest"
    parsed, sha = transfer.load(manifest)
    signed = manifest.with_name(f"{manifest.name}.sig").is_file()
    carried = [p.name for p in parsed.parts] or [archive.name, f"{archive.name}.sha256"]
    print(
        f"wrote {', '.join(carried)}, {manifest.name} (sequence {parsed.sequence}, sha256 {sha[:16]}...)"
        + (
            f" and {manifest.name}.sig"
            if signed
            else "; UNSIGNED: pass SIGN_KEY=<your key> to sign it (unpacking it then needs --allow-unsigned)"
        )
    )
    print(f"carry them, {args.out.name}/unpack_archive.sh and {args.out.name}/airgap_transfer.py across; there run:")
    unsigned = "" if signed else "--allow-unsigned "
    print(f"  sh unpack_archive.sh {unsigned}{manifest.name if parsed.parts else archive.name}")
    print(f"keep {manifest.name}: the next delta is built on it (make bundle BASE={args.out.name}/{manifest.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
