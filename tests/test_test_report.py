"""make test's closing report (scripts/test_report.py) and the task_times callback that feeds it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from scripts import test_report

ROOT = Path(__file__).resolve().parent.parent
CALLBACKS = ROOT / "molecule" / "shared" / "callback_plugins"


def junit(path: Path, passed: int = 0, failed: int = 0, skipped: int = 0, errors: int = 0) -> str:
    cases = [f'<testcase classname="t" name="ok{i}" time="{i + 1}.5"/>' for i in range(passed)]
    cases += [
        f'<testcase classname="t" name="bad{i}" time="0.1"><failure message="x"/></testcase>' for i in range(failed)
    ]
    cases += [
        f'<testcase classname="t" name="skip{i}" time="0"><skipped message="NOT RUN"/></testcase>'
        for i in range(skipped)
    ]
    cases += [f'<testcase classname="t" name="err{i}" time="0"><error message="y"/></testcase>' for i in range(errors)]
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="s">{"".join(cases)}</testsuite></testsuites>')
    return path.name


def steps_file(results: Path, *rows: tuple[str, str, float, float, int, str]) -> None:
    lines = ["\t".join(str(cell) for cell in row) for row in rows]
    (results / "steps.tsv").write_text("\n".join(lines) + "\n")


def test_every_failed_step_counts_after_a_failed_case(tmp_path: Path) -> None:
    """A failed test case does not hide a later step that failed without one (the old summary's flaw)."""
    steps_file(
        tmp_path,
        ("setup: docker", "-", 0, 5, 0, "-"),
        ("lint", "B", 5, 30, 1, "-"),
        ("unit", "B", 30, 60, 1, junit(tmp_path / "unit.xml", passed=3, failed=2)),
        ("default", "A", 5, 400, 2, "-"),  # converge failed: verify never wrote its report
        ("tls", "A", 400, 500, 0, junit(tmp_path / "tls.xml", passed=4, skipped=1)),
    )
    text, failed = test_report.report(tmp_path, wall=500)
    assert failed == 4  # 2 failed cases + lint + default
    assert text.rstrip().endswith("7 passed, 4 failed, 1 skipped")
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line[:1].isalpha() and "lane" not in line}
    assert rows["lint"][-1] == "FAILED" and rows["default"][-1] == "FAILED" and rows["tls"][-1] == "ok"
    assert "wall time of make test: 8:20" in text


def test_errors_count_as_failures_and_a_step_that_ran_nothing_is_not_run(tmp_path: Path) -> None:
    steps_file(
        tmp_path,
        ("proof", "B", 0, 10, 1, junit(tmp_path / "airgap.xml", passed=1, errors=1)),
        ("el", "A", 0, 1, 0, junit(tmp_path / "el.xml", skipped=5)),
    )
    text, failed = test_report.report(tmp_path)
    assert failed == 1
    el = next(line for line in text.splitlines() if line.startswith("el "))
    assert el.split()[-2:] == ["NOT", "RUN"]
    assert text.rstrip().endswith("1 passed, 1 failed, 5 skipped")


def test_the_end_of_the_report_names_what_failed(tmp_path: Path) -> None:
    """CI keeps only the end of make test's output: the step table and each failure with its first line end it."""
    (tmp_path / "cluster.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite><testcase classname="m.test_balancer" name="test_lag" time="3">'
        f'<failure message="AssertionError: {"x" * 500}&#10;second line"/></testcase></testsuite></testsuites>'
    )
    records = [{"task": "role : task", "seconds": 1.0, "hosts": 1, "skipped": 0}]
    (tmp_path / "task-times.jsonl").write_text(json.dumps(records[0]) + "\n")
    steps_file(tmp_path, ("cluster", "A", 0, 9, 1, "cluster.xml"), ("lint", "A", 9, 10, 2, "-"))
    text, failed = test_report.report(tmp_path)
    assert failed == 2
    tail = text.rstrip().splitlines()[-11:]
    assert tail[0] == "Steps of make test:" and tail[-5] == "What failed:"
    assert tail[-4].startswith("  cluster: test_balancer::test_lag -- AssertionError: xxx")
    assert tail[-4].endswith("...") and len(tail[-4]) < 250 and "second line" not in text
    assert tail[-3] == "  lint: the step exited 2 (see .test-results/logs/lint.log)"
    assert text.index("slowest test cases") < text.index("took longest") < text.index("Steps of make test")


def test_a_passing_run_lists_no_failures(tmp_path: Path) -> None:
    steps_file(tmp_path, ("unit", "B", 0, 9, 0, junit(tmp_path / "unit.xml", passed=2)))
    text, failed = test_report.report(tmp_path)
    assert failed == 0 and "What failed" not in text


def test_a_cut_off_report_is_a_failure(tmp_path: Path) -> None:
    (tmp_path / "unit.xml").write_text('<?xml version="1.0"?><testsuites><testsuite><testcase name="a"')
    steps_file(tmp_path, ("unit", "B", 0, 1, 0, "unit.xml"))
    _, failed = test_report.report(tmp_path)
    assert failed == 1


def test_slowest_cases_and_tasks_are_listed_slowest_first(tmp_path: Path) -> None:
    steps_file(tmp_path, ("unit", "B", 0, 9, 0, junit(tmp_path / "unit.xml", passed=20)))
    records = [{"task": f"role : task {i}", "seconds": float(i), "hosts": 1, "skipped": 0} for i in range(30)]
    records.append({"task": "role : task 1", "seconds": 100.0, "hosts": 2, "skipped": 2})
    lines = [json.dumps(record) for record in records] + ["not json", '{"task": "no seconds"}']
    (tmp_path / "task-times.jsonl").write_text("\n".join(lines) + "\n")
    text, _ = test_report.report(tmp_path)
    cases = text.split("slowest test cases:")[1].split("\n\n")[0].splitlines()[3:]
    assert len(cases) == test_report.SLOWEST and cases[0].split()[0] == "20.5"
    tasks = text.split("over all playbook runs")[1].split("\n\n")[0].splitlines()
    assert "31 task runs, 30 of them executed" in tasks[0]
    assert tasks[3].split() == ["101.0", "2", "100.0", "role", ":", "task", "1"]
    assert len(tasks) == 3 + test_report.SLOWEST


@pytest.mark.skipif(shutil.which("ansible-playbook") is None, reason="not run: ansible-playbook is not on PATH")
def test_the_callback_records_every_task_of_a_real_run(tmp_path: Path) -> None:
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - name: Wait a little\n      ansible.builtin.command: sleep 0.3\n      changed_when: false\n"
        "    - name: Never runs\n      ansible.builtin.debug: {msg: x}\n      when: false\n"
    )
    times = tmp_path / "times.jsonl"
    env = dict(
        os.environ,
        ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS),
        ANSIBLE_CALLBACKS_ENABLED="task_times",
        AIRGAP_PYPI_TASK_TIMES=str(times),
        AIRGAP_PYPI_STEP="unit-test",
    )
    done = subprocess.run(
        ["ansible-playbook", "-i", "localhost,", "-c", "local", str(playbook)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in times.read_text().splitlines()]
    by_task = {record["task"]: record for record in records}
    assert set(by_task) == {"Wait a little", "Never runs"}
    assert by_task["Wait a little"]["seconds"] >= 0.3 and by_task["Wait a little"]["skipped"] == 0
    assert by_task["Never runs"]["skipped"] == 1 and by_task["Never runs"]["step"] == "unit-test"
    assert by_task["Wait a little"]["playbook"] == "play.yml"
