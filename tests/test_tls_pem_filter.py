"""pypi_common_tls_pem_problem: the check of a certificate and key of the operator's own PKI, against real
certificates made here (scripts/pki.py), each problem named with the inventory variable that holds it."""

from __future__ import annotations

import datetime

import pytest
from conftest import ROOT, load_module

from scripts.pki import issue

tls = load_module("pypi_common_tls_filters", ROOT / "roles" / "pypi_common" / "filter_plugins" / "pypi_common_tls.py")

LABELS = {"cert": "pypi_replica_tls_cert", "key": "pypi_replica_tls_key", "ca_cert": "pypi_server_tls_ca_cert"}
CA_CERT, _, CA_NAME, CA_KEY = issue(["Operator Root CA"], ca=True)
SUB_CERT, _, SUB_NAME, SUB_KEY = issue(["Operator Issuing CA"], issuer=(CA_NAME, CA_KEY), ca=True)
CERT, KEY, _, _ = issue(["replica1.example.internal", "10.0.0.5"], issuer=(CA_NAME, CA_KEY))
VIA_SUB, VIA_SUB_KEY, _, _ = issue(["replica2.example.internal"], issuer=(SUB_NAME, SUB_KEY))
OTHER_CA, _, _, _ = issue(["Another CA"], ca=True)


def problem(cert: str = CERT, key: str = KEY, ca: str = CA_CERT, names: tuple[str, ...] = (), **kw: object) -> str:
    return tls.tls_pem_problem(cert, key, ca, list(names) or ["replica1.example.internal"], LABELS, **kw)


def test_a_pair_issued_by_the_ca_for_its_names_passes() -> None:
    assert problem() == ""
    assert problem(names=("replica1.example.internal", "10.0.0.5")) == ""


def test_a_chain_through_an_issuing_ca_passes_and_a_leaf_without_it_does_not() -> None:
    names = ("replica2.example.internal",)
    assert problem(VIA_SUB + SUB_CERT, VIA_SUB_KEY, names=names) == ""
    assert problem(VIA_SUB, VIA_SUB_KEY, names=names).startswith("pypi_server_tls_ca_cert is not the issuer of")


def test_another_ca_is_named() -> None:
    said = problem(ca=OTHER_CA)
    assert said == "pypi_server_tls_ca_cert is not the issuer of pypi_replica_tls_cert (issuer Operator Root CA)"


def test_empty_values_are_named() -> None:
    assert problem(cert="", key="") == "pypi_replica_tls_cert and pypi_replica_tls_key are empty"
    assert problem(key=" ") == "pypi_replica_tls_key is empty"
    assert problem(ca="", ca_required=True) == "pypi_server_tls_ca_cert is empty"
    assert problem(ca="") == ""


def test_garbage_is_named_and_no_key_is_ever_in_a_message() -> None:
    assert problem(cert="not a certificate").startswith("pypi_replica_tls_cert is not a PEM certificate")
    assert problem(key="garbage").startswith("pypi_replica_tls_key is not an unencrypted PEM private key")
    assert problem(ca="garbage").startswith("pypi_server_tls_ca_cert is not a PEM certificate")
    _, other_key, _, _ = issue(["x.example.internal"])
    said = problem(key=other_key)
    assert said == (
        "pypi_replica_tls_key does not match pypi_replica_tls_cert (subject replica1.example.internal): "
        "they are not a pair"
    )
    body = "".join(KEY.strip().splitlines()[1:-1])
    for key in (KEY, other_key, "garbage"):
        assert body[:20] not in problem(key=key)


def test_a_name_the_certificate_does_not_cover_is_named() -> None:
    said = problem(names=("replica1", "10.0.0.6"))
    assert said == (
        "pypi_replica_tls_cert does not cover replica1, 10.0.0.6 (its names: replica1.example.internal, IP 10.0.0.5)"
    )


@pytest.mark.parametrize(
    ("patterns", "name", "covered"),
    [
        (["*.example.internal"], "pypi01.example.internal", True),
        (["*.example.internal"], "PYPI01.Example.Internal", True),
        (["*.example.internal"], "a.b.example.internal", False),
        (["*.example.internal"], "example.internal", False),
        # OpenSSL wants two labels after the star: *.internal covers nothing.
        (["*.internal"], "a.internal", False),
        # A DNS entry that reads like an address does not cover the address (TLS clients check IP entries).
        (["10.0.0.5"], "10.0.0.5", False),
    ],
)
def test_a_wildcard_covers_one_label_and_names_and_addresses_stay_apart(
    patterns: list[str], name: str, covered: bool
) -> None:
    assert tls.covers(patterns, [], name) is covered


