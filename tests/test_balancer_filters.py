"""HAProxy's statistics as the balancer's verify reads them (roles/pypi_balancer/filter_plugins)."""

from __future__ import annotations

from conftest import ROOT, load_module

filters = load_module("pypi_balancer_filters", ROOT / "roles" / "pypi_balancer" / "filter_plugins" / "pypi_balancer.py")

CSV = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\n"
    "airgap_pypi,FRONTEND,,,0,1,4096,5,0,0,0,0,0,,,,,OPEN,\n"
    "airgap_pypi_reads,replica1,0,0,0,1,,2,1,2,,0,,0,0,0,0,UP,1\n"
    "airgap_pypi_reads,writer,0,0,0,1,,2,1,2,,0,,0,0,0,0,DOWN 1/2,1\n"
    "airgap_pypi_reads,BACKEND,0,0,0,1,,2,1,2,,0,,0,0,0,0,UP,1\n"
    "airgap_pypi_writer,writer,0,0,0,1,,2,1,2,,0,,0,0,0,0,no check,1\n"
    "airgap_pypi_stats,FRONTEND,,,0,1,4096,5,0,0,0,0,0,,,,,OPEN,\n"
)


def test_server_states_lists_the_servers_of_both_pools_with_the_first_word_of_their_status() -> None:
    assert filters.server_states(CSV) == [
        {"backend": "airgap_pypi_reads", "server": "replica1", "status": "UP"},
        {"backend": "airgap_pypi_reads", "server": "writer", "status": "DOWN"},
        {"backend": "airgap_pypi_writer", "server": "writer", "status": "no"},
    ]


def test_server_states_of_an_html_page_or_nothing_is_empty() -> None:
    assert filters.server_states("<html><body>stats</body></html>") == []
    assert filters.server_states("") == []
