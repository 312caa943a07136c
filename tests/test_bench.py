"""The pure parts of scripts/bench.py: wrk output, the yardstick tree, ratios, goals and the report."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from scripts import bench, build_bundle
from scripts.demo_wheel import build_wheel

# Real `wrk -t2 -c8 -d10s --latency` output (a slow server: timeouts and 5xx responses included).
WRK_SLOW = """Running 10s test @ http://172.18.0.2:8080/simple/bench-pkg-0000/
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   651.02ms  102.33ms   1.20s    71.43%
    Req/Sec     6.20      3.01    10.00     60.00%
  Latency Distribution
     50%  650.23ms
     75%  700.10ms
     90%  800.00ms
     99%    1.10s
  121 requests in 10.02s, 1.01MB read
  Socket errors: connect 0, read 1, write 0, timeout 3
  Non-2xx or 3xx responses: 5
Requests/sec:     12.08
Transfer/sec:    103.21KB
"""
WRK_FAST = """Running 10s test @ http://127.0.0.1:41234/simple/
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    99.31us   45.12us   3.01ms   90.00%
    Req/Sec    38.71k     2.10k   42.00k    70.00%
  Latency Distribution
     50%   88.00us
     75%  110.00us
     90%  140.00us
     99%  301.00us
  770420 requests in 10.00s, 1.20GB read
Requests/sec:  77041.95
Transfer/sec:    122.90MB
"""


def test_parse_wrk_slow_server() -> None:
    result = bench.parse_wrk(WRK_SLOW)
    assert result == bench.WrkResult(
        requests=121,
        seconds=10.02,
        rps=12.08,
        p50_ms=650.23,
        p90_ms=800.0,
        p99_ms=1100.0,
        socket_errors=4,
        non_2xx=5,
    )


def test_parse_wrk_fast_server_in_microseconds() -> None:
    result = bench.parse_wrk(WRK_FAST)
    assert result.requests == 770420
    assert result.rps == 77041.95
    assert result.p50_ms == pytest.approx(0.088)
    assert result.p99_ms == pytest.approx(0.301)
    assert (result.socket_errors, result.non_2xx) == (0, 0)


def test_parse_wrk_without_a_finished_request_has_no_latency() -> None:
    text = WRK_SLOW.replace("121 requests in", "0 requests in").replace("12.08", "0.00")
    text = text.replace("650.23ms", "0.00us").replace("800.00ms", "0.00us").replace("1.10s", "0.00us")
    result = bench.parse_wrk(text)
    assert (result.requests, result.rps, result.p50_ms, result.p99_ms) == (0, 0.0, None, None)


def test_parse_wrk_refuses_other_output() -> None:
    with pytest.raises(ValueError, match="not wrk --latency output"):
        bench.parse_wrk("unable to connect to 172.18.0.2:8080 Connection refused\n")


@pytest.mark.parametrize(
    ("text", "ms"),
    [("71.00us", 0.071), ("650.23ms", 650.23), ("1.20s", 1200.0), ("2.00m", 120_000.0), ("-nan", None), ("", None)],
)
def test_duration_ms(text: str, ms: float | None) -> None:
    assert bench.duration_ms(text) == (pytest.approx(ms) if ms is not None else None)


def test_synthetic_names_nest_and_give_every_project_several_files() -> None:
    small, large = bench.synthetic_names(1000), bench.synthetic_names(10_000)
    assert len(small) == 1000 and len(large) == 10_000 and len(set(large)) == 10_000
    assert large[:1000] == small  # the 10,000-file set only adds files to the 1,000-file one
    target = [v for name, v in small if name == bench.TARGET_PROJECT]
    assert len(target) == bench.VERSIONS > 1
    with pytest.raises(ValueError, match="multiple of 10"):
        bench.synthetic_names(1005)


def test_write_mirror_is_a_checkable_mirror(tmp_path: Path) -> None:
    wheels = bench.build_synthetic(tmp_path / "built", 20)
    assert bench.write_mirror(tmp_path / "mirror", wheels) == 20
    done = subprocess.run(
        ["sha256sum", "--check", "--strict", "--quiet", "SHA256SUMS"], cwd=tmp_path / "mirror", check=False
    )
    assert done.returncode == 0
    # Rebuilding gives the same bytes, so a second load of the mirror copies nothing.
    again = bench.build_synthetic(tmp_path / "again", 20)
    assert [w.read_bytes() for w in again] == [w.read_bytes() for w in wheels]


def make_tree(tmp_path: Path) -> tuple[Path, list[Path]]:
    files = [build_wheel(tmp_path / "src", "Bench_Pkg.Zero", f"1.0.{v}") for v in range(3)]
    files.append(build_wheel(tmp_path / "src", "other-pkg", "2.0"))
    notes = tmp_path / "src" / "notes.txt"
    notes.write_text("not a distribution\n")
    root = tmp_path / "tree"
    counts = bench.build_yardstick_tree([*files, notes], root)
    assert counts == {"projects": 2, "files": 4}
    return root, files


def test_yardstick_tree_layout_and_hashes(tmp_path: Path) -> None:
    root, files = make_tree(tmp_path)
    assert bench.hrefs((root / "simple" / "index.html").read_text()) == ["bench-pkg-zero/", "other-pkg/"]
    page = (root / "simple" / "bench-pkg-zero" / "index.html").read_text()
    links = bench.hrefs(page)
    assert len(links) == 3
    for link, wheel in zip(links, files[:3], strict=True):
        path, fragment = urllib.parse.urldefrag(link)
        assert path == f"../../packages/{wheel.name}"
        assert fragment == "sha256=" + hashlib.sha256(wheel.read_bytes()).hexdigest()
        assert (root / "simple" / "bench-pkg-zero" / path).resolve().read_bytes() == wheel.read_bytes()
    assert not (root / "packages" / "notes.txt").exists()


def test_pip_installs_from_the_yardstick_tree(tmp_path: Path) -> None:
    """A real pip reads the tree as an index (file:// URL, no network) and checks the sha256 fragments."""
    root, files = make_tree(tmp_path)
    env = build_bundle.scrubbed_env(os.environ)
    url = (root / "simple").as_uri() + "/"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--index-url",
            url,
            "-d",
            str(tmp_path / "dl"),
            "bench-pkg-zero==1.0.1",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in (tmp_path / "dl").iterdir()] == [files[1].name]


