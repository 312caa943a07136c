"""The index's metrics (roles/pypi_server/files/airgap_pypi_index.py: Metrics, WorkerFiles, MetricsLayer) without a
server: the text format (escaping, HELP and TYPE, cumulative histogram buckets), every worker's file summed, bad
files ignored with a log line, bounded labels, /metrics behind an upload account, errors that never change a
response, and the role's refusals of bad settings. The real gunicorn stack: tests/test_metrics_server.py."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, load_module, run_playbook

from scripts.demo_wheel import build_wheel
from scripts.index_stack import free_port

MODULE = ROOT / "roles" / "pypi_server" / "files" / "airgap_pypi_index.py"
index = load_module("airgap_pypi_index", MODULE)
filters = load_module("pypi_server_filters", ROOT / "roles" / "pypi_server" / "filter_plugins" / "pypi_server.py")

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
Series = tuple[str, tuple[tuple[str, str], ...]]


def parse(text: str) -> dict[Series, float]:
    """{(name, labels): value} of an exposition; every line must be a comment or a sample."""
    values: dict[Series, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = tuple(LABEL.findall(match.group(2) or ""))
        values[(match.group(1), labels)] = float(match.group(3))
    return values


def value(values: dict[Series, float], name: str, **labels: str) -> float:
    return values.get((name, tuple(labels.items())), 0.0)


def exposition(counts: Any, gauges: Iterable[tuple[str, str, float]] = ()) -> str:
    return index.render_metrics(counts, gauges).decode()


def wsgi(app: Any, path: str, method: str = "GET", **environ: Any) -> tuple[str, dict[str, str], bytes]:
    """(status, headers, body) of one request to a WSGI app; the body is closed, as a server closes it."""
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, dict(headers)
        return lambda data: None

    result = app({"REQUEST_METHOD": method, "PATH_INFO": path, **environ}, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return seen["status"], seen["headers"], body


def answer(status: str = "200 OK", body: bytes = b"ok\n", **leave: Any) -> Any:
    """A WSGI app that answers status, leaving leave in the environ (as the upload checks leave their notes)."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ.update(leave)
        start_response(status, [("Content-Type", "text/plain")])
        return [body]

    return app


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def layers() -> Iterator[list[Any]]:
    """MetricsLayers made by a test, closed after it (their writer threads stopped)."""
    made: list[Any] = []
    yield made
    for layer in made:
        layer.close()


# --- the text format --------------------------------------------------------------------------------------------


def test_label_values_and_help_texts_are_escaped() -> None:
    assert index.escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert index.escape_help('say "x"\\y\nz') == 'say "x"\\\\y\\nz'
    lines = index.render_family("m", "gauge", "two\nlines", [("", [("l", 'q"\n\\')], 1.5)])
    assert lines == ["# HELP m two\\nlines", "# TYPE m gauge", 'm{l="q\\"\\n\\\\"} 1.5']
    assert [index.sample_value(v) for v in (3, 0.25, float("inf"), float("nan"))] == ["3", "0.25", "+Inf", "NaN"]


