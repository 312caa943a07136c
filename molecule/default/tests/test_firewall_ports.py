"""A port the role opened and no longer serves is closed on the next run; a port the operator had open stays open.

Role pypi_firewall, run for a purpose of the test's own on the firewalld host and the nftables host (the iptables
host meets the same in test_settings_changes.py, through site.yml). The first run wants 18311, 18312, 18314 and the
index's port (the index holds it too), the second 18313 alone. Before the first run:
- 18312: the operator opened it in firewalld's permanent configuration only (a reload away): the operator's, so it
  stays open. On nftables the role's own line for it is there already, as a version without the record wrote it:
  the role's, so it is closed.
- 18314: on nftables the operator's own rule accepts it (no comment of the role's): the role adds its line and
  later removes that line alone, so the operator's rule goes on accepting the port.
The index's own ports are never touched. The last test closes the purpose (entry point close) and removes what the
test made by hand, so the hosts are left as the scenario made them."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import PORT, PROJECT_DIR, docker

from scripts.containers import ansible_playbook, changed_tasks, recap

INVENTORY_DIR = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
FIREWALLD, NFTABLES = "airgap-pypi-deb12", "airgap-pypi-deb13"
MOVED, EARLIER, NEW, OWN_RULE = 18311, 18312, 18313, 18314
PURPOSE = "moved-test"
ROLE_LINE = 'tcp dport {} accept comment "airgap-pypi index"'
NFT_CONFIG = "/etc/nftables.conf"


def on(host: str, command: str) -> str:
    return docker("exec", host, "sh", "-c", command, check=False).stdout


# Listings read once per state while one_reading() is on (vrrp_state reads each of them for every peer and port:
# one firewall-cmd call takes about half a second).
_READS: list[dict[tuple[str, str], str]] = []


@contextlib.contextmanager
def one_reading() -> Iterator[None]:
    _READS.append({})
    try:
        yield
    finally:
        _READS.pop()


def read(host: str, command: str) -> str:
    """on(), for a command that only reads: once per one_reading()."""
    if not _READS:
        return on(host, command)
    if (host, command) not in _READS[-1]:
        _READS[-1][host, command] = on(host, command)
    return _READS[-1][host, command]


def firewalld_open(port: int) -> tuple[bool, bool]:
    """Whether firewalld has port/tcp open now, and in its permanent configuration."""
    now = read(FIREWALLD, "firewall-cmd --list-ports").split()
    saved = read(FIREWALLD, "firewall-cmd --permanent --list-ports").split()
    return f"{port}/tcp" in now, f"{port}/tcp" in saved


def nft_open(port: int, rule: str = "tcp dport {} accept") -> tuple[bool, bool]:
    """Whether the nftables input chain has the rule for port now, and the configuration loaded at boot."""
    text = rule.format(port)
    return text in read(NFTABLES, "nft list chain inet filter input"), text in read(NFTABLES, f"cat {NFT_CONFIG}")


def nft_add_line(line: str) -> None:
    """A line in the input chain of the configuration, loaded (as the operator, or an earlier version, would)."""
    on(NFTABLES, f"sed -i '/type filter hook input/a\\\\t\\t{line}' {NFT_CONFIG} && nft --file {NFT_CONFIG}")


def record(host: str) -> dict:
    return json.loads(read(host, "cat /var/lib/airgap-pypi-firewall.json") or "{}")


# Rules another program (or the operator, by hand) added to the running firewall only: the role's runs add and remove
# its own rules one by one and never load the file, which would drop these.
OTHER_NFT_RULE = 'ip saddr 198.51.100.7 drop comment "another program"'
OTHER_IPT_RULE = '-s 198.51.100.7/32 -m comment --comment "another program" -j DROP'


def others_rules(host: str, add: bool) -> None:
    """Another program's rules in the running firewall of host (nftables: one in the role's input chain and a table
    of its own; iptables: one in INPUT): added, or removed."""
    if host == NFTABLES:
        handle = "$(nft -a list chain inet filter input | sed -n 's/.*\"another program\" # handle //p')"
        command = (
            f"nft insert rule inet filter input '{OTHER_NFT_RULE}' && nft add table ip another_program"
            if add
            else f"nft delete rule inet filter input handle {handle}; nft delete table ip another_program"
        )
    else:
        command = f"iptables {'-I' if add else '-D'} INPUT {OTHER_IPT_RULE}"
    on(host, command)


def others_rules_stay(host: str) -> bool:
    """Whether another program's rules (others_rules) are all in the running firewall of host."""
    if host == NFTABLES:
        chain = read(host, "nft list chain inet filter input")
        return OTHER_NFT_RULE in chain and "table ip another_program" in read(host, "nft list tables")
    return f"-A INPUT {OTHER_IPT_RULE}" in read(host, "iptables -S INPUT")


