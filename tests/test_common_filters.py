"""pypi_common's filters: the platform search list (most specific first, the same for every role), the URLs
clients use for an index host or a balancer, and the names an internal CA certificate covers."""

from __future__ import annotations

import yaml
from conftest import ROOT, load_module

common = load_module("pypi_common_filters", ROOT / "roles" / "pypi_common" / "filter_plugins" / "pypi_common.py")


def test_most_specific_first() -> None:
    facts = {"distribution": "Rocky", "os_family": "RedHat", "distribution_major_version": "9"}
    assert common.platform_files(facts) == ["Rocky_9.yml", "Rocky.yml", "RedHat_9.yml", "RedHat.yml"]


def test_debian_names_itself_once() -> None:
    facts = {"distribution": "Debian", "os_family": "Debian", "distribution_major_version": "12"}
    assert common.platform_files(facts) == ["Debian_12.yml", "Debian.yml"]


def test_every_role_loads_its_platform_vars_through_it() -> None:
    loaders = [p for p in (ROOT / "roles").rglob("tasks/*.yml") if "first_found" in p.read_text()]
    assert loaders, "no platform vars loader found"
    for path in loaders:
        assert "pypi_common_platform_files" in path.read_text(), path


def test_front_port_is_443_with_tls_else_80() -> None:
    assert common.front_port(True) == 443 and common.front_port("yes") == 443
    assert common.front_port(False) == 80 and common.front_port("false") == 80


def test_index_url_of_a_plain_index_uses_its_port_or_the_common_default() -> None:
    assert common.index_url({}, "pypi1", 8080) == "http://pypi1:8080/simple/"
    assert common.index_url({"pypi_server_port": "9000"}, "pypi1", 8080) == "http://pypi1:9000/simple/"


def test_index_url_with_tls_and_the_front_server() -> None:
    server = {"pypi_server_tls": True, "pypi_server_tls_names": ["pypi.example.internal"], "pypi_front_enabled": True}
    assert common.index_url(server, "pypi1", 8080) == "https://pypi.example.internal:443/simple/"
    assert common.index_url({**server, "pypi_front_port": 8443}, "pypi1", 8080).endswith(":8443/simple/")
    assert common.index_url({**server, "pypi_front_enabled": False}, "pypi1", 8080).endswith(":8080/simple/")


def test_index_url_follows_the_index_hosts_own_common_port() -> None:
    assert common.index_url({"pypi_common_index_port": 9000}, "pypi1", 8080) == "http://pypi1:9000/simple/"


def test_served_port_is_the_front_servers_when_it_runs_else_the_index_port() -> None:
    assert common.served_port({}, 8080) == 8080
    assert common.served_port({"pypi_front_enabled": True}, 8080) == 80
    assert common.served_port({"pypi_front_enabled": "yes", "pypi_server_tls": True}, 8080) == 443
    assert (
        common.served_port({"pypi_front_enabled": False, "pypi_front_port": 81, "pypi_server_port": 9000}, 8080) == 9000
    )


def test_tls_subject_alt_names_keep_the_order_the_certificates_were_issued_with() -> None:
    san = common.tls_subject_alt_names(
        ["pypi.example.internal", "10.0.0.5"],
        ["10.0.0.5", "pypi1.example.internal", "pypi1", ""],
        ["10.0.0.5", "127.0.0.1", "172.17.0.2"],
    )
    assert san == [
        "DNS:pypi.example.internal",
        "DNS:pypi1.example.internal",
        "DNS:pypi1",
        "IP:10.0.0.5",
        "IP:172.17.0.2",
    ]
    assert common.tls_subject_alt_names(["localhost", "fd00::5"], [], []) == ["IP:fd00::5"]


