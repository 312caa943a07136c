"""The record of the ports pypi_firewall opened (module_utils pypi_firewall_record, modules pypi_firewall_record and
pypi_firewall_detect, the filters): a port a purpose no longer serves is closed, one the operator had open is not."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError
from ansible.module_utils.pypi_firewall_record import (
    MAX_RECORD,
    RecordError,
    owned_ports,
    read_record,
    stale_ports,
    write_record,
)
from conftest import load_module, module_argv

ROOT = Path(__file__).resolve().parent.parent
RECORD_MODULE = ROOT / "roles" / "pypi_firewall" / "library" / "pypi_firewall_record.py"
DETECT_MODULE = ROOT / "roles" / "pypi_firewall" / "library" / "pypi_firewall_detect.py"
filters = load_module("pypi_firewall_filters", ROOT / "roles" / "pypi_firewall" / "filter_plugins" / "pypi_firewall.py")


def entry(*ports: int, firewall: str = "firewalld", zone: str = "") -> dict[str, Any]:
    return {"firewall": firewall, "zone": zone, "ports": list(ports)}


def test_a_port_the_purpose_no_longer_serves_is_stale() -> None:
    record = {"index": entry(8080, 8443)}
    assert stale_ports(record, "index", "firewalld", "", wanted=[8443]) == [8080]
    assert stale_ports(record, "index", "firewalld", "", wanted=[8080, 8443]) == []


def test_a_port_another_purpose_holds_is_not_stale() -> None:
    record = {"index": entry(8080, 22), "replica-ssh": entry(22)}
    assert stale_ports(record, "index", "firewalld", "", wanted=[8080]) == []


def test_nothing_is_stale_in_another_firewall_or_zone() -> None:
    record = {"index": entry(8080, firewall="iptables")}
    assert stale_ports(record, "index", "nftables", "", wanted=[]) == []
    assert stale_ports({"index": entry(8080, zone="dmz")}, "index", "firewalld", "", wanted=[]) == []
    assert stale_ports({}, "index", "firewalld", "", wanted=[8080]) == []


def test_a_port_open_before_the_role_opened_it_is_never_recorded() -> None:
    # First run: 22 was open already (the operator's), 8080 the role opened.
    assert owned_ports({}, "index", "firewalld", "", wanted=[8080, 22], found_open=[22]) == [8080]
    # Re-run: both open now; the role still holds 8080 alone.
    record = {"index": entry(8080)}
    assert owned_ports(record, "index", "firewalld", "", wanted=[8080, 22], found_open=[8080, 22]) == [8080]
    # 22 no longer wanted: not stale, so the operator's port stays open.
    assert stale_ports(record, "index", "firewalld", "", wanted=[8080]) == []


def test_a_port_another_purpose_holds_is_shared() -> None:
    """Opened by one purpose, wanted by another too: the first one dropping it leaves it open."""
    record = {"replica": entry(8443)}
    shared = owned_ports(record, "balancer", "firewalld", "", wanted=[8443], found_open=[8443])
    assert shared == [8443]
    record["balancer"] = entry(*shared)
    assert stale_ports(record, "replica", "firewalld", "", wanted=[]) == []


def test_the_ports_of_a_purpose_the_host_no_longer_serves_are_stale() -> None:
    """A replica promoted to the writer: its replica port closes unless the index serves it too."""
    record = {"replica": entry(80, 443), "replica-ssh": entry(22)}
    assert stale_ports(record, "index", "firewalld", "", wanted=[8080, 443], retired=["replica"]) == [80]
    # Held by a purpose that is not retired (22 of replica-ssh): left open.
    record["replica"] = entry(80, 22)
    assert stale_ports(record, "index", "firewalld", "", wanted=[8080], retired=["replica"]) == [80]
    # A port the role opened for a retired purpose that this one serves is this purpose's now.
    assert owned_ports({"replica": entry(443)}, "index", "firewalld", "", wanted=[443], found_open=[443]) == [443]


def test_the_record_reads_back_what_was_written(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    assert read_record(str(path)) == {}
    write_record(str(path), {"index": entry(8443, 8080)})
    assert read_record(str(path)) == {"index": entry(8080, 8443)}
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"], "no temporary file is left"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is not JSON"),
        ("[]", "is not a JSON object"),
        ('{"Index": {"firewall": "firewalld", "zone": "", "ports": [1]}}', "is not a purpose name"),
        ('{"index": {"firewall": "ufw", "zone": "", "ports": [1]}}', "firewall 'ufw' is not one of"),
        ('{"index": {"firewall": "firewalld", "zone": "", "ports": [0]}}', "ports must be a list of TCP ports"),
        ('{"index": {"firewall": "firewalld", "zone": "", "ports": [true]}}', "ports must be a list of TCP ports"),
        ('{"index": {"firewall": "firewalld", "ports": [1]}}', "exactly the keys firewall, zone and ports"),
        (" " * (MAX_RECORD + 1), "larger than"),
    ],
)
def test_a_record_that_is_not_what_the_role_writes_is_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "record.json"
    path.write_text(content)
    with pytest.raises(RecordError, match=message):
        read_record(str(path))


def test_a_deeply_nested_record_is_refused_with_a_message(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    path.write_text("[" * 60000)
    with pytest.raises(RecordError, match="is not JSON"):
        read_record(str(path))


def test_a_link_as_record_is_refused_and_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"index": entry(8080)}))
    (tmp_path / "record.json").symlink_to(target)
    with pytest.raises(RecordError, match="a link there is refused"):
        read_record(str(tmp_path / "record.json"))


def run(
    module: Path, tmp_path: Path, check_mode: bool = False, path_env: str = "", pythonpath: str = "", **params: Any
) -> dict[str, Any]:
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**params, "_ansible_check_mode": check_mode}}))
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    if path_env:
        env["PATH"] = path_env
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(module_argv(module, args), capture_output=True, text=True, check=False, env=env)
    return json.loads(done.stdout)


def test_the_record_module_writes_once_then_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    params = {"path": str(path), "purpose": "index", "firewall": "nftables", "wanted": [8080, 22], "found_open": [22]}
    assert run(RECORD_MODULE, tmp_path, check_mode=True, **params)["changed"] is True
    assert not path.exists(), "check mode writes nothing"
    result = run(RECORD_MODULE, tmp_path, **params)
    assert result["changed"] is True and result["ports"] == [8080] and result["purposes"] == ["index"], result
    assert read_record(str(path)) == {"index": entry(8080, firewall="nftables")}
    again = run(RECORD_MODULE, tmp_path, **{**params, "found_open": [8080, 22]})
    assert again["changed"] is False and again["ports"] == [8080], again


def test_the_record_module_keeps_other_purposes_and_drops_one_without_a_firewall(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    write_record(str(path), {"index": entry(8080), "replica-ssh": entry(22)})
    result = run(RECORD_MODULE, tmp_path, path=str(path), purpose="index", firewall="none", wanted=[8080])
    assert result["changed"] is True
    assert read_record(str(path)) == {"replica-ssh": entry(22)}


def test_the_record_module_drops_the_entries_of_retired_purposes_it_closed(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    write_record(str(path), {"replica": entry(80), "balancer": entry(8080, firewall="iptables")})
    params = {"path": str(path), "purpose": "index", "firewall": "firewalld", "wanted": [8080, 80]}
    result = run(RECORD_MODULE, tmp_path, **params, found_open=[8080, 80], retired=["replica", "balancer"])
    assert result["changed"] is True
    # 80 was the replica's: the index holds it now. The balancer's entry is of another firewall: kept.
    assert read_record(str(path)) == {"index": entry(80), "balancer": entry(8080, firewall="iptables")}


def test_the_record_module_refuses_a_bad_purpose_and_a_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    bad = run(RECORD_MODULE, tmp_path, path=str(path), purpose="../x", firewall="firewalld", wanted=[1])
    assert bad["failed"] and "purpose '../x' is not a purpose name" in bad["msg"]
    path.write_text("{")
    broken = run(RECORD_MODULE, tmp_path, path=str(path), purpose="index", firewall="firewalld", wanted=[1])
    assert broken["failed"] and f"{path} is not JSON" in broken["msg"] and "Remove it" in broken["msg"]
    assert path.read_text() == "{", "left as it was"


def test_detect_returns_the_stale_ports_of_its_purpose(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    iptables = {"index": entry(8080, 9000, firewall="iptables"), "balancer": entry(9000, firewall="iptables")}
    write_record(str(path), iptables)
    common = {"iptables_rules": str(tmp_path / "rules.v4"), "nftables_config": str(tmp_path / "nft.conf")}
    result = run(DETECT_MODULE, tmp_path, **common, record=str(path), purpose="index", backend="iptables", ports=[8443])
    assert result["stale"] == [8080], result
    assert result["recorded"]["balancer"]["ports"] == [9000]
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    refused = run(DETECT_MODULE, tmp_path, **common, record=str(path), purpose="index", backend="iptables", ports=[1])
    assert refused["failed"] and "a link there is refused" in refused["msg"] and "Nothing was changed" in refused["msg"]


def test_nothing_is_stale_when_firewalld_cannot_list_its_ports(tmp_path: Path) -> None:
    """firewalld runs but its ports cannot be listed: the record's ports are not closed (nor is anything recorded)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "firewall-cmd"
    program.write_text('#!/bin/sh\ncase "$*" in\n  --state) echo running ;;\n  *) exit 1 ;;\nesac\n')
    program.chmod(0o755)
    path = tmp_path / "record.json"
    write_record(str(path), {"index": entry(8080)})
    common = {"iptables_rules": str(tmp_path / "rules.v4"), "nftables_config": str(tmp_path / "nft.conf")}
    # firewalld's own Python client, if this machine has one, must not answer: a stand-in that fails to import.
    stub = tmp_path / "stub" / "firewall"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('no firewalld client in this test')\n")
    env_path = f"{bin_dir}:{os.environ['PATH']}"
    result = run(
        DETECT_MODULE,
        tmp_path,
        **common,
        record=str(path),
        ports=[9090],
        path_env=env_path,
        pythonpath=str(stub.parent),
    )
    assert result["firewall"] == "firewalld" and result["firewalld_listed"] is False, result
    assert result["stale"] == [], result