def firewall_play(
    tmp_path: Path,
    name: str,
    entry_point: str,
    settings: dict,
    *args: str,
    hosts: tuple[str, ...] = (FIREWALLD, NFTABLES),
    succeed: bool = True,
) -> str:
    """pypi_firewall's entry point on the hosts (the two by default), for the test's purpose (ansible-playbook's args);
    the output. The run must succeed, or with succeed=False fail."""
    play = [
        {
            "name": "Run pypi_firewall for a purpose of the test's own",
            "hosts": ",".join(hosts),
            "gather_facts": True,
            # The role reads the platform's facts only (its vars files), as in retire_balancer.yml.
            "gather_subset": ["!all"],
            "tasks": [
                {
                    "name": f"Entry point {entry_point}",
                    "ansible.builtin.include_role": {"name": "pypi_firewall", "tasks_from": entry_point},
                    "vars": {"pypi_firewall_purpose": PURPOSE, **settings},
                }
            ],
        }
    ]
    playbook = tmp_path / f"{name}.yml"
    playbook.write_text(yaml.safe_dump(play, sort_keys=False))
    result = ansible_playbook(playbook, INVENTORY_DIR, *args, project=PROJECT_DIR)
    assert (result.returncode == 0) == succeed, result.stdout[-3000:] + result.stderr[-2000:]
    # A failed task's message is on standard error.
    return result.stdout if succeed else result.stdout + result.stderr


