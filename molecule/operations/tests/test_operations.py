"""Day-2 operations on a converged index, in order: upgrade A -> B, a broken upgrade that rolls itself back,
playbooks/rollback.yml, pruning, playbooks/backup.yml, playbooks/restore.yml (refusal, replace, a new host).

Each test builds on the state the one before left; they run in file order. The index host and the client are
real containers on a docker network with no egress; bundle B is built on the controller.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from conftest import (
    ARTIFACTS,
    CLIENT,
    NETWORK,
    PACKAGES,
    PASSWORD,
    RELEASES,
    SERVER,
    USER,
    VENV,
    current_release,
    docker,
    on,
    packages,
    pip_install,
    playbook,
    recap,
    release_of,
    running_release,
    said,
    sh,
    single_venv_host,
    tail,
    upload,
)

from scripts.demo_wheel import build_wheel

STAMP = int(time.time())
RELEASE_A = release_of(ARTIFACTS)
STATE: dict[str, object] = {}
YANKED, OWNERS = "/srv/pypi/yanked.json", "/srv/pypi/owners/owners.json"
YANKED_RELEASE = ("ops-pkg0", f"1.0.{STAMP}")
# The index's state files a backup carries beside the packages: (archive member, path on the host).
CARRIED_STATE = (
    ("data/yanked.json", YANKED),
    ("data/owners.json", OWNERS),
    ("data/audit/audit.jsonl", "/srv/pypi/audit/audit.jsonl"),  # the uploads above, each one line
    ("data/audit/uploads.json", "/srv/pypi/audit/uploads.json"),
)


def wheel_on_client(tmp_path: Path, name: str, version: str) -> str:
    wheel = build_wheel(tmp_path, name, version)
    docker("cp", str(wheel), f"{CLIENT}:/var/tmp/{wheel.name}")
    return f"/var/tmp/{wheel.name}"


def htpasswd_sum() -> str:
    return sh(SERVER, "sha256sum /etc/airgap-pypi/htpasswd").split()[0]


def htpasswd_hashes() -> dict[str, str]:
    return dict(line.split(":", 1) for line in sh(SERVER, "cat /etc/airgap-pypi/htpasswd").split())


def index_command(verb: str, project: str, version: str, *extra: str) -> str:
    """The index's own command, as playbooks/yank.yml runs it on the host."""
    layout = f"--packages={PACKAGES} --tree=/srv/pypi/static --yanked={YANKED} --user=pypiserver"
    return sh(
        SERVER,
        f"{VENV}/bin/python /etc/airgap-pypi/airgap_pypi_index.py {verb} {layout}"
        f" --project={project} --version={version} {' '.join(extra)}",
    )


def test_network_has_no_egress() -> None:
    internal = docker("network", "inspect", "--format", "{{.Internal}}", NETWORK).stdout.strip()
    assert internal == "true"


def test_converged_host_runs_release_a_from_the_releases_directory() -> None:
    assert sh(SERVER, f"test -L {VENV} && echo link").strip() == "link"
    assert current_release() == RELEASE_A
    assert running_release() == RELEASE_A
    assert sh(SERVER, f"test -x {RELEASES}/{RELEASE_A}/bin/gunicorn && echo ok").strip() == "ok"


def test_upload_packages_before_the_upgrade(tmp_path: Path) -> None:
    for number in range(3):
        upload(wheel_on_client(tmp_path, f"ops-pkg{number}", f"1.0.{STAMP}"))
    files = packages()
    assert all(f"ops_pkg{n}-1.0.{STAMP}-py3-none-any.whl" in files for n in range(3)), files


