"""Yanking (PEP 592) in the static read path (roles/pypi_server/files/airgap_pypi_index.py): the yank file, the
pages that show it, the yank and unyank commands with their refusals, and what a bad yank file does."""

from __future__ import annotations

import html.parser
import json
import logging
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import ROOT, load_module
from test_static_index import PROJECT_SCHEMA, call, links_of, upstream

from scripts.demo_wheel import build_wheel

MODULE = ROOT / "roles" / "pypi_server" / "files" / "airgap_pypi_index.py"
index = load_module("airgap_pypi_index", MODULE)

HOSTILE = '<script>alert("x")</script> & more'


class Text(html.parser.HTMLParser):
    """The visible text of a page (title, scripts and styles left out), whitespace collapsed."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._hidden += tag in ("script", "style", "title")

    def handle_endtag(self, tag: str) -> None:
        self._hidden -= tag in ("script", "style", "title")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def visible(page: Path) -> str:
    parser = Text()
    parser.feed(page.read_text())
    return " ".join(" ".join(parser.parts).split())


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    """A data directory as the role lays it out: packages/ with two releases of demo and one of other, static/,
    and the place of yanked.json."""
    packages = tmp_path / "data" / "packages"
    packages.mkdir(parents=True)
    build_wheel(packages, "demo", "1.0")
    build_wheel(packages, "demo", "2.0")
    build_wheel(packages, "other", "1.0")
    return {"packages": packages, "tree": tmp_path / "data" / "static", "yanked": tmp_path / "data" / "yanked.json"}


def tree_of(site: dict[str, Path]) -> Any:
    return index.Tree(str(site["packages"]), str(site["tree"]), yanked=str(site["yanked"]))


def write_yanks(path: Path, projects: dict[str, dict[str, str]]) -> None:
    """A yank file as the commands write it: {project: {version: reason}}."""
    document = {
        "format": 1,
        "projects": {
            project: {
                version: {"reason": reason, "when": "2024-01-01T00:00:00Z"} for version, reason in releases.items()
            }
            for project, releases in projects.items()
        },
    }
    path.write_text(json.dumps(document))


def cli(site: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    """The module's command line, as the role runs it."""
    paths = ("--packages", str(site["packages"]), "--tree", str(site["tree"]))
    if args and args[0] in ("yank", "unyank"):
        argv = [args[0], *paths, "--yanked", str(site["yanked"]), *args[1:]]
    else:
        argv = [*paths, *args]
    return subprocess.run([sys.executable, str(MODULE), *argv], capture_output=True, text=True, timeout=60, check=False)


def sync(site: dict[str, Path]) -> None:
    """The sync as the role runs it (no subcommand), with the yank file."""
    done = cli(site, "--yanked", str(site["yanked"]))
    assert done.returncode == 0 and done.stdout.startswith("changed: "), done.stdout + done.stderr