def open_ports(tmp_path: Path, port: int, extra: list[int]) -> str:
    settings = {"pypi_firewall_port": port, "pypi_firewall_extra_ports": extra}
    return firewall_play(tmp_path, f"open-{port}", "main", settings)


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The hand-made rules above, the first run, then the second."""
    tmp_path = tmp_path_factory.mktemp("firewall")
    on(FIREWALLD, f"firewall-cmd --permanent --add-port={EARLIER}/tcp")
    assert firewalld_open(EARLIER) == (False, True)
    nft_add_line(ROLE_LINE.format(EARLIER))
    nft_add_line(f"tcp dport {OWN_RULE} accept")
    assert nft_open(EARLIER, ROLE_LINE) == (True, True) and nft_open(OWN_RULE) == (True, True)
    others_rules(NFTABLES, add=True)
    assert others_rules_stay(NFTABLES)
    # The index's port too: the second run no longer wants it, and it stays open as the index holds it.
    first = open_ports(tmp_path, MOVED, [EARLIER, OWN_RULE, PORT])
    assert others_rules_stay(NFTABLES), "the first run dropped another program's rules: " + first[-2000:]
    assert firewalld_open(MOVED) == (True, True) and nft_open(MOVED) == (True, True), first[-3000:]
    assert nft_open(OWN_RULE, ROLE_LINE) == (True, True), "the role's own line beside the operator's rule"
    assert record(FIREWALLD)[PURPOSE]["ports"] == [PORT, MOVED, OWN_RULE]
    assert record(NFTABLES)[PURPOSE]["ports"] == [PORT, MOVED, EARLIER, OWN_RULE]
    return open_ports(tmp_path, NEW, [])


def test_a_port_no_longer_served_is_closed_now_and_at_boot(moved: str) -> None:
    assert firewalld_open(MOVED) == (False, False), "firewalld still has the old port open"
    assert nft_open(MOVED) == (False, False), "nftables still accepts the old port"
    assert firewalld_open(OWN_RULE) == (False, False)
    assert firewalld_open(NEW) == (True, True) and nft_open(NEW) == (True, True)
    assert record(FIREWALLD)[PURPOSE] == {"firewall": "firewalld", "zone": "public", "ports": [NEW]}
    assert record(NFTABLES)[PURPOSE] == {"firewall": "nftables", "zone": "", "ports": [NEW]}


def test_rules_another_program_added_at_run_time_stay_when_ports_open_and_close(moved: str) -> None:
    # The fixture checked them after the first run (ports opened); the second opened one and closed two.
    assert others_rules_stay(NFTABLES), on(NFTABLES, "nft list ruleset")
    others_rules(NFTABLES, add=False)
    assert not others_rules_stay(NFTABLES)


def test_a_port_is_recorded_before_it_is_opened(moved: str) -> None:
    # A run stopped between the two would otherwise find it open next time and take it for the operator's.
    tasks = moved.split("\nTASK [")
    record = next(
        i for i, task in enumerate(tasks) if task.startswith("pypi_firewall : Record, before they are opened")
    )
    opened = [
        i
        for i, task in enumerate(tasks)
        if task.startswith(("pypi_firewall : Open the index ports in", "pypi_firewall : Make the same change"))
    ]
    assert opened and record < min(opened), [task.split("]")[0] for task in tasks]
    for host in (FIREWALLD, NFTABLES):
        assert f"changed: [{host}]" in tasks[record], tasks[record]


def test_a_firewalld_port_the_operator_had_open_stays_open(moved: str) -> None:
    # The role opened it now too (it was wanted), and leaves it so: it is not the role's to close.
    assert firewalld_open(EARLIER) == (True, True), "the role closed a port it had not opened"


def test_the_roles_own_nftables_line_is_closed_even_one_written_before_the_record(moved: str) -> None:
    assert nft_open(EARLIER) == (False, False)


def test_the_operators_own_nftables_rule_for_the_port_is_left(moved: str) -> None:
    assert nft_open(OWN_RULE, ROLE_LINE) == (False, False), "the role's line is gone"
    assert nft_open(OWN_RULE) == (True, True), "the operator's rule was removed"


def test_the_index_port_and_the_other_purposes_are_left_alone(moved: str) -> None:
    assert firewalld_open(PORT) == (True, True) and nft_open(PORT) == (True, True)
    for host in (FIREWALLD, NFTABLES):
        assert PORT in record(host)["index"]["ports"], record(host)


def test_a_second_run_changes_nothing(moved: str, tmp_path: Path) -> None:
    again = open_ports(tmp_path, NEW, [])
    for host, numbers in recap(again).items():
        assert numbers["changed"] == 0, (host, changed_tasks(again))


def test_closing_the_purpose_closes_its_ports_and_leaves_the_rest(moved: str, tmp_path: Path) -> None:
    firewall_play(tmp_path, "close", "close", {})
    assert firewalld_open(NEW) == (False, False) and nft_open(NEW) == (False, False)
    assert firewalld_open(PORT) == (True, True) and nft_open(PORT) == (True, True)
    assert firewalld_open(EARLIER) == (True, True), "the operator's port stays open"
    for host in (FIREWALLD, NFTABLES):
        assert PURPOSE not in record(host) and "index" in record(host)
    # What the test made by hand.
    on(FIREWALLD, f"firewall-cmd --permanent --remove-port={EARLIER}/tcp && firewall-cmd --remove-port={EARLIER}/tcp")
    on(NFTABLES, f"sed -i '/^\\s*tcp dport {OWN_RULE} accept$/d' {NFT_CONFIG} && nft --file {NFT_CONFIG}")
    assert firewalld_open(EARLIER) == (False, False) and nft_open(OWN_RULE) == (False, False)


# Entry point vrrp (the balancers' keepalived): the role's VRRP rules for addresses that are no longer peers go, the
# operator's stay, on the firewalld and nftables hosts and the iptables host of test_settings_changes.py. Before the
# first run the operator accepts VRRP from OPERATORS_PEER: in firewalld by the same rich rule the role writes (so the
# role finds it there and never records it), in nftables and iptables by a line without the role's comment. The first
# run wants the three peers, the second ROLE_PEERS[1] alone, the third the same, a fourth none in check mode and the
# fifth none (the shared address dropped).
ROLE_PEERS, OPERATORS_PEER = ("192.0.2.11", "192.0.2.12"), "192.0.2.13"
# The operator's rich rule for this peer is in firewalld's runtime configuration only (a --permanent away).
RUNTIME_PEER = "192.0.2.14"
VRRP_COMMENT = "airgap-pypi balancers (VRRP)"
IPTABLES, IPTABLES_RULES = "airgap-pypi-deb11", "/etc/iptables/rules.v4"
VRRP_HOSTS = (FIREWALLD, NFTABLES, IPTABLES)
OPERATORS_IPTABLES_LINE = f"-A INPUT -s {OPERATORS_PEER}/32 -p 112 -j ACCEPT"
RICH_RULE = 'rule family="ipv4" source address="{}" protocol value="vrrp" accept'


def firewalld_vrrp(peer: str) -> tuple[bool, bool]:
    """Whether firewalld accepts VRRP from peer by the role's rich rule now, and in its permanent configuration."""
    now = read(FIREWALLD, "firewall-cmd --list-rich-rules").splitlines()
    saved = read(FIREWALLD, "firewall-cmd --permanent --list-rich-rules").splitlines()
    return RICH_RULE.format(peer) in now, RICH_RULE.format(peer) in saved