def test_every_family_has_help_and_type_once_before_its_samples() -> None:
    counts = index.Metrics()
    counts.observe("file", "200", 0.01)
    counts.upload_refused("exists")
    text = exposition(counts, [("airgap_pypi_index_files", "Files.", 3)])
    kinds = {
        "airgap_pypi_requests_total": "counter",
        "airgap_pypi_request_duration_seconds": "histogram",
        "airgap_pypi_uploads_accepted_total": "counter",
        "airgap_pypi_uploaded_bytes_total": "counter",
        "airgap_pypi_uploads_refused_total": "counter",
        "airgap_pypi_audit_records_lost_total": "counter",
        "airgap_pypi_index_files": "gauge",
    }
    helped: list[str] = []
    typed: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.append(line.split()[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name not in typed, f"TYPE of {name} twice"
            assert helped[-1] == name, f"TYPE of {name} without its HELP just before"
            typed[name] = kind
        else:
            name = SAMPLE.match(line).group(1)  # type: ignore[union-attr]
            family = re.sub(r"_(bucket|sum|count)$", "", name) if typed.get(name) is None else name
            assert family in typed, f"{name} before its TYPE"
    assert typed == kinds
    assert sorted(helped) == sorted(kinds)
    assert text.endswith("\n")


def test_histogram_buckets_are_cumulative_and_end_with_inf_sum_and_count() -> None:
    counts = index.Metrics()
    durations = [0.001, 0.004, 0.005, 0.02, 0.3, 7.0, 500.0]
    for seconds in durations:
        counts.observe("file", "200", seconds)
    counts.observe("browse", "200", 0.2)
    lines = [line for line in exposition(counts).splitlines() if 'route="file"' in line and "duration" in line]
    buckets = [(LABEL.findall(line)[1][1], float(line.rsplit(" ", 1)[1])) for line in lines if "_bucket" in line]
    bounds = [*(index.sample_value(b) for b in index.DURATION_BUCKETS), "+Inf"]
    assert [le for le, _ in buckets] == bounds
    cumulative = dict(buckets)
    assert cumulative["0.005"] == 3  # "le": a value on the bound is in its bucket
    assert cumulative["0.025"] == 4 and cumulative["0.5"] == 5 and cumulative["10.0"] == 6 and cumulative["120.0"] == 6
    assert cumulative["+Inf"] == len(durations)
    counts_only = [count for _, count in buckets]
    assert counts_only == sorted(counts_only), "buckets never decrease"
    values = parse(exposition(counts))
    assert value(values, "airgap_pypi_request_duration_seconds_count", route="file") == len(durations)
    assert value(values, "airgap_pypi_request_duration_seconds_sum", route="file") == pytest.approx(sum(durations))
    assert value(values, "airgap_pypi_request_duration_seconds_count", route="browse") == 1


def test_promtool_accepts_an_exposition_with_every_kind_of_series() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("NOT RUN: no promtool on this machine (scripts/ensure_deb_tool.sh promtool prometheus)")
    counts = index.Metrics()
    for route in index.ROUTES:
        counts.observe(route, "200", 0.01)
    counts.observe("file", "404", 0.001)
    counts.upload_accepted(1234)
    counts.upload_refused("bad_archive")
    gauges = [("airgap_pypi_index_files", "Files.", 3), ("airgap_pypi_last_sync_timestamp_seconds", "End.", 1.7e9)]
    for text in (exposition(counts, gauges), exposition(index.Metrics())):
        done = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr


# --- bounded labels ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("GET", "/simple/", "simple_root"),
        ("GET", "/simple", "simple_root"),
        ("GET", "/simple/some-project/", "simple_project"),
        ("GET", "/simple/a/b/c/../../x", "simple_project"),
        ("GET", "/packages/a-1.0-py3-none-any.whl", "file"),
        ("GET", "/packages/a-1.0-py3-none-any.whl.metadata", "metadata"),
        ("GET", "/packages/", "other"),
        ("GET", "/", "browse"),
        ("HEAD", "/project/A_B/", "browse"),
        ("POST", "/", "upload"),
        ("DELETE", "/", "other"),
        ("GET", "/health", "health"),
        ("GET", "/metrics", "metrics"),
        ("GET", "/metrics/", "other"),
        ("GET", '/x"}\n{evil="1', "other"),
        ("GET", "/" + "a" * 10000, "other"),
    ],
)
def test_routes_are_a_fixed_set_never_the_path(method: str, path: str, route: str) -> None:
    assert index.route_of(method, path) == route
    assert route in index.ROUTES


def test_status_codes_are_three_digits_or_other() -> None:
    assert [index.code_of(s) for s in ("200 OK", "404 Not Found", "599", "999 No", "20", "2000 x", "abc")] == [
        "200",
        "404",
        "599",
        "other",
        "other",
        "other",
        "other",
    ]


def wheel_with(directory: Path, filename: str, name: str, version: str) -> Path:
    stem = "-".join(filename.split("-")[:2])
    path = directory / filename
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{stem}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return path


