"""Filters every airgap-pypi role uses."""

from __future__ import annotations

import re
from typing import Any


def platform_files(facts: dict[str, Any]) -> list[str]:
    """The vars files a role looks for, most specific first: Rocky_9.yml, Rocky.yml, RedHat_9.yml, RedHat.yml.

    One search list for every role (the linux-system-roles pattern); a role keeps only the files it needs, and
    ansible.builtin.first_found takes the first that exists.
    """
    distribution = str(facts.get("distribution", ""))
    family = str(facts.get("os_family", ""))
    major = str(facts.get("distribution_major_version", ""))
    names = [f"{distribution}_{major}", distribution, f"{family}_{major}", family]
    return [f"{name}.yml" for name in dict.fromkeys(names) if name and not name.endswith("_")]


def front_port(tls: Any) -> int:
    """The front server's port by default: 443 with TLS, else 80."""
    return 443 if as_bool(tls) else 80


def as_bool(value: Any) -> bool:
    """Ansible's truthiness of an inventory value (true, "yes", "1", 1 ...)."""
    if isinstance(value, str):
        return value.strip().lower() in ("yes", "on", "1", "true", "y", "t")
    return bool(value)


def index_url(server: dict[str, Any], name: str, index_port: int) -> str:
    """The /simple/ URL clients use for the index host name with settings server (its hostvars).

    HTTPS when it has TLS; its first TLS name, else its inventory name; the front server's port when the front
    server runs there, else the index's own port (its pypi_server_port, its pypi_common_index_port, else index_port).
    """
    tls = as_bool(server.get("pypi_server_tls", False))
    return f"{'https' if tls else 'http'}://{tls_name(server, name)}:{served_port(server, index_port)}/simple/"


TLS_SETTINGS = ("ca_dir", "ca_common_name", "ca_days", "cert_days", "renew_days", "min_version")


def tls_settings(writer: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    """The TLS settings a replica or a balancer uses, those of its writer (its hostvars writer): for the internal
    CA's, each the writer's pypi_server_tls_<key>, else its pypi_common_tls_<key> (both only where the inventory sets
    them: role defaults are not in another host's hostvars), else local[key] (this host's pypi_common_tls_<key>);
    source, where the writer's certificate comes from (internal_ca, the default, or inventory: the operator's own
    PKI), and ca_cert, the PEM of the CA that issued it then (the writer's pypi_server_tls_ca_cert, else "")."""
    found = {}
    for key in TLS_SETTINGS:
        value = writer.get(f"pypi_server_tls_{key}")
        if value in (None, ""):
            value = writer.get(f"pypi_common_tls_{key}")
        found[key] = local[key] if value in (None, "") else value
    found["source"] = str(writer.get("pypi_server_tls_source") or "internal_ca")
    found["ca_cert"] = str(writer.get("pypi_server_tls_ca_cert") or "") if found["source"] == "inventory" else ""
    return found


def tls_request(
    settings: dict[str, Any], common_name: str, san: list[str], cert: str = "", key: str = ""
) -> dict[str, Any]:
    """The input of pypi_common's entry point tls_cert for a replica or a balancer: its writer's settings (from
    tls_settings; the TLS minimum is not the entry point's), the names its certificate is for, and its own
    certificate and key from the inventory (used with the writer's source inventory)."""
    return {
        **{
            k: settings[k]
            for k in ("source", "ca_cert", "ca_dir", "ca_common_name", "ca_days", "cert_days", "renew_days")
        },
        "cert": cert,
        "key": key,
        "common_name": common_name,
        "san": san,
    }


def tls_name(server: dict[str, Any], name: str) -> str:
    """The name an index host's certificate is checked for (its hostvars server, its inventory name name): its first
    pypi_server_tls_names, else its inventory name."""
    return str((server.get("pypi_server_tls_names") or [name])[0] or name)


def balancer_url(balancer: dict[str, Any], name: str, writer: dict[str, Any], index_port: int) -> str:
    """The /simple/ URL clients use for the balancer host name with settings balancer (its hostvars), in front of
    the writer with settings writer: HTTPS when the writer has TLS; the balancers' first TLS name, else the address
    they share (pypi_balancer_vip without its prefix length), else the balancer's inventory name; the balancer's
    port (pypi_balancer_port, else index_port)."""
    tls = as_bool(writer.get("pypi_server_tls", False))
    vip = str(balancer.get("pypi_balancer_vip") or "").strip().split("/")[0]
    host = (balancer.get("pypi_balancer_tls_names") or [""])[0] or vip or name
    port = int(balancer.get("pypi_balancer_port") or index_port)
    return f"{'https' if tls else 'http'}://{host}:{port}/simple/"


def served_port(server: dict[str, Any], index_port: int) -> int:
    """The port the index host with settings server (its hostvars) serves clients on: the front server's port when
    the front server runs there, else the index's own port (its pypi_server_port, its pypi_common_index_port, else
    index_port)."""
    if as_bool(server.get("pypi_front_enabled", False)):
        port = server.get("pypi_front_port") or front_port(server.get("pypi_server_tls", False))
    else:
        port = server.get("pypi_server_port") or server.get("pypi_common_index_port") or index_port
    return int(port)


IPV4 = re.compile(r"^([0-9]+[.]){3}[0-9]+$")
# A host's file name on the controller (hosts/<name>.key, <name>-<digest>.tar.gz): no "/", never "." or ".." or a
# leading "-" or "."; at most 200, so that the name with its suffix and Ansible's temporary prefix (".ansible_tmp"
# and 8 more) stays within a file name's 255 bytes.
FILE_NAME = re.compile(r"^[A-Za-z0-9:][A-Za-z0-9._:-]{0,199}\Z")


def file_name_ok(name: Any) -> bool:
    """Whether an inventory name can name a host's files on the controller (the internal CA's hosts/<name>.crt,
    backups' <name>-<digest>.tar.gz): it starts with a letter, a digit or ":" (IPv6) and holds only letters, digits,
    ".", "_", ":" and "-", at most 200 of them."""
    return isinstance(name, str) and FILE_NAME.match(name) is not None


def tls_subject_alt_names(required: list[str], host_names: list[str], addresses: list[str]) -> list[str]:
    """subjectAltName entries of a certificate the internal CA issues: the required names, then the host's other
    names and its IPv4 addresses other than loopback; empty names and localhost dropped, each once, in that order;
    DNS: entries first, then IP: entries (IPv4, then IPv6)."""
    names: list[str] = []
    others = [address for address in addresses if not str(address).startswith("127.")]
    for name in [*required, *host_names, *others]:
        text = str(name)
        if text and text != "localhost" and text not in names:
            names.append(text)
    ips = [name for name in names if IPV4.match(name)] + [name for name in names if ":" in name]
    return [f"DNS:{name}" for name in names if name not in ips] + [f"IP:{ip}" for ip in ips]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "pypi_common_platform_files": platform_files,
            "pypi_common_front_port": front_port,
            "pypi_common_index_url": index_url,
            "pypi_common_served_port": served_port,
            "pypi_common_tls_name": tls_name,
            "pypi_common_tls_settings": tls_settings,
            "pypi_common_tls_request": tls_request,
            "pypi_common_tls_san": tls_subject_alt_names,
            "pypi_common_balancer_url": balancer_url,
            "pypi_common_file_name_ok": file_name_ok,
        }