def nft_vrrp(peer: str, comment: str | None = VRRP_COMMENT) -> tuple[bool, bool]:
    """Whether nftables has a VRRP rule from peer with the role's comment (None: the operator's, without one) in its
    input chain now, and in the configuration loaded at boot."""

    def has(text: str) -> bool:
        lines = [line for line in text.splitlines() if f"ip saddr {peer} " in line]
        return any((f'comment "{comment}"' in line) if comment else "comment" not in line for line in lines)

    return has(read(NFTABLES, "nft list chain inet filter input")), has(read(NFTABLES, f"cat {NFT_CONFIG}"))


def ipt_vrrp(peer: str, comment: str | None = VRRP_COMMENT) -> tuple[bool, bool]:
    """Whether iptables has a VRRP rule from peer with the role's comment (None: the operator's, without one) in its
    INPUT chain now, and in the rules file loaded at boot."""

    def has(text: str) -> bool:
        lines = [line for line in text.splitlines() if f"-s {peer}/32 " in line]
        return any((f'--comment "{comment}"' in line) if comment else "--comment" not in line for line in lines)

    return has(read(IPTABLES, "iptables -S INPUT")), has(read(IPTABLES, f"cat {IPTABLES_RULES}"))


def ipt_port(port: int) -> tuple[bool, bool]:
    """Whether iptables accepts the TCP port by a rule of the role's now, and in the rules file loaded at boot."""
    rule = f"--dport {port} -m comment --comment"
    return rule in read(IPTABLES, "iptables -S INPUT"), rule in read(IPTABLES, f"cat {IPTABLES_RULES}")


def ipt_operators_line(add: bool) -> None:
    """The operator's own VRRP line in the filter table of the rules file (added before its first COMMIT, or
    removed), loaded."""
    # "|" and "#" as sed's delimiters: the line has slashes.
    edit = (
        f"sed -i '0,/^COMMIT$/s|^COMMIT$|{OPERATORS_IPTABLES_LINE}\\nCOMMIT|' {IPTABLES_RULES}"
        if add
        else f"sed -i '\\#^{OPERATORS_IPTABLES_LINE}$#d' {IPTABLES_RULES}"
    )
    on(IPTABLES, f"{edit} && iptables-restore {IPTABLES_RULES}")