@pytest.mark.parametrize(
    ("filename", "name", "version", "reason"),
    [
        (".hidden-1.0-py3-none-any.whl", "hidden", "1.0", "bad_name"),
        ("tool-1.0.exe", "tool", "1.0", "bad_name"),
        ("tool-1.0-py3-none-any.whl", "other-tool", "1.0", "metadata_mismatch"),
        ("tool-1.0-py3-none-any.whl", "tool", "2.0", "metadata_mismatch"),
        ("Tool-1.0-py3-none-any.whl", "tool", "1.0", "exists"),
        ("garbage-1.0-py3-none-any.whl", "", "", "bad_archive"),
    ],
)
def test_each_refused_upload_has_its_reason(
    tmp_path: Path, filename: str, name: str, version: str, reason: str
) -> None:
    packages = tmp_path / "packages"
    packages.mkdir()
    wheel_with(packages, "tool-1.0-py3-none-any.whl", "tool", "1.0")  # stored already
    upload = tmp_path / "upload"
    upload.mkdir()
    if reason == "bad_archive":
        (upload / filename).write_bytes(os.urandom(512))
    else:
        wheel_with(upload, filename, name, version)
    with (upload / filename).open("rb") as handle, pytest.raises(index.BadDistribution) as refused:
        index.check_upload(filename, handle, str(packages))
    assert getattr(refused.value, "metrics_reason", "bad_archive") == reason
    assert reason in index.REFUSAL_REASONS


# --- every worker's file, summed ------------------------------------------------------------------------------


def worker(directory: Path, requests: int, uploads: int = 0) -> Any:
    """A worker's files: a name and a held lock, its counts written."""
    files = index.WorkerFiles(str(directory))
    counts = index.Metrics()
    for _ in range(requests):
        counts.observe("simple_project", "200", 0.002)
    for _ in range(uploads):
        counts.upload_accepted(100)
    with files.opened() as fd:
        files.start(fd)
        files.write(fd, counts)
    return files