def test_a_re_upload_is_refused_and_the_file_is_kept(tmp_path: Path) -> None:
    """pypi_server_overwrite is false by default: the same file name again is refused, the first copy stays."""
    name = f"ops_pkg0-1.0.{STAMP}-py3-none-any.whl"
    before = packages()[name]
    again = build_wheel(tmp_path, "ops-pkg0", f"1.0.{STAMP}", summary="a different file under the same name")
    docker("cp", str(again), f"{CLIENT}:/var/tmp/again-{again.name}")
    on(CLIENT, "sh", "-c", f"mkdir -p /var/tmp/again && mv /var/tmp/again-{again.name} /var/tmp/again/{again.name}")
    refused = upload(f"/var/tmp/again/{again.name}", check=False)
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert "409" in refused.stdout + refused.stderr or "400" in refused.stdout + refused.stderr, refused.stdout
    assert packages()[name] == before


def account_records() -> list[tuple[str, str]]:
    """(action, account changed) of the account changes in the host's audit trail, oldest first."""
    lines = sh(SERVER, "cat /srv/pypi/audit/audit.jsonl").splitlines()
    records = [json.loads(line) for line in lines]
    return [(r["action"], r["subject"]) for r in records if r["action"].startswith("account-")]


def test_account_changes_take_effect_at_once(tmp_path: Path) -> None:
    """A changed password refuses the old one and a removed account is refused, right after the run, no restart."""
    wheel = wheel_on_client(tmp_path, "ops-accounts", f"1.0.{STAMP}")
    second, new_password = ("ops-second", "second-test-only"), "molecule-test-only-changed"
    users = [{"name": USER, "password": new_password}, {"name": second[0], "password": second[1]}]
    changed = playbook("site.yml", "-e", json.dumps({"pypi_server_users": users}))
    assert changed.returncode == 0, tail(changed)
    try:
        assert account_records()[-2:] == [("account-add", second[0]), ("account-change", USER)]
        assert upload(wheel, False, USER, PASSWORD).returncode != 0, "the old password must be refused at once"
        assert "403" in said(upload(wheel, False, USER, PASSWORD))
        assert upload(wheel, False, *second).returncode == 0, "the new account uploads"
        newer = wheel_on_client(tmp_path, "ops-accounts", f"1.1.{STAMP}")
        assert upload(newer, False, USER, new_password).returncode == 0, "the new password uploads"
    finally:
        restored = playbook("site.yml")
        assert restored.returncode == 0, tail(restored)
    assert account_records()[-2:] == [("account-change", USER), ("account-remove", second[0])]
    assert new_password not in sh(SERVER, "cat /srv/pypi/audit/audit.jsonl"), "never a password in the trail"
    gone = upload(wheel_on_client(tmp_path, "ops-accounts", f"2.0.{STAMP}"), False, *second)
    assert gone.returncode != 0 and "403" in said(gone), "a removed account must be refused at once"
    assert upload(wheel_on_client(tmp_path, "ops-accounts", f"3.0.{STAMP}"), check=False).returncode == 0


def test_upgrade_to_bundle_b_keeps_every_package_byte_for_byte(bundle_b: Path) -> None:
    release_b = release_of(bundle_b)
    assert release_b != RELEASE_A
    assert "gunicorn==23.0.0" in (bundle_b / "locks" / "server-cp311.txt").read_text()
    before, accounts = packages(), htpasswd_sum()
    # Check mode says an upgrade would change things, and changes none of them.
    dry = playbook("site.yml", "-e", f"pypi_bootstrap_artifacts_dir={bundle_b}", "--check")
    assert dry.returncode == 0, tail(dry)
    assert recap(dry.stdout)["changed"] > 0
    assert current_release() == RELEASE_A and running_release() == RELEASE_A
    assert sh(SERVER, f"ls {RELEASES}").split() == [RELEASE_A]
    result = playbook("site.yml", "-e", f"pypi_bootstrap_artifacts_dir={bundle_b}")
    assert result.returncode == 0, tail(result)
    assert current_release() == release_b
    assert running_release() == release_b
    version = sh(SERVER, f"{VENV}/bin/python -c 'import gunicorn; print(gunicorn.__version__)'").strip()
    assert version == "23.0.0"
    after = packages()
    assert len(after) == len(before) and after == before
    assert htpasswd_sum() == accounts
    # Release A stays, as the previous one.
    assert sh(SERVER, f"cat {RELEASES}/previous").strip() == RELEASE_A
    assert sh(SERVER, f"test -d {RELEASES}/{RELEASE_A} && echo ok").strip() == "ok"
    installed = pip_install(f"ops-pkg0==1.0.{STAMP}")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    STATE["release_b"] = release_b