def test_file_url_resolves_the_last_file_link() -> None:
    page = '<a href="../../packages/x-1.0-py3-none-any.whl#sha256=ab">x</a><a href="/p/x-2.0-py3-none-any.whl#md5=1">'
    assert bench.file_url("http://h:1/simple/x/", page) == "http://h:1/p/x-2.0-py3-none-any.whl"
    assert bench.file_url("http://h:1/simple/x/", '<a href="../">up</a>') is None


def test_yardstick_conf_serves_the_tree_and_nothing_of_the_product(tmp_path: Path) -> None:
    conf = bench.nginx_conf(str(tmp_path), "/srv/tree", 80, workers=2)
    assert "root /srv/tree;" in conf and "listen 80;" in conf and "index index.html;" in conf
    assert "airgap" not in conf.lower()  # the yardstick is plain nginx, not the front server's site
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        pytest.skip("nginx is not installed here (the bench runs it in a container)")
    (tmp_path / "nginx.conf").write_text(conf)
    checked = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


def test_yardstick_commands_write_the_conf_verbatim_and_start_it() -> None:
    conf = bench.nginx_conf(bench.YARDSTICK_PREFIX, bench.YARDSTICK_ROOT, bench.YARDSTICK_PORT, workers=2)
    script = bench.yardstick_commands(conf)
    assert subprocess.run(["sh", "-n", "-c", script], check=False).returncode == 0
    assert f"<<'AIRGAP_PYPI_BENCH_EOF'\n{conf}AIRGAP_PYPI_BENCH_EOF\n" in script  # quoted: written verbatim
    assert f"nginx -p {bench.YARDSTICK_PREFIX} " in script


def row(server: str, files: int, path: str, rps: float, p99: float | None = 1.0) -> dict[str, object]:
    return {"server": server, "files": files, "path": path, "rps": rps, "p50_ms": 0.5, "p99_ms": p99}


READS = [
    row("nginx", 10_000, "/simple/<project>/", 50_000.0),
    row("default", 10_000, "/simple/<project>/", 2_000.0, p99=12.0),
    row("baseline", 10_000, "/simple/<project>/", 10.0, p99=900.0),
    row("nginx", 10_000, "file", 40_000.0),
    row("default", 10_000, "file", 800.0),
]


def test_add_ratios_take_the_nginx_run_measured_next_to_each_server() -> None:
    rows = [
        {**row("nginx", 10_000, "file", 40_000.0), "paired_with": "default"},
        row("default", 10_000, "file", 800.0),
        {**row("nginx", 10_000, "file", 20_000.0), "paired_with": "front"},
        row("front", 10_000, "file", 18_000.0),
    ]
    ratios = {r["server"]: r.get("x_nginx") for r in bench.add_ratios(rows) if r["server"] != "nginx"}
    assert ratios == {"default": 0.02, "front": 0.9}


def test_add_ratios_against_nginx_and_the_baseline() -> None:
    rows = {(r["server"], r["path"]): r for r in bench.add_ratios(READS)}
    assert rows["default", "/simple/<project>/"]["x_nginx"] == 0.04
    assert rows["default", "/simple/<project>/"]["x_baseline"] == 200.0
    assert rows["baseline", "/simple/<project>/"]["x_nginx"] == 0.0002
    assert "x_baseline" not in rows["baseline", "/simple/<project>/"]
    assert "x_nginx" not in rows["nginx", "file"]
    assert rows["default", "file"]["x_baseline"] is None  # no baseline row for that path


def test_goals_from_measured_sections() -> None:
    sections = {
        "provision": {"first_run_s": 34.0, "rerun_s": 19.0},
        "hosts4": {"first_run_s": 61.2},
        "reads": {"rows": bench.add_ratios(READS), "deployments": {"front": "not available (no variable)"}},
        "pip": {"index_over_find_links": 1.1},
        "upload": {"pip_seen_median_s": 0.0},
    }
    found = {g["goal"].split(" ")[0] + g["target"]: g for g in bench.goals(sections)}
    assert found["1<= 35 s"]["met"] is True
    assert found["1<= 10 s"]["met"] is False
    assert found["4<= 1.5x"]["value"] == 1.8 and found["4<= 1.5x"]["met"] is False
    assert found["default>= 100x"] == {
        "goal": "default /simple/<project>/ at 10,000 files vs pypiserver today",
        "value": 200.0,
        "target": ">= 100x",
        "met": True,
        "note": "",
    }
    assert found["default<= 20 ms"]["value"] == 12.0 and found["default<= 20 ms"]["met"] is True
    assert found["front>= 0.8x"]["met"] is None
    assert found["front>= 0.8x"]["note"] == "not available (no variable)"
    assert found["pip<= 1.2x"]["met"] is True
    assert found["upload<= 1 s"]["met"] is True


