"""supervisord [program:x] sections, rendered in Python rather than one template call per program."""

from __future__ import annotations

from typing import Any

HEADER = "; Managed by airgap-pypi (pypi_supervisor): changes here are replaced on the next run.\n"


def quote_env(value: Any) -> str:
    """A value for supervisord's environment= (double quotes dropped, % doubled, as supervisord expands it)."""
    return '"' + str(value).replace('"', "").replace("%", "%%") + '"'


def program_section(program: dict[str, Any], log_dir: str, maxbytes: str, backups: int) -> str:
    """The [program:x] section of one program (the keys of meta/argument_specs.yml's program entry point)."""
    name = program["name"]
    lines = [
        f"[program:{name}]",
        f"command={program['command']}",
        f"directory={program.get('directory') or '/'}",
        f"user={program.get('user') or 'nobody'}",
    ]
    environment = program.get("environment") or {}
    if environment:
        lines.append("environment=" + ",".join(f"{key}={quote_env(environment[key])}" for key in sorted(environment)))
    lines += [
        "autostart=true",
        "autorestart=true",
        f"startsecs={program.get('startsecs', 3)}",
        f"startretries={program.get('startretries', 10)}",
        f"stopsignal={program.get('stopsignal') or 'TERM'}",
        f"stopwaitsecs={program.get('stopwaitsecs', 30)}",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=false",
    ]
    for stream in ("stdout", "stderr"):
        short = "out" if stream == "stdout" else "err"
        lines += [
            f"{stream}_logfile={log_dir}/{name}.{short}.log",
            f"{stream}_logfile_maxbytes={maxbytes}",
            f"{stream}_logfile_backups={backups}",
        ]
    return HEADER + "\n".join(lines) + "\n"


def program_files(
    programs: list[dict[str, Any]], include_dir: str, log_dir: str, maxbytes: str, backups: int
) -> list[dict[str, Any]]:
    """The entries of one pypi_common_files call: each program's section written, or removed (state: absent)."""
    entries = []
    for program in programs:
        present = program.get("state", "present") == "present"
        entries.append(
            {
                "path": f"{include_dir}/{program['name']}.conf",
                "state": "file" if present else "absent",
                "content": program_section(program, log_dir, maxbytes, backups) if present else "",
                "owner": "root",
                "group": "root",
                "mode": "0644",
            }
        )
    return entries


def removed_programs(names: list[str], avail: list[str]) -> list[dict[str, Any]]:
    """The program entries (state absent) that remove names, or, for ['all'], every program of `supervisorctl
    avail`'s lines (its first column)."""
    if names == ["all"]:
        names = [line.split()[0] for line in avail if line.strip()]
    return [{"name": name, "command": "removed", "state": "absent"} for name in names]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"pypi_supervisor_program_files": program_files, "pypi_supervisor_removed_programs": removed_programs}