def test_rerun_and_check_mode_with_bundle_b_change_nothing(bundle_b: Path) -> None:
    for extra in ([], ["--check"]):
        result = playbook("site.yml", "-e", f"pypi_bootstrap_artifacts_dir={bundle_b}", *extra)
        assert result.returncode == 0, tail(result)
        counts = recap(result.stdout)
        assert counts["changed"] == 0 and counts["failed"] == 0, (extra, counts, tail(result))


def test_broken_release_rolls_back_by_itself(bundle_broken: Path) -> None:
    release_b, broken = STATE["release_b"], release_of(bundle_broken)
    before, accounts = packages(), htpasswd_sum()
    # A release that cannot start never answers /health: 20 s of waiting show it as well as the default 60 s.
    result = playbook(
        "site.yml", "-e", f"pypi_bootstrap_artifacts_dir={bundle_broken}", "-e", "pypi_server_health_timeout=20"
    )
    assert result.returncode != 0, tail(result)
    assert "GET /health did not answer 200 within 20 s" in said(result), tail(result)
    output = said(result)
    assert f"did not serve on release {broken}" in output, tail(result)
    assert f"Rolled back to release {release_b}, which serves again" in output, tail(result)
    assert "Packages and accounts were not touched" in output
    assert current_release() == release_b
    assert running_release() == release_b
    assert packages() == before
    assert htpasswd_sum() == accounts
    assert sh(SERVER, f"cat {RELEASES}/previous").strip() == RELEASE_A
    installed = pip_install(f"ops-pkg1==1.0.{STAMP}")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    STATE["broken"] = broken


def test_rollback_playbook_switches_to_the_previous_release_and_back() -> None:
    release_b = STATE["release_b"]
    before = packages()
    result = playbook("playbooks/rollback.yml")
    assert result.returncode == 0, tail(result)
    assert current_release() == RELEASE_A and running_release() == RELEASE_A
    assert sh(SERVER, f"cat {RELEASES}/previous").strip() == release_b
    assert pip_install(f"ops-pkg2==1.0.{STAMP}").returncode == 0
    # To a named release; the same request again (and in check mode) changes nothing.
    for extra in ([], [], ["--check"]):
        result = playbook("playbooks/rollback.yml", "-e", f"pypi_server_rollback_to={release_b}", *extra)
        assert result.returncode == 0, tail(result)
        if extra or STATE.get("rolled_to_b"):
            assert recap(result.stdout)["changed"] == 0, tail(result)
        STATE["rolled_to_b"] = True
    assert current_release() == release_b and running_release() == release_b
    assert packages() == before


def test_rollback_to_an_unknown_release_is_refused() -> None:
    result = playbook("playbooks/rollback.yml", "-e", "pypi_server_rollback_to=cp311-000000000000")
    assert result.returncode != 0
    output = said(result)
    assert "Release cp311-000000000000 is not on" in output and "Nothing was changed" in output, tail(result)
    assert current_release() == STATE["release_b"]


def test_releases_beyond_the_limit_are_pruned(bundle_b: Path) -> None:
    releases = sh(SERVER, f"ls {RELEASES}").split()
    assert STATE["broken"] in releases, releases
    result = playbook("site.yml", "-e", f"pypi_bootstrap_artifacts_dir={bundle_b}", "-e", "pypi_server_releases_keep=2")
    assert result.returncode == 0, tail(result)
    assert sorted(sh(SERVER, f"ls -d {RELEASES}/*/").split()) == sorted(
        f"{RELEASES}/{release}/" for release in (RELEASE_A, STATE["release_b"])
    )
    assert running_release() == STATE["release_b"]