def test_goals_without_results_are_not_measured() -> None:
    assert all(g["met"] is None and g["value"] is None for g in bench.goals({}))


def test_markdown_report_and_merge() -> None:
    old = {"format": 2, "sections": {"bundle": {"bundle_build_s": 3.9}, "pip": {"index_over_find_links": 9.0}}}
    results = bench.merge(old, {"pip": {"index_over_find_links": 1.1, "index_s": [2.0], "find_links_s": [1.8]}})
    assert list(results["sections"]) == ["pip", "bundle"]
    assert results["sections"]["pip"]["index_over_find_links"] == 1.1
    assert bench.merge({"first_run_s": 44.2}, {})["sections"] == {}  # the old flat format is dropped
    results["sections"]["reads"] = {"rows": bench.add_ratios(READS), "load": {}, "deployments": {"front": "n/a"}}
    results["goals"] = bench.goals(results["sections"])
    text = bench.markdown(results)
    assert "| default /simple/<project>/ at 10,000 files vs pypiserver today | 200.0 | >= 100x | yes |" in text
    assert "| front server /simple/<project>/ at 10,000 files vs nginx | - | >= 0.8x | n/a |" in text
    assert "| 10,000 | /simple/<project>/ | default | 2,000.0 | 0.5 | 12.0 | 0.04 | 200.0 | - | 0 | - |" in text
    assert "## Bundle, mirror, archive" in text
    json.dumps(results)  # what results.json gets


def test_deployments_follow_the_role_options() -> None:
    found, missing = bench.deployments({})
    assert [d.name for d in found] == ["default", "baseline"]
    assert found[1].extra_vars == {"pypi_server_static_index": False}
    assert "no such variable" in found[1].note
    assert missing["front"].startswith("not available")
    options = {
        "pypi_server_static_index": {"type": "bool"},
        "pypi_front_enabled": {"type": "bool"},
        "pypi_front_port": {"type": "int", "default": 8081},
    }
    found, missing = bench.deployments(options)
    assert [(d.name, d.port) for d in found] == [("default", 8080), ("baseline", 8080), ("front", 8081)]
    assert found[2].extra_vars == {"pypi_front_enabled": True, "pypi_front_port": 8081}
    assert "no such variable" not in found[1].note
    assert missing == {}


def test_the_role_options_are_readable() -> None:
    options = bench.server_options()
    assert "pypi_server_port" in options
    found, missing = bench.deployments(options)
    assert [(d.name, d.port) for d in found] == [("default", 8080), ("baseline", 8080), ("front", 80)]
    assert missing == {}


def test_parse_only() -> None:
    assert bench.parse_only(None) == list(bench.SECTIONS)
    assert bench.parse_only(["pip,reads", "bundle"]) == ["reads", "pip", "bundle"]
    with pytest.raises(ValueError, match="unknown section"):
        bench.parse_only(["read"])


def test_pip_set_lock_matches_its_input() -> None:
    """The committed lock is exact, hashed pins for every name the input lists (re-lock with --lock)."""
    pins = build_bundle.parse_pins(bench.PIP_SET_LOCK.read_text())
    listed = {line.strip() for line in bench.PIP_SET_IN.read_text().splitlines() if line.strip() and line[0] != "#"}
    assert listed <= {str(p.name) for p in pins}
    assert 25 <= len(pins) <= 40


def test_changed_count_reads_the_recap() -> None:
    out = "changed=9 in a task\nPLAY RECAP ***\nh1 : ok=3 changed=2 unreachable=0\nh2 : ok=3 changed=1\n"
    assert bench.changed_count(out) == 3


def test_task_counts_of_one_run(tmp_path: Path) -> None:
    times = tmp_path / "run.tasks.jsonl"
    rows = [
        {"task": "a", "seconds": 0.5, "hosts": 1, "skipped": 0},
        {"task": "b", "seconds": 0.1, "hosts": 1, "skipped": 1},
    ]
    times.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert bench.task_counts(times) == {"tasks": 2, "tasks_executed": 1, "s_per_executed_task": 0.6}
    assert bench.task_counts(tmp_path / "none.jsonl") == {"tasks": 0, "tasks_executed": 0, "s_per_executed_task": None}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(20, 0, -1)]  # unsorted on purpose
    assert bench.percentile(values, 0.95) == 19.0  # interpolation would give 19.05
    assert bench.percentile(values, 0.5) == 10.0
    assert bench.percentile(values, 1.0) == 20.0
    assert bench.percentile([7.5], 0.95) == 7.5
    with pytest.raises(ValueError, match="no values"):
        bench.percentile([], 0.95)
    with pytest.raises(ValueError, match="not in"):
        bench.percentile(values, 0)


