#!/usr/bin/env python3
"""make test's closing report: a table of its steps, the slowest test cases and Ansible tasks, and the count line.

scripts/test.sh records one line per step in <results>/steps.tsv:

    name <TAB> lane <TAB> started (epoch s) <TAB> ended (epoch s) <TAB> exit code <TAB> JUnit file or -

Each step's test cases are read from its own JUnit file, so no case is counted twice. Every failed step counts:
a step that exited non-zero counts its failed test cases, or one failure when none of its cases failed (lint,
a converge or idempotence that stopped before the tests, a crashed runner). The task times come from the
task_times callback (molecule/shared/callback_plugins), one JSON line per task of every playbook run.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SLOWEST = 15
MESSAGE = 160  # characters of a failure's first line in the list of failures
FAILURES = 20  # failed cases listed by name; more are counted


@dataclass
class Case:
    name: str
    seconds: float
    outcome: str  # passed, failed or skipped
    message: str = ""  # a failed case's first line of its failure, bounded


@dataclass
class Step:
    name: str
    lane: str
    started: float
    ended: float
    rc: int
    cases: list[Case] = field(default_factory=list)
    has_report: bool = False

    @property
    def seconds(self) -> float:
        return max(0.0, self.ended - self.started)

    def count(self, outcome: str) -> int:
        return sum(1 for case in self.cases if case.outcome == outcome)

    @property
    def failures(self) -> int:
        """Failed cases, or one for a step that failed without a failed case."""
        failed = self.count("failed")
        return failed if failed or self.rc == 0 else 1

    @property
    def result(self) -> str:
        if self.rc != 0 or self.count("failed"):
            return "FAILED"
        if self.has_report and self.cases and self.count("skipped") == len(self.cases):
            return "NOT RUN"
        return "ok"


def read_cases(report: Path) -> list[Case]:
    """The test cases of one JUnit file (pytest's, or the el scenario's own)."""
    cases = []
    for case in ET.parse(report).iter("testcase"):
        tags = {child.tag for child in case}
        outcome = "failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed"
        name = case.get("name", "?")
        message = ""
        for child in case:
            if child.tag in ("failure", "error"):
                text = child.get("message") or (child.text or "")
                first = text.strip().splitlines()[0] if text.strip() else ""
                message = first[:MESSAGE] + ("..." if len(first) > MESSAGE else "")
                break
        # Classnames are dotted paths from pytest.ini's directory (molecule.default.tests.test_default): the
        # module is enough beside the step's name.
        module = case.get("classname", "").rsplit(".", 1)[-1]
        cases.append(Case(f"{module}::{name}" if module else name, float(case.get("time") or 0), outcome, message))
    return cases


def read_steps(results: Path) -> list[Step]:
    steps = []
    table = results / "steps.tsv"
    lines = table.read_text().splitlines() if table.exists() else []
    for line in lines:
        parts = line.split("\t")
        if len(parts) != 6:
            continue
        name, lane, started, ended, rc, junit = parts
        step = Step(name, lane, float(started), float(ended), int(rc))
        if junit != "-":
            report = results / junit
            if report.is_file():
                try:
                    step.cases = read_cases(report)
                    step.has_report = True
                except ET.ParseError:
                    step.rc = step.rc or 1  # a cut-off report is a failure, never a pass
        steps.append(step)
    return steps


def read_task_times(path: Path) -> list[dict[str, Any]]:
    records = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("seconds"), (int, float)):
                records.append(record)
    return records


def minutes(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def table(rows: Iterable[Iterable[object]], header: list[str]) -> list[str]:
    text = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in text) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in text]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


def step_table(steps: list[Step], wall: float | None) -> list[str]:
    rows = [
        (s.name, s.lane, minutes(s.seconds), s.count("passed"), s.failures, s.count("skipped"), s.result) for s in steps
    ]
    lines = table(rows, ["step", "lane", "m:ss", "passed", "failed", "skipped", "result"])
    if wall is not None:
        lines.append(f"wall time of make test: {minutes(wall)} (steps in two lanes run side by side)")
    return lines


def slowest_cases(steps: list[Step], limit: int = SLOWEST) -> list[str]:
    cases = sorted(((case, step.name) for step in steps for case in step.cases), key=lambda pair: -pair[0].seconds)
    rows = [(f"{case.seconds:.1f}", step, case.name) for case, step in cases[:limit]]
    return table(rows, ["seconds", "step", "test case"])


def slowest_tasks(records: list[dict[str, Any]], limit: int = SLOWEST) -> list[str]:
    """Tasks by their summed wall time over every run, with how often they ran and their longest run."""
    totals: dict[str, list[float]] = {}
    for record in records:
        totals.setdefault(str(record.get("task", "?")), []).append(float(record["seconds"]))
    ranked = sorted(totals.items(), key=lambda item: -sum(item[1]))[:limit]
    rows = [(f"{sum(times):.1f}", len(times), f"{max(times):.1f}", name) for name, times in ranked]
    return table(rows, ["total s", "runs", "max s", "task"])


def failure_lines(steps: list[Step], limit: int = FAILURES) -> list[str]:
    """What failed, by step and case, with each failure's first line: CI shows only the end of the output."""
    lines = []
    for step in steps:
        failed = [case for case in step.cases if case.outcome == "failed"]
        if step.rc != 0 and not failed:
            lines.append(f"  {step.name}: the step exited {step.rc} (see .test-results/logs/{step.name}.log)")
        lines += [f"  {step.name}: {case.name}" + (f" -- {case.message}" if case.message else "") for case in failed]
    if len(lines) > limit:
        lines = [*lines[:limit], f"  ... and {len(lines) - limit} more"]
    return lines


def counts(steps: list[Step]) -> tuple[int, int, int]:
    passed = sum(step.count("passed") for step in steps)
    failed = sum(step.failures for step in steps)
    skipped = sum(step.count("skipped") for step in steps)
    return passed, failed, skipped


def report(results: Path, wall: float | None = None) -> tuple[str, int]:
    """The whole report and the number of failures."""
    steps = read_steps(results)
    tasks = read_task_times(results / "task-times.jsonl")
    lines = []
    if any(step.cases for step in steps):
        lines += ["", f"The {SLOWEST} slowest test cases:", *slowest_cases(steps)]
    if tasks:
        executed = [r for r in tasks if int(r.get("hosts") or 0) > int(r.get("skipped") or 0)]
        lines += [
            "",
            f"The {SLOWEST} Ansible tasks that took longest over all playbook runs "
            f"({len(tasks)} task runs, {len(executed)} of them executed on a host, "
            f"{sum(float(r['seconds']) for r in tasks):.0f} s in all):",
            *slowest_tasks(tasks),
        ]
    # The step table and the failures come last: CI keeps only the end of the output.
    lines += ["", "Steps of make test:", *step_table(steps, wall)]
    failures = failure_lines(steps)
    if failures:
        lines += ["", "What failed:", *failures]
    passed, failed, skipped = counts(steps)
    lines += ["", f"{passed} passed, {failed} failed, {skipped} skipped"]
    return "\n".join(lines), failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the results directory of make test (.test-results)")
    parser.add_argument("--wall", type=float, help="wall seconds of the whole run")
    args = parser.parse_args(argv)
    text, failed = report(args.results, args.wall)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
