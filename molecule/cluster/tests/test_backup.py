"""Backup and restore with the cluster (issue 15 part 5): playbooks/backup.yml archives the writer alone (replicas
hold copies of its data), and a restore onto the writer reaches every replica like any other change, removals
included, without a replica leaving the read pool.

Runs before test_promote.py (which moves the writer) and leaves the index as it found it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import (
    BALANCER,
    BALANCER_URL,
    CLIENT,
    INVENTORY_DIR,
    PROJECT_DIR,
    READ_URL,
    REPLICAS,
    WRITER,
    ansible_playbook,
    on,
    pip_from,
    recap,
    replica_url,
    upload_and_watch,
    wait_for_state,
)

CLIENT_READ = (
    "import sys, urllib.request, urllib.error\n"
    "try:\n"
    "    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n"
    "except urllib.error.HTTPError as error:\n"
    "    print(error.code)\n"
)


def playbook(name: str, *args: str):
    result = ansible_playbook(PROJECT_DIR / "playbooks" / name, INVENTORY_DIR, *args, project=PROJECT_DIR)
    return result, " ".join((result.stdout + result.stderr).split())


def page_status(replica: str, project: str) -> int:
    done = on(CLIENT, "/usr/bin/python3", "-c", CLIENT_READ, f"{replica_url(replica)}/simple/{project}/")
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def test_a_restore_on_the_writer_reaches_every_replica(tmp_path: Path, wheel_on_client) -> None:
    backups = tmp_path / "backups"
    result, said = playbook("backup.yml", "-e", f"pypi_backup_dir={backups}")
    assert result.returncode == 0, said[-3000:]
    # The writer alone: replicas and the balancer are not index hosts of their own.
    archives = sorted(path.name for path in backups.glob("*.tar.gz"))
    assert len(archives) == 1 and archives[0].startswith(f"{WRITER}-"), archives
    assert set(recap(result.stdout)) <= {WRITER, "localhost"}, recap(result.stdout)

    # An upload after the backup, served by every replica.
    wheel, project = wheel_on_client("cluster-after-backup")
    watched = upload_and_watch(wheel, project, limit=30, upload_to=BALANCER_URL)
    assert watched["upload"] == 0, watched["said"]
    assert None not in watched["seen"].values(), watched

    # The restore puts the writer back to the archive (the upload moved aside); the replicas follow it.
    archive = backups / archives[0]
    result, said = playbook("restore.yml", "-e", f"pypi_backup_archive={archive}", "-e", "pypi_backup_replace=true")
    assert result.returncode == 0, said[-3000:]
    start = time.monotonic()
    left = set(REPLICAS)
    while left and time.monotonic() - start < 30:
        left = {replica for replica in left if page_status(replica, project) != 404}
        time.sleep(0.5)
    assert not left, f"{sorted(left)} still list {project} 30 s after the restore"
    print(f"the restore reached every replica {time.monotonic() - start:.1f} s after restore.yml ended")
    # No replica stays out of the read pool (a catch-up longer than the scenario's 3 s bound takes one out for
    # a moment).
    for server in (*REPLICAS, WRITER):
        wait_for_state("airgap_pypi_reads", server, "UP", limit=30)
    for replica in REPLICAS:
        read = on(CLIENT, "/usr/bin/python3", "-c", READ_URL, f"{replica_url(replica)}/replica-status.json")
        status = json.loads(read.stdout)
        assert status["healthy"] is True, status
    gone = pip_from(BALANCER, "download", "--no-deps", "--dest", f"/var/tmp/restored-{project}", f"{project}==1.0")
    assert gone.returncode != 0, gone.stdout
    assert "No matching distribution found" in gone.stdout + gone.stderr, gone.stdout + gone.stderr