# --- backup and restore ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backup_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backups")


def test_backup_without_a_directory_is_refused() -> None:
    result = playbook("playbooks/backup.yml")
    assert result.returncode != 0
    assert "pypi_backup_dir ('') must be an absolute directory" in said(result), tail(result)


def test_a_backup_directory_that_is_a_system_directory_is_refused(tmp_path: Path) -> None:
    """Also through a symlink on the controller: the archives would land among the system's files."""
    link = tmp_path / "backups"
    link.symlink_to("/etc")
    before = sorted(Path("/etc").iterdir())
    for value in ("/etc", str(link)):
        result = playbook("playbooks/backup.yml", "-e", f"pypi_backup_dir={value}")
        assert result.returncode != 0
        assert f"pypi_backup_dir={value} leads to /etc, a system directory" in said(result), tail(result)
    assert sorted(Path("/etc").iterdir()) == before


def test_backup_writes_a_verified_archive_and_is_idempotent(backup_dir: Path) -> None:
    expected = packages()
    # A yanked release and an owner's claim of a first upload (as the index's workers write it) go with the data.
    index_command("yank", *YANKED_RELEASE, "--reason='do not use'")
    sh(SERVER, "install -d -o pypiserver -g pypiserver -m 0750 /srv/pypi/owners")
    claim = '{"format": 1, "projects": {"ops-pkg1": {"owner": "tester", "when": "2026-01-01T00:00:00Z"}}}'
    sh(SERVER, f"printf '%s' '{claim}' > {OWNERS} && chown pypiserver: {OWNERS}")
    data_dir_before = sh(SERVER, "ls -A /srv/pypi").split()
    backup_dir.chmod(0o755)  # a directory that exists keeps its mode (pypi_backup_dir=/etc must not become 0700)
    result = playbook("playbooks/backup.yml", "-e", f"pypi_backup_dir={backup_dir}")
    assert result.returncode == 0, tail(result)
    assert backup_dir.stat().st_mode & 0o7777 == 0o755
    archives = sorted(backup_dir.glob(f"{SERVER}-*.tar.gz"))
    assert len(archives) == 1, list(backup_dir.iterdir())
    archive = archives[0]
    digest, name = (backup_dir / f"{archive.name}.sha256").read_text().split()
    assert name == archive.name
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == digest
    with tarfile.open(archive) as tar:
        manifest = tar.extractfile("MANIFEST.sha256").read().decode()
        info = json.loads(tar.extractfile("INFO.json").read())
        listed = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in manifest.splitlines()}
        for member in tar.getmembers():
            if member.isfile() and member.name in listed:
                assert hashlib.sha256(tar.extractfile(member).read()).hexdigest() == listed[member.name]
    assert {k.removeprefix("packages/"): v for k, v in listed.items() if k.startswith("packages/")} == expected
    assert {"config/htpasswd", "config/gunicorn.conf.py", "config/pypiserver_wsgi.py"} <= set(listed)
    with tarfile.open(archive) as tar:
        for member, path in CARRIED_STATE:
            assert tar.extractfile(member).read().decode() == sh(SERVER, f"cat {path}"), member
    assert info["host"] == SERVER and info["files"] == len(listed)
    assert sh(SERVER, "ls -A /srv/pypi").split() == data_dir_before, "the work directory must be gone"
    for extra in ([], ["--check"]):
        again = playbook("playbooks/backup.yml", "-e", f"pypi_backup_dir={backup_dir}", *extra)
        assert again.returncode == 0, tail(again)
        assert recap(again.stdout)["changed"] == 0, tail(again)
    assert sorted(backup_dir.glob("*.tar.gz")) == [archive]
    STATE["archive"], STATE["backed_up"] = archive, expected


