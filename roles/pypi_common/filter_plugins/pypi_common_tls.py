"""The check of a certificate and key from the operator's own PKI (the inventory), before any host is changed.

One filter, pypi_common_tls_pem_problem, for every role that serves HTTPS with certificates from the inventory
(pypi_server, pypi_replica, pypi_balancer). It runs on the controller with the `cryptography` library that
community.crypto needs there anyway: its path validation (x509.verification, the profile Python's and pip's
strict TLS checks follow: purposes, CA flags, every certificate's dates, DNS and IP names apart) once a CA is given,
and plain checks before that, whose messages name the inventory variable. It never prints a key.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
_PEM_LABEL = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")
# The web PKI's rules but for what private CAs made with OpenSSL's command line commonly lack and OpenSSL (nginx,
# HAProxy, pip) does not ask for: key identifiers on leaves and CAs, key usage on a CA.
_CA_POLICY = (
    ExtensionPolicy.webpki_defaults_ca()
    .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, None)
    .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
)
_EE_POLICY = ExtensionPolicy.webpki_defaults_ee().may_be_present(
    x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None
)


class _Problem(ValueError):
    """What is wrong, in words that name the inventory variable."""


def _certificates(pem: str, label: str) -> list[x509.Certificate]:
    """Every certificate of a PEM text, in order (the server's first, then its chain); a _Problem when it holds
    anything else (a key pasted in with it would be installed world-readable) or no certificate."""
    others = sorted(set(_PEM_LABEL.findall(pem)) - {"CERTIFICATE"})
    if others:
        raise _Problem(f"{label} holds {', '.join(others)} besides certificates: give certificates only")
    try:
        return x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise _Problem(f"{label} is not a PEM certificate ({exc})") from None


def _subject(cert: x509.Certificate, issuer: bool = False) -> str:
    name = cert.issuer if issuer else cert.subject
    common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else name.rfc4514_string()


def _alt_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """The certificate's DNS names (lower case) and IP addresses, apart."""
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return [n.lower() for n in alt.get_values_for_type(x509.DNSName)], [
        str(a) for a in alt.get_values_for_type(x509.IPAddress)
    ]


def _dns_match(patterns: list[str], name: str) -> bool:
    """name against DNS names: exactly, or by a wildcard of its first label only, and only where two labels or more
    follow the star (*.example.internal covers pypi01.example.internal; *.internal covers nothing), as OpenSSL
    checks it."""
    name = name.lower().rstrip(".")
    if name in patterns:
        return True
    if "." not in name:
        return False
    parent = name.split(".", 1)[1]
    return "." in parent and "*." + parent in patterns


def covers(dns: list[str], ips: list[str], name: str) -> bool:
    """Whether a certificate with these DNS names and IP addresses is valid for name as a TLS client checks it: an
    address by an IP address entry only, a host name by a DNS entry."""
    try:
        return str(ipaddress.ip_address(name)) in ips
    except ValueError:
        return _dns_match(dns, name)


def covers_for_haproxy(dns: list[str], common_name: str, name: str) -> bool:
    """Whether HAProxy's `verifyhost name` accepts the certificate: a DNS entry or, failing that, the common name
    matches the text of name (HAProxy never looks at IP address entries)."""
    return _dns_match(dns, name) or _dns_match([common_name.lower()], name)


def _load(cert: str, key: str, labels: dict[str, str]) -> tuple[list[x509.Certificate], Any]:
    """The certificate chain and the private key, or a _Problem."""
    chain = _certificates(cert, labels["cert"])
    if len([label for label in _PEM_LABEL.findall(key) if label.endswith("PRIVATE KEY")]) > 1:
        raise _Problem(f"{labels['key']} must hold exactly one PEM private key")
    try:
        private = serialization.load_pem_private_key(key.encode(), password=None)
    except (ValueError, TypeError):
        message = "is not an unencrypted PEM private key (a server cannot read a key with a passphrase)"
        raise _Problem(f"{labels['key']} {message}") from None
    return chain, private


def _leaf(
    leaf: x509.Certificate,
    private: Any,
    names: list[str],
    proxied: list[str],
    labels: dict[str, str],
    *,
    now: datetime.datetime,
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
    dns, ips = _alt_names(leaf)
    missing = [n for n in names if not covers(dns, ips, n)]
    if missing:
        have = ", ".join([*dns, *(f"IP {a}" for a in ips)]) or "none"
        raise _Problem(f"{labels['cert']} does not cover {', '.join(missing)} (its names: {have})")
    unproxied = [n for n in proxied if not covers_for_haproxy(dns, _subject(leaf), n)]
    if unproxied:
        raise _Problem(
            f"{labels['cert']} has no DNS name or common name {', '.join(unproxied)}, which HAProxy checks it for"
            " (it never looks at IP address entries)"
        )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):  # another issuer's name, signature or key type
        return False
    return True


def _chains_to(chain: list[x509.Certificate], cas: list[x509.Certificate]) -> bool:
    """Whether the server's certificate chain[0] was issued by one of cas, directly or through the chain's others."""
    current, rest = chain[0], list(chain[1:])
    for _ in range(len(chain)):
        if any(_issued_by(current, ca) for ca in cas):
            return True
        following = next((c for c in rest if _issued_by(current, c)), None)
        if following is None:
            return False
        rest.remove(following)
        current = following
    return False


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name.rstrip("."))


