"""A real SMTP server (twisted.mail) for the mail tests, on 127.0.0.1.

Kept out of conftest.py: importing twisted.mail installs the default reactor,
and conftest.py files are imported before pytest-twisted installs the one
asked for with --reactor. The fixtures import this module lazily.

`SMTPTestServer` options:

* ``tls="starttls"``: offers STARTTLS with a throwaway certificate;
  ``tls="implicit"``: TLS from the first byte (SMTPS); ``tls=None``: plain;
* ``credentials={"user": "password"}``: AUTH required (mechanisms given by
  ``auth_mechanisms``), unauthenticated senders are refused;
* ``refuse=("someone@example.com",)``: those recipients get a 550;
* ``mute=True``: accepts TCP connections and never says a word.

Each stored `ReceivedMessage` records the envelope, the raw data, the parsed
message, and whether the session was encrypted (and how) and authenticated.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.cred import checkers, portal
from twisted.cred.checkers import AllowAnonymousAccess, InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import defer, protocol
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, ISSLTransport
from twisted.internet.ssl import Certificate, PrivateCertificate
from twisted.mail import imap4, smtp
from zope.interface import implementer

# ---------------------------------------------------------------------------
# Throwaway PKI: a CA and a server certificate for localhost / 127.0.0.1
# ---------------------------------------------------------------------------


@attrs.frozen
class ThrowawayPKI:
    ca: Certificate  # trust root for the client
    server: PrivateCertificate  # key + certificate for the SMTP server


def make_pki() -> ThrowawayPKI:
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "parsec-tests throwaway CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    return ThrowawayPKI(ca=Certificate.loadPEM(ca_pem), server=PrivateCertificate.loadPEM(key_pem + cert_pem))


# ---------------------------------------------------------------------------
# The SMTP server
# ---------------------------------------------------------------------------


@attrs.define
class ReceivedMessage:
    mail_from: str
    rcpt_to: str
    data: bytes
    tls: bool  # the session was encrypted when the message came in
    starttls: bool  # ... thanks to STARTTLS (False for implicit TLS)
    auth_user: str | None  # None: anonymous session

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@implementer(smtp.IMessage)
class _StoredMessage:
    def __init__(self, server: SMTPTestServer, received: ReceivedMessage) -> None:
        self._server = server
        self._received = received
        self._lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self._lines.append(line)

    def eomReceived(self) -> defer.Deferred[None]:
        self._received.data = b"\n".join(self._lines) + b"\n"
        self._server.messages.append(self._received)
        return defer.succeed(None)

    def connectionLost(self) -> None:
        self._lines = []


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def __init__(self, server: SMTPTestServer, auth_user: str | None) -> None:
        self._server = server
        self._auth_user = auth_user

    def receivedHeader(self, helo: Any, origin: smtp.Address, recipients: Any) -> None:
        return None

    def validateFrom(self, helo: Any, origin: smtp.Address) -> smtp.Address:
        return origin

    def validateTo(self, user: smtp.User) -> Callable[[], _StoredMessage]:
        rcpt = str(user.dest)
        if rcpt in self._server.refuse:
            raise smtp.SMTPBadRcpt(user)
        proto = user.protocol
        received = ReceivedMessage(
            mail_from=str(user.orig),
            rcpt_to=rcpt,
            data=b"",
            tls=ISSLTransport.providedBy(proto.transport) or proto.startedTLS,
            starttls=proto.startedTLS,
            auth_user=self._auth_user,
        )
        return lambda: _StoredMessage(self._server, received)


@implementer(portal.IRealm)
class _Realm:
    def __init__(self, server: SMTPTestServer) -> None:
        self._server = server

    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> tuple[Any, Any, Any]:
        if smtp.IMessageDelivery not in interfaces:
            raise NotImplementedError(interfaces)
        user = None if avatar_id is checkers.ANONYMOUS else avatar_id.decode()
        return smtp.IMessageDelivery, _Delivery(self._server, user), lambda: None


class _TrackedESMTP(smtp.ESMTP):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.server._opened(self)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.factory.server._closed(self)


class _MuteProtocol(protocol.Protocol):
    """Accepts the connection and never answers."""

    def connectionMade(self) -> None:
        self.factory.server._opened(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.server._closed(self)


_CHALLENGERS: dict[bytes, Any] = {
    b"LOGIN": smtp.LOGINCredentials,
    b"PLAIN": imap4.PLAINCredentials,
}


class SMTPTestServer:
    def __init__(
        self,
        reactor: Any,
        pki: ThrowawayPKI,
        *,
        tls: str | None = None,
        credentials: dict[str, str] | None = None,
        auth_mechanisms: Sequence[str] = ("LOGIN", "PLAIN"),
        refuse: Sequence[str] = (),
        mute: bool = False,
    ) -> None:
        assert tls in (None, "starttls", "implicit")
        self._reactor = reactor
        self._pki = pki
        self.tls = tls
        self.mute = mute
        self.refuse = set(refuse)
        self.messages: list[ReceivedMessage] = []
        self.connections_seen = 0
        self._open: set[protocol.Protocol] = set()
        self._drained: list[defer.Deferred[None]] = []
        self._port: IListeningPort | None = None

        if credentials is None:
            checker: Any = AllowAnonymousAccess()
        else:
            checker = InMemoryUsernamePasswordDatabaseDontUse(
                **{user: password.encode() for user, password in credentials.items()}
            )
        self._portal = portal.Portal(_Realm(self), [checker])
        self._challengers = {name.encode(): _CHALLENGERS[name.encode()] for name in auth_mechanisms}

    @property
    def port(self) -> int:
        assert self._port is not None
        return self._port.getHost().port

    async def start(self) -> SMTPTestServer:
        factory = protocol.ServerFactory()
        factory.server = self  # type: ignore[attr-defined]
        if self.mute:
            factory.protocol = _MuteProtocol
        else:
            factory.buildProtocol = self._build_esmtp  # type: ignore[method-assign]
        if self.tls == "implicit":
            endpoint: Any = SSL4ServerEndpoint(
                self._reactor, 0, self._pki.server.options(), interface="127.0.0.1"
            )
        else:
            endpoint = TCP4ServerEndpoint(self._reactor, 0, interface="127.0.0.1")
        self._port = await endpoint.listen(factory)
        self._factory = factory
        return self

    def _build_esmtp(self, addr: Any) -> _TrackedESMTP:
        ctx = self._pki.server.options() if self.tls == "starttls" else None
        proto = _TrackedESMTP(chal=dict(self._challengers), contextFactory=ctx)
        proto.factory = self._factory
        proto.portal = self._portal
        proto.host = b"smtp.parsec.test"
        return proto

    def _opened(self, proto: protocol.Protocol) -> None:
        self.connections_seen += 1
        self._open.add(proto)

    def _closed(self, proto: protocol.Protocol) -> None:
        self._open.discard(proto)
        if not self._open:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    async def stop(self) -> list[str]:
        """Stop listening; wait for the clients to hang up. Returns problems found."""
        problems: list[str] = []
        if self._port is not None:
            await self._port.stopListening()
            self._port = None
        if self._open:
            # The client hangs up before `send_email` returns, but the server
            # side may need a reactor turn or two to notice.
            drained: defer.Deferred[None] = defer.Deferred()
            self._drained.append(drained)
            drained.addTimeout(5, self._reactor)
            try:
                await drained
            except defer.TimeoutError:
                problems.append(f"{len(self._open)} client connection(s) left open")
                waiting: defer.Deferred[None] = defer.Deferred()
                self._drained.append(waiting)
                for proto in list(self._open):
                    assert proto.transport is not None
                    proto.transport.abortConnection()
                await waiting
        return problems