def test_restore_onto_the_same_data_changes_nothing() -> None:
    for extra in ([], ["--check"]):
        result = playbook("playbooks/restore.yml", "-e", f"pypi_backup_archive={STATE['archive']}", *extra)
        assert result.returncode == 0, tail(result)
        assert recap(result.stdout)["changed"] == 0, tail(result)


def test_a_corrupted_archive_is_refused_before_anything_changes(tmp_path: Path) -> None:
    archive: Path = STATE["archive"]
    bad = tmp_path / archive.name
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    before = packages()
    result = playbook("playbooks/restore.yml", "-e", f"pypi_backup_archive={bad}")
    assert result.returncode != 0
    assert "failed verification" in said(result), tail(result)
    assert packages() == before


def test_an_archive_with_a_zip_appended_is_refused_before_anything_changes(tmp_path: Path) -> None:
    """The crafted backup of issue 12: the real tar.gz, padding, then a zip whose symlink other readers follow."""
    archive: Path = STATE["archive"]
    crafted = tmp_path / archive.name
    appended = io.BytesIO()
    with zipfile.ZipFile(appended, "w") as extra:
        link = zipfile.ZipInfo("packages/evil")
        link.external_attr = 0o120777 << 16
        extra.writestr(link, "/etc/shadow")
    crafted.write_bytes(archive.read_bytes() + b"\0" * 4096 + appended.getvalue())
    before, shadow = packages(), sh(SERVER, "stat -c '%U %a' /etc/shadow")
    result = playbook("playbooks/restore.yml", "-e", f"pypi_backup_archive={crafted}")
    assert result.returncode != 0
    assert "failed verification" in said(result) and "follows" in said(result), tail(result)
    assert packages() == before and sh(SERVER, "stat -c '%U %a' /etc/shadow") == shadow


def test_restore_refuses_other_data_then_replaces_it_when_told(tmp_path: Path) -> None:
    extra = wheel_on_client(tmp_path, "ops-extra", f"2.0.{STAMP}")
    upload(extra)
    with_extra = packages()
    archived_yanks = sh(SERVER, f"cat {YANKED}")
    index_command("unyank", *YANKED_RELEASE)  # this host's own change since the backup
    host_yanks = sh(SERVER, f"cat {YANKED}")
    result = playbook("playbooks/restore.yml", "-e", f"pypi_backup_archive={STATE['archive']}")
    assert result.returncode != 0
    output = said(result)
    assert f"1 file(s) not in the archive: ops_extra-2.0.{STAMP}-py3-none-any.whl" in output, tail(result)
    assert "yanked releases other than the archive's" in output, tail(result)
    assert "an audit trail other than the archive's" in output, tail(result)  # the extra upload's record
    assert "pypi_backup_replace=true" in output and "Nothing was changed" in output
    assert packages() == with_extra
    assert sh(SERVER, f"cat {YANKED}") == host_yanks, "refused: the host's yank file stays"
    replaced = playbook(
        "playbooks/restore.yml", "-e", f"pypi_backup_archive={STATE['archive']}", "-e", "pypi_backup_replace=true"
    )
    assert replaced.returncode == 0, tail(replaced)
    assert packages() == STATE["backed_up"]
    aside = sh(SERVER, "find /srv/pypi -path '*/.airgap-pypi-replaced-*' -type f").split()
    moved = [path.rsplit("/", 1)[-1] for path in aside if "/audit/" not in path]
    assert moved == [f"ops_extra-2.0.{STAMP}-py3-none-any.whl"]
    assert any(path.endswith("/audit/audit.jsonl") for path in aside), "the host's audit trail is kept aside"
    assert sh(SERVER, f"cat {YANKED}") == archived_yanks
    assert sh(SERVER, f"ls {YANKED}.*").split() != [], "the replaced yank file is kept beside it"


