"""Role READMEs list exactly the variables their argument specs define."""

from __future__ import annotations

from pathlib import Path

import pytest
import role_docs
import yaml

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
