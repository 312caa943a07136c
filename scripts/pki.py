"""Certificates for the tests: made here with cryptography, never by the roles under test."""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Issuer = tuple[x509.Name, ec.EllipticCurvePrivateKey]


def issue(
    names: list[str],
    days: int = 30,
    issuer: Issuer | None = None,
    *,
    ca: bool = False,
    purpose: str = "server",
    plain: bool = False,
) -> tuple[str, str, x509.Name, ec.EllipticCurvePrivateKey]:
    """(certificate PEM, key PEM, subject, key) for names (DNS names or IP addresses; the first is the common name),
    valid from two days ago for days days, self-signed unless issuer (its name and key) is given; a CA's when ca (as
    an operator's PKI makes them: basic constraints and key usage marked critical, key identifiers); purpose "client"
    makes a leaf for client authentication only; plain leaves out what OpenSSL's command line before 3.2 does not
    add (key identifiers, a CA's key usage, a leaf's extended key usage)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    if not plain:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        ).add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        if not plain:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([general_name(name) for name in names]), critical=False
        )
        if not plain:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH if purpose == "client" else ExtendedKeyUsageOID.SERVER_AUTH
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem, subject, key


def general_name(name: str) -> x509.GeneralName:
    """An IP address as an IPAddress name, anything else as a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def pem_pair(names: list[str], days: int = 30) -> tuple[str, str]:
    """A self-signed certificate for names, and its key, as PEM text."""
    cert, key, _, _ = issue(names, days)
    return cert, key