def vrrp_play(tmp_path: Path, name: str, peers: list[str], *args: str) -> str:
    settings = {"pypi_firewall_vrrp_peers": peers}
    return firewall_play(tmp_path, f"vrrp-{name}", "vrrp", settings, *args, hosts=VRRP_HOSTS)


def vrrp_state() -> dict:
    """Each peer's rules (firewalld's and nftables' role rules, now and at boot), the record of both hosts and the
    index port's state: what the VRRP runs change, and what they must leave alone."""
    with one_reading():
        return vrrp_state_now()


def vrrp_state_now() -> dict:
    return {
        "peers": {
            peer: {"firewalld": firewalld_vrrp(peer), "nftables": nft_vrrp(peer), "iptables": ipt_vrrp(peer)}
            for peer in (*ROLE_PEERS, OPERATORS_PEER, RUNTIME_PEER)
        },
        "operators_nft": nft_vrrp(OPERATORS_PEER, None),
        "operators_ipt": ipt_vrrp(OPERATORS_PEER, None),
        "records": {host: record(host) for host in VRRP_HOSTS},
        "index_port": {"firewalld": firewalld_open(PORT), "nftables": nft_open(PORT), "iptables": ipt_port(PORT)},
        "others": {host: others_rules_stay(host) for host in (NFTABLES, IPTABLES)},
    }


@pytest.fixture(scope="module")
def vrrp_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The operator's rules, then the runs with three peers, one, the same one again (and in check mode, none), and
    none; each run's output and the state after it."""
    tmp_path = tmp_path_factory.mktemp("vrrp")
    rule = RICH_RULE.format(OPERATORS_PEER)
    on(FIREWALLD, f"firewall-cmd --add-rich-rule='{rule}' && firewall-cmd --permanent --add-rich-rule='{rule}'")
    on(FIREWALLD, f"firewall-cmd --add-rich-rule='{RICH_RULE.format(RUNTIME_PEER)}'")
    nft_add_line(f"ip saddr {OPERATORS_PEER} ip protocol 112 accept")
    ipt_operators_line(add=True)
    # After the operator's lines are loaded (which drops what only ran).
    for host in (NFTABLES, IPTABLES):
        others_rules(host, add=True)
    runs: dict = {"before": {"state": vrrp_state()}}
    assert runs["before"]["state"]["operators_ipt"] == (True, True), on(IPTABLES, f"cat {IPTABLES_RULES}")
    for name, peers, args in (
        ("three", [*ROLE_PEERS, OPERATORS_PEER, RUNTIME_PEER], ()),
        ("one", [ROLE_PEERS[1]], ()),
        ("again", [ROLE_PEERS[1]], ()),
        ("check", [], ("--check",)),
        ("none", [], ()),
    ):
        runs[name] = {"output": vrrp_play(tmp_path, name, peers, *args), "state": vrrp_state()}
    return runs


BOTH = ((True, True),) * 3  # (now, at boot) in firewalld, nftables and iptables
NEITHER = ((False, False),) * 3


def rules(state: dict, peer: str) -> tuple:
    return tuple(state["peers"][peer][firewall] for firewall in ("firewalld", "nftables", "iptables"))


