"""pypi_common_unpack: files packed on the controller, each checked against its sha256 on the host and renamed into
place only when all are whole; links, unlisted names and paths out of the destination refused. The end-to-end
cases run the action plugin and the module through ansible-playbook on localhost."""

from __future__ import annotations

import grp
import hashlib
import io
import json
import os
import pwd
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleActionFail
from conftest import load_module, module_argv, run_playbook

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "roles" / "pypi_common" / "library" / "pypi_common_unpack.py"
ACTION = ROOT / "roles" / "pypi_common" / "action_plugins" / "pypi_common_unpack.py"
action = load_module("pypi_common_unpack_action", ACTION)
unpack_module = load_module("pypi_common_unpack_module", MODULE)
OWNER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tar_of(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    """A tar of members (a name with a NUL byte goes in a PAX path header, as a hostile tar would carry it)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name.replace("\x00", ""))
            if "\x00" in name:
                info.pax_headers = {"path": name}
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def run_module(tmp_path: Path, **params: Any) -> dict[str, Any]:
    args = tmp_path / f"args-{len(list(tmp_path.glob('args-*')))}.json"
    params = {"owner": OWNER, "group": GROUP, **params}
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": params}))
    done = subprocess.run(module_argv(MODULE, args), capture_output=True, text=True, check=False)
    return json.loads(done.stdout)


def leftovers(root: Path) -> list[str]:
    return [str(path) for path in root.rglob(".airgap-unpack-*")]


def dead_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_files_land_whole_with_their_mode_and_unlisted_files_are_pruned(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    (dest / "wheels").mkdir(parents=True)
    (dest / "wheels" / "old-1.0-py3-none-any.whl").write_bytes(b"old")
    (dest / "wheels" / "keep-dir").mkdir()
    files = {"wheels/a-1.0-py3-none-any.whl": b"wheel a", "locks/server-cp312.txt": b"lock"}
    archive = tar_of(tmp_path / "files.tar", files)
    result = run_module(
        tmp_path,
        archive=str(archive),
        dest=str(dest),
        files={name: sha(data) for name, data in files.items()},
        mode="0640",
        prune=["wheels", "locks"],
    )
    assert result["changed"] and sorted(result["written"]) == sorted(files), result
    assert result["pruned"] == ["wheels/old-1.0-py3-none-any.whl"], result
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
        assert (dest / name).stat().st_mode & 0o777 == 0o640
    assert (dest / "wheels" / "keep-dir").is_dir() and not leftovers(dest)


def test_one_bad_checksum_changes_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "packages"
    dest.mkdir()
    (dest / "a-1.0.tar.gz").write_bytes(b"served now")
    files = {"a-1.0.tar.gz": b"new bytes", "b-1.0.tar.gz": b"flipped"}
    archive = tar_of(tmp_path / "files.tar", files)
    sums = {"a-1.0.tar.gz": sha(b"new bytes"), "b-1.0.tar.gz": sha(b"what was sent")}
    result = run_module(tmp_path, archive=str(archive), dest=str(dest), files=sums)
    assert result.get("failed") and "b-1.0.tar.gz: sha256" in result["msg"], result
    assert "stopped while checking the files" in result["msg"] and "No file was renamed into place" in result["msg"]
    # The first file was whole, but nothing is renamed until every file is: the old bytes are still served.
    assert (dest / "a-1.0.tar.gz").read_bytes() == b"served now"
    assert not (dest / "b-1.0.tar.gz").exists() and not leftovers(dest)


# The controller lists the names it packed (plain relative paths, checked by the action plugin) and sends the tar
# separately: a tar changed on the way can hold hostile member names under listed names that look safe.
@pytest.mark.parametrize(
    ("members", "links", "listed", "needle"),
    [
        ({"../escape.whl": b"x"}, {}, ["escape.whl"], "the archive member '../escape.whl' is not a plain relative"),
        ({"/etc/passwd": b"x"}, {}, ["etc/passwd"], "the archive member '/etc/passwd' is not a plain relative path"),
        ({"sub/../../escape.whl": b"x"}, {}, ["sub/escape.whl"], "member 'sub/../../escape.whl' is not a plain"),
        ({"a\x00b.whl": b"x"}, {}, ["ab.whl"], "the archive member 'a\\x00b.whl' holds a NUL byte"),
        ({"a\x00b.whl": b"x"}, {}, ["a\x00b.whl"], "the listed path 'a\\x00b.whl' holds a NUL byte"),
        ({"../escape.whl": b"x"}, {}, ["../escape.whl"], "the listed path '../escape.whl' is not a plain relative"),
        ({"x.whl": b"x"}, {}, ["\ud800.whl"], "the listed path '\\ud800.whl' cannot be a file name"),
        ({"a.whl": b"x", "b.whl": b"y"}, {}, ["a.whl"], "'b.whl', which is not listed"),
        ({}, {"a.whl": "/etc/passwd"}, ["a.whl"], "a.whl in the archive is not a regular file"),
        ({"a.whl": b"x"}, {}, ["a.whl", "c.whl"], "the archive lacks c.whl"),
    ],
)
def test_bad_archives_are_refused_before_anything_lands(
    tmp_path: Path, members: dict[str, bytes], links: dict[str, str], listed: list[str], needle: str
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = tar_of(tmp_path / "files.tar", members, links)
    sums = {name: sha(b"x") for name in listed}
    result = run_module(tmp_path, archive=str(archive), dest=str(dest), files=sums)
    assert result.get("failed") and needle in result["msg"], result
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "escape.whl").exists()


def test_a_repeated_member_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = tmp_path / "files.tar"
    with tarfile.open(archive, "w") as tar:
        for _ in range(2):
            info = tarfile.TarInfo("a.whl")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    result = run_module(tmp_path, archive=str(archive), dest=str(dest), files={"a.whl": sha(b"x")})
    assert result.get("failed") and "'a.whl', which is not listed or is repeated" in result["msg"], result
    assert list(dest.iterdir()) == []


class CountedName(str):
    """A member name that counts how often it is compared for equality."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountedName.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


class CountedNameInfo(tarfile.TarInfo):
    """A tar member whose name is a CountedName."""

    @property
    def name(self) -> str:
        return self._counted_name

    @name.setter
    def name(self, value: str) -> None:
        self._counted_name = CountedName(value)


def test_member_names_are_compared_a_few_times_each_not_with_every_earlier_member(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The repeated-name check compared each member with every member before it: n * (n - 1) / 2 comparisons, about
    # 25 s of CPU for 20,000 files. Counted, not timed: a set lookup compares a name only on a hash match.
    def light(directory: int, name: str, source: Any, **_: Any) -> str:  # an empty file, no hashing nor fsync
        temporary = f".airgap-unpack-{os.getpid()}-0000000000000000-{name}"
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=directory))
        return temporary

    monkeypatch.setattr(unpack_module, "write_temporary", light)
    monkeypatch.setattr(tarfile.TarFile, "tarinfo", CountedNameInfo)
    names = [f"p{index}-1.0.tar.gz" for index in range(2_000)]
    archive = tmp_path / "files.tar"
    with tarfile.open(archive, "w") as tar:
        for name in names:
            tar.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    dest = tmp_path / "dest"
    dest.mkdir()
    CountedName.comparisons = 0
    unpack_module.unpack(
        str(archive), str(dest), dict.fromkeys(names, sha(b"")), (os.getuid(), os.getgid()), (0o644, 0o755)
    )
    assert len(list(dest.iterdir())) == len(names)
    assert CountedName.comparisons < 10 * len(names), f"{CountedName.comparisons} name comparisons"


