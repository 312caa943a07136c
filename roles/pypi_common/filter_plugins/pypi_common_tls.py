"""The check of a certificate and key from the operator's own PKI (the inventory), before any host is changed.

One filter, pypi_common_tls_pem_problem, for every role that serves HTTPS with certificates from the inventory
(pypi_server, pypi_replica, pypi_balancer). It runs on the controller with the `cryptography` library that
community.crypto needs there anyway; it never prints a key, only what is wrong.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _certificates(pem: str) -> list[x509.Certificate]:
    """Every certificate of a PEM text, in order (the server's first, then its chain)."""
    return x509.load_pem_x509_certificates(pem.strip().encode())


def _subject(cert: x509.Certificate, issuer: bool = False) -> str:
    name = cert.issuer if issuer else cert.subject
    common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else name.rfc4514_string()


def _names(cert: x509.Certificate) -> list[str]:
    """The certificate's DNS names (lower case) and IP addresses."""
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in alt.get_values_for_type(x509.DNSName)] + [
        str(a) for a in alt.get_values_for_type(x509.IPAddress)
    ]


def covers(cert_names: list[str], name: str) -> bool:
    """Whether a certificate with cert_names is valid for name: exactly, or by a wildcard of its first label only
    (*.example.internal covers pypi01.example.internal, not a.b.example.internal)."""
    try:
        return str(ipaddress.ip_address(name)) in cert_names
    except ValueError:
        pass
    name = name.lower().rstrip(".")
    return name in cert_names or ("." in name and "*." + name.split(".", 1)[1] in cert_names)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):  # another issuer's name, signature or key type
        return False
    return True


def _chains_to(chain: list[x509.Certificate], ca: x509.Certificate) -> bool:
    """Whether the server's certificate chain[0] was issued by ca, directly or through the chain's others."""
    current, rest = chain[0], list(chain[1:])
    for _ in range(len(chain)):
        if _issued_by(current, ca):
            return True
        following = next((c for c in rest if _issued_by(current, c)), None)
        if following is None:
            return False
        rest.remove(following)
        current = following
    return False


class _Problem(ValueError):
    """What is wrong, in words that name the inventory variable."""


def _load(cert: str, key: str, labels: dict[str, str]) -> tuple[list[x509.Certificate], Any]:
    """The certificate chain and the private key, or a _Problem."""
    try:
        chain = _certificates(cert)
    except ValueError as exc:
        raise _Problem(f"{labels['cert']} is not a PEM certificate ({exc})") from None
    try:
        private = serialization.load_pem_private_key(key.encode(), password=None)
    except (ValueError, TypeError):
        message = "is not an unencrypted PEM private key (a server cannot read a key with a passphrase)"
        raise _Problem(f"{labels['key']} {message}") from None
    return chain, private


def _leaf(
    leaf: x509.Certificate, private: Any, names: list[str], labels: dict[str, str], now: datetime.datetime
) -> None:
    """The server's certificate against its key, the time now and the names it must cover, or a _Problem."""
    if private.public_key().public_bytes(*_SPKI) != leaf.public_key().public_bytes(*_SPKI):
        raise _Problem(
            f"{labels['key']} does not match {labels['cert']} (subject {_subject(leaf)}): they are not a pair"
        )
    if leaf.not_valid_after_utc < now:
        raise _Problem(f"{labels['cert']} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_before_utc > now:
        raise _Problem(f"{labels['cert']} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    have = _names(leaf)
    missing = [n for n in names if not covers(have, str(n))]
    if missing:
        raise _Problem(f"{labels['cert']} does not cover {', '.join(missing)} (its names: {', '.join(have) or 'none'})")


def _issuer(chain: list[x509.Certificate], ca_cert: str, labels: dict[str, str], required: bool) -> None:
    """The chain against the CA that is to have issued it, or a _Problem."""
    if not ca_cert:
        if required:
            raise _Problem(f"{labels['ca_cert']} is empty")
        return
    try:
        ca = _certificates(ca_cert)[0]
    except ValueError as exc:
        raise _Problem(f"{labels['ca_cert']} is not a PEM certificate ({exc})") from None
    if not _chains_to(chain, ca):
        raise _Problem(
            f"{labels['ca_cert']} is not the issuer of {labels['cert']} (issuer {_subject(chain[0], issuer=True)})"
        )


def tls_pem_problem(
    cert: Any,
    key: Any,
    ca_cert: Any,
    names: list[str],
    labels: dict[str, str],
    *,
    ca_required: bool = False,
    now: datetime.datetime | None = None,
) -> str:
    """What is wrong with a certificate (PEM, possibly followed by its chain), its key and the CA that is to have
    issued it (required or not), for a server reached by every one of names; "" when nothing is. labels name the
    inventory variables in the message: {"cert": ..., "key": ..., "ca_cert": ...}."""
    cert, key, ca_cert = (str(v or "").strip() for v in (cert, key, ca_cert))
    empty = [labels[k] for k, v in (("cert", cert), ("key", key)) if not v]
    if empty:
        return " and ".join(empty) + (" is" if len(empty) == 1 else " are") + " empty"
    try:
        chain, private = _load(cert, key, labels)
        _leaf(chain[0], private, names, labels, now or datetime.datetime.now(datetime.UTC))
        _issuer(chain, ca_cert, labels, ca_required)
    except _Problem as problem:
        return str(problem)
    return ""


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"pypi_common_tls_pem_problem": tls_pem_problem}