def test_one_wheel_per_project_takes_the_newest_version() -> None:
    names = [
        "filelock-4.10.0-py3-none-any.whl",
        "filelock-4.9.0-py3-none-any.whl",  # after 4.10.0 by name, older by version
        "comrak-0.0.16-cp311-cp311-manylinux2014_x86_64.whl",
        "comrak-0.0.16-cp310-cp310-manylinux2014_x86_64.whl",
        "Jinja2-3.1.6-py3-none-any.whl",
        "notes.txt.whl",
    ]
    found = bench.one_wheel_per_project(Path("w") / name for name in names)
    assert [p.name for p in found] == [
        "comrak-0.0.16-cp310-cp310-manylinux2014_x86_64.whl",
        "filelock-4.10.0-py3-none-any.whl",
        "Jinja2-3.1.6-py3-none-any.whl",
    ]


def rendered(project: str, ms: list[float], kind: str = "text/markdown", size: int = 100) -> dict[str, object]:
    return {"project": project, "type": kind, "bytes": size, "first_ms": ms[0] * 3, "ms": ms, "unrendered": False}


RENDERED = {
    "a.whl": rendered("a", [10.0, 30.0, 20.0]),
    "b.whl": rendered("b", [100.0, 90.0, 500.0], kind="", size=9000),
    "c.whl": rendered("c", [0.01], size=0),  # no description: not counted
    "d.whl": {**rendered("d", [5.0], kind="text/x-rst", size=50_000), "unrendered": True},
}


def test_render_stats_over_the_files_with_a_description() -> None:
    stats = bench.render_stats(RENDERED, goal_ms=50.0)
    assert stats == {
        "files": 3,
        "without_description": 1,
        "unrendered": ["d"],
        "p50_ms": 20.0,  # the files' medians: 5, 20, 100
        "p95_ms": 100.0,
        "max_ms": 100.0,
        "first_p95_ms": 300.0,
        "slowest": "b",
        "slowest_type": "no type: reStructuredText",
        "slowest_bytes": 9000,
        "p95_over_goal": 2.0,
    }
    with pytest.raises(ValueError, match="no description"):
        bench.render_stats({"c.whl": RENDERED["c.whl"]})


def test_largest_markdown_and_a_wheels_description(tmp_path: Path) -> None:
    assert bench.largest_markdown(RENDERED) == Path("a.whl")  # d is larger, but reStructuredText
    with pytest.raises(ValueError, match="Markdown"):
        bench.largest_markdown({"b.whl": RENDERED["b.whl"]})
    wheel = build_wheel(tmp_path, "readme", "1.0", description="# Title\n\nBody\n", content_type="text/markdown")
    assert bench.wheel_description(wheel) == ("# Title\n\nBody\n", "text/markdown")


FEATURES = {
    "measured_at": "2026-12-03 11:00 UTC",
    "load": {"threads": 2, "connections": 8, "seconds": 10},
    "render": {**bench.render_stats(RENDERED), "import_ms": 600.0, "repeats": 5},
    "readme": {"project": "pypiserver", "type": "text/markdown", "bytes": 49_905},
    "off": {
        "rps": 2000.0,
        "p99_ms": 9.0,
        "requests": 20_000,
        "errors": 0,
        "audit_records": 7,
        "upload_visible": {"runs": 5, "seen_median_s": 0.5, "twine_median_s": 1.1},
    },
    "on": {
        "rps": 1700.0,
        "p99_ms": 11.0,
        "requests": 17_000,
        "errors": 0,
        "audit_records": 8,
        "upload_visible": {"runs": 5, "seen_median_s": 0.0, "twine_median_s": 1.2},
    },
    "rounds": 2,
    "on_over_off": 0.85,
    "upload_added": {
        "pairs": 3,
        "descriptions": 1,
        "added_p50_ms": 2.0,
        "added_p95_ms": 60.5,
        "added_max_ms": 60.5,
        "response_p95_ms": 80.0,
    },
}


def test_feature_goals_and_report() -> None:
    found = {g["target"]: g for g in bench.feature_goals(FEATURES)}
    assert (found["<= 50 ms"]["value"], found["<= 50 ms"]["met"]) == (60.5, False)
    assert (found["<= 1 s"]["value"], found["<= 1 s"]["met"]) == (0.0, True)
    assert (found[">= 0.9x"]["value"], found[">= 0.9x"]["met"]) == (0.85, False)
    assert all(g["met"] is None for g in bench.feature_goals({}))
    results = bench.merge({}, {"features": FEATURES})
    results["goals"] = bench.goals(results["sections"])
    text = bench.markdown(results)
    goal = "| rendering adds to an upload's response, p95 per file (the bundle's descriptions, paired uploads) |"
    assert f"{goal} 60.5 | <= 50 ms | no |" in text
    assert "| 1 | 3 | 2 | 60.5 | 60.5 | 80.0 |" in text
    assert "| 3 | 20.0 | 100.0 | 100.0 | 300.0 | b, no type: reStructuredText, 9,000 bytes | 2 |" in text
    assert "| on | 1,700.0 | 11.0 | 17,000 | 0 | 8 | 0 | 1.2 |" in text
    assert "| off | 2,000.0 | 9 | 20,000 | 0 | 7 | 0.5 | 1.1 |" in text
    assert "median of 5 uploads per index" in text
    assert "of each index in turn, 2 times" in text
    assert "| on / off | 0.85 | - | - | - | - | - | - |" in text
    assert "features" in bench.SECTIONS and "features" not in bench.DOCKER_SECTIONS