def test_balancer_url_follows_the_writers_tls_and_prefers_the_shared_name_then_the_shared_address() -> None:
    assert common.balancer_url({}, "lb1", {}, 8080) == "http://lb1:8080/simple/"
    tls = {"pypi_server_tls": True}
    shared = {"pypi_balancer_vip": "10.0.0.100/24", "pypi_balancer_port": 443}
    assert common.balancer_url(shared, "lb1", tls, 8080) == "https://10.0.0.100:443/simple/"
    named = {**shared, "pypi_balancer_tls_names": ["pypi.example.internal"]}
    assert common.balancer_url(named, "lb1", tls, 8080) == "https://pypi.example.internal:443/simple/"
    assert common.balancer_url(named, "lb1", {"pypi_server_tls": "false"}, 8080).startswith("http://pypi.example")


def test_tls_name_is_the_first_tls_name_else_the_inventory_name() -> None:
    assert common.tls_name({}, "pypi1") == "pypi1"
    assert common.tls_name({"pypi_server_tls_names": ["pypi.example.internal", "10.0.0.5"]}, "pypi1") == (
        "pypi.example.internal"
    )


def test_tls_settings_are_the_writers_inventory_else_this_hosts() -> None:
    local = {
        "ca_dir": "/inv/pki",
        "ca_common_name": "airgap-pypi internal CA",
        "ca_days": 3650,
        "cert_days": 825,
        "renew_days": 30,
        "min_version": "1.2",
    }
    assert common.tls_settings({}, local) == {**local, "source": "internal_ca", "ca_cert": ""}
    writer = {
        "pypi_server_tls_ca_dir": "/srv/ca",
        "pypi_common_tls_ca_dir": "/other",
        "pypi_common_tls_min_version": "1.3",
    }
    found = common.tls_settings(writer, local)
    assert found["ca_dir"] == "/srv/ca" and found["min_version"] == "1.3"
    assert {key: found[key] for key in ("ca_common_name", "ca_days", "cert_days", "renew_days")} == {
        key: local[key] for key in ("ca_common_name", "ca_days", "cert_days", "renew_days")
    }
    assert common.tls_settings({"pypi_server_tls_ca_dir": ""}, local)["ca_dir"] == "/inv/pki"


def test_tls_settings_carry_the_writers_own_pki_and_its_ca() -> None:
    local = dict.fromkeys(common.TLS_SETTINGS, "")
    own = {"pypi_server_tls_source": "inventory", "pypi_server_tls_ca_cert": "-----BEGIN CERTIFICATE-----..."}
    found = common.tls_settings(own, local)
    assert found["source"] == "inventory" and found["ca_cert"] == own["pypi_server_tls_ca_cert"]
    # The internal CA's certificate is its ca_dir's, never a leftover pypi_server_tls_ca_cert.
    leftover = common.tls_settings({**own, "pypi_server_tls_source": "internal_ca"}, local)
    assert leftover["source"] == "internal_ca" and leftover["ca_cert"] == ""


def test_tls_request_is_what_the_entry_point_takes() -> None:
    settings = {
        **dict.fromkeys(common.TLS_SETTINGS, "x"),
        "source": "inventory",
        "ca_cert": "CA PEM",
        "min_version": "1.3",
    }
    request = common.tls_request(settings, "replica1", ["DNS:replica1"], "CERT PEM", "KEY PEM")
    spec = yaml.safe_load((ROOT / "roles" / "pypi_common" / "meta" / "argument_specs.yml").read_text())
    keys = spec["argument_specs"]["tls_cert"]["options"]["pypi_common_tls_cert"]["options"]
    assert set(request) == set(keys), "the entry point would refuse it (or miss a key)"
    assert request["source"] == "inventory" and request["ca_cert"] == "CA PEM" and request["key"] == "KEY PEM"
    assert request["common_name"] == "replica1" and request["san"] == ["DNS:replica1"]


def test_file_name_ok_takes_host_names_and_addresses_and_nothing_that_leaves_the_directory() -> None:
    for name in ("pypi01.example.internal", "Index_1", "192.0.2.10", "fe80::1", "::1", "a" * 200):
        assert common.file_name_ok(name), name
    for name in ("../escape", "a/b", "..", ".", ".hidden", "-rf", "_x", "", "a b", "a\x00b", "a\n", "a" * 201, None, 7):
        assert not common.file_name_ok(name), name
