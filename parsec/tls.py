"""TLS served by the server itself: the whole certificate chain, errors that name the file,
reload without restart.

Twisted's `ssl:` endpoint serves only the first certificate of `certKey` (the rest of a
`fullchain.pem` is silently dropped, and clients that do not already hold the intermediate
fail with "unable to get local issuer certificate"). Here the certificate file is read whole:
the server's certificate first, then every intermediate after it (what certbot and CAs
deliver), plus an optional `extraCertChain` file.

:class:`ReloadableTLS` is what the TLS wrapper of each listener asks for a new connection's
OpenSSL object (`IOpenSSLServerConnectionCreator`, public Twisted API). `reload()` (SIGHUP)
reads key and chain again: new handshakes get the new certificate, established connections
(open websockets) keep theirs; a new file that does not load is logged and the previous
certificate stays in service.
"""

from __future__ import annotations

import datetime

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from zope.interface import implementer

from parsec.config import ConfigError
from parsec.listen import TLSFiles

__all__ = ["LoadedCertificate", "ReloadableTLS", "load_certificate"]

_log = Logger(namespace="parsec.tls")

_CERT_MARKER = b"-----BEGIN CERTIFICATE-----"
_KEY_MARKER = b"PRIVATE KEY-----"


def _error(option: str, path: str, reason: str) -> ConfigError:
    return ConfigError(f"Invalid value for '{option}': {path!r}: {reason}")


def _read(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise _error(option, path, f"cannot read it ({exc.strerror})") from None


def _certificates(data: bytes, path: str, option: str) -> list[x509.Certificate]:
    if _CERT_MARKER not in data:
        raise _error(option, path, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise _error(option, path, f"invalid PEM certificate ({exc})") from None


def _private_key(data: bytes, path: str, option: str) -> PrivateKeyTypes:
    if _KEY_MARKER not in data:
        raise _error(option, path, "holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise _error(option, path, "the private key is encrypted: give an unencrypted key") from None
    except ValueError as exc:
        raise _error(option, path, f"invalid PEM private key ({exc})") from None


def _public_bytes(key: PrivateKeyTypes | x509.Certificate) -> bytes:
    public = key.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@attrs.frozen
class LoadedCertificate:
    """A usable key + chain, and what the logs say about it."""

    options: CertificateOptions
    context: SSL.Context
    subject: str
    not_after: datetime.datetime
    chain_length: int  # certificates served: the server's and the intermediates


def load_certificate(files: TLSFiles) -> LoadedCertificate:
    """Read and check key and chain; ConfigError naming the option and the file otherwise."""
    cert_data = _read(files.cert_file, files.cert_option)
    chain = _certificates(cert_data, files.cert_file, files.cert_option)
    if files.extra_chain_file is not None:
        extra_option = "--listen ssl:...:extraCertChain"
        chain += _certificates(
            _read(files.extra_chain_file, extra_option), files.extra_chain_file, extra_option
        )
    key_data = cert_data if files.key_file == files.cert_file else _read(files.key_file, files.key_option)
    key = _private_key(key_data, files.key_file, files.key_option)
    leaf = chain[0]
    if _public_bytes(key) != _public_bytes(leaf):
        hint = ""
        if any(_public_bytes(key) == _public_bytes(cert) for cert in chain[1:]):
            hint = " (the server's own certificate must come first in the file, the intermediates after it)"
        raise _error(
            files.key_option,
            files.key_file,
            f"this private key does not match the certificate of {files.cert_file!r}{hint}",
        )
    # CertificateOptions hands these to pyOpenSSL's Context as they are; pyOpenSSL >= 24.3
    # takes cryptography objects there and deprecates its own X509/PKey (Twisted's annotations
    # still name the old types).
    options = CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=leaf,  # type: ignore[arg-type]
        extraCertChain=chain[1:],  # type: ignore[arg-type]
    )
    try:
        context = options.getContext()  # now, so that a problem shows at start-up or reload
    except SSL.Error as exc:
        raise _error(files.cert_option, files.cert_file, f"unusable by OpenSSL ({exc})") from None
    not_after = leaf.not_valid_after_utc
    loaded = LoadedCertificate(
        options=options,
        context=context,
        subject=leaf.subject.rfc4514_string(),
        not_after=not_after,
        chain_length=len(chain),
    )
    if not_after < datetime.datetime.now(datetime.UTC):
        _log.warn(
            "The TLS certificate of {file} expired on {not_after} ({subject})",
            file=files.cert_file,
            not_after=not_after.isoformat(),
            subject=loaded.subject,
        )
    return loaded


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """The TLS configuration of one listener; `reload()` swaps it for new connections."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self.current = load_certificate(files)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.current.context, None)

    def reload(self) -> bool:
        """Re-read key and chain; on failure log why and keep serving the previous ones."""
        try:
            loaded = load_certificate(self.files)
        except ConfigError as exc:
            _log.error("TLS certificate not reloaded, the previous one stays in use: {error}", error=str(exc))
            return False
        self.current = loaded
        _log.info(
            "TLS certificate reloaded from {file}: {subject}, {count} certificate(s), valid until {not_after}",
            file=self.files.cert_file,
            subject=loaded.subject,
            count=loaded.chain_length,
            not_after=loaded.not_after.isoformat(),
        )
        return True