def test_wrk_summary_of_alternating_runs() -> None:
    runs = [bench.parse_wrk(WRK_SLOW), bench.parse_wrk(WRK_FAST), bench.parse_wrk(WRK_SLOW.replace("12.08", "20.00"))]
    summary = bench.wrk_summary(runs)
    assert summary == {
        "rps": 20.0,  # the median run, not the mean (25,691.34)
        "rps_runs": [12.08, 77041.95, 20.0],
        "p99_ms": 1100.0,
        "requests": 121 + 770420 + 121,
        "errors": 9 + 0 + 9,
    }


def test_transfer_section_on_a_small_tree(tmp_path: Path) -> None:
    delta = bench.transfer_delta(tmp_path, files=20, size=10_000, changed=3, added=1, added_size=50_000)
    assert (delta["tree_files"], delta["new_and_changed_files"], delta["new_file_bytes"]) == (26, 4, 80_000)
    assert delta["delta_bytes"] < delta["full_archive_bytes"]
    assert 1.0 <= delta["delta_over_new_files"] < delta["delta_and_manifest_over_new_files"] < 1.5
    verify = bench.transfer_verify(tmp_path, total=4 << 20, parts=2, rounds=1)
    assert (verify["parts"], verify["parts_mb"], len(verify["verify_s"])) == (2, 4.2, 1)
    assert verify["verify_speed_over_sha256sum"] > 0
    assert not (tmp_path / "transfer-parts").exists()  # the parts are removed


def test_transfer_goals_and_report() -> None:
    assert all(g["met"] is None for g in bench.transfer_goals({}))
    section = {
        "measured_at": "2026-12-03 14:00 UTC",
        "delta": {"delta_over_new_files": 1.0012, "delta_bytes": 8_400_000, "tree_files": 407, "tree_mb": 44.2},
        "verify": {"verify_speed_over_sha256sum": 0.75, "verify_s": [2.0, 2.1], "sha256sum_s": [1.5, 1.6]},
    }
    results = bench.merge({}, {"transfer": section})
    results["goals"] = bench.goals(results["sections"])
    found = {g["goal"]: g for g in results["goals"] if g["goal"] in {x["goal"] for x in bench.transfer_goals({})}}
    assert [(g["value"], g["met"]) for g in found.values()] == [(1.0012, True), (0.75, False)]
    text = bench.markdown(results)
    assert "## Transfers across the air gap (issue 16)" in text
    assert "| delta archive bytes | 8,400,000 |" in text and "| check of the parts, s | 2.0, 2.1 |" in text
    assert "transfer" in bench.SECTIONS and "transfer" not in bench.DOCKER_SECTIONS


def test_scale_goals_and_report() -> None:
    assert all(g["met"] is None for g in bench.scale_goals({}))
    section = {
        "measured_at": "2026-12-03 17:00 UTC",
        "files": 100_000,
        "projects": 20_000,
        "cold_rebuild_s": 80.5,
        "upload_visible_median_s": 0.4,
        "upload_visible_s": [0.5, 0.4, 0.3],
        "project_p99_ms": 25.0,
        "project_quiet_p99_ms": 5.5,
        "worker_rss_mb": 250.0,
        "front_page_bytes": 20_000,
    }
    results = bench.merge({}, {"scale": section})
    results["goals"] = bench.goals(results["sections"])
    found = {g["goal"]: g for g in results["goals"] if g["goal"].startswith("100,000 files: ")}
    assert [(g["value"], g["met"]) for g in found.values()] == [(0.4, True), (25.0, False), (250.0, True), (80.5, True)]
    text = bench.markdown(results)
    assert "## 100,000 files on one host (issue 15)" in text
    # The reads once the uploads' lists are written are told apart; the goal is judged on the reads right after.
    assert "| the same once the uploads' lists are written: p99 ms | 5.5 |" in text
    assert (
        "| upload to visible, each s | 0.5, 0.4, 0.3 |" in text and "| front page (index.html) bytes | 20,000 |" in text
    )
    assert "scale" in bench.SECTIONS and "scale" not in bench.DOCKER_SECTIONS


def test_lag_summary_is_nearest_rank_and_judges_p50_and_max_apart() -> None:
    samples = [2.5, *([0.5] * 19), 1.9, *([0.7] * 19)]  # 40 uploads, unsorted; two slow ones
    summary = bench.lag_summary(samples, p50_goal=1.0, max_goal=2.0)
    assert summary == {
        "samples": 40,
        "p50_s": 0.7,  # the 20th of 40
        "p95_s": 0.7,  # the 38th of 40: below both slow uploads
        "max_s": 2.5,
        "mean_s": 0.68,
        "p50_met": True,
        "max_met": False,  # judged on the slowest upload, not on p95 (0.7 would meet 2 s)
    }
    assert bench.lag_summary([1.0, 2.0], 1.0, 2.0)["p50_met"] is True  # at the goal is met
    assert bench.lag_summary([1.0, 2.0], 1.0, 2.0)["max_met"] is True
    assert bench.lag_summary([1.01], 1.0, 2.0)["p50_met"] is False
    with pytest.raises(ValueError, match="no lag"):
        bench.lag_summary([], 1.0, 2.0)


def test_lag_model_adds_half_intervals_and_names_the_heaviest_term() -> None:
    model = bench.lag_model(0.5, 1.0, 0.05, {"manifest fetch": 0.05, "copy": 0.7, "check": 0.1})
    assert model["terms_s"] == {
        "publish wait": 0.25,
        "scan": 0.05,
        "pull wait": 0.5,
        "manifest fetch": 0.05,
        "copy": 0.7,
        "check": 0.1,
    }
    assert model["expected_s"] == 1.65
    assert model["worst_s"] == 2.4  # whole intervals at worst
    assert model["dominant"] == "copy"
    assert bench.lag_model(0.5, 4.0, 0.05, {"copy": 0.7})["dominant"] == "pull wait"


