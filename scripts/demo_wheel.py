#!/usr/bin/env python3
"""Write a small, valid, pure-Python wheel (PEP 427) for demos and tests of the index.

Usage: demo_wheel.py --out DIR [--name airgap-demo] [--version 1.0.0]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import zipfile
from pathlib import Path


def build_wheel(
    directory: Path,
    name: str,
    version: str,
    *,
    summary: str = "airgap-pypi demo package",
    requires_python: str = ">=3.7",
    description: str = "",
    content_type: str = "text/plain",
) -> Path:
    """Write <module>-<version>-py3-none-any.whl into directory and return its path.

    Importing the module gives VERSION == version, so a client can prove which file it installed. description,
    when given, is the METADATA body (the long description), of Description-Content-Type content_type.
    """
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f'VERSION = "{version}"\n'.encode(),
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            f"Summary: {summary}\nRequires-Python: {requires_python}\n"
            + (f"Description-Content-Type: {content_type}\n\n{description}" if description else "")
        ).encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: airgap-pypi\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = io.StringIO()
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.write(f"{path},sha256={digest},{len(data)}\n")
    record.write(f"{dist_info}/RECORD,,\n")
    files[f"{dist_info}/RECORD"] = record.getvalue().encode()
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return wheel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the wheel")
    parser.add_argument("--name", default="airgap-demo", help="distribution name (default: %(default)s)")
    parser.add_argument("--version", default="1.0.0", help="version (default: %(default)s)")
    args = parser.parse_args(argv)
    print(build_wheel(args.out, args.name, args.version))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