def test_the_counts_of_every_worker_are_summed_and_kept_when_a_worker_ends(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    first, second = worker(directory, 3, uploads=1), worker(directory, 5, uploads=2)
    reader = index.WorkerFiles(str(directory))
    total, live, ignored, partial = reader.collect()
    assert (live, ignored, partial) == (2, 0, False)
    assert total.requests[("simple_project", "200")] == 8 and total.uploads == 3 and total.upload_bytes == 300
    assert total.durations["simple_project"][0] == 8
    gone = second.name
    second.forget()  # the process ends: its lock goes
    for _ in range(2):  # the second read finds it retired, not counted again
        total, live, _, _ = reader.collect()
        assert live == 1 and total.requests[("simple_project", "200")] == 8 and total.uploads == 3
    assert not (directory / f"{gone}.json").exists() and not (directory / f"{gone}.lock").exists()
    retired = json.loads((directory / "retired.json").read_text())
    assert retired["counts"]["uploads"] == 2
    assert (directory / f"{first.name}.json").exists()
    first.forget()


def test_a_reader_cut_short_while_retiring_a_worker_never_counts_it_twice(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    ended = worker(directory, 4)
    gone = ended.name
    ended.forget()
    counts = index.Metrics.from_document(json.loads((directory / f"{gone}.json").read_text()))
    # retired.json written with the ended worker's counts, its files not yet removed (the reader was killed).
    document = {"format": 1, "counts": counts.document(), "folded": [f"{gone}.json"]}
    (directory / "retired.json").write_text(json.dumps(document))
    living = worker(directory, 1)
    total, live, _, _ = index.WorkerFiles(str(directory)).collect()
    assert live == 1 and total.requests[("simple_project", "200")] == 5
    assert not (directory / f"{gone}.json").exists()
    total, _, _, _ = index.WorkerFiles(str(directory)).collect()
    assert total.requests[("simple_project", "200")] == 5
    living.forget()


def held_lock(directory: Path, name: str) -> int:
    """Lock a worker name's lock file as a living worker does; the descriptor to close."""
    import fcntl  # noqa: PLC0415 - only here

    descriptor = os.open(directory / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{not json", "not JSON"),
        (b"x" * (300 << 10), "larger than 256 KiB"),
        (json.dumps({"format": 1, "requests": [['x"}\n', "200", 1]], "durations": {}, "refused": {}}), "route"),
        (json.dumps({"format": 1, "requests": [], "durations": {}, "refused": {"free text": 1}}), "refusal reason"),
        (json.dumps({"format": 1, "requests": [["file", "200", -5]], "durations": {}, "refused": {}}), "not a count"),
        (json.dumps({"format": 2}), "format 1"),
    ],
    ids=["garbage", "oversized", "label-injection", "unknown-reason", "negative", "other-format"],
)
def test_a_bad_worker_file_is_ignored_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes | str, why: str
) -> None:
    directory = tmp_path / "metrics"
    good = worker(directory, 2)
    name = "w-4242-" + "ab" * 8
    lock = held_lock(directory, name)  # a living worker: its file is kept for the next read
    bad = directory / f"{name}.json"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    with caplog.at_level(logging.WARNING, logger="airgap_pypi_index"):
        total, live, ignored, _ = index.WorkerFiles(str(directory)).collect()
    assert (live, ignored) == (1, 1) and total.requests == {("simple_project", "200"): 2}
    assert any(name in r.getMessage() and why in r.getMessage() for r in caplog.records), caplog.text
    assert bad.exists()
    os.close(lock)  # the worker ends: its unreadable file is removed with its lock, the others' counts stay
    total, live, ignored, _ = index.WorkerFiles(str(directory)).collect()
    assert (live, ignored) == (1, 1) and not bad.exists() and total.requests == {("simple_project", "200"): 2}
    good.forget()


def test_a_link_is_never_followed_and_the_directory_must_be_the_users_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "metrics"
    good = worker(directory, 1)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text((directory / f"{good.name}.json").read_text())
    link = directory / ("w-77-" + "cd" * 8 + ".json")
    link.symlink_to(elsewhere)
    with caplog.at_level(logging.WARNING, logger="airgap_pypi_index"):
        total, live, ignored, _ = index.WorkerFiles(str(directory)).collect()
    assert (live, ignored) == (1, 1) and total.requests == {("simple_project", "200"): 1}
    assert link.name in caplog.text and not link.is_symlink() and elsewhere.exists()
    (tmp_path / "linked").symlink_to(directory)
    with pytest.raises(OSError):
        index.WorkerFiles(str(tmp_path / "linked")).collect()
    directory.chmod(0o777)
    with pytest.raises(index.MetricsFileError, match="not this user's alone"):
        index.WorkerFiles(str(directory)).collect()
    directory.chmod(0o750)
    good.forget()


def bounded(call: Callable[[], Any], seconds: float = 10.0) -> Any:
    """call() in a thread, failing the test (instead of hanging it) when it has not returned within seconds."""
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still blocked after {seconds} s")
    assert outcome, "it raised (see the thread's exception above)"
    return outcome[0]


def test_a_stuck_reader_holds_up_no_scrape_which_reads_without_the_lock_and_says_so(
    tmp_path: Path, layers: list[Any]
) -> None:
    directory = tmp_path / "metrics"
    living = [worker(directory, 2), worker(directory, 3)]
    ended = worker(directory, 4)
    gone = ended.name
    ended.forget()  # ended, not yet taken into retired.json: its counts still count
    stuck = held_lock(directory, "")  # ".lock": the directory's lock, held by a reader that never lets go
    before = sorted(path.name for path in directory.iterdir())
    try:
        started = time.monotonic()
        total, live, ignored, partial = bounded(index.WorkerFiles(str(directory)).collect)
        assert time.monotonic() - started < 1.5, "tried for about 50 ms, then read without the lock"
        assert partial and (live, ignored) == (2, 0) and total.requests[("simple_project", "200")] == 9
        assert sorted(path.name for path in directory.iterdir()) == before, "nothing retired or removed"
        layer = index.MetricsLayer(answer(), directory=str(directory))
        layers.append(layer)
        started = time.monotonic()
        status, _, body = bounded(lambda: wsgi(layer, "/metrics"))
        assert time.monotonic() - started < 1.5
        values = parse(body.decode())
        assert status == "200 OK" and value(values, "airgap_pypi_metrics_partial") == 1, body.decode()
        assert value(values, "airgap_pypi_requests_total", route="simple_project", code="200") == 9
    finally:
        os.close(stuck)
    total, live, _, partial = bounded(index.WorkerFiles(str(directory)).collect)
    assert not partial and live == 3 and total.requests[("simple_project", "200")] == 9
    assert not any(path.name.startswith(gone) for path in directory.iterdir()), "retired now"
    values = parse(bounded(lambda: wsgi(layer, "/metrics"))[2].decode())
    assert value(values, "airgap_pypi_metrics_partial") == 0
    for files in living:
        files.forget()


def test_a_read_without_the_lock_counts_a_worker_retired_meanwhile_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "metrics"
    living = worker(directory, 1)
    ended = worker(directory, 10)
    ended.forget()
    stuck = held_lock(directory, "")
    reader = index.WorkerFiles(str(directory))
    plain_read = reader.read
    folded: list[bool] = []

    def read_while_the_other_reader_retires(fd: int, name: str) -> Any:
        if not folded:  # the reader holding the lock takes the ended worker into retired.json and removes its file
            folded.append(index.WorkerFiles(str(directory))._collect(fd) is not None)
        return plain_read(fd, name)

    monkeypatch.setattr(reader, "read", read_while_the_other_reader_retires)
    try:
        total, _, _, partial = bounded(reader.collect)
    finally:
        os.close(stuck)
    assert partial and folded
    assert total.requests[("simple_project", "200")] == 11, "the ended worker's 10 counted once, not 0 nor 20"
    living.forget()


# --- the WSGI layer -------------------------------------------------------------------------------------------


def test_metrics_need_an_upload_account_unless_public(tmp_path: Path, layers: list[Any]) -> None:
    def check(user: str, password: str) -> bool:
        return (user, password) == ("ci", "right")

    guarded = index.MetricsLayer(answer(), directory=str(tmp_path / "m1"), check_password=check)
    public = index.MetricsLayer(answer(), directory=str(tmp_path / "m2"))
    layers += [guarded, public]
    for header in (None, basic("ci", "wrong"), basic("nobody", "right"), "Basic !!!", "Bearer x", basic("ci", "")):
        status, headers, body = wsgi(guarded, "/metrics", **({"HTTP_AUTHORIZATION": header} if header else {}))
        assert status.startswith("401"), header
        assert headers["WWW-Authenticate"] == 'Basic realm="pypi"'
        assert b"airgap_pypi" not in body
    status, headers, body = wsgi(guarded, "/metrics", HTTP_AUTHORIZATION=basic("ci", "right"))
    assert status == "200 OK" and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    values = parse(body.decode())
    assert value(values, "airgap_pypi_requests_total", route="metrics", code="401") == 6
    status, _, body = wsgi(public, "/metrics")
    assert status == "200 OK" and b"# TYPE airgap_pypi_requests_total counter" in body
    assert wsgi(public, "/metrics", method="POST")[0].startswith("405")


def test_uploads_are_counted_from_what_the_upload_checks_left(tmp_path: Path, layers: list[Any]) -> None:
    stored = answer(**{index.UPLOAD_KEY: ("file_upload", 4321, False)})
    cases = [
        (stored, "POST", None),
        (answer("400 Bad Request: x", **{index.REFUSED_KEY: "bad_name"}), "POST", "bad_name"),
        (answer("400 Bad Request: x"), "POST", "bad_request"),
        (answer("401 Unauthorized"), "POST", "unauthorized"),
        (answer("403 Forbidden"), "POST", "unauthorized"),
        (answer("409 Conflict"), "POST", "exists"),
        (answer("400 Bad Request", **{index.UPLOAD_KEY: ("file_upload", 10, True)}), "POST", "exists"),  # pypiserver's
        (answer("413 Payload Too Large"), "POST", "too_large"),
        (answer("500 Internal Server Error"), "POST", "other"),
        (answer("400 Bad Request", **{index.REFUSED_KEY: "made up\n"}), "POST", "bad_request"),
        (answer("200 OK", **{index.UPLOAD_KEY: ("remove_pkg", 0, False)}), "POST", None),  # a removal: no upload
        (answer("400 Bad Request", **{index.UPLOAD_KEY: ("remove_pkg", 0, False)}), "POST", None),
    ]
    expected: dict[str, int] = {}
    for app, method, reason in cases:
        layer = index.MetricsLayer(app)  # no directory: this process's counts only
        layers.append(layer)
        assert wsgi(layer, "/", method=method)[0] == wsgi(app, "/", method=method)[0]
        values = parse(wsgi(layer, "/metrics")[2].decode())
        refused = {r: value(values, "airgap_pypi_uploads_refused_total", reason=r) for r in index.REFUSAL_REASONS}
        expected = {r: 0 for r in index.REFUSAL_REASONS} | ({reason: 1} if reason else {})
        assert refused == expected, (reason, refused)
        accepted = value(values, "airgap_pypi_uploads_accepted_total")
        assert accepted == (1 if app is stored else 0)
        assert value(values, "airgap_pypi_uploaded_bytes_total") == (4321 if app is stored else 0)


class FileWrapper:
    """A server's wsgi.file_wrapper (gunicorn's keeps close as an instance attribute)."""

    def __init__(self, handle: Any, size: int = 8192) -> None:
        self.handle = handle
        self.close = handle.close

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.handle.read(8192), b"")


