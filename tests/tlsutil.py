"""Throwaway TLS material for tests."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_self_signed(directory: Path, hostname: str = "localhost") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path = directory / "server.key"
    cert_path = directory / "server.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def client_options(cert_path: Path, hostname: str = "localhost"):
    from twisted.internet import ssl

    authority = ssl.Certificate.loadPEM(cert_path.read_bytes())
    return ssl.optionsForClientTLS(hostname, trustRoot=authority)


@attrs.frozen
class Chain:
    """A server certificate signed by an intermediate CA, and where its files are."""

    root: Path  # the CA certificate a client trusts
    fullchain: Path  # the server's certificate, then the intermediate (certbot's fullchain.pem)
    leaf: Path  # the server's certificate alone
    key: Path  # the server's private key
    subject: str  # of the server's certificate, e.g. "CN=localhost server"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, public_key: Any, issuer: str, issuer_key: Any, *, ca: bool, hostname: str | None = None
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
        builder = builder.add_extension(usage, critical=True)
    if hostname is not None:
        names = [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


class TestCA:
    """A root CA and an intermediate CA (files under `directory`) issuing server certificates."""

    __test__ = False  # not a pytest test class

    ROOT = "Parsec Test Root CA"
    INTERMEDIATE = "Parsec Test Intermediate CA"

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._root_key = ec.generate_private_key(ec.SECP256R1())
        root = _certificate(self.ROOT, self._root_key.public_key(), self.ROOT, self._root_key, ca=True)
        self._inter_key = ec.generate_private_key(ec.SECP256R1())
        self._inter = _certificate(
            self.INTERMEDIATE, self._inter_key.public_key(), self.ROOT, self._root_key, ca=True
        )
        self.root = directory / "root.crt"
        self.root.write_bytes(_pem(root))

    def issue(self, label: str, hostname: str = "localhost") -> Chain:
        """A server certificate for `hostname` and 127.0.0.1, CN `<hostname> <label>`."""
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = _certificate(
            f"{hostname} {label}", key.public_key(), self.INTERMEDIATE, self._inter_key, ca=False, hostname=hostname
        )
        chain = Chain(
            root=self.root,
            fullchain=self.directory / f"{label}-fullchain.pem",
            leaf=self.directory / f"{label}.crt",
            key=self.directory / f"{label}.key",
            subject=leaf.subject.rfc4514_string(),
        )
        chain.fullchain.write_bytes(_pem(leaf) + _pem(self._inter))
        chain.leaf.write_bytes(_pem(leaf))
        chain.key.write_bytes(_key_pem(key))
        return chain