def test_detect_refuses_a_purpose_that_is_no_record_name(tmp_path: Path) -> None:
    common = {"iptables_rules": str(tmp_path / "rules.v4"), "nftables_config": str(tmp_path / "nft.conf")}
    refused = run(DETECT_MODULE, tmp_path, **common, purpose="../Index", ports=[1])
    assert refused["failed"] and "pypi_firewall_purpose='../Index' must be a short name" in refused["msg"], refused
    assert "Nothing was changed" in refused["msg"]


def test_only_firewalld_ports_can_be_the_operators() -> None:
    comment = "airgap-pypi index"
    lines = filters.port_lines([8080, 8443], "nftables", comment)
    assert lines == [f'tcp dport {port} accept comment "airgap-pypi index"' for port in (8080, 8443)]
    # The role's own lines in a rules file (its comment): the role's, whoever wrote them, an earlier version too.
    detected = {"rules_present": {"nftables": [lines[1]]}, "firewalld_listed": True, "firewalld_seen": [8080]}
    assert filters.found_open(detected, "nftables", [8080, 8443]) == []
    assert filters.found_open(detected, "iptables", [8080, 8443]) == []
    # firewalld's ports carry no mark: one open before the role opened it may be the operator's.
    assert filters.found_open(detected, "firewalld", [8080, 8443]) == [8080]
    # firewalld's ports not listed: every port counts as the operator's (none is recorded, so none closed later).
    assert filters.found_open({"firewalld_seen": []}, "firewalld", [8080, 8443]) == [8080, 8443]
    with pytest.raises(AnsibleFilterError):
        filters.port_lines([1], "ufw", comment)


