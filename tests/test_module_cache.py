"""callback_plugins/airgap_pypi_module_cache.py: module payloads kept between runs, never stale, never untrusted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, load_module

cache = load_module("airgap_pypi_module_cache", ROOT / "callback_plugins" / "airgap_pypi_module_cache.py")

MODULE = """#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={})
    module.exit_json(changed=False, answer="{answer}")


if __name__ == "__main__":
    main()
"""
PLAY = """
- hosts: localhost
  gather_facts: false
  roles: [probe]
  tasks:
    - name: Ask the role's module
      answer_module:
      register: asked
    - name: Show the answer
      ansible.builtin.debug:
        msg: "ANSWER={{ asked.answer }}"
"""


def project(tmp_path: Path, answer: str) -> Path:
    library = tmp_path / "roles" / "probe" / "library"
    library.mkdir(parents=True, exist_ok=True)
    (tmp_path / "roles" / "probe" / "tasks").mkdir(exist_ok=True)
    (tmp_path / "roles" / "probe" / "tasks" / "main.yml").write_text("---\n[]\n")
    (library / "answer_module.py").write_text(MODULE.replace("{answer}", answer))
    (tmp_path / "play.yml").write_text(PLAY)
    return tmp_path


def run(tmp_path: Path, cache_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "ANSIBLE_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
        ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "callback_plugins"),
        ANSIBLE_CALLBACKS_ENABLED="airgap_pypi_module_cache",
        ANSIBLE_ROLES_PATH=str(tmp_path / "roles"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "local-tmp"),
        ANSIBLE_NOCOLOR="1",
        AIRGAP_PYPI_MODULE_CACHE=str(cache_dir),
    )
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local", "play.yml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def payloads(cache_dir: Path) -> dict[str, int]:
    """{key directory/payload file: mtime_ns} of every payload in the cache."""
    return {
        f"{p.parent.name}/{p.name}": p.stat().st_mtime_ns
        for p in cache_dir.glob("*/*")
        if not p.name.endswith((".lock", "-part"))
    }


def test_a_second_run_reuses_the_payloads_and_an_edited_module_is_never_served_stale(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    project(tmp_path, "first")
    first = run(tmp_path, cache_dir)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "ANSWER=first" in first.stdout
    built = payloads(cache_dir)
    assert any("answer_module" in name for name in built), built
    assert "not used" not in first.stdout + first.stderr

    again = run(tmp_path, cache_dir)
    assert again.returncode == 0 and "ANSWER=first" in again.stdout
    assert payloads(cache_dir) == built, "the second run built its payloads again instead of reusing them"

    module = tmp_path / "roles" / "probe" / "library" / "answer_module.py"
    module.write_text(MODULE.replace("{answer}", "edited"))
    edited = run(tmp_path, cache_dir)
    assert edited.returncode == 0, edited.stdout[-3000:]
    assert "ANSWER=edited" in edited.stdout, "a payload built from the old source was used"
    assert len({name.split("/")[0] for name in payloads(cache_dir)}) == 2


def test_off_leaves_ansible_as_it_is(tmp_path: Path) -> None:
    project(tmp_path, "plain")
    result = run(tmp_path, Path("off"))
    assert result.returncode == 0 and "ANSWER=plain" in result.stdout
    assert not (tmp_path / "off").exists()


def test_an_untrusted_cache_directory_is_not_used_and_the_run_says_why(tmp_path: Path) -> None:
    project(tmp_path, "plain")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "linked").symlink_to(elsewhere)
    result = run(tmp_path, tmp_path / "linked")
    assert result.returncode == 0 and "ANSWER=plain" in result.stdout
    assert "not used" in result.stdout + result.stderr and "link is not followed" in result.stdout + result.stderr
    assert list(elsewhere.iterdir()) == [], "the cache followed a link it did not create"


def test_a_directory_others_may_write_or_another_user_owns_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(cache.CacheRefused, match=r"writable by others \(mode 777\)"):
        cache.link_run_cache(tmp_path, shared, "k" * 32)
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 12345, 12345)
        with pytest.raises(cache.CacheRefused, match="belongs to uid 12345"):
            cache.link_run_cache(tmp_path / "run", foreign, "k" * 32)
    assert not (tmp_path / "ansiballz_cache").exists()


def test_the_key_follows_every_source_file(tmp_path: Path) -> None:
    library = tmp_path / "roles" / "one" / "library"
    library.mkdir(parents=True)
    (library / "m.py").write_text("a")
    key = cache.cache_key(cache.source_dirs([tmp_path / "roles"], [], []))
    assert cache.cache_key(cache.source_dirs([tmp_path / "roles"], [], [])) == key
    (library / "m.py").write_text("ab")
    changed = cache.cache_key(cache.source_dirs([tmp_path / "roles"], [], []))
    assert changed != key
    utils = tmp_path / "roles" / "one" / "module_utils"
    utils.mkdir()
    (utils / "u.py").write_text("x")
    assert cache.cache_key(cache.source_dirs([tmp_path / "roles"], [], [])) != changed


def test_only_the_newest_keys_are_kept(tmp_path: Path) -> None:
    for number in range(cache.KEEP + 3):
        key_dir = tmp_path / f"{number:032d}"
        key_dir.mkdir()
        os.utime(key_dir, (1_000_000 + number, 1_000_000 + number))
    (tmp_path / "notes").mkdir()  # not a key's directory: left alone
    cache.prune(tmp_path)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [f"{n:032d}" for n in range(3, cache.KEEP + 3)] + ["notes"], json.dumps(kept)
