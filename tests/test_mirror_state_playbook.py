"""The carried mirror on the index hosts, run for real on localhost against an index laid out as the role lays it out
(test_yank_playbook.make_host): its yank marks (mirror/yanked.json) applied through the yank file by the role's
`mirror_state` entry point (site.yml runs it after loading the mirror), a yank made by hand left alone, an unfit
yanked.json refused before any change, and mirror.yml never dropping a file a newer mirror lock omits."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from test_yank_playbook import audit_records, changed, make_host
from test_yank_playbook import yank as run

from scripts.demo_wheel import build_wheel

OLD, NEW = "demo-1.0-py3-none-any.whl", "demo-2.0-py3-none-any.whl"


def make_mirror(base: Path, wheels: dict[str, Path], yanked: object | None) -> Path:
    """A carried mirror: files/ with the given wheels, yanked.json (unless None) and their SHA256SUMS."""
    mirror = base / "mirror"
    shutil.rmtree(mirror, ignore_errors=True)
    (mirror / "files").mkdir(parents=True)
    for name, source in wheels.items():
        shutil.copy(source, mirror / "files" / name)
    listed = [f"files/{name}" for name in sorted(wheels)]
    if yanked is not None:
        text = yanked if isinstance(yanked, str) else json.dumps(yanked)
        (mirror / "yanked.json").write_text(text)
        listed.append("yanked.json")
    sums = "".join(f"{hashlib.sha256((mirror / rel).read_bytes()).hexdigest()}  {rel}\n" for rel in sorted(listed))
    (mirror / "SHA256SUMS").write_text(sums)
    return mirror


def playbook(base: Path, mirror: Path, tasks_from: str = "mirror_state") -> str:
    """A play that runs the role's entry point with the mirror; for `mirror`, after the comparison site.yml's
    files call makes (main.yml), as site.yml does."""
    before = []
    if tasks_from == "mirror":
        lines = (mirror / "SHA256SUMS").read_text().splitlines()
        sums = "".join(line.replace("  files/", "  ") + "\n" for line in lines if "  files/" in line)
        compare = {"dir": "{{ pypi_server_packages_dir }}", "sums": sums}
        before = [
            {
                "name": "Compare the packages directory with the mirror, as main.yml's files call does",
                "pypi_common_files": {"paths": [], "compare": compare},
                "register": "__pypi_server_files",
            }
        ]
    play = {
        "hosts": "pypi_servers",
        "gather_facts": False,
        "roles": ["pypi_common"],
        "vars": {"pypi_server_mirror_dir": str(mirror)},
        "tasks": [
            *before,
            {
                "name": "The entry point",
                "ansible.builtin.include_role": {"name": "pypi_server", "tasks_from": tasks_from},
            },
        ],
    }
    path = base / f"{tasks_from}.yml"
    path.write_text(json.dumps([play]))
    return str(path)


def yank_file(host: dict[str, Path]) -> dict:
    return json.loads(host["yanked"].read_text())["projects"] if host["yanked"].exists() else {}


def test_a_mirror_yank_ends_on_the_page_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    host = make_host(tmp_path, "1.0", "2.0")
    mirror = make_mirror(tmp_path, {OLD: host["packages"] / OLD, NEW: host["packages"] / NEW}, {NEW: "broken build"})
    play = playbook(tmp_path, mirror)

    done = run(host, "--check", playbook=play)
    assert changed(done) == 1 and "demo 2.0 would be yanked by the mirror: broken build" in done.stdout
    assert not host["yanked"].exists() and "data-yanked" not in host["page"].read_text(), "check mode writes nothing"

    done = run(host, playbook=play)
    assert changed(done) == 1 and "demo 2.0 yanked by the mirror: broken build" in done.stdout, done.stdout[-3000:]
    assert 'data-yanked="broken build"' in host["page"].read_text(), "on the page on return"
    assert yank_file(host)["demo"]["2.0"]["origin"] == "mirror"
    assert audit_records(host) == [("yank", "mirror", "ansible", "demo", "2.0")], "the account is the mirror"
    mirrored = json.loads((host["packages"].parent / "mirrored.json").read_text())
    assert mirrored["files"] == [OLD, NEW]

    done = run(host, playbook=play)
    assert changed(done) == 0, done.stdout[-3000:]
    assert changed(run(host, "--check", playbook=play)) == 0
    assert len(audit_records(host)) == 1


def test_a_hand_yank_is_never_changed_and_a_mirror_yank_the_index_took_off_is_taken_off(tmp_path: Path) -> None:
    host = make_host(tmp_path, "1.0", "2.0")
    assert changed(run(host, "-e", "project=demo", "-e", "version=1.0", "-e", "reason=by-hand")) == 1
    wheels = {OLD: host["packages"] / OLD, NEW: host["packages"] / NEW}
    done = run(host, playbook=playbook(tmp_path, make_mirror(tmp_path, wheels, {OLD: "upstream", NEW: "upstream"})))
    assert changed(done) == 1
    projects = yank_file(host)
    assert projects["demo"]["1.0"]["reason"] == "by-hand" and "origin" not in projects["demo"]["1.0"]
    assert projects["demo"]["2.0"] == dict(projects["demo"]["2.0"], reason="upstream", origin="mirror")

    # The public index took both marks off: only the mirror's own yank goes.
    done = run(host, playbook=playbook(tmp_path, make_mirror(tmp_path, wheels, {})))
    assert changed(done) == 1 and "demo 2.0 no longer yanked" in done.stdout, done.stdout[-3000:]
    assert list(yank_file(host)["demo"]) == ["1.0"], "the hand yank stays"
    page = host["page"].read_text()
    assert 'data-yanked="by-hand"' in page and page.count("data-yanked") == 1
    assert [r[:2] for r in audit_records(host)] == [("yank", host_user(host)), ("yank", "mirror"), ("unyank", "mirror")]


def host_user(host: dict[str, Path]) -> str:
    return audit_records(host)[0][1]


def test_an_unfit_yanked_json_stops_before_any_change(tmp_path: Path) -> None:
    host = make_host(tmp_path, "1.0", "2.0")
    wheels = {OLD: host["packages"] / OLD}
    for yanked, named in [
        ({NEW: "not carried"}, f"yanked.json names '{NEW}', a file the mirror does not carry"),
        ("{not json", "yanked.json: not JSON"),
        ({OLD: 3}, f"the reason of '{OLD}' is not a text"),
        ({OLD: "x" * 513}, "513 characters, at most 512"),
        ("[" + " " * (4 << 20) + "]", "yanked.json: larger than 4 MiB"),
    ]:
        done = run(host, playbook=playbook(tmp_path, make_mirror(tmp_path, wheels, yanked)))
        assert done.returncode != 0 and named in done.stdout, done.stdout[-3000:]
        assert not host["yanked"].exists() and not (host["packages"].parent / "mirrored.json").exists()


def test_loading_a_newer_mirror_that_omits_a_file_keeps_it_in_the_index(tmp_path: Path) -> None:
    """mirror.yml copies only what the index lacks: a file of an older mirror stays on the index and its pages."""
    host = make_host(tmp_path, "1.0", "2.0")
    newer = tmp_path / "newer"
    newer.mkdir()
    build_wheel(newer, "demo", "3.0")
    third = "demo-3.0-py3-none-any.whl"
    mirror = make_mirror(tmp_path, {third: newer / third}, {})  # the newer lock carries 3.0 only
    done = run(host, playbook=playbook(tmp_path, mirror, tasks_from="mirror"))
    assert done.returncode == 0, done.stdout[-3000:]
    assert sorted(p.name for p in host["packages"].iterdir()) == [OLD, NEW, third], "nothing was dropped"
    assert changed(done) == 1, "3.0 copied in"
    assert changed(run(host, playbook=playbook(tmp_path, mirror))) == 1  # the pages follow (mirror_state syncs)
    page = host["page"].read_text()
    assert OLD in page and NEW in page and third in page