# VRRP rules (entry point vrrp): in firewalld the record names the peers whose rich rule the role added.


def test_the_record_keeps_the_peers_whose_rule_the_role_added_and_never_the_operators(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    params = {"path": str(path), "purpose": "vrrp", "firewall": "firewalld", "zone": "public", "wanted": []}
    # 10.0.0.9's rule was there before (the operator's): never recorded, so never removed.
    first = run(RECORD_MODULE, tmp_path, **params, peers=["10.0.0.3", "10.0.0.2", "10.0.0.9"], peers_found=["10.0.0.9"])
    assert first["changed"] is True and first["peers"] == ["10.0.0.2", "10.0.0.3"], first
    # The next run finds the role's own rules there too: still the role's.
    again = run(
        RECORD_MODULE,
        tmp_path,
        **params,
        peers=["10.0.0.2", "10.0.0.3", "10.0.0.9"],
        peers_found=["10.0.0.2", "10.0.0.3", "10.0.0.9"],
    )
    assert again["changed"] is False and again["peers"] == ["10.0.0.2", "10.0.0.3"], again
    assert read_record(str(path)) == {"vrrp": {**entry(zone="public"), "peers": ["10.0.0.2", "10.0.0.3"]}}
    # No peers left (the shared address dropped): the entry goes.
    last = run(RECORD_MODULE, tmp_path, **params, peers=[], peers_found=[])
    assert last["changed"] is True and last["peers"] == [] and read_record(str(path)) == {}, last


def test_the_record_module_refuses_a_peer_that_is_not_an_address_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    params = {"path": str(path), "purpose": "vrrp", "firewall": "firewalld", "wanted": []}
    bad = run(RECORD_MODULE, tmp_path, **params, peers=["10.0.0.2", "10.0.0.2/24"])
    assert bad.get("failed") and "'10.0.0.2/24' is not an IPv4 address" in bad["msg"], bad
    assert not path.exists()


@pytest.mark.parametrize("peers", [["10.0.0.2", "host"], "10.0.0.2", [None], ["10.0.0.2"] * 257])
def test_a_record_with_bad_peers_is_refused(tmp_path: Path, peers: Any) -> None:
    path = tmp_path / "record.json"
    path.write_text(json.dumps({"vrrp": {**entry(), "peers": peers}}))
    with pytest.raises(RecordError, match="peer"):
        read_record(str(path))


def test_the_stale_peers_are_the_recorded_ones_no_longer_wanted_in_the_zone_recorded() -> None:
    recorded = {"vrrp": {**entry(zone="public"), "peers": ["10.0.0.2", "10.0.0.3"]}}
    detected = {"firewalld_listed": True, "firewalld_zone": "public", "recorded": recorded}
    assert filters.vrrp_stale_peers(detected, "vrrp", ["10.0.0.3", "10.0.0.4"]) == [
        {"address": "10.0.0.2", "zone": "public"}
    ]
    assert [item["address"] for item in filters.vrrp_stale_peers(detected, "vrrp", [])] == ["10.0.0.2", "10.0.0.3"]
    # firewalld's zone changed since: every recorded rule goes, from the zone it is in.
    moved = filters.vrrp_stale_peers({**detected, "firewalld_zone": "internal"}, "vrrp", ["10.0.0.3"])
    assert moved == [{"address": "10.0.0.2", "zone": "public"}, {"address": "10.0.0.3", "zone": "public"}]
    # firewalld that could not list its configuration, or another firewall's entry: nothing is removed.
    assert filters.vrrp_stale_peers({**detected, "firewalld_listed": False}, "vrrp", []) == []
    other = {"vrrp": {**entry(firewall="nftables"), "peers": ["10.0.0.2"]}}
    assert filters.vrrp_stale_peers({**detected, "recorded": other}, "vrrp", []) == []


def test_the_peers_are_normalised_once_and_bounded() -> None:
    assert filters.vrrp_addresses([" 10.0.0.3", "10.0.0.2\n", "10.0.0.3"]) == ["10.0.0.2", "10.0.0.3"]
    assert filters.vrrp_addresses("10.0.0.2") == ["10.0.0.2"]
    with pytest.raises(AnsibleFilterError, match="257 addresses: at most 256"):
        filters.vrrp_addresses([f"10.0.{n // 256}.{n % 256}" for n in range(257)])
    with pytest.raises(AnsibleFilterError, match=re.escape("'010.0.0.2' is not an IPv4 address")):
        filters.vrrp_addresses(["010.0.0.2"])


def test_the_rich_rules_found_are_the_peers_rules_as_the_role_writes_them() -> None:
    listing = (
        'rule family="ipv4" source address="10.0.0.2" protocol value="vrrp" accept\n'
        'rule family="ipv4" source address="10.0.0.30" protocol value="vrrp" log prefix="x" accept\n'
    )
    assert filters.vrrp_rich_found(listing, ["10.0.0.2", "10.0.0.3", "10.0.0.30"]) == ["10.0.0.2"]
    assert filters.vrrp_rich_found("", ["10.0.0.2"]) == []
    # The permanent and the runtime listing: a rule in either.
    assert filters.vrrp_rich_found(
        [listing, 'rule family="ipv4" source address="10.0.0.3" protocol value="vrrp" accept'], ["10.0.0.2", "10.0.0.3"]
    ) == ["10.0.0.2", "10.0.0.3"]
    assert filters.vrrp_rich_found(["", None], ["10.0.0.2"]) == []


@pytest.mark.parametrize("firewall", ["iptables", "nftables"])
def test_the_stale_vrrp_lines_are_the_roles_own_of_other_addresses(firewall: str) -> None:
    comment = "airgap-pypi balancers (VRRP)"
    stale = re.compile(filters.vrrp_stale_regexp(["10.0.0.2", "10.0.0.3"], firewall, comment))
    kept, gone = (
        filters.vrrp_lines(peers, firewall, comment) for peers in (["10.0.0.2", "10.0.0.3"], ["10.0.0.23", "10.0.0.4"])
    )
    assert [bool(stale.search("\t\t" + line)) for line in kept + gone] == [False, False, True, True]
    # Another comment (the operator's rule for the same peer) is never matched.
    assert not stale.search(gone[0].replace(comment, "mine"))
    # No peers: every line of the role's.
    every = re.compile(filters.vrrp_stale_regexp([], firewall, comment))
    assert all(every.search(line) for line in kept + gone)
    assert not every.search(kept[0].replace(comment, "mine"))


def test_only_peers_without_their_rich_rule_now_and_permanently_are_added() -> None:
    rule = 'rule family="ipv4" source address="{}" protocol value="vrrp" accept'
    permanent = "\n".join(rule.format(address) for address in ("10.0.0.2", "10.0.0.3"))
    runtime = rule.format("10.0.0.2")
    peers = ["10.0.0.4", " 10.0.0.3", "10.0.0.2"]
    # 10.0.0.3 is permanent only (a reload away), 10.0.0.4 in neither: both added; 10.0.0.2 in both: skipped.
    assert filters.vrrp_rich_missing(peers, permanent, runtime) == ["10.0.0.3", "10.0.0.4"]
    # firewalld's rules not listed: every peer.
    assert filters.vrrp_rich_missing(peers, "", "") == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]


@pytest.mark.parametrize(
    ("port", "extra", "problem"),
    [
        (8080, [8443], ""),
        ("8080", ["8443", 80], ""),
        # A string where the list goes: read digit by digit, it would open ports 8, 4 and 3.
        (8080, "8443", "pypi_firewall_extra_ports must be a list of ports, such as [8443], not '8443'"),
        (8080, {"a": 1}, "pypi_firewall_extra_ports must be a list"),
        (True, [], "pypi_firewall_port: 'True' is not a port number"),
        (8080, [False], "pypi_firewall_extra_ports: 'False' is not a port number"),
        (8080, ["80a"], "pypi_firewall_extra_ports: '80a' is not a port number"),
        (0, [], "pypi_firewall_port: 0 is not a TCP port (1-65535)"),
        (8080, [65536], "pypi_firewall_extra_ports: 65536 is not a TCP port"),
        (8080, [None], "pypi_firewall_extra_ports: 'None' is not a port number"),
    ],
)
def test_the_ports_are_a_port_and_a_list_of_ports(port: Any, extra: Any, problem: str) -> None:
    found = filters.ports_problem(port, extra)
    assert found.startswith(problem) and bool(found) == bool(problem), found