def test_a_streamed_body_is_counted_when_it_is_closed_and_the_file_wrapper_is_kept(
    tmp_path: Path, layers: list[Any]
) -> None:
    package = tmp_path / "a.whl"
    package.write_bytes(b"x" * 100)

    def streams(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](package.open("rb"))

    def generates(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("404 Not Found", [])  # called when the body is first iterated
        yield b"Not Found\n"

    for app, path, code in ((streams, "/packages/a.whl", "200"), (generates, "/simple/x/", "404")):
        layer = index.MetricsLayer(app)
        layers.append(layer)
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.file_wrapper": FileWrapper}
        body = layer(environ, lambda status, headers, exc_info=None: None)
        if app is streams:
            assert isinstance(body, FileWrapper), "the server still sees its file wrapper (sendfile)"
        assert b"".join(body) in (b"x" * 100, b"Not Found\n")
        assert index.route_of("GET", path) not in {r for r, _ in layer.metrics.requests}, "counted before sent"
        body.close()
        assert layer.metrics.requests == {(index.route_of("GET", path), code): 1}


def test_a_worker_writes_its_last_counts_when_it_ends(tmp_path: Path) -> None:
    """A worker that exits before its writer's next turn (a second) still leaves every request it counted."""
    directory = tmp_path / "metrics"
    program = (
        "import sys; import airgap_pypi_index as index\n"
        "layer = index.MetricsLayer(lambda e, s: (s('200 OK', []), [b''])[1], directory=sys.argv[1])\n"
        "for _ in range(7):\n"
        "    list(layer({'REQUEST_METHOD': 'GET', 'PATH_INFO': '/simple/x/'}, lambda *a: None))\n"
        "sys.exit(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, str(directory)],
        env=dict(os.environ, PYTHONPATH=str(MODULE.parent)),  # the module beside the WSGI entry point, as deployed
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    total, live, _, _ = index.WorkerFiles(str(directory)).collect()
    assert live == 0 and total.requests == {("simple_project", "200"): 7}


def test_errors_in_the_metrics_never_change_a_response(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, layers: list[Any]
) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir(mode=0o777)
    directory.chmod(0o777)  # refused: this worker's counts only, logged
    with caplog.at_level(logging.WARNING, logger="airgap_pypi_index"):
        layer = index.MetricsLayer(answer(body=b"page\n"), directory=str(directory))
        layers.append(layer)
        assert wsgi(layer, "/simple/")[::2] == ("200 OK", b"page\n")

        def broken(*args: Any) -> None:
            raise RuntimeError("counting failed")

        layer.metrics.observe = broken
        assert wsgi(layer, "/simple/")[::2] == ("200 OK", b"page\n")
        status, _, body = wsgi(layer, "/metrics")
    assert status == "200 OK" and b"airgap_pypi_metrics_workers 1" in body
    assert "could not be counted" in caplog.text and "not this user's alone" in caplog.text


def test_the_index_gauges_come_from_the_page_generator(tmp_path: Path, layers: list[Any]) -> None:
    packages, tree = tmp_path / "packages", tmp_path / "static"
    packages.mkdir()
    for name, version in (("alpha", "1.0"), ("alpha", "1.1"), ("beta", "2.0")):
        build_wheel(packages, name, version)
    pages = index.Tree(str(packages), str(tree))
    pages.sync()
    layer = index.MetricsLayer(answer(), directory=str(tmp_path / "metrics"), tree=pages)
    layers.append(layer)
    values = parse(wsgi(layer, "/metrics")[2].decode())
    assert value(values, "airgap_pypi_index_files") == 3 and value(values, "airgap_pypi_index_projects") == 2
    synced = json.loads((tree / "sync.json").read_text())
    assert value(values, "airgap_pypi_last_sync_timestamp_seconds") == pytest.approx(synced["finished"])
    assert value(values, "airgap_pypi_last_sync_duration_seconds") == pytest.approx(synced["seconds"])
    assert 0 <= synced["seconds"] < 60
    (tree / "sync.json").write_text("{broken")
    values = parse(wsgi(layer, "/metrics")[2].decode())
    assert (
        value(values, "airgap_pypi_index_files") == 3 and value(values, "airgap_pypi_last_sync_duration_seconds") == 0
    )


# --- the role's settings --------------------------------------------------------------------------------------


def test_public_metrics_are_refused_while_reads_need_a_password() -> None:
    both = {"pypi_server_metrics_public": True, "pypi_server_auth_downloads": "True"}
    (problem,) = filters.metrics_problems(both)
    assert "pypi_server_metrics_public=true with pypi_server_auth_downloads=true" in problem
    assert "set pypi_server_metrics_public: false" in problem and "basic_auth" in problem
    assert problem in filters.pypi_server_problems(both)
    for fine in ({"pypi_server_metrics_public": True}, {"pypi_server_auth_downloads": True}, {}):
        assert filters.metrics_problems(fine) == []


@pytest.mark.parametrize("name", ["pypi_server_packages_dir", "pypi_server_static_dir"])
@pytest.mark.parametrize("where", ["/srv/pypi/metrics", "/srv/pypi//metrics/", "/srv/pypi/metrics/inner"])
def test_packages_or_pages_where_the_metrics_files_go_are_refused(name: str, where: str) -> None:
    settings = {**filters.PATHS, name: where}
    (problem,) = filters.metrics_problems(settings)
    assert problem.startswith(f"{name}={where}: the index keeps its workers' metrics in /srv/pypi/metrics")
    assert problem in filters.pypi_server_problems(settings)
    assert filters.metrics_problems({**filters.PATHS, name: "/srv/pypi/metrics-archive"}) == []
    assert filters.metrics_problems(filters.PATHS) == []


def preflight(tmp_path: Path, **settings: Any) -> subprocess.CompletedProcess[str]:
    """The role's read-only preflight on localhost, with the argument spec check of its entry point."""
    play = {
        "name": "pypi_server preflight",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            "pypi_server_data_dir": str(tmp_path / "srv"),
            "pypi_server_config_dir": str(tmp_path / "etc"),
            "pypi_server_releases_dir": str(tmp_path / "releases"),
            "pypi_server_venv": str(tmp_path / "venv"),
            "pypi_server_port": free_port(),
            **settings,
        },
        "tasks": [
            {"name": "Preflight", "ansible.builtin.include_role": {"name": "pypi_server", "tasks_from": "preflight"}}
        ],
    }
    return run_playbook([play], tmp_path / "play.json")


def test_the_role_refuses_bad_metrics_settings_before_any_change(tmp_path: Path) -> None:
    done = preflight(tmp_path, pypi_server_metrics_public="maybe")
    assert done.returncode != 0
    assert "pypi_server_metrics_public" in done.stdout and "bool" in done.stdout, done.stdout[-3000:]
    done = preflight(tmp_path, pypi_server_metrics_public=True, pypi_server_auth_downloads=True)
    assert done.returncode != 0
    output = " ".join(done.stdout.split())
    assert "pypi_server_metrics_public=true with pypi_server_auth_downloads=true" in output, done.stdout[-3000:]
    assert "Nothing was changed on this host" in output
    done = preflight(tmp_path, pypi_server_metrics_public=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert not (tmp_path / "srv").exists()
