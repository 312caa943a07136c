"""Role READMEs list exactly the variables their argument specs define."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scripts import role_docs

ROOT = Path(__file__).resolve().parent.parent


def test_readmes_match_argument_specs() -> None:
    assert role_docs.main(["--check"]) == 0, "run scripts/role_docs.py to regenerate the role READMEs"


def test_every_default_is_documented() -> None:
    for defaults in ROOT.glob("roles/*/defaults/main.yml"):
        role = defaults.parent.parent
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
        assert set(yaml.safe_load(defaults.read_text())) == set(specs), role.name


def test_render_replaces_only_the_marked_section() -> None:
    readme = f"# role\n\nintro\n\n{role_docs.BEGIN}\nold\n{role_docs.END}\n\nafter\n"
    specs = {
        "argument_specs": {"main": {"options": {"x_port": {"type": "int", "default": 1, "description": "A port."}}}}
    }
    out = role_docs.render(readme, specs)
    assert out.startswith("# role\n\nintro\n\n") and out.endswith("after\n")
    assert "| `x_port` | int | `1` | A port. |" in out
    assert "old" not in out


def test_render_needs_markers() -> None:
    with pytest.raises(ValueError):
        role_docs.render("# no markers\n", {"argument_specs": {"main": {}}})


def variable_rows(readme: str) -> list[str]:
    """The variable names of the table rows in a README's generated section."""
    section = readme.split(role_docs.BEGIN, 1)[1].split(role_docs.END, 1)[0]
    return [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| `")]


def test_no_variable_row_appears_twice_in_a_readme() -> None:
    for readme in ROOT.glob("roles/*/README.md"):
        rows = variable_rows(readme.read_text())
        assert rows, readme
        assert len(rows) == len(set(rows)), f"{readme.parent.name}: {sorted({r for r in rows if rows.count(r) > 1})}"


def test_entry_points_sharing_options_get_one_row_each() -> None:
    readme = f"{role_docs.BEGIN}\n{role_docs.END}\n"
    port = {"type": "int", "default": 1, "description": "A port."}
    main = {"x_port": port, "x_host": {"description": "A host."}}
    specs = {
        "argument_specs": {
            "main": {"options": main},
            "preflight": {"options": main},
            "again": {"short_description": "The same.", "options": main},
            "more": {"short_description": "More.", "options": {"x_port": port, "x_name": {"description": "A name."}}},
        }
    }
    out = role_docs.render(readme, specs)
    assert variable_rows(out) == ["`x_port`", "`x_host`", "`x_name`"]
    assert "Entry point `again` (`include_role: tasks_from: again`): The same.\n\nIt takes every variable above." in out
    assert "Entry point `more`" in out and "It takes these variables of the tables above: `x_port`." in out
    assert "preflight" not in out


def test_entry_points_that_spec_a_variable_differently_are_refused() -> None:
    readme = f"{role_docs.BEGIN}\n{role_docs.END}\n"
    specs = {
        "argument_specs": {
            "main": {"options": {"x_port": {"type": "int", "default": 1}}},
            "other": {"options": {"x_port": {"type": "int", "required": True}}},
        }
    }
    with pytest.raises(ValueError, match="x_port"):
        role_docs.render(readme, specs)


def test_every_default_value_is_the_same_in_the_argument_specs() -> None:
    """A default is written twice (defaults/main.yml for Ansible, meta/argument_specs.yml for the docs and the
    validation): the values, not only the names, must agree in every entry point that documents one."""
    drift = []
    for defaults_file in ROOT.glob("roles/*/defaults/main.yml"):
        role = defaults_file.parent.parent
        defaults = yaml.safe_load(defaults_file.read_text())
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
        for entry_point, spec in specs.items():
            for name, option in (spec.get("options") or {}).items():
                if name in defaults and "default" in option and option["default"] != defaults[name]:
                    drift.append(f"{role.name} {entry_point} {name}: {option['default']!r} != {defaults[name]!r}")
    assert not drift, drift