def test_a_host_of_the_single_virtualenv_layout_moves_to_releases(
    project_before_releases: Path, tmp_path: Path
) -> None:
    """A new host installed by the code before releases; this site.yml moves it without losing anything, and
    gives its accounts' apr1 (MD5) hashes sha512_crypt ones with the same passwords."""
    single_venv_host(project_before_releases)
    assert sh(SERVER, f"test -d {VENV} && ! test -L {VENV} && echo dir").strip() == "dir"
    before, accounts = packages(), htpasswd_hashes()
    assert accounts and all(value.startswith("$apr1$") for value in accounts.values()), accounts
    assert before, "the carried-in mirror should have put files into the index"
    moved = playbook("site.yml")
    assert moved.returncode == 0, tail(moved)
    assert current_release() == RELEASE_A and running_release() == RELEASE_A
    assert sh(SERVER, f"ls {RELEASES}").split() == [RELEASE_A]
    assert packages() == before
    rehashed = htpasswd_hashes()
    assert set(rehashed) == set(accounts), rehashed
    assert all(value.startswith("$6$rounds=100000$") for value in rehashed.values()), rehashed
    upload(wheel_on_client(tmp_path, "ops-rehashed", f"1.0.{STAMP}"))  # the same password, the new hash
    # Taken away again, with its audit record: the restore test below expects this host to hold exactly the
    # archive's data (another audit trail is other data).
    sh(SERVER, f"rm -- {PACKAGES}/ops_rehashed-1.0.{STAMP}-py3-none-any.whl")
    sh(SERVER, "rm -f -- /srv/pypi/audit/audit.jsonl* /srv/pypi/audit/uploads.json")
    assert pip_install("click").returncode == 0, "click comes with the default mirror"


def test_restore_onto_a_new_host_gives_the_same_files_and_uploads_work(tmp_path: Path) -> None:
    result = playbook("playbooks/restore.yml", "-e", f"pypi_backup_archive={STATE['archive']}")
    assert result.returncode == 0, tail(result)
    restored = packages()
    assert len(restored) == len(STATE["backed_up"]) and restored == STATE["backed_up"]
    assert sh(SERVER, f"stat -c %U {PACKAGES}/ops_pkg0-1.0.{STAMP}-py3-none-any.whl").strip() == "pypiserver"
    with tarfile.open(STATE["archive"]) as tar:
        for member, path in CARRIED_STATE:
            assert sh(SERVER, f"cat {path}") == tar.extractfile(member).read().decode(), f"{member} comes back"
    assert sh(SERVER, f"stat -c %a {YANKED} /srv/pypi/audit/audit.jsonl").split() == ["644", "640"]
    page = sh(SERVER, "cat /srv/pypi/static/simple/ops-pkg0/index.html")
    assert 'data-yanked="do not use"' in page, "the pages follow the restored yank file"
    files = json.loads(sh(SERVER, "cat /srv/pypi/static/simple/ops-pkg0/index.json"))["files"]
    assert [bool(item.get("upload-time")) for item in files] == [True], "PEP 700 upload-time from the restored trail"
    again = playbook("playbooks/restore.yml", "-e", f"pypi_backup_archive={STATE['archive']}")
    assert again.returncode == 0 and recap(again.stdout)["changed"] == 0, tail(again)
    rerun = playbook("site.yml")
    assert rerun.returncode == 0 and recap(rerun.stdout)["changed"] == 0, tail(rerun)
    pinned = pip_install(f"ops-pkg0==1.0.{STAMP}")  # yanked, and still installed when pinned (PEP 592)
    assert pinned.returncode == 0 and "do not use" in pinned.stdout + pinned.stderr, pinned.stdout + pinned.stderr
    upload(wheel_on_client(tmp_path, "ops-after-restore", f"1.0.{STAMP}"))
    assert f"ops_after_restore-1.0.{STAMP}-py3-none-any.whl" in packages()
    assert on(SERVER, "true").returncode == 0