def test_links_on_the_host_are_never_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "bundle"
    dest.mkdir()
    (dest / "wheels").symlink_to(elsewhere)  # a planted link on the way to a file
    archive = tar_of(tmp_path / "files.tar", {"wheels/a.whl": b"x"})
    result = run_module(tmp_path, archive=str(archive), dest=str(dest), files={"wheels/a.whl": sha(b"x")})
    assert result.get("failed"), result
    assert (
        f"stopped while checking the files: wheels in {dest} is a symbolic link, which is not followed"
        in (result["msg"])
    )
    assert list(elsewhere.iterdir()) == []
    linked = tmp_path / "linked"
    linked.symlink_to(elsewhere)  # the destination itself a link
    archive = tar_of(tmp_path / "flat.tar", {"a.whl": b"x"})
    result = run_module(tmp_path, archive=str(archive), dest=str(linked), files={"a.whl": sha(b"x")})
    assert result.get("failed"), result
    assert f"the destination {linked} is a symbolic link, which is not followed" in result["msg"]
    assert list(elsewhere.iterdir()) == []
    (dest / "locks").write_text("a file where a directory goes")
    archive = tar_of(tmp_path / "locks.tar", {"locks/l.txt": b"x"})
    result = run_module(tmp_path, archive=str(archive), dest=str(dest), files={"locks/l.txt": sha(b"x")})
    assert f"locks in {dest} cannot be opened as a directory: Not a directory" in result["msg"], result