def test_upload_gaps_are_bounded_and_seeded() -> None:
    gaps = bench.upload_gaps(50, 0.3, 1.5, seed=7)
    assert len(gaps) == 50 and all(0.3 <= gap <= 1.5 for gap in gaps)
    assert gaps == bench.upload_gaps(50, 0.3, 1.5, seed=7)
    assert gaps != bench.upload_gaps(50, 0.3, 1.5, seed=8)
    assert len(set(gaps)) > 40  # spread, not one value
    with pytest.raises(ValueError):
        bench.upload_gaps(3, 1.5, 0.3)


def test_replica_holds_only_the_served_file_with_its_bytes_and_page(tmp_path: Path) -> None:
    writer = tmp_path / "writer"
    projects = bench.replication_tree(writer, 20, 64)
    assert sorted(projects) == ["bench-pkg-0000", "bench-pkg-0001"]
    assert len(list((writer / "packages").iterdir())) == 20
    name, _ = bench.upload_to_writer(writer, projects, "bench-pkg-0001", "2.0.0", b"new bytes")
    assert not [p for p in writer.rglob(".*")]  # the temporary names are gone
    page = (writer / "static" / "simple" / "bench-pkg-0001" / "index.html").read_text()
    assert f">{name}</a>" in page and page.count("<a href") == 11
    replica = tmp_path / "replica"
    tree = replica / "tree"
    tree.mkdir(parents=True)
    (replica / "current").symlink_to("tree")
    assert not bench.replica_holds(replica, name, b"new bytes", "bench-pkg-0001")
    shutil.copytree(writer / "packages", tree / "packages")
    assert not bench.replica_holds(replica, name, b"new bytes", "bench-pkg-0001")  # the page does not list it yet
    shutil.copytree(writer / "static", tree / "static")
    assert bench.replica_holds(replica, name, b"new bytes", "bench-pkg-0001")
    assert not bench.page_without_file(replica / "current", name, "bench-pkg-0001")
    (tree / "packages" / name).unlink()
    assert bench.page_without_file(replica / "current", name, "bench-pkg-0001")  # a link to a 404
    assert not bench.replica_holds(replica, name, b"other bytes", "bench-pkg-0001")
    assert bench.replica_generation(replica) is None
    (replica / "applied.json").write_text("{}")
    applied = bench.replica_generation(replica)
    (replica / ".applied.json.new").write_text("{ }")
    (replica / ".applied.json.new").replace(replica / "applied.json")
    assert applied is not None and bench.replica_generation(replica) not in (None, applied), "a new record"


def test_replication_goals_and_report() -> None:
    skipped = {"skipped": "not measured: no rsync on this machine"}
    assert [(g["met"], g["note"]) for g in bench.replication_goals(skipped)] == [(None, skipped["skipped"])] * 2
    assert all(g["met"] is None for g in bench.replication_goals({}))
    section = {
        "measured_at": "2026-12-04 18:30 UTC",
        "files": 10_000,
        "p50_s": 0.9,
        "p95_s": 1.8,
        "max_s": 2.2,
        "lag_s": [0.9, 2.2],
        "model": bench.lag_model(0.5, 1.0, 0.05, {"copy": 0.3}),
        "parts": {"manifest_bytes": 1_500_000, "one_upload": {"copy_s": 0.3}},
    }
    results = bench.merge({}, {"replication": section})
    results["goals"] = bench.goals(results["sections"])
    found = [g for g in results["goals"] if g["goal"].startswith("replication lag at 10,000 files")]
    assert [(g["value"], g["met"]) for g in found] == [(0.9, True), (2.2, False)]
    text = bench.markdown(results)
    assert "## Replication lag (issue 15 part 2)" in text and "no SSH hop" in text
    assert "| lag, each s | 0.9, 2.2 |" in text and "| generation.json bytes | 1,500,000 |" in text
    assert "| model: the term that weighs most | pull wait |" in text
    assert "replication" in bench.SECTIONS and "replication" not in bench.DOCKER_SECTIONS


def test_the_replica_intervals_are_the_roles_defaults() -> None:
    publish, pull, keep = bench.replica_intervals()
    assert 0 < publish <= pull and keep >= 2


def test_replication_without_rsync_is_skipped_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.shutil, "which", lambda _name: None)
    section = bench.replication_bench(tmp_path)
    assert section == {"skipped": "not measured: no rsync on this machine (scripts/ensure_deb_tool.sh rsync rsync)"}
    assert list(tmp_path.iterdir()) == []  # nothing built, nothing started
    assert all(g["note"] == section["skipped"] for g in bench.replication_goals(section))


def test_timed_records_each_call_and_restores_the_module() -> None:
    import types  # noqa: PLC0415

    def work(value: int) -> int:
        if value < 0:
            raise ValueError(value)
        return value * 2

    module = types.SimpleNamespace(work=work)
    with bench.Timed(module, ["work", "absent"]) as timer:
        assert module.work(2) == 4
        with pytest.raises(ValueError):
            module.work(-1)  # a call that raises is timed too
    assert list(timer.calls) == ["work"] and len(timer.calls["work"]) == 2
    assert module.work is work


