"""Invitation e-mails, delivery over SMTP (rendering: `parsec.mail.render`).

Delivery uses ``twisted.mail.smtp``'s ESMTP client state machine (EHLO,
STARTTLS, AUTH) driven by our own protocol subclass so that every outcome is
reported exactly once and the connection is always closed before
``send_email`` returns:

* ``--email-use-ssl``: TLS from the first byte (SMTPS);
* ``--email-use-tls``: plain connection upgraded with STARTTLS, which is then
  mandatory (a server that does not offer it, or refuses it, is an error:
  we never fall back to clear text, credentials included);
* AUTH (CRAM-MD5, PLAIN or LOGIN, whichever the server offers) when both a
  user and a password are configured;
* one overall deadline (``timeout``) covers connection, dialogue and QUIT.

Outcome: ``SUCCESS``; ``BAD_RECIPIENT`` when the server refuses the recipient
(or the address cannot be used in an SMTP envelope at all); ``NOT_AVAILABLE``
for everything else (connection refused, timeout, TLS failure, authentication
failure, refused message...). Errors are logged, never raised, and the log
never contains the SMTP password (the client keeps no session transcript).

Importing this module imports ``twisted.mail.smtp``, which imports the global
reactor and computes the local FQDN once (blocking DNS call at import time):
import it after the reactor has been chosen.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Sequence
from email.message import EmailMessage
from email.utils import parseaddr
from io import BytesIO
from typing import Any, Final, Literal

import attrs
from twisted.internet import defer, threads
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure

from parsec.config import BackendAddr, ConfigError, EmailConfig
from parsec.mail.render import build_invitation_email

__all__ = [
    "BAD_RECIPIENT",
    "NOT_AVAILABLE",
    "SUCCESS",
    "EmailSendStatus",
    "TrustRoot",
    "load_trust_root",
    "send_email",
    "send_invitation_email",
]

# The namespace of the module these functions come from (log filters name it).
_log = Logger(namespace="parsec.mail")

# A twisted.internet.ssl.Certificate or an IOpenSSLTrustRoot provider (that
# interface is only exported from a private Twisted module).
TrustRoot = Any

EmailSendStatus = Literal["SUCCESS", "NOT_AVAILABLE", "BAD_RECIPIENT"]
SUCCESS: Final = "SUCCESS"
NOT_AVAILABLE: Final = "NOT_AVAILABLE"
BAD_RECIPIENT: Final = "BAD_RECIPIENT"


# Envelope addresses: printable ASCII, no spaces, no characters that need
# quoting in SMTP, exactly one `@`. Anything else (line breaks included) never
# reaches the SMTP dialogue.
_ENVELOPE_RE: Final = re.compile(r'[^\s<>()\[\]\\,;:"@]+@[^\s<>()\[\]\\,;:"@]+')


# RFC 5321 §4.5.3.1.3: a path is at most 256 octets with its angle brackets.
MAX_ADDRESS_BYTES = 254


def _fits_in_header(addr: str) -> bool:
    """Whether `addr` can be an e-mail recipient written as a To: header by the `email`
    package. Longer than any valid address: no (and the package folds long non-ASCII
    values in super-linear time: 5000 non-ASCII chars block the reactor for seconds). It
    refuses line breaks (any `str.splitlines` boundary), and its address parser raises
    IndexError, AttributeError, TypeError... on some malformed values (e.g. `"`, `?<`)."""
    if len(addr.encode("utf8", "surrogatepass")) > MAX_ADDRESS_BYTES or "\n" in addr or "\r" in addr:
        return False
    try:
        probe = EmailMessage()
        probe["To"] = addr
        probe.as_bytes()
    except Exception:
        return False
    return True


def _envelope_address(addr: str | None) -> bytes | None:
    if not addr or not addr.isascii():
        return None
    if any(not 0x21 <= ord(char) <= 0x7E for char in addr):
        return None
    if not _ENVELOPE_RE.fullmatch(addr):
        return None
    return addr.encode("ascii")


@attrs.frozen
class _Outcome:
    status: EmailSendStatus
    detail: str


def _describe(error: BaseException | Failure) -> str:
    value = error.value if isinstance(error, Failure) else error
    if isinstance(value, smtp.SMTPClientError):
        # str() would append the session log; we keep none, but stay explicit.
        resp = value.resp.decode("utf-8", "replace") if isinstance(value.resp, bytes) else str(value.resp)
        return f"{value.code} {resp}" if value.code > 0 else resp
    text = str(value) or type(value).__name__
    return f"{type(value).__name__}: {text}"


class _InvitationSender(smtp.ESMTPClient):
    """Sends one message to one recipient, then QUITs.

    `outcome` is settled once (first event wins); `closed` fires when the
    connection is gone, whatever happened.
    """

    # No session transcript: it would hold the base64 AUTH exchange, and
    # twisted.mail copies it into its exception messages.
    debug = False

    def __init__(
        self,
        *,
        envelope_from: bytes,
        envelope_to: bytes,
        data: bytes,
        username: bytes | None,
        password: bytes | None,
        starttls: IOpenSSLClientConnectionCreator | None,
        require_starttls: bool,
    ) -> None:
        secret = password if username is not None else None
        super().__init__(secret, starttls, smtp.DNSNAME)
        self._envelope_from = envelope_from
        self._envelope_to = envelope_to
        self._data = data
        self._from_given = False
        self._at_line_start = True
        self.heloFallback = True  # ESMTPClient disables it by itself if AUTH/TLS is required
        self.requireTransportSecurity = require_starttls
        self.requireAuthentication = secret is not None
        if secret is not None and username is not None:
            # Preference order: no clear password on the wire first.
            self.registerAuthenticator(smtp.CramMD5ClientAuthenticator(username))
            self.registerAuthenticator(smtp.PLAINAuthenticator(username))
            self.registerAuthenticator(smtp.LOGINAuthenticator(username))
        self.outcome: _Outcome | None = None
        self.closed: defer.Deferred[None] = defer.Deferred(lambda _: self.abort("cancelled"))

    def _settle(self, status: EmailSendStatus, detail: str) -> None:
        if self.outcome is None:
            self.outcome = _Outcome(status, detail)

    def abort(self, why: str) -> None:
        self._settle(NOT_AVAILABLE, why)
        if self.transport is not None and not self.closed.called:
            self.transport.abortConnection()  # type: ignore[attr-defined]  # a TCP/TLS transport

    # SMTPClient hooks -----------------------------------------------------

    def getMailFrom(self) -> bytes | None:
        if self._from_given:
            return None  # -> QUIT
        self._from_given = True
        return self._envelope_from

    def getMailTo(self) -> Sequence[bytes]:
        return [self._envelope_to]

    def getMailData(self) -> BytesIO:
        return BytesIO(self._data)

    def transformChunk(self, chunk: bytes) -> bytes:
        # The base class dot-stuffs within a chunk only; a line starting with
        # "." right at a chunk boundary must be stuffed too.
        self.resetTimeout()
        if not chunk:
            return chunk
        if self._at_line_start and chunk.startswith(b"."):
            chunk = b"." + chunk
        self._at_line_start = chunk.endswith(b"\n")
        return chunk.replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")

    def sentMail(
        self,
        code: int,
        resp: bytes | str,
        numOk: int,
        addresses: Iterable[tuple[bytes, int, bytes]],
        log: object,
    ) -> None:
        if 200 <= code < 300:
            self._settle(SUCCESS, f"{code} accepted")
            return
        refused = [(addr, acode, aresp) for addr, acode, aresp in addresses if not 200 <= acode < 300]
        if refused:
            _, acode, aresp = refused[0]
            self._settle(BAD_RECIPIENT, f"recipient refused: {acode} {_text(aresp)}")
        else:
            self._settle(NOT_AVAILABLE, f"message refused: {code} {_text(resp)}")

    def sendError(self, exc: BaseException) -> None:
        self._settle(NOT_AVAILABLE, _describe(exc))
        super().sendError(exc)  # QUIT if the dialogue can go on, else close

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._settle(NOT_AVAILABLE, f"connection lost ({_describe(reason)})")
        if not self.closed.called:
            self.closed.callback(None)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _SenderFactory(Factory):
    noisy = False

    def __init__(self, make: Callable[[], _InvitationSender]) -> None:
        self._make = make

    def buildProtocol(self, addr: object) -> _InvitationSender:
        proto: _InvitationSender = self._make()
        proto.factory = self
        return proto


_PEM_CERTIFICATE_RE: Final = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


def load_trust_root(path: str) -> TrustRoot:
    """The CA certificate(s) of a PEM file (`EmailConfig.ca_file`) as a trust root.

    Blocking (reads the file): call it at start-up. Raises ConfigError.
    """
    try:
        with open(path, "rb") as fp:
            pem = fp.read()
        certificates = [Certificate.loadPEM(block) for block in _PEM_CERTIFICATE_RE.findall(pem)]
    except Exception as exc:  # OSError, or an OpenSSL error on a damaged certificate
        raise ConfigError(f"Cannot load the e-mail CA file {path!r}: {exc}") from None
    if not certificates:
        raise ConfigError(f"Cannot load the e-mail CA file {path!r}: no PEM certificate in it")
    return trustRootFromCertificates(certificates)


def _client_tls(
    config: EmailConfig,
    tls_options: IOpenSSLClientConnectionCreator | None,
    trust_root: TrustRoot | None,
) -> IOpenSSLClientConnectionCreator:
    if tls_options is not None:
        return tls_options
    # Verifies the chain (platform trust store unless told otherwise) and the
    # host name (or IP address) we connect to, like any mail client.
    return optionsForClientTLS(config.host, trustRoot=trust_root)


async def _deliver(
    reactor: Any,
    config: EmailConfig,
    *,
    envelope_from: bytes,
    envelope_to: bytes,
    data: bytes,
    tls: IOpenSSLClientConnectionCreator | None,
    timeout: float,
) -> _Outcome:
    username = config.host_user.encode("utf-8") if config.host_user else None
    password = config.host_password.encode("utf-8") if config.host_password else None
    if username is None or password is None:
        username = password = None

    def make() -> _InvitationSender:
        return _InvitationSender(
            envelope_from=envelope_from,
            envelope_to=envelope_to,
            data=data,
            username=username,
            password=password,
            starttls=tls if (config.use_tls and not config.use_ssl) else None,
            require_starttls=config.use_tls and not config.use_ssl,
        )

    endpoint: Any = HostnameEndpoint(reactor, config.host, config.port, timeout=timeout)
    if config.use_ssl:
        assert tls is not None
        endpoint = wrapClientTLS(tls, endpoint)

    connecting: defer.Deferred[_InvitationSender] = endpoint.connect(_SenderFactory(make))
    sender: _InvitationSender | None = None
    timed_out = False

    def on_deadline() -> None:
        nonlocal timed_out
        timed_out = True
        if sender is None:
            connecting.cancel()
        else:
            sender.abort(f"no complete answer within {timeout:g} s")

    deadline = reactor.callLater(timeout, on_deadline)
    try:
        try:
            sender = await connecting
        except Exception as exc:
            if timed_out:
                return _Outcome(NOT_AVAILABLE, f"cannot connect within {timeout:g} s")
            if isinstance(exc, defer.CancelledError):
                raise  # our caller gave up
            return _Outcome(NOT_AVAILABLE, f"cannot connect ({_describe(exc)})")
        await sender.closed
    finally:
        if deadline.active():
            deadline.cancel()
    assert sender.outcome is not None  # settled by connectionLost at the latest
    return sender.outcome


async def _write_mocked(to_addr: str, message: EmailMessage) -> str:
    html_part = message.get_body(preferencelist=("html",))
    if html_part is not None:
        content = html_part.get_content().encode("utf-8")
    else:
        content = message.as_bytes()

    def write() -> str:
        folder = tempfile.mkdtemp(prefix="tmp-email-folder-")
        fd, path = tempfile.mkstemp(prefix="tmp-email-", suffix=".html", dir=folder)
        with os.fdopen(fd, "wb") as fp:
            fp.write(content)
        return path

    path: str = await threads.deferToThread(write)
    _log.info("Mocked e-mail to {to_addr} written to {path}", to_addr=to_addr, path=path)
    print(
        f"E-mail sending is mocked (--email-host MOCKED): the message for {to_addr} was written to {path}",
        file=sys.stderr,
    )
    return path


async def send_email(
    config: EmailConfig,
    to_addr: str,
    message: EmailMessage,
    *,
    reactor: Any = None,
    timeout: float = 30,
    trust_root: TrustRoot | None = None,
    tls_options: IOpenSSLClientConnectionCreator | None = None,
) -> EmailSendStatus:
    """Deliver `message` to `to_addr`; never raises (but lets a cancellation through).

    `trust_root` / `tls_options` override certificate verification (tests with
    a throwaway CA); by default the platform trust store and the configured
    host name are checked.
    """
    try:
        if config.is_mocked:
            await _write_mocked(to_addr, message)
            return SUCCESS

        envelope_to = _envelope_address(to_addr)
        if envelope_to is None:
            _log.warn(
                "Invitation e-mail not sent: {to_addr!r} cannot be used as an SMTP recipient",
                to_addr=to_addr,
            )
            return BAD_RECIPIENT
        envelope_from = _envelope_address(parseaddr(config.sender)[1] or config.sender)
        if envelope_from is None:
            _log.error(
                "E-mail not sent: the sender {sender!r} (--email-sender) is not a usable address",
                sender=config.sender,
            )
            return NOT_AVAILABLE

        if reactor is None:
            # The global reactor only when none is given: importing it installs the default one.
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        tls = _client_tls(config, tls_options, trust_root) if (config.use_ssl or config.use_tls) else None
        outcome = await _deliver(
            reactor,
            config,
            envelope_from=envelope_from,
            envelope_to=envelope_to,
            data=message.as_bytes(),
            tls=tls,
            timeout=timeout,
        )
    except defer.CancelledError:
        # Our caller gave up (the client left, or the server shuts down); the SMTP
        # connection, if any, was aborted. Not an error.
        raise
    except Exception:
        _log.failure("Unexpected error while sending an e-mail to {to_addr}", to_addr=to_addr)
        return NOT_AVAILABLE

    if outcome.status == SUCCESS:
        _log.debug("E-mail sent to {to_addr}", to_addr=to_addr)
    else:
        _log.warn(
            "E-mail to {to_addr} not sent ({status}): SMTP server {host}:{port}: {detail}",
            to_addr=to_addr,
            status=outcome.status,
            host=config.host,
            port=config.port,
            detail=outcome.detail,
        )
    return outcome.status


async def send_invitation_email(
    *,
    config: EmailConfig,
    backend_addr: BackendAddr,
    to_addr: str,
    greeter_name: str,
    reply_to: str | None,
    organization_id: str,
    token: uuid.UUID,
    invitation_type: str,
    reactor: Any = None,
    timeout: float = 30,
    trust_root: TrustRoot | None = None,
    tls_options: IOpenSSLClientConnectionCreator | None = None,
) -> EmailSendStatus:
    """Build then send the invitation e-mail; never raises (but lets a cancellation through)."""
    # `to_addr` is client input (the claimer e-mail of invite_new): one that cannot even be
    # written in a header is a bad recipient, mocked or not, not a crash (and a traceback).
    if not _fits_in_header(to_addr) or (not config.is_mocked and _envelope_address(to_addr) is None):
        _log.warn(
            "Invitation e-mail not sent: {to_addr!r} cannot be used as an SMTP recipient",
            to_addr=to_addr,
        )
        return BAD_RECIPIENT
    try:
        message = build_invitation_email(
            config=config,
            backend_addr=backend_addr,
            to_addr=to_addr,
            greeter_name=greeter_name,
            reply_to=reply_to,
            organization_id=organization_id,
            token=token,
            invitation_type=invitation_type,
        )
    except Exception:
        _log.failure("Cannot build the invitation e-mail for {to_addr!r}", to_addr=to_addr)
        return BAD_RECIPIENT if "\n" in to_addr or "\r" in to_addr else NOT_AVAILABLE
    return await send_email(
        config,
        to_addr,
        message,
        reactor=reactor,
        timeout=timeout,
        trust_root=trust_root,
        tls_options=tls_options,
    )
