"""build_mirror.py carrying sdists and their declared build requirements.

All tests but the last need no network. The last builds a real one-platform mirror of docopt 0.6.2 (an sdist only,
no wheel on any platform, no pyproject.toml) from the index; set AIRGAP_NO_NETWORK=1 to skip it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from scripts import build_mirror as mirror

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


LINUX = mirror.Platform(12, "x86_64-manylinux_2_28")


def _pin(name: str, version: str, *data: bytes) -> object:
    hashes = frozenset(hashlib.sha256(d).hexdigest() for d in data)
    return mirror.bb.Pin(canonicalize_name(name), Version(version), hashes)


# --------------------------------------------------------------------------- build-system parsing


def test_pep518_default_without_pyproject_or_build_system() -> None:
    assert mirror.parse_build_system(None) == ["setuptools>=40.8.0", "wheel"]
    assert mirror.parse_build_system('[project]\nname = "x"\n') == ["setuptools>=40.8.0", "wheel"]


def test_declared_build_requirements() -> None:
    text = '[build-system]\nrequires = ["hatchling>=1.18", "hatch-vcs"]\nbuild-backend = "hatchling.build"\n'
    assert mirror.parse_build_system(text) == ["hatchling>=1.18", "hatch-vcs"]
    assert mirror.parse_build_system("[build-system]\nrequires = []\n") == []


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[build-system]\nbuild-backend = "x"\n', "no 'requires' list"),
        ("[build-system]\nrequires = [1]\n", "no 'requires' list"),
        ('[build-system]\nrequires = ["setuptools >="]\n', "is invalid"),
        ("[build-system\n", "is not TOML"),
    ],
)
def test_bad_build_system_is_an_error(text: str, error: str) -> None:
    with pytest.raises(mirror.BuildError, match=error):
        mirror.parse_build_system(text)


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_pyproject_is_read_from_the_sdist_top_directory(tmp_path: Path) -> None:
    nested = {"demo-1.0/tests/pyproject.toml": b"[build-system]\nrequires = ['nested']\n"}
    top = {"demo-1.0/pyproject.toml": b"[build-system]\nrequires = ['flit_core>=3.2']\n"}
    assert mirror.sdist_pyproject(_tar(tmp_path / "a-1.0.tar.gz", {**nested, "demo-1.0/setup.py": b""})) is None
    found = mirror.sdist_pyproject(_tar(tmp_path / "b-1.0.tar.gz", {**nested, **top}))
    assert mirror.parse_build_system(found) == ["flit_core>=3.2"]
    with zipfile.ZipFile(tmp_path / "c-1.0.zip", "w") as zf:
        zf.writestr("demo-1.0/pyproject.toml", top["demo-1.0/pyproject.toml"])
    assert "flit_core" in (mirror.sdist_pyproject(tmp_path / "c-1.0.zip") or "")


# --------------------------------------------------------------------------- uv's explanations, locks, summary


@pytest.mark.parametrize(
    ("reason", "names"),
    [
        ("Because all versions of docopt have no usable wheels and you require docopt, ...", {"docopt"}),
        ("Because numpy==2.0.2 has no usable wheels and you require numpy==2.0.2, ...", {"numpy"}),
        (
            "Because foo==1.0 depends on Bar_Baz and all versions of bar-baz have no usable wheels, ...",
            {"bar-baz"},
        ),
        ("Because only qux<=2 is available and qux==2 has no wheels with a matching platform tag (e.g. ...)", {"qux"}),
        ("Because nosuchpkg was not found in the package registry ...", set()),
    ],
)
def test_packages_without_wheels_are_named(reason: str, names: set[str]) -> None:
    assert mirror.no_wheel_names(reason) == names


def test_neither_wheel_nor_sdist_is_said_so() -> None:
    reason = "Because all versions of pywin32 have no source distribution and you require pywin32, ..."
    assert mirror.short_why(reason).startswith("neither a wheel for this platform nor an sdist (Because")
    assert mirror.no_wheel_names(reason) == set()


def test_lock_header_records_the_sdists(tmp_path: Path) -> None:
    lock = tmp_path / "cp312-x.txt"
    lock.write_text(mirror.lock_header("cp312-x", "ab" * 32, ["zeta", "docopt"]) + "docopt==0.6.2 --hash=sha256:x\n")
    assert mirror.read_sdists(lock) == {"docopt", "zeta"}
    assert mirror.bb.read_fingerprint(lock) == "ab" * 32
    assert "wheels only but the sdists named below" in lock.read_text().splitlines()[0]
    lock.write_text(mirror.lock_header("cp312-x", "cd" * 32, []))
    assert mirror.read_sdists(lock) == frozenset()
    assert mirror.SDISTS_PREFIX not in lock.read_text()


def test_sdist_pins_match_only_their_sdist() -> None:
    sdist, other = b"sdist bytes", b"other bytes"
    pin = _pin("docopt", "0.6.2", sdist)
    carried = mirror.Entry(LINUX, Path("x.txt"), (pin,), frozenset({"docopt"}))
    digest = hashlib.sha256(sdist).hexdigest()
    assert mirror.is_file_of("docopt-0.6.2.tar.gz", digest, pin, carried)
    assert not mirror.is_file_of("docopt-0.6.2.tar.gz", hashlib.sha256(other).hexdigest(), pin, carried)
    assert not mirror.is_file_of("docopt-0.6.3.tar.gz", digest, pin, carried)
    wheels_only = mirror.Entry(LINUX, Path("x.txt"), (pin,), frozenset())
    assert not mirror.is_file_of("docopt-0.6.2.tar.gz", digest, pin, wheels_only)
    assert mirror.lacking(wheels_only, {"docopt-0.6.2.tar.gz": digest}) == [pin]
    assert mirror.lacking(carried, {"docopt-0.6.2.tar.gz": digest}) == []


def test_summary_notes() -> None:
    note = mirror.sdist_note(_pin("docopt", "0.6.2", b"x"), ["setuptools>=40.8.0", "wheel"])
    assert note.startswith("sdist: docopt 0.6.2 (no wheel for this platform; built on the client")
    assert "setuptools>=40.8.0, wheel" in note and "compiler" in note
    pins = [_pin("setuptools", "80.9.0", b"s"), _pin("wheel", "0.45.1", b"w")]
    assert mirror.build_deps_note(pins) == "build deps added: setuptools 80.9.0, wheel 0.45.1"


# --------------------------------------------------------------------------- real index


@pytest.mark.skipif(os.environ.get("AIRGAP_NO_NETWORK") == "1", reason="AIRGAP_NO_NETWORK=1: no index")
def test_real_sdist_only_package_is_carried_with_its_build_deps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "mirror"
    root.mkdir()
    (root / "requirements.in").write_text("docopt==0.6.2\n")
    (root / "platforms.txt").write_text("3.12 x86_64-manylinux_2_28\n")
    assert mirror.main(["--artifacts", str(root)]) == 0
    out = capsys.readouterr().out
    assert "cp312-x86_64-manylinux_2_28: sdist: docopt 0.6.2 (no wheel for this platform" in out
    assert "cp312-x86_64-manylinux_2_28: build deps added: " in out and "setuptools " in out
    lock = root / "locks" / "cp312-x86_64-manylinux_2_28.txt"
    build = root / "locks" / "cp312-x86_64-manylinux_2_28-build.txt"
    assert mirror.read_sdists(lock) == {"docopt"}
    build_pins = {p.name: p for p in mirror.bb.parse_pins(build.read_text())}
    assert {"setuptools", "wheel"} <= set(build_pins)
    files = mirror.bb.hash_dir(root / "files")
    (docopt,) = mirror.bb.parse_pins(lock.read_text())
    assert docopt.name == "docopt" and files["docopt-0.6.2.tar.gz"] in docopt.hashes
    for pin in build_pins.values():
        assert any(mirror.bb.satisfies(f, d, pin, LINUX) for f, d in files.items()), pin.name
    sums = dict(reversed(line.split("  ", 1)) for line in (root / "SHA256SUMS").read_text().splitlines())
    listed = {f"files/{n}" for n in files} | {"locks/" + lock.name, "locks/" + build.name, "yanked.json"}
    assert listed == set(sums), "yanked.json (the carried files' yank marks, read from the same index) is listed"
    assert json.loads((root / "yanked.json").read_text()) == {}, "docopt 0.6.2 is not yanked"
    assert all(sums[f"files/{n}"] == d for n, d in files.items())
    assert mirror.main(["--artifacts", str(root), "--check"]) == 0