def test_vrrp_rules_of_addresses_no_longer_peers_are_removed_now_and_at_boot(vrrp_runs: dict) -> None:
    three, one, last = (vrrp_runs[name]["state"] for name in ("three", "one", "none"))
    assert all(rules(three, peer) == BOTH for peer in (*ROLE_PEERS, OPERATORS_PEER, RUNTIME_PEER)), three
    # One peer left: the first one's rules are gone, the second's stay.
    assert rules(one, ROLE_PEERS[0]) == NEITHER and rules(one, ROLE_PEERS[1]) == BOTH, one
    assert one["records"][FIREWALLD]["vrrp"] == {
        "firewall": "firewalld",
        "zone": "public",
        "ports": [],
        "peers": [ROLE_PEERS[1]],
    }
    # No peers (the shared address dropped): every rule of the role's is gone, and its record entry.
    assert all(rules(last, peer)[1:] == NEITHER[1:] for peer in (*ROLE_PEERS, OPERATORS_PEER, RUNTIME_PEER)), last
    assert rules(last, ROLE_PEERS[0]) == NEITHER and rules(last, ROLE_PEERS[1]) == NEITHER, last
    assert all("vrrp" not in records for records in last["records"].values()), last["records"]


def test_the_operators_vrrp_rules_stay(vrrp_runs: dict) -> None:
    # firewalld: the rule was there before the role's first run, so never the role's. nftables and iptables: the
    # role's own line for the peer (its comment) went with the second run, the operator's (none) stays.
    assert vrrp_runs["before"]["state"]["peers"][RUNTIME_PEER]["firewalld"] == (True, False)
    for name in ("three", "one", "none"):
        state = vrrp_runs[name]["state"]
        assert state["peers"][OPERATORS_PEER]["firewalld"] == (True, True), (name, state)
        # The run that wanted it made it permanent too; as the operator's, no later run removes it.
        assert state["peers"][RUNTIME_PEER]["firewalld"] == (True, True), (name, state)
        assert state["operators_nft"] == (True, True), (name, state)
        assert state["operators_ipt"] == (True, True), (name, state)
    # What the test made by hand.
    rule = RICH_RULE.format(OPERATORS_PEER)
    on(FIREWALLD, f"firewall-cmd --remove-rich-rule='{rule}' && firewall-cmd --permanent --remove-rich-rule='{rule}'")
    rule = RICH_RULE.format(RUNTIME_PEER)
    on(FIREWALLD, f"firewall-cmd --remove-rich-rule='{rule}' && firewall-cmd --permanent --remove-rich-rule='{rule}'")
    assert firewalld_vrrp(RUNTIME_PEER) == (False, False)
    on(
        NFTABLES,
        f"sed -i '/^\\s*ip saddr {OPERATORS_PEER} ip protocol 112 accept$/d' {NFT_CONFIG} && nft --file {NFT_CONFIG}",
    )
    ipt_operators_line(add=False)
    assert firewalld_vrrp(OPERATORS_PEER) == (False, False) and nft_vrrp(OPERATORS_PEER, None) == (False, False)
    assert ipt_vrrp(OPERATORS_PEER, None) == (False, False)


def test_vrrp_runs_leave_the_rules_another_program_added_at_run_time(vrrp_runs: dict) -> None:
    for name in ("before", "three", "one", "again", "check", "none"):
        assert vrrp_runs[name]["state"]["others"] == {NFTABLES: True, IPTABLES: True}, name
    for host in (NFTABLES, IPTABLES):
        others_rules(host, add=False)
        assert not others_rules_stay(host), host


def test_vrrp_runs_leave_the_index_port_and_the_other_purposes_alone(vrrp_runs: dict) -> None:
    before = vrrp_runs["before"]["state"]
    for name in ("three", "one", "again", "check", "none"):
        state = vrrp_runs[name]["state"]
        assert (
            state["index_port"]
            == before["index_port"]
            == dict.fromkeys(("firewalld", "nftables", "iptables"), (True, True))
        )
        for host in VRRP_HOSTS:
            others = {key: value for key, value in state["records"][host].items() if key != "vrrp"}
            assert others == before["records"][host], (name, host, state["records"][host])