def test_haproxy_checks_dns_names_and_the_common_name_never_an_address_entry() -> None:
    assert tls.covers_for_haproxy(["replica1.example.internal"], "x", "replica1.example.internal")
    assert tls.covers_for_haproxy([], "10.0.0.5", "10.0.0.5")
    assert not tls.covers_for_haproxy([], "replica1", "10.0.0.5")
    cert, key, _, _ = issue(["other.example.internal", "10.0.0.9"], issuer=(CA_NAME, CA_KEY))
    assert problem(cert, key, names=("10.0.0.9",)) == ""
    said = problem(cert, key, names=("10.0.0.9",), proxied=("10.0.0.9",))
    assert said.startswith("pypi_replica_tls_cert has no DNS name or common name 10.0.0.9, which HAProxy checks"), said


def test_a_key_or_anything_but_certificates_in_a_certificate_variable_is_refused() -> None:
    said = problem(cert=CERT + KEY)
    assert said == "pypi_replica_tls_cert holds PRIVATE KEY besides certificates: give certificates only"
    assert problem(ca=CA_CERT + KEY).startswith("pypi_server_tls_ca_cert holds PRIVATE KEY besides")
    assert problem(key=KEY + KEY) == "pypi_replica_tls_key must hold exactly one PEM private key"


def test_a_bundle_of_two_roots_accepts_either_during_a_move() -> None:
    assert problem(ca=OTHER_CA + CA_CERT) == ""


def test_what_only_path_validation_sees_is_named() -> None:
    # A leaf for client authentication only: OpenSSL (pip) would refuse it as a server's.
    cert, key, _, _ = issue(["replica1.example.internal"], issuer=(CA_NAME, CA_KEY), purpose="client")
    said = problem(cert, key)
    assert said.startswith(
        "pypi_replica_tls_cert does not validate for replica1.example.internal under pypi_server_tls_ca_cert:"
    ), said
    # An expired issuing CA between the leaf and the root.
    old_sub, _, old_name, old_key = issue(["Old issuing CA"], issuer=(CA_NAME, CA_KEY), ca=True, days=-1)
    leaf, leaf_key, _, _ = issue(["replica1.example.internal"], issuer=(old_name, old_key))
    assert "does not validate for" in problem(leaf + old_sub, leaf_key)


def test_a_malformed_certificate_is_a_message_not_an_exception() -> None:
    assert problem(names=(5,)).startswith("pypi_replica_tls_cert does not cover 5")  # a number as a name: its text
    assert problem(now=datetime.datetime(2000, 1, 1)).startswith("pypi_replica_tls_cert cannot be checked")


def test_expired_and_not_yet_valid_are_named() -> None:
    expired, expired_key, _, _ = issue(["replica1.example.internal"], days=-1, issuer=(CA_NAME, CA_KEY))
    assert problem(expired, expired_key).startswith("pypi_replica_tls_cert expired on ")
    early = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    assert problem(now=early).startswith("pypi_replica_tls_cert is not valid before ")


def test_a_private_ca_made_with_openssls_command_line_passes() -> None:
    # No key identifiers anywhere and no key usage on the CA, as `openssl req -x509` and `openssl x509 -req` before
    # OpenSSL 3.2 make them: nginx, HAProxy and pip accept such a chain.
    root, _, root_name, root_key = issue(["Plain root"], ca=True, plain=True)
    cert, key, _, _ = issue(["replica1.example.internal"], issuer=(root_name, root_key), plain=True)
    assert problem(cert, key, ca=root) == ""


def test_a_self_signed_certificate_given_as_its_own_ca_passes() -> None:
    cert, key, _, _ = issue(["replica1.example.internal"])
    assert problem(cert, key, ca=cert) == ""


def test_an_issuing_ca_without_its_root_is_refused() -> None:
    said = problem(VIA_SUB, VIA_SUB_KEY, ca=SUB_CERT, names=("replica2.example.internal",))
    assert said.startswith("pypi_server_tls_ca_cert holds no root for pypi_replica_tls_cert"), said


def test_a_key_with_its_curve_parameters_passes() -> None:
    # `openssl ecparam -genkey` writes an EC PARAMETERS block before the key; nginx and HAProxy skip it.
    parameters = "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    assert problem(key=parameters + KEY) == ""


def test_names_the_library_will_not_take_still_get_their_path_checked() -> None:
    cert, key, _, _ = issue(["replica_1", "replica1.example.internal"], issuer=(CA_NAME, CA_KEY))
    assert problem(cert, key, names=("replica_1", "replica1.example.internal.")) == ""