def test_a_failed_rename_names_the_files_renamed_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    dest = tmp_path / "packages"
    (dest / "c.whl").mkdir(parents=True)  # a directory where a file goes: its rename fails
    files = {"a.whl": b"new a", "b.whl": b"new b", "c.whl": b"new c", "d.whl": b"new d"}
    archive = tar_of(tmp_path / "files.tar", files)
    result = run_module(tmp_path, archive=str(archive), dest=str(dest), files={n: sha(d) for n, d in files.items()})
    assert result.get("failed"), result
    assert (
        f"Unpacking into {dest} stopped while renaming the files into place: c.whl: Is a directory; renamed 2 of 4 "
        "files before the failure: a.whl, b.whl;" in result["msg"]
    ), result
    assert result["msg"].endswith("run again to finish.") and "No file was renamed" not in result["msg"]
    assert (dest / "a.whl").read_bytes() == b"new a" and (dest / "b.whl").read_bytes() == b"new b"
    assert not (dest / "d.whl").exists() and (dest / "c.whl").is_dir()
    assert not leftovers(dest)


def test_a_failed_prune_names_what_it_removed(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    (dest / "locks").mkdir(parents=True)
    (dest / "locks" / "old.txt").write_text("old")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.whl").write_text("not the bundle's")
    (dest / "wheels").symlink_to(elsewhere)
    archive = tar_of(tmp_path / "files.tar", {"locks/l.txt": b"x"})
    result = run_module(
        tmp_path, archive=str(archive), dest=str(dest), files={"locks/l.txt": sha(b"x")}, prune=["locks", "wheels"]
    )
    assert result.get("failed"), result
    assert (
        f"stopped while pruning unlisted files: wheels in {dest} is a symbolic link, which is not followed; all 1 "
        "files had been renamed into place; removed 1 unlisted files before the failure: locks/old.txt; run again"
    ) in result["msg"], result
    assert result["written"] == ["locks/l.txt"] and result["pruned"] == ["locks/old.txt"]
    assert (dest / "locks" / "l.txt").read_bytes() == b"x" and (elsewhere / "keep.whl").exists()


def test_a_killed_runs_temporary_files_are_removed_but_links_and_live_writers_are_not(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    wheels = dest / "wheels"
    wheels.mkdir(parents=True)
    dead = dead_pid()
    target = tmp_path / "target"
    target.write_text("kept")
    stale = [f".airgap-unpack-{dead}-0123456789abcdef-a.whl", f".airgap-unpack-{dead}-old-style.whl"]
    kept = [
        f".airgap-unpack-{os.getpid()}-0123456789abcdef-b.whl",  # a writer that still runs
        ".airgap-unpack-notapid",
    ]
    for name in stale + kept:
        (wheels / name).write_text("partial")
    (wheels / f".airgap-unpack-{dead}-0123456789abcdef-link").symlink_to(target)
    (wheels / f".airgap-unpack-{dead}-0123456789abcdef-dir").mkdir()
    (dest / f".airgap-unpack-{dead}-fedcba9876543210-top.whl").write_text("partial")
    archive = tar_of(tmp_path / "files.tar", {"wheels/a.whl": b"x"})
    result = run_module(tmp_path, archive=str(archive), dest=str(dest), files={"wheels/a.whl": sha(b"x")})
    assert result["changed"] and result["written"] == ["wheels/a.whl"], result
    assert sorted(result["stale"]) == sorted(
        [f".airgap-unpack-{dead}-fedcba9876543210-top.whl"] + [f"wheels/{name}" for name in stale]
    )
    left = sorted(path.name for path in wheels.iterdir())
    assert left == sorted(
        [*kept, "a.whl", f".airgap-unpack-{dead}-0123456789abcdef-dir", f".airgap-unpack-{dead}-0123456789abcdef-link"]
    )
    assert target.read_text() == "kept"


def test_temporary_names_are_random_and_fit_in_255_bytes(tmp_path: Path) -> None:
    name = "\u00e9" * 120 + ".whl"  # 244 bytes in UTF-8: a valid name, but not with a prefix cut by characters
    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids = (os.getuid(), os.getgid())
        first, second = (
            unpack_module.write_temporary(
                directory, name, io.BytesIO(b"x"), digest=sha(b"x"), ids=ids, mode=0o644, what=name
            )
            for _ in range(2)
        )
    finally:
        os.close(directory)
    assert first != second  # the same pid and name twice: the random part keeps them apart
    for temporary in (first, second):
        assert len(temporary.encode()) <= 255 and (tmp_path / temporary).read_bytes() == b"x"
    archive = tar_of(tmp_path / "files.tar", {name: b"y"})
    (tmp_path / "dest").mkdir()
    result = run_module(tmp_path, archive=str(archive), dest=str(tmp_path / "dest"), files={name: sha(b"y")})
    assert result.get("written") == [name], result
    assert (tmp_path / "dest" / name).read_bytes() == b"y" and not leftovers(tmp_path / "dest")


def test_sums_come_as_a_dict_or_sha256sums_text_and_every_file_needs_one() -> None:
    text = f"{'a' * 64}  wheels/a.whl\n{'b' * 64}  locks/l.txt\n"
    assert action.digests(text, ["locks/l.txt"]) == {"locks/l.txt": "b" * 64}
    assert action.digests({"x": "c" * 64}, ["x"]) == {"x": "c" * 64}
    with pytest.raises(AnsibleActionFail, match=re.escape("No sha256 is listed for wheels/z.whl")):
        action.digests(text, ["wheels/z.whl"])


def test_the_controller_packs_regular_files_only(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "real.whl").write_bytes(b"x")
    (tmp_path / "src" / "link.whl").symlink_to(tmp_path / "src" / "real.whl")
    with pytest.raises(AnsibleActionFail, match="Cannot read"):
        action.pack(tmp_path / "src", ["link.whl"], tmp_path / "out.tar")
    with pytest.raises(AnsibleActionFail, match="is not a path relative to"):
        action.pack(tmp_path / "src", ["../src/real.whl"], tmp_path / "out2.tar")


def test_through_ansible_playbook_check_mode_writes_nothing_then_the_files_arrive(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "wheels").mkdir(parents=True)
    data = {"wheels/a-1.0-py3-none-any.whl": b"wheel a", "wheels/b-2.0-py3-none-any.whl": b"wheel b" * 1000}
    for name, content in data.items():
        (src / name).write_bytes(content)
    sums = "".join(f"{sha(content)}  {name}\n" for name, content in data.items())
    dest = tmp_path / "dest"  # fresh: nothing of this bundle yet, one file for prune to remove
    (dest / "wheels").mkdir(parents=True)
    (dest / "wheels" / "stale.whl").write_bytes(b"stale")
    task = {
        "pypi_common_unpack": {
            "src": str(src),
            "files": sorted(data),
            "sums": sums,
            "dest": str(dest),
            "owner": OWNER,
            "group": GROUP,
            "prune": ["wheels"],
        },
        "register": "unpacked",
    }
    before = sorted([str(dest / "wheels"), str(dest / "wheels" / "stale.whl")])
    play = {
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        # The tests' own Python, which has Ansible (not whatever interpreter discovery would find).
        "vars": {"ansible_python_interpreter": sys.executable},
        "roles": ["pypi_common"],
        "tasks": [
            # Check mode first, on the fresh destination: it reports, and writes or removes nothing.
            {**task, "check_mode": True, "register": "planned"},
            {
                "ansible.builtin.find": {"paths": str(dest), "recurse": True, "hidden": True, "file_type": "any"},
                "register": "after_check",
            },
            {
                "ansible.builtin.assert": {
                    "that": [
                        "planned is changed",
                        "planned.msg is search('would be copied')",
                        f"after_check.files | map(attribute='path') | sort == {before}",
                    ]
                }
            },
            task,
            {"name": "show", "ansible.builtin.debug": {"var": "unpacked"}},
            {"ansible.builtin.assert": {"that": ["unpacked is changed"]}},
        ],
    }
    done = run_playbook([play], tmp_path / "play.yml")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    for name, content in data.items():
        assert (dest / name).read_bytes() == content
    assert not (dest / "wheels" / "stale.whl").exists() and not leftovers(dest)
