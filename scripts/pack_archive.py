#!/usr/bin/env python3
"""Pack the repository and offline_artifacts/ into one reproducible archive to carry across the air gap.

Writes ``dist/airgap-pypi-<VERSION>-<YYYYMMDD>.tar.gz``, ``<same>.sha256`` beside it and
``dist/unpack_archive.sh`` (the private side's verify-and-unpack script, carried next to the
archive). The date is SOURCE_DATE_EPOCH, else the last commit's date. Members are sorted, owned
by 0:0, dated that same moment, mode 0644/0755, gzip header without name or time: the same inputs
give the same bytes. Repository files are the ones git tracks or would track (not ignored);
offline_artifacts/ is taken whole (its wheels are git-ignored build output).
"""

from __future__ import annotations

import argparse
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


def tar_bytes(root: Path, names: Iterable[str], prefix: str, mtime: int) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(names):
            path = root / name
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size = path.stat().st_size
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return raw.getvalue()


def pack(root: Path, out_dir: Path) -> Path:
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
    data = gzip.compress(tar_bytes(root, repo_files(root), prefix, epoch), compresslevel=9, mtime=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / f"{prefix}-{day}.tar.gz"
    archive.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    (out_dir / f"{archive.name}.sha256").write_text(f"{digest}  {archive.name}\n")
    shutil.copyfile(root / "scripts" / "unpack_archive.sh", out_dir / "unpack_archive.sh")
    (out_dir / "unpack_archive.sh").chmod(0o755)
    return archive


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pack_archive.py", description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", metavar="DIR", help="default: dist/ of this repo")
    args = parser.parse_args(argv)
    archive = pack(ROOT, args.out)
    digest = (args.out / f"{archive.name}.sha256").read_text().split()[0]
    print(
        f"wrote {archive.name} ({archive.stat().st_size / 1e6:.1f} MB, sha256 {digest[:16]}...), {archive.name}.sha256"
    )
    print(f"carry {args.out.name}/{archive.name}, its .sha256 and {args.out.name}/unpack_archive.sh across; there run:")
    print(f"  sh unpack_archive.sh {archive.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