# --------------------------------------------------------------------------- balancer (issue 15 part 3)


def balancer_cfg() -> str:
    variables = bench.balancer_vars(
        [("replica-b", "10.0.0.2", 80), ("replica-a", "10.0.0.4", 81)], ("w1", "10.0.0.3", 8080)
    )
    return bench.role_template(bench.BALANCER_TEMPLATE, variables)


def test_the_balancer_config_from_the_roles_template_reads_from_the_replicas_and_keeps_the_writer_a_backup() -> None:
    cfg = balancer_cfg()
    reads = cfg.split("backend airgap_pypi_reads", 1)[1].split("backend airgap_pypi_writer", 1)[0]
    # Each replica by its name and address, in name order, as the role sorts them.
    assert reads.index("server replica-a 10.0.0.4:81 check") < reads.index("server replica-b 10.0.0.2:80 check")
    assert "server w1 10.0.0.3:8080 check inter 1000ms fall 2 rise 2 backup\n" in reads
    assert "    bind :8080\n" in cfg and "bind 127.0.0.1:8404\n" in cfg
    assert "The package index's writer (w1) is down" in cfg  # the defaults' own template rendered with the writer
    assert "{{" not in cfg and "{%" not in cfg


def test_a_role_template_needing_a_variable_the_bench_does_not_give_fails_the_section(tmp_path: Path) -> None:
    template = tmp_path / "t.j2"
    template.write_text("port {{ pypi_balancer_new_setting }}\n")
    with pytest.raises(ValueError, match="pypi_balancer_new_setting"):
        bench.role_template(template, {})


def test_the_replica_site_is_the_front_servers_read_only_site_with_its_health() -> None:
    site = bench.replica_site("/srv/tree", 80, "/srv/tree/health")
    assert "listen 80 default_server;" in site and "root /srv/tree;" in site
    assert "alias /srv/tree/packages/$1;" in site
    assert "location = /health {\n        root /srv/tree/health;" in site and "try_files /ok.json" in site
    assert "upstream airgap_pypi_gunicorn" not in site and "proxy_pass" not in site  # no gunicorn on a replica
    conf = bench.replica_nginx_conf("/run/x", site, 2)
    assert conf.count("{") == conf.count("}") and conf.rstrip().endswith("}")
    assert "include /etc/nginx/mime.types;" in conf and "worker_processes 2;" in conf


def test_the_no_cache_variant_differs_only_in_its_cache_and_ports() -> None:
    cfg = bench.role_template(
        bench.BALANCER_TEMPLATE,
        bench.balancer_vars([(bench.REPLICA, "10.0.0.2", 80)], ("bench-writer", "10.0.0.2", 80)),
    )
    variant = bench.role_template(bench.BALANCER_TEMPLATE, bench.no_cache_vars("10.0.0.2"))
    # The role's default keeps package files, and only them: the variant keeps nothing.
    assert "\ncache airgap_pypi_files\n" in cfg and "cache-use airgap_pypi_files if" in cfg
    assert "cache" not in variant.replace("Cache", "")
    assert "    bind :8081\n" in variant and "bind 127.0.0.1:8405\n" in variant
    ports = {
        "    bind :{}",
        "    bind 127.0.0.1:{}",
        "# Each server's state (UP, DOWN, and why), on the balancer's loopback only: curl http://127.0.0.1:{}/stats;csv",
    }
    cfg_lines, variant_lines = set(cfg.splitlines()), set(variant.splitlines())
    assert variant_lines - cfg_lines == {line.format(8081 if "bind :" in line else 8405) for line in ports}
    # Beyond its ports, the variant lacks the cache section and the four lines that use it, and their comments.
    left_out = {
        line
        for line in cfg_lines - variant_lines
        if line not in {p.format(8080 if "bind :" in p else 8404) for p in ports}
    }
    assert {line for line in left_out if not line.lstrip().startswith("#")} == {
        "cache airgap_pypi_files",
        "    total-max-size 128",
        "    max-object-size 16777216",
        "    max-age 10",
        "    acl airgap_pypi_file path_reg -i"
        " ^/packages/.+[.](whl|tar[.]gz|tgz|tar[.]bz2|tbz|tar[.]xz|txz|zip|egg|tar)([.]metadata)?$",
        "    acl airgap_pypi_odd_path path_sub /. %",
        "    acl airgap_pypi_credentials req.hdr(authorization) -m found",
        "    http-request set-var(txn.airgap_pypi_cached) bool(true)"
        " if airgap_pypi_file !airgap_pypi_odd_path !airgap_pypi_credentials",
        "    http-request cache-use airgap_pypi_files if { var(txn.airgap_pypi_cached) -m bool }",
        "    http-response cache-store airgap_pypi_files if { var(txn.airgap_pypi_cached) -m bool }",
    }


def test_haproxy_commands_write_each_config_verbatim_and_check_it() -> None:
    script = bench.haproxy_commands({"/run/a.cfg": "global\n", "/run/b.cfg": "defaults\n"})
    assert subprocess.run(["sh", "-n", "-c", script], check=False).returncode == 0
    assert (
        "cat >/run/a.cfg <<'AIRGAP_PYPI_BENCH_EOF'\nglobal\nAIRGAP_PYPI_BENCH_EOF\nhaproxy -c -q -f /run/a.cfg\n"
        in script
    )
    assert "haproxy -c -q -f /run/b.cfg\n" in script and "apt-get install" in script