def result_line(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def demo_links(site: dict[str, Path]) -> dict[str, dict[str, str | None]]:
    return {text: attrs for attrs, text in links_of(site["tree"] / "simple" / "demo" / "index.html")}


def demo_json(site: dict[str, Path]) -> dict[str, Any]:
    document = json.loads((site["tree"] / "simple" / "demo" / "index.json").read_text())
    jsonschema.validate(document, PROJECT_SCHEMA)
    return {item["filename"]: item["yanked"] for item in document["files"]}


NEW, OLD = "demo-2.0-py3-none-any.whl", "demo-1.0-py3-none-any.whl"


def test_a_yanked_release_carries_data_yanked_with_its_escaped_reason(site: dict[str, Path]) -> None:
    write_yanks(site["yanked"], {"demo": {"2.0": HOSTILE}})
    assert tree_of(site).sync() == ["demo", "other"]
    links = demo_links(site)
    assert links[NEW]["data-yanked"] == HOSTILE, "html.parser unescapes: the attribute holds exactly the reason"
    assert "data-yanked" not in links[OLD]
    page = (site["tree"] / "simple" / "demo" / "index.html").read_text()
    assert (
        "<script>" not in page and 'data-yanked="&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more"' in page
    )
    assert "data-yanked" not in (site["tree"] / "simple" / "other" / "index.html").read_text()


def test_a_release_yanked_without_a_reason_has_an_empty_data_yanked(site: dict[str, Path]) -> None:
    write_yanks(site["yanked"], {"demo": {"2.0": ""}})
    tree_of(site).sync()
    assert demo_links(site)[NEW]["data-yanked"] == ""
    assert 'data-yanked=""' in (site["tree"] / "simple" / "demo" / "index.html").read_text()


def test_json_yanked_is_the_reason_or_true_and_false_otherwise(site: dict[str, Path]) -> None:
    write_yanks(site["yanked"], {"demo": {"2.0": HOSTILE}})
    tree = tree_of(site)
    tree.sync()
    assert demo_json(site) == {OLD: False, NEW: HOSTILE}
    write_yanks(site["yanked"], {"demo": {"2.0": ""}})
    tree.sync()
    assert demo_json(site) == {OLD: False, NEW: True}, "PEP 691: true when no reason was given"


def test_browse_pages_show_the_yanked_release_with_its_escaped_reason(site: dict[str, Path]) -> None:
    write_yanks(site["yanked"], {"demo": {"2.0": HOSTILE}})
    tree_of(site).sync()
    front = site["tree"] / "index.html"
    project = site["tree"] / "browse" / "demo.html"
    for page in (front, project):
        assert "<script>alert" not in page.read_text()
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in page.read_text()
    # The front page's latest is what pip installs by default; the yanked newer release is named beside it.
    assert f"demo 1.0 2.0 yanked: {HOSTILE} airgap-pypi demo package 2" in visible(front)
    text = visible(project)
    assert text.startswith("airgap-pypi private package index demo 1.0 airgap-pypi demo package"), text[:200]
    assert "demo==1.0" in text, "the install line pins the latest release that is not yanked"
    assert f"2.0 yanked: {HOSTILE} File" in text and "1.0 File" in text


def test_a_project_with_every_release_yanked_shows_its_newest_as_yanked(site: dict[str, Path]) -> None:
    write_yanks(site["yanked"], {"other": {"1.0": "withdrawn"}})
    tree_of(site).sync()
    assert "other 1.0 yanked: withdrawn" in visible(site["tree"] / "index.html")
    assert visible(site["tree"] / "browse" / "other.html").startswith(
        "airgap-pypi private package index other 1.0 yanked: withdrawn"
    )


def page_ids(site: dict[str, Path], project: str) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of a project's pages: a page written again gets a new inode (temporary file + rename)."""
    pages = [f"simple/{project}/index.html", f"simple/{project}/index.json", f"browse/{project}.html"]
    return {name: ((site["tree"] / name).stat().st_ino, (site["tree"] / name).stat().st_mtime_ns) for name in pages}


def test_only_the_project_whose_yank_entries_changed_is_rewritten(site: dict[str, Path]) -> None:
    tree = tree_of(site)
    tree.sync()
    other = page_ids(site, "other")
    demo = page_ids(site, "demo")
    write_yanks(site["yanked"], {"demo": {"2.0": "broken"}})
    assert tree.sync() == ["demo"]
    assert page_ids(site, "other") == other, "the other project's pages were not written again"
    assert all(page_ids(site, "demo")[name] != demo[name] for name in demo), "every page of demo was written"
    assert tree_of(site).load_state()["yanked"] == {"demo": {"2.0": "broken"}}, "journalled after state.json"
    assert tree.sync() == [], "what the pages show is recorded: the same yank file changes nothing"
    write_yanks(site["yanked"], {"demo": {"2.0": "broken badly"}})
    assert tree.sync() == ["demo"], "a new reason is a change"
    write_yanks(site["yanked"], {"demo": {"2.0": "broken badly"}, "gone": {"1.0": "no files"}})
    assert tree.sync() == [], "an entry of a project without files changes no page"
    site["yanked"].unlink()
    assert tree.sync() == ["demo"]
    assert "data-yanked" not in (site["tree"] / "simple" / "demo" / "index.html").read_text()


def test_a_tree_without_a_yank_file_keeps_what_the_pages_show(site: dict[str, Path]) -> None:
    """A caller that does not know the yank file (an older restore, a plain sync) never unyanks anything."""
    write_yanks(site["yanked"], {"demo": {"2.0": "broken"}})
    tree_of(site).sync()
    done = cli(site, "--rebuild")
    assert done.returncode == 0 and done.stdout.startswith("changed: 2 project(s); 3 file(s)"), done.stdout
    assert demo_links(site)[NEW]["data-yanked"] == "broken"


def test_releases_match_by_pep_440_equality(site: dict[str, Path]) -> None:
    write_yanks(site["yanked"], {"demo": {"2.0.0": "spelled otherwise"}})
    tree_of(site).sync()
    assert demo_links(site)[NEW]["data-yanked"] == "spelled otherwise"
    assert "data-yanked" not in demo_links(site)[OLD]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "is not JSON"),
        (b"\xff\xfe", "is not JSON"),
        (b"[" * 100_000, "is not JSON"),
        (b'{"format": 2, "projects": {}}', "not a yank file of format 1"),
        (b'{"format": 1, "projects": []}', '"projects" is not an object'),
        (b'{"format": 1, "projects": {"Demo": {"2.0": {"reason": "", "when": ""}}}}', "'Demo' is not a normalised"),
        (b'{"format": 1, "projects": {"demo": {"2.0": {"reason": 1, "when": ""}}}}', 'not {"reason": TEXT'),
        (b'{"format": 1, "projects": {"demo": {"2.0": {"reason": "a\\u001bb", "when": ""}}}}', "U+001B"),
        (b'{"format": 1, "projects": {"demo": {"2.0": {"reason": "' + b"x" * 600 + b'", "when": ""}}}}', "600 char"),
        (b'{"format": 1, "projects": {"demo": {}}}', "not an object of versions"),
    ],
)
def test_a_malformed_yank_file_is_logged_and_shows_no_yanks(
    site: dict[str, Path], caplog: pytest.LogCaptureFixture, content: bytes, problem: str
) -> None:
    write_yanks(site["yanked"], {"demo": {"2.0": "broken"}})
    tree = tree_of(site)
    tree.sync()
    site["yanked"].write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="airgap_pypi_index"):
        assert tree.sync() == ["demo"], "the index keeps serving, with no release yanked"
    assert "data-yanked" not in (site["tree"] / "simple" / "demo" / "index.html").read_text()
    assert any(
        problem in record.getMessage() and str(site["yanked"]) in record.getMessage() for record in caplog.records
    )
    with pytest.raises(index.YankFileError, match=re.escape(problem)):
        index.read_yank_file(str(site["yanked"]))