def test_a_vrrp_run_with_the_same_peers_changes_nothing(vrrp_runs: dict) -> None:
    numbers = recap(vrrp_runs["again"]["output"])
    assert sorted(numbers) == sorted(VRRP_HOSTS), numbers
    for host, counts in numbers.items():
        assert counts["changed"] == 0, (host, changed_tasks(vrrp_runs["again"]["output"]))
    # firewalld's rules for the peers already there now and permanently: no module call for them (the first run,
    # which added them, names them).
    called = re.compile(rf"(ok|changed): \[{FIREWALLD}\] => \(item={re.escape(ROLE_PEERS[1])}\)")
    assert called.search(vrrp_runs["three"]["output"]), vrrp_runs["three"]["output"][-3000:]
    assert not called.search(vrrp_runs["again"]["output"]), vrrp_runs["again"]["output"][-3000:]


def test_a_vrrp_run_in_check_mode_reports_the_removals_and_makes_none(vrrp_runs: dict) -> None:
    numbers = recap(vrrp_runs["check"]["output"])
    assert sorted(numbers) == sorted(VRRP_HOSTS), numbers
    assert all(counts["changed"] > 0 for counts in numbers.values()), numbers
    assert vrrp_runs["check"]["state"] == vrrp_runs["again"]["state"]


def test_a_rule_of_the_roles_gone_from_the_running_firewall_is_put_back(tmp_path: Path) -> None:
    # The index port's rule taken out of the running firewall by hand (the files keep it): a run that wants the
    # port finds its line in the file, and puts the rule back in the running chain all the same.
    handle = f"$(nft -a list chain inet filter input | sed -n 's/^.*tcp dport {PORT} accept comment .* # handle //p')"
    on(NFTABLES, f"nft delete rule inet filter input handle {handle}")
    on(IPTABLES, f"iptables -D INPUT -p tcp -m tcp --dport {PORT} -m comment --comment 'airgap-pypi index' -j ACCEPT")
    assert nft_open(PORT) == (False, True) and ipt_port(PORT) == (False, True)
    settings = {"pypi_firewall_port": PORT, "pypi_firewall_extra_ports": []}
    firewall_play(tmp_path, "put-back", "main", settings, hosts=(NFTABLES, IPTABLES))
    assert nft_open(PORT) == (True, True) and ipt_port(PORT) == (True, True)
    # The test's purpose closed again: the index holds the port, so it stays open.
    firewall_play(tmp_path, "put-back-close", "close", {}, hosts=(NFTABLES, IPTABLES))
    assert nft_open(PORT) == (True, True) and ipt_port(PORT) == (True, True)
    assert all(PURPOSE not in record(host) for host in (NFTABLES, IPTABLES))


def write_rules(tmp_path: Path, text: str) -> None:
    """The iptables host's rules file, written with text (not loaded)."""
    source = tmp_path / "rules.v4"
    source.write_text(text)
    docker("exec", "-i", IPTABLES, "sh", "-c", f"cat > {IPTABLES_RULES}", input_file=source)


def test_an_iptables_rules_file_whose_first_table_is_not_filter_is_refused_before_any_change(tmp_path: Path) -> None:
    # iptables-save may write the nat table first: the role's line would go before nat's COMMIT, into a table that
    # filters nothing at boot.
    original = on(IPTABLES, f"cat {IPTABLES_RULES}")
    nat_first = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n" + original
    write_rules(tmp_path, nat_first)
    before = on(IPTABLES, f"iptables -S; cat {IPTABLES_RULES} /var/lib/airgap-pypi-firewall.json")
    try:
        settings = {"pypi_firewall_port": NEW, "pypi_firewall_extra_ports": []}
        output = firewall_play(tmp_path, "nat-first", "main", settings, hosts=(IPTABLES,), succeed=False)
        assert "would go into its *nat table" in output and "put the *filter table first" in output, output[-3000:]
        assert on(IPTABLES, f"iptables -S; cat {IPTABLES_RULES} /var/lib/airgap-pypi-firewall.json") == before
    finally:
        write_rules(tmp_path, original)
    assert on(IPTABLES, f"cat {IPTABLES_RULES}") == original