def test_haproxy_stats_csv_gives_the_reads_backends_servers() -> None:
    text = (
        "# pxname,svname,qcur,stot,hrsp_2xx,status,\n"
        "airgap_pypi,FRONTEND,0,50,50,OPEN,\n"
        "airgap_pypi_reads,replica1,0,40,39,UP,\n"
        "airgap_pypi_reads,w1,0,0,0,UP,\n"
        "airgap_pypi_reads,BACKEND,0,40,39,UP,\n"
        "airgap_pypi_writer,w1,0,3,0,UP,\n"
    )
    assert bench.parse_haproxy_csv(text, "airgap_pypi_reads") == {
        "replica1": {"sessions": 40, "http_2xx": 39, "status": "UP"},
        "w1": {"sessions": 0, "http_2xx": 0, "status": "UP"},
    }


def lb_row(path: str, target: str, rps: float, requests: int, cpu_s: tuple[float, ...]) -> dict[str, object]:
    cpu = dict(zip(("replica", "balancer", "wrk"), cpu_s, strict=False))
    return {"path": path, "target": target, "rps": rps, "p99_ms": 2.0, "requests": requests, "cpu_s": cpu}


def test_the_balancer_summary_divides_through_by_direct_and_cpu_by_requests() -> None:
    rows = [
        lb_row("file", "direct", 1000.0, 10_000, (0.5, 0.0)),
        lb_row("file", "haproxy", 700.0, 7_000, (0.4, 0.7)),
        lb_row("file", "haproxy_no_cache", 900.0, 9_000, (0.45, 0.72)),
        lb_row("file", "direct", 1200.0, 12_000, (0.6, 0.0)),
        lb_row("file", "haproxy", 1100.0, 11_000, (0.5, 1.1)),
    ]
    summary = bench.balancer_summary(rows, goal_ratio=0.8)
    path = summary["paths"]["file"]
    assert (path["direct_rps"], path["through_rps"], path["through_over_direct"]) == (1100.0, 900.0, 0.818)
    assert path["met"] is True and path["no_cache_over_direct"] == 0.818
    cpu = summary["cpu"]
    assert cpu["haproxy_us_per_request"] == 100.0  # 1.8 s over 18,000 requests
    assert cpu["haproxy_no_cache_us_per_request"] == 80.0
    assert cpu["replica_us_per_request_direct"] == 50.0 and cpu["replica_us_per_request_through"] == 50.0
    assert cpu["replica_us_per_request_no_cache"] == 50.0
    assert bench.balancer_summary(rows, goal_ratio=0.9)["paths"]["file"]["met"] is False
    assert path["cpu_model_through_over_direct"] is None  # no wrk CPU in these rows: no model


def test_the_one_machine_cpu_model_adds_haproxys_cpu_to_each_request() -> None:
    rows = [
        lb_row("file", "direct", 1000.0, 10_000, (0.3, 0.0, 0.2)),  # 30 + 20 us per request
        lb_row("file", "haproxy", 500.0, 5_000, (0.15, 0.3, 0.05)),  # 30 + 60 + 10 us per request
    ]
    summary = bench.balancer_summary(rows)
    assert summary["paths"]["file"]["cpu_model_through_over_direct"] == 0.5  # 50 / 100
    assert summary["cpu"]["wrk_us_per_request_direct"] == 20.0
    assert summary["cpu"]["wrk_us_per_request_through"] == 10.0


def test_the_prediction_per_replica_follows_the_cpu_per_request() -> None:
    prediction = bench.balancer_prediction({"haproxy_us_per_request": 100.0, "replica_us_per_request_through": 50.0}, 2)
    assert prediction["balancer_capacity_rps"] == 20_000 and prediction["replica_capacity_rps"] == 40_000
    assert prediction["replicas_until_balancer_bound"] == 0.5
    assert prediction["one_machine_capacity_rps"] == 13_333  # both share the same 2 cores
    assert prediction["separate_hosts_one_replica_over_direct"] == 0.5  # the balancer's 20,000 of the replica's 40,000
    assert prediction["balancer_cores_per_replica_host"] == 4.0
    assert bench.balancer_prediction({}, 2) == {}
    # Where the HAProxy without a cache was measured, the prediction (reads that reach a replica) is its.
    both = {
        "haproxy_us_per_request": 10.0,
        "replica_us_per_request_through": 5.0,
        "haproxy_no_cache_us_per_request": 100.0,
        "replica_us_per_request_no_cache": 50.0,
    }
    assert bench.balancer_prediction(both, 2) == prediction


def test_balancer_goals_and_report() -> None:
    assert "balancer" in bench.SECTIONS and "balancer" in bench.DOCKER_SECTIONS
    assert [g["met"] for g in bench.balancer_goals({})] == [None, None]
    rows = [
        lb_row(p, t, r, 100, (0.1, 0.1))
        for p in bench.BALANCER_PATHS
        for t, r in (("direct", 100.0), ("haproxy", 79.0))
    ]
    section = {"measured_at": "now", **bench.balancer_summary(rows)}
    found = bench.balancer_goals(section)
    assert [(g["value"], g["met"]) for g in found] == [(0.79, False), (0.79, False)]
    text = "\n".join(bench.balancer_markdown(section))
    assert "## Balancer (issue 15 part 3)" in text and "| file | 100.0 | 79.0 | 0.79 |" in text