def test_an_oversized_yank_file_is_refused_with_a_clear_error(
    site: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    write_yanks(site["yanked"], {"demo": {"2.0": "broken"}})
    tree = tree_of(site)
    tree.sync()
    with site["yanked"].open("ab") as handle:
        handle.write(b" " * (4 << 20))  # valid JSON still, but over the bound
    with pytest.raises(index.YankFileError, match="is larger than 4 MiB"):
        index.read_yank_file(str(site["yanked"]))
    with caplog.at_level(logging.WARNING, logger="airgap_pypi_index"):
        assert tree.sync() == ["demo"]
    assert any("larger than 4 MiB" in record.getMessage() for record in caplog.records)
    done = cli(site, "unyank", "--project", "demo", "--version", "2.0")
    assert done.returncode == 2 and "is larger than 4 MiB" in done.stderr, done.stderr
    assert site["yanked"].stat().st_size > 4 << 20, "refused: the file is left for the operator to look at"


def test_the_yank_file_is_never_read_through_a_link_or_from_a_fifo(
    site: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    write_yanks(elsewhere, {"demo": {"2.0": "planted"}})
    site["yanked"].symlink_to(elsewhere)
    with pytest.raises(index.YankFileError, match="is a symbolic link"):
        index.read_yank_file(str(site["yanked"]))
    with caplog.at_level(logging.WARNING, logger="airgap_pypi_index"):
        tree_of(site).sync()
    assert "data-yanked" not in (site["tree"] / "simple" / "demo" / "index.html").read_text()
    done = cli(site, "yank", "--project", "demo", "--version", "1.0")
    assert done.returncode == 2 and "is a symbolic link" in done.stderr
    assert site["yanked"].is_symlink() and "planted" in elsewhere.read_text(), "the link and its target stay"
    site["yanked"].unlink()
    os.mkfifo(site["yanked"])
    with pytest.raises(index.YankFileError, match="is not a regular file"):
        index.read_yank_file(str(site["yanked"]))  # returns at once: opened without waiting for a writer


def test_yank_and_unyank_rewrite_the_pages_before_they_return(site: dict[str, Path]) -> None:
    sync(site)
    done = result_line(cli(site, "yank", "--project", "Demo", "--version", "2.0", "--reason", HOSTILE))
    assert done["changed"] is True and done["project"] == "demo" and done["version"] == "2.0"
    assert done["pages"] == ["demo"] and done["reason"] == HOSTILE
    assert demo_links(site)[NEW]["data-yanked"] == HOSTILE
    document = json.loads(site["yanked"].read_text())
    assert document["format"] == 1 and list(document["projects"]) == ["demo"]
    entry = document["projects"]["demo"]["2.0"]
    assert entry["reason"] == HOSTILE and entry["when"].endswith("Z")
    assert stat.S_IMODE(site["yanked"].stat().st_mode) == 0o644
    assert not list(site["yanked"].parent.glob(".tmp-*")), "no temporary file is left"
    done = result_line(cli(site, "unyank", "--project", "demo", "--version", "2.0"))
    assert done["changed"] is True and done["pages"] == ["demo"]
    assert "data-yanked" not in demo_links(site)[NEW]
    assert json.loads(site["yanked"].read_text()) == {"format": 1, "projects": {}}


def test_yanking_again_with_the_same_reason_and_unyanking_what_is_not_yanked_are_no_ops(site: dict[str, Path]) -> None:
    result_line(cli(site, "yank", "--project", "demo", "--version", "2.0", "--reason", "broken"))
    before = site["yanked"].stat()
    again = result_line(cli(site, "yank", "--project", "demo", "--version", "2.0.0", "--reason", "broken"))
    assert again["changed"] is False and "already yanked" in again["message"], again
    assert site["yanked"].stat().st_ino == before.st_ino, "the file was not written again"
    other = result_line(cli(site, "yank", "--project", "demo", "--version", "2.0", "--reason", "worse"))
    assert other["changed"] is True, "another reason is a change"
    assert demo_links(site)[NEW]["data-yanked"] == "worse"
    nothing = result_line(cli(site, "unyank", "--project", "demo", "--version", "1.0"))
    assert nothing["changed"] is False and "is not yanked" in nothing["message"], nothing


def test_check_says_what_would_change_and_writes_nothing(site: dict[str, Path]) -> None:
    sync(site)
    pages = page_ids(site, "demo")
    done = result_line(cli(site, "yank", "--project", "demo", "--version", "2.0", "--reason", "x", "--check"))
    assert done["changed"] is True and done["check"] is True and "would be yanked" in done["message"]
    assert not site["yanked"].exists() and page_ids(site, "demo") == pages
    result_line(cli(site, "yank", "--project", "demo", "--version", "2.0", "--reason", "x"))
    written = site["yanked"].read_bytes()
    done = result_line(cli(site, "unyank", "--project", "demo", "--version", "2.0", "--check"))
    assert done["changed"] is True and "would no longer be yanked" in done["message"]
    assert site["yanked"].read_bytes() == written
    assert (
        result_line(cli(site, "yank", "--project", "demo", "--version", "2.0", "--reason", "x", "--check"))["changed"]
        is False
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("yank", "--project", "absent", "--version", "1.0"), "--project 'absent': the packages directory ("),
        (("yank", "--project", "demo", "--version", "3.0"), "--version '3.0': demo has no file of this version"),
        (("unyank", "--project", "demo", "--version", "3.0"), "--version '3.0': demo has no file of this version"),
        (("yank", "--project", "demo", "--version", "2.0", "--reason", "x" * 513), "513 characters, at most 512"),
        (("yank", "--project", "demo", "--version", "2.0", "--reason", "line\nbreak"), "U+000A at position 5"),
        (("yank", "--project", "demo", "--version", "2.0", "--reason", "bidi \u202e"), "U+202E at position 6"),
        (("yank", "--project", "../etc", "--version", "2.0"), "--project '../etc': not a project name"),
        (("yank", "--project", "demo", "--version", "2.0\x00"), "--version '2.0\\x00': the control character"),
        (("yank", "--project", "demo", "--version", ""), "--version '': empty"),
    ],
)
def test_each_refusal_names_the_bad_value_and_changes_nothing(
    site: dict[str, Path], args: tuple[str, ...], message: str
) -> None:
    if "\x00" in "".join(args):  # no NUL can pass through argv: the check itself, in-process
        with pytest.raises(index.Refusal, match=r"--version '2\.0\\x00'"):
            index.change_yank(tree_of(site), "demo", "2.0\x00", "", False)
        return
    write_yanks(site["yanked"], {"demo": {"1.0": "old"}})
    sync(site)
    before = site["yanked"].read_bytes()
    pages = page_ids(site, "demo")
    done = cli(site, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Nothing was changed." in done.stderr, done.stderr
    assert done.stdout == ""
    assert site["yanked"].read_bytes() == before and page_ids(site, "demo") == pages


def test_a_broken_yank_file_refuses_a_change_instead_of_losing_its_entries(site: dict[str, Path]) -> None:
    site["yanked"].write_text('{"format": 1, "projects": {"demo": ')
    done = cli(site, "yank", "--project", "demo", "--version", "2.0")
    assert done.returncode == 2 and f"{site['yanked']} is not JSON" in done.stderr and "fix or remove" in done.stderr
    assert site["yanked"].read_text() == '{"format": 1, "projects": {"demo": '


def test_the_entry_of_a_release_whose_files_are_gone_can_be_unyanked(site: dict[str, Path]) -> None:
    result_line(cli(site, "yank", "--project", "demo", "--version", "2.0", "--reason", "bad"))
    (site["packages"] / NEW).unlink()
    assert cli(site, "yank", "--project", "demo", "--version", "2.0").returncode == 2, "no file: no new yank"
    done = result_line(cli(site, "unyank", "--project", "demo", "--version", "2.0"))
    assert done["changed"] is True
    assert json.loads(site["yanked"].read_text())["projects"] == {}


def test_a_read_notices_a_changed_yank_file(site: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index, "RECHECK_SECONDS", 0.0)  # the index looks again at most once a second
    os.utime(site["packages"], (1_000_000, 1_000_000))  # an old directory: only the yank file can trigger a sync
    app = index.StaticIndex(upstream, str(site["packages"]), str(site["tree"]), yanked=str(site["yanked"]))
    app.index.sync()
    assert b"data-yanked" not in call(app, "/simple/demo/")[2]
    synced: list[bool] = []
    real = app.index.sync
    monkeypatch.setattr(app.index, "sync", lambda **kwargs: synced.append(True) or real(**kwargs))
    assert b"data-yanked" not in call(app, "/simple/demo/")[2]
    assert synced == [], "nothing changed: a read does not sync"
    write_yanks(site["yanked"], {"demo": {"2.0": "by hand"}})  # as if a yank's own sync had failed
    assert b'data-yanked="by hand"' in call(app, "/simple/demo/")[2]
    assert json.loads(call(app, "/simple/demo/", accept="application/vnd.pypi.simple.v1+json")[2])["files"][1][
        "yanked"
    ] == ("by hand")


def test_a_state_with_a_bad_yanked_record_is_rebuilt(site: dict[str, Path]) -> None:
    tree = tree_of(site)
    tree.sync()
    state = json.loads((site["tree"] / "state.json").read_text())
    state["yanked"] = {"demo": {"2.0": 1}}
    (site["tree"] / "state.json").write_text(json.dumps(state))
    assert tree_of(site).sync() == ["demo", "other"], "an unexpected state.json is never trusted"


def test_help_names_the_commands() -> None:
    done = subprocess.run([sys.executable, str(MODULE), "--help"], capture_output=True, text=True, check=True)
    assert "yank, unyank" in done.stdout and "--yanked" in done.stdout
    done = subprocess.run([sys.executable, str(MODULE), "yank", "--help"], capture_output=True, text=True, check=True)
    assert "--reason" in done.stdout and "--check" in done.stdout
