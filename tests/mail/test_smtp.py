"""Invitation e-mails delivered to a real (in-process, loopback) SMTP server."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted

from parsec.config import BackendAddr, EmailConfig
from parsec.mail import delivery
from parsec.mail.render import build_invitation_email

from .smtp_server import SMTPTestServer, ThrowawayPKI

if TYPE_CHECKING:
    from .conftest import LogCapture

TOKEN = uuid.UUID("0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d")
SENDER = "Parsec <no-reply@parsec.com>"
ADDR = BackendAddr.from_url("parsec://parsec.example.com")
BASE_URL = "https://parsec.example.com"
LOGO = (
    f'<img src="{BASE_URL}/static/parsec-vert.png" alt="Parsec Logo" title="Parsec"'
    ' width="150" height="100"/>'
)
USER = "smtp-user"
PASSWORD = "Sup3r-s3cret-pa55word"


def _config(server: SMTPTestServer | None = None, *, port: int | None = None, **kwargs: Any) -> EmailConfig:
    if server is not None:
        port = server.port
    assert port is not None
    kwargs.setdefault("sender", SENDER)
    return EmailConfig(host="127.0.0.1", port=port, **kwargs)


async def _send(
    config: EmailConfig,
    *,
    pki: ThrowawayPKI | None = None,
    to_addr: str = "zack@example.com",
    invitation_type: str = "USER",
    timeout: float = 10,
    **kwargs: Any,
) -> str:
    if invitation_type == "USER":
        defaults: dict[str, Any] = {
            "greeter_name": "Alicey McAliceFace",
            "reply_to": "Alicey McAliceFace <alice@example.com>",
        }
    else:
        defaults = {"greeter_name": "Alicey McAliceFace", "reply_to": None}
    defaults.update(kwargs)
    return await delivery.send_invitation_email(
        config=config,
        backend_addr=ADDR,
        to_addr=to_addr,
        organization_id="CoolOrg",
        token=TOKEN,
        invitation_type=invitation_type,
        timeout=timeout,
        trust_root=pki.ca if pki is not None else None,
        **defaults,
    )


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("language", ["en", "fr"])
@pytest.mark.parametrize("invitation_type", ["USER", "DEVICE"])
async def test_plain_smtp_delivery(smtp_server_factory: Any, language: str, invitation_type: str) -> None:
    server = await smtp_server_factory()
    to_addr = "zack@example.com" if invitation_type == "USER" else "alice@example.com"
    status = await _send(_config(server, language=language), to_addr=to_addr, invitation_type=invitation_type)
    assert status == "SUCCESS"

    [received] = server.messages
    assert received.mail_from == "no-reply@parsec.com"
    assert received.rcpt_to == to_addr
    assert not received.tls
    assert received.auth_user is None

    message = received.message
    assert message["From"] == SENDER
    assert message["To"] == to_addr
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()

    action = "claim_user" if invitation_type == "USER" else "claim_device"
    link = f"{BASE_URL}/redirect/CoolOrg?action={action}&token={TOKEN.hex}"
    assert link in text
    assert LOGO in html
    anchor_text = "Claim invitation" if language == "en" else "Accepter l'invitation"
    assert f'<a href="{link}" target="_blank">{anchor_text}</a>' in html

    expected = {
        ("en", "USER"): (
            "[Parsec] Alicey McAliceFace invited you to CoolOrg",
            "You have received an invitation from Alicey McAliceFace to join the CoolOrg organization"
            " on Parsec.",
        ),
        ("en", "DEVICE"): (
            "[Parsec] New device invitation to CoolOrg",
            "You have received an invitation to add a new device to the CoolOrg organization on Parsec.",
        ),
        ("fr", "USER"): (
            "[Parsec] Alicey McAliceFace vous invite à rejoindre CoolOrg",
            "Vous avez reçu une invitation de Alicey McAliceFace à rejoindre l'organisation CoolOrg"
            " sur Parsec.",
        ),
        ("fr", "DEVICE"): (
            "[Parsec] Invitation à ajouter un nouvel appareil à CoolOrg",
            "Vous avez reçu une invitation à ajouter un nouvel appareil à l'organisation CoolOrg sur Parsec.",
        ),
    }
    subject, sentence = expected[(language, invitation_type)]
    assert message["Subject"] == subject
    assert sentence in text
    assert sentence in html
    if invitation_type == "USER":
        assert message["Reply-To"] == "Alicey McAliceFace <alice@example.com>"
    else:
        assert "Reply-To" not in message


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
async def test_starttls_with_auth(
    smtp_server_factory: Any, pki: ThrowawayPKI, log_capture: LogCapture, mechanism: str
) -> None:
    server = await smtp_server_factory(
        tls="starttls", credentials={USER: PASSWORD}, auth_mechanisms=(mechanism,)
    )
    config = _config(server, use_tls=True, host_user=USER, host_password=PASSWORD)
    assert await _send(config, pki=pki) == "SUCCESS"
    [received] = server.messages
    assert received.tls and received.starttls
    assert received.auth_user == USER
    assert received.message["Subject"] == "[Parsec] Alicey McAliceFace invited you to CoolOrg"
    assert PASSWORD not in log_capture.text()


@pytest_twisted.ensureDeferred
async def test_starttls_without_auth(smtp_server_factory: Any, pki: ThrowawayPKI) -> None:
    server = await smtp_server_factory(tls="starttls")
    assert await _send(_config(server, use_tls=True), pki=pki) == "SUCCESS"
    [received] = server.messages
    assert received.tls and received.starttls
    assert received.auth_user is None


@pytest_twisted.ensureDeferred
async def test_no_starttls_unless_asked(smtp_server_factory: Any, pki: ThrowawayPKI) -> None:
    # The server offers STARTTLS but --email-use-tls is off: plain SMTP, like the reference.
    server = await smtp_server_factory(tls="starttls")
    assert await _send(_config(server), pki=pki) == "SUCCESS"
    [received] = server.messages
    assert not received.tls


@pytest_twisted.ensureDeferred
async def test_starttls_required_but_not_offered(smtp_server_factory: Any, pki: ThrowawayPKI) -> None:
    server = await smtp_server_factory(credentials={USER: PASSWORD})
    config = _config(server, use_tls=True, host_user=USER, host_password=PASSWORD)
    assert await _send(config, pki=pki) == "NOT_AVAILABLE"
    assert server.messages == []


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("with_auth", [False, True])
async def test_implicit_tls(smtp_server_factory: Any, pki: ThrowawayPKI, with_auth: bool) -> None:
    if with_auth:
        server = await smtp_server_factory(tls="implicit", credentials={USER: PASSWORD})
        config = _config(server, use_ssl=True, host_user=USER, host_password=PASSWORD)
    else:
        server = await smtp_server_factory(tls="implicit")
        config = _config(server, use_ssl=True)
    assert await _send(config, pki=pki, invitation_type="DEVICE", to_addr="alice@example.com") == "SUCCESS"
    [received] = server.messages
    assert received.tls and not received.starttls
    assert received.auth_user == (USER if with_auth else None)
    assert received.message["Subject"] == "[Parsec] New device invitation to CoolOrg"


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_untrusted_certificate_is_refused(smtp_server_factory: Any, tls: str) -> None:
    # No trust root given: the platform trust store does not know the throwaway CA.
    server = await smtp_server_factory(tls=tls)
    config = _config(server, use_tls=tls == "starttls", use_ssl=tls == "implicit")
    assert await _send(config) == "NOT_AVAILABLE"
    assert server.messages == []


@pytest_twisted.ensureDeferred
async def test_certificate_name_is_checked(smtp_server_factory: Any, pki: ThrowawayPKI) -> None:
    # The certificate is for localhost / 127.0.0.1; expecting another name fails.
    from twisted.internet.ssl import optionsForClientTLS

    server = await smtp_server_factory(tls="implicit")
    status = await delivery.send_email(
        _config(server, use_ssl=True),
        "zack@example.com",
        build_invitation_email(
            config=_config(server, use_ssl=True),
            backend_addr=ADDR,
            to_addr="zack@example.com",
            greeter_name="alice",
            reply_to=None,
            organization_id="CoolOrg",
            token=TOKEN,
            invitation_type="USER",
        ),
        timeout=10,
        tls_options=optionsForClientTLS("smtp.elsewhere.test", trustRoot=pki.ca),
    )
    assert status == "NOT_AVAILABLE"
    assert server.messages == []


@pytest_twisted.ensureDeferred
async def test_wrong_password(smtp_server_factory: Any, pki: ThrowawayPKI, log_capture: LogCapture) -> None:
    server = await smtp_server_factory(tls="starttls", credentials={USER: "the-right-one"})
    config = _config(server, use_tls=True, host_user=USER, host_password=PASSWORD)
    assert await _send(config, pki=pki) == "NOT_AVAILABLE"
    assert server.messages == []
    logged = log_capture.text()
    assert "NOT_AVAILABLE" in logged  # the error is logged...
    assert PASSWORD not in logged  # ...without the password
    assert "U3VwM3It" not in logged  # nor its base64 form (AUTH PLAIN / LOGIN)


@pytest_twisted.ensureDeferred
async def test_auth_required_but_not_configured(smtp_server_factory: Any) -> None:
    server = await smtp_server_factory(credentials={USER: PASSWORD})
    assert await _send(_config(server)) == "NOT_AVAILABLE"
    assert server.messages == []


@pytest_twisted.ensureDeferred
async def test_user_without_password_does_not_authenticate(smtp_server_factory: Any) -> None:
    server = await smtp_server_factory()
    assert await _send(_config(server, host_user=USER)) == "SUCCESS"
    [received] = server.messages
    assert received.auth_user is None


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("invitation_type", ["USER", "DEVICE"])
async def test_refused_recipient(
    smtp_server_factory: Any, log_capture: LogCapture, invitation_type: str
) -> None:
    server = await smtp_server_factory(refuse=["nobody@example.com"])
    status = await _send(_config(server), to_addr="nobody@example.com", invitation_type=invitation_type)
    assert status == "BAD_RECIPIENT"
    assert server.messages == []
    assert "BAD_RECIPIENT" in log_capture.text()
    # The same server still accepts other recipients.
    assert await _send(_config(server), to_addr="zack@example.com") == "SUCCESS"


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "to_addr",
    [
        "zack@example.com\r\nRCPT TO:<victim@example.com>",
        "zack@example.com>\nDATA",
        "not an address",
        "",
        "zoé@example.com",
    ],
)
async def test_unusable_recipient_never_reaches_the_server(smtp_server_factory: Any, to_addr: str) -> None:
    server = await smtp_server_factory()
    assert await _send(_config(server), to_addr=to_addr) == "BAD_RECIPIENT"
    assert server.connections_seen == 0


@pytest_twisted.ensureDeferred
async def test_closed_port(closed_port: int, log_capture: LogCapture) -> None:
    assert await _send(_config(port=closed_port)) == "NOT_AVAILABLE"
    assert "NOT_AVAILABLE" in log_capture.text()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("tls", [None, "implicit"])
async def test_server_never_answers(
    smtp_server_factory: Any, log_capture: LogCapture, tls: str | None
) -> None:
    server = await smtp_server_factory(mute=True)
    config = _config(server, use_ssl=tls == "implicit")
    assert await _send(config, timeout=0.3) == "NOT_AVAILABLE"
    assert server.connections_seen == 1
    assert "within 0.3 s" in log_capture.text()


def test_dot_stuffing_across_chunks() -> None:
    sender = delivery._InvitationSender(
        envelope_from=b"a@b.c",
        envelope_to=b"d@e.f",
        data=b"",
        username=None,
        password=None,
        starttls=None,
        require_starttls=False,
    )
    chunks = [b"first line\n", b".second\n.third\nfourth", b".not a line start\n", b"."]
    out = b"".join(sender.transformChunk(chunk) for chunk in chunks)
    assert out == b"first line\r\n..second\r\n..third\r\nfourth.not a line start\r\n.."


@pytest_twisted.ensureDeferred
async def test_message_with_dot_lines_arrives_intact(smtp_server_factory: Any) -> None:
    from email.message import EmailMessage

    server = await smtp_server_factory()
    body = "".join(f"line {i}\n.\n..dots\n" for i in range(3000))  # > several 16 KiB chunks
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = "zack@example.com"
    message["Subject"] = "dots"
    message.set_content(body, charset="us-ascii", cte="7bit")
    assert await delivery.send_email(_config(server), "zack@example.com", message, timeout=10) == "SUCCESS"
    [received] = server.messages
    assert received.message.get_content() == body


@pytest_twisted.ensureDeferred
async def test_mocked_writes_a_file(
    log_capture: LogCapture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config = EmailConfig(host="MOCKED", sender="no-reply@parsec.com")
    assert config.is_mocked
    assert await _send(config) == "SUCCESS"

    [event] = [e for e in log_capture.from_namespace("parsec.mail") if "path" in e]
    path = Path(event["path"])
    assert path.parent.parent == tmp_path
    assert path.parent.name.startswith("tmp-email-folder-")
    assert path.name.startswith("tmp-email-") and path.suffix == ".html"
    content = path.read_text("utf-8")
    assert LOGO in content
    assert f"{BASE_URL}/redirect/CoolOrg?action=claim_user&amp;token" not in content
    assert f'<a href="{BASE_URL}/redirect/CoolOrg?action=claim_user&token={TOKEN.hex}"' in content
    assert str(path) in capsys.readouterr().err