def _verifier(policy: PolicyBuilder, name: str | None, leaf: x509.Certificate) -> Any:
    """A server verifier for name, or, for a name the library will not take (an underscore in it; the names were
    checked above), for one the certificate has, so that the path is still validated; None when there is none."""
    dns, ips = _alt_names(leaf)
    candidates = ([name] if name else []) + [d.replace("*", "a", 1) for d in dns] + ips
    for candidate in candidates:
        try:
            return policy.build_server_verifier(_general_name(candidate))
        except ValueError:
            continue
    return None


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer and _issued_by(cert, cert)


def _issuer(
    chain: list[x509.Certificate], ca_cert: str, names: list[str], labels: dict[str, str], now: datetime.datetime
) -> None:
    """The chain against the CA certificates that are to have issued it (one, or several during a move), then the
    whole path as a TLS client validates it for each name; a _Problem when either fails."""
    cas = _certificates(ca_cert, labels["ca_cert"])
    if not _chains_to(chain, cas):
        raise _Problem(
            f"{labels['ca_cert']} is not the issuer of {labels['cert']} (issuer {_subject(chain[0], issuer=True)})"
        )
    if chain[0] in cas:
        return  # a self-signed certificate given as its own CA: nothing above it to validate
    policy = (
        PolicyBuilder()
        .store(Store(cas))
        .time(now.replace(tzinfo=None))
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
    )
    for name in names or [None]:
        verifier = _verifier(policy, name, chain[0])
        if verifier is None:
            continue
        try:
            path = verifier.verify(chain[0], chain[1:])
        except VerificationError as exc:
            raise _Problem(f"{labels['cert']} does not validate for {name} under {labels['ca_cert']}: {exc}") from None
        if not _self_signed(path[-1]):
            raise _Problem(
                f"{labels['ca_cert']} holds no root for {labels['cert']}: its path ends at {_subject(path[-1])}, which"
                " is not self-signed, and HAProxy and TLS clients need the root (add it)"
            )


def tls_pem_problem(
    cert: Any,
    key: Any,
    ca_cert: Any,
    names: list[Any],
    labels: dict[str, str],
    *,
    proxied: list[Any] | None = None,
    ca_required: bool = False,
    now: datetime.datetime | None = None,
) -> str:
    """What is wrong with a certificate (PEM, possibly followed by its chain), its key and the CA certificates that
    are to have issued it (required or not), for a server that TLS clients reach by every one of names and HAProxy
    checks for every one of proxied; "" when nothing is. labels name the inventory variables in the message:
    {"cert": ..., "key": ..., "ca_cert": ...}."""
    cert, key, ca_cert = (str(v or "").strip() for v in (cert, key, ca_cert))
    empty = [
        labels[k] for k, v in (("cert", cert), ("key", key), ("ca_cert", ca_cert if ca_required else "-")) if not v
    ]
    if empty:
        return " and ".join(empty) + (" is" if len(empty) == 1 else " are") + " empty"
    now = now or datetime.datetime.now(datetime.UTC)
    wanted = [str(n) for n in names]
    try:
        chain, private = _load(cert, key, labels)
        _leaf(chain[0], private, wanted, [str(n) for n in proxied or []], labels, now=now)
        if ca_cert:
            _issuer(chain, ca_cert, wanted, labels, now)
    except _Problem as problem:
        return str(problem)
    except Exception as exc:  # a malformed extension or an unsupported algorithm: say so, never raise
        return f"{labels['cert']} cannot be checked ({type(exc).__name__}: a malformed or unsupported certificate)"
    return ""


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"pypi_common_tls_pem_problem": tls_pem_problem}
