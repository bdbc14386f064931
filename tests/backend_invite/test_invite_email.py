"""`invite_new` with `send_email: true`, delivered to a real SMTP server on loopback (docs/protocol/invitations.md §5).

The Parsec server runs with `EmailConfig(host="127.0.0.1", port=<test SMTP server>)`; STARTTLS
and SMTPS use a throwaway CA that the server trusts through `EmailConfig.ca_file`.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest
import pytest_twisted

from parsec.config import BackendAddr, BackendConfig, ConfigError, EmailConfig
from tests.backend_invite.conftest import InviteEnv, until
from tests.orgs import bootstrap_organization

ok = pytest_twisted.ensureDeferred

SENDER = "Parsec <no-reply@parsec.com>"
PUBLIC_ADDR = BackendAddr.from_url("parsec://parsec.example.com")


async def start(
    server_factory: Any,
    *,
    port: int,
    backend_addr: BackendAddr = PUBLIC_ADDR,
    greeter_human_handle: tuple[str, str] | None = ("alice@example.com", "Alicey McAliceFace"),
    **email: Any,
) -> InviteEnv:
    email.setdefault("sender", SENDER)
    config = BackendConfig(email=EmailConfig(host="127.0.0.1", port=port, **email), backend_addr=backend_addr)
    server = await server_factory(backend=config)
    organization = await bootstrap_organization(server, human_handle=greeter_human_handle)
    return InviteEnv(server, organization)


async def invite(env: InviteEnv, invitation_type: str, claimer_email: str = "zack@example.com") -> dict:
    alice = await env.connect("alice@dev1")
    fields = {"claimer_email": claimer_email} if invitation_type == "USER" else {}
    rep = await alice.cmd("invite_new", type=invitation_type, send_email=True, **fields)
    assert rep["status"] == "ok", rep
    assert set(rep) == {"status", "token", "email_sent"}
    # Whatever happened to the e-mail, the invitation exists.
    listed = [item["token"] for item in (await alice.cmd("invite_list"))["invitations"]]
    assert rep["token"] in listed
    await env.close_all()
    return rep


def check_link(
    message: Any, base_url: str, organization_id: str, action: str, token: UUID, language: str = "en"
) -> None:
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    link = f"{base_url}/redirect/{organization_id}?action={action}&token={token.hex}"
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    assert link in text
    anchor = "Claim invitation" if language == "en" else "Accepter l'invitation"
    assert f'<a href="{link}" target="_blank">{anchor}</a>' in html
    assert (
        f'<img src="{base_url}/static/parsec-vert.png" alt="Parsec Logo" title="Parsec" width="150" height="100"/>'
        in html
    )
    for url in ("https://parsec.cloud/get-parsec", "https://docs.parsec.cloud"):
        assert url in text and url in html


@ok
@pytest.mark.parametrize("language", ["en", "fr"])
@pytest.mark.parametrize("tls", [None, "starttls"])
async def test_user_invitation_email(server_factory, smtp_server_factory, ca_file, language, tls) -> None:
    smtp = await smtp_server_factory(tls=tls)
    env = await start(
        server_factory, port=smtp.port, language=language, use_tls=tls == "starttls", ca_file=ca_file
    )
    rep = await invite(env, "USER")
    assert rep["email_sent"] == "SUCCESS"

    [received] = smtp.messages
    assert received.starttls == (tls == "starttls")
    assert received.mail_from == "no-reply@parsec.com"
    assert received.rcpt_to == "zack@example.com"
    message = received.message
    assert message["From"] == SENDER
    assert message["To"] == "zack@example.com"
    assert message["Reply-To"] == "Alicey McAliceFace <alice@example.com>"
    if language == "en":
        assert message["Subject"] == "[Parsec] Alicey McAliceFace invited you to CoolOrg"
        intro = "You have received an invitation from Alicey McAliceFace to join the CoolOrg organization on Parsec."
    else:
        assert message["Subject"] == "[Parsec] Alicey McAliceFace vous invite à rejoindre CoolOrg"
        intro = "Vous avez reçu une invitation de Alicey McAliceFace à rejoindre l'organisation CoolOrg sur Parsec."
    assert intro in message.get_body(preferencelist=("plain",)).get_content()
    assert intro in message.get_body(preferencelist=("html",)).get_content()
    check_link(message, "https://parsec.example.com", "CoolOrg", "claim_user", rep["token"], language)


@ok
@pytest.mark.parametrize("language", ["en", "fr"])
async def test_device_invitation_email(server_factory, smtp_server_factory, language) -> None:
    smtp = await smtp_server_factory()
    env = await start(
        server_factory,
        port=smtp.port,
        language=language,
        backend_addr=BackendAddr("127.0.0.1", 6777, use_ssl=False),
    )
    rep = await invite(env, "DEVICE")
    assert rep["email_sent"] == "SUCCESS"
    [received] = smtp.messages
    assert received.rcpt_to == "alice@example.com"
    message = received.message
    assert message["From"] == SENDER
    assert message["To"] == "alice@example.com"
    assert "Reply-To" not in message
    if language == "en":
        assert message["Subject"] == "[Parsec] New device invitation to CoolOrg"
        intro = "You have received an invitation to add a new device to the CoolOrg organization on Parsec."
    else:
        assert message["Subject"] == "[Parsec] Invitation à ajouter un nouvel appareil à CoolOrg"
        intro = "Vous avez reçu une invitation à ajouter un nouvel appareil à l'organisation CoolOrg sur Parsec."
    assert intro in message.get_body(preferencelist=("plain",)).get_content()
    check_link(message, "http://127.0.0.1:6777", "CoolOrg", "claim_device", rep["token"], language)


@ok
async def test_user_invitation_from_greeter_without_human_handle(server_factory, smtp_server_factory) -> None:
    smtp = await smtp_server_factory()
    env = await start(server_factory, port=smtp.port, greeter_human_handle=None)
    rep = await invite(env, "USER")
    assert rep["email_sent"] == "SUCCESS"
    [received] = smtp.messages
    message = received.message
    assert message["Subject"] == "[Parsec] alice invited you to CoolOrg"
    assert "Reply-To" not in message
    assert "from alice to join the CoolOrg organization" in message.get_body(preferencelist=("plain",)).get_content()


@ok
async def test_reused_invitation_sends_again(server_factory, smtp_server_factory) -> None:
    smtp = await smtp_server_factory()
    env = await start(server_factory, port=smtp.port)
    first = await invite(env, "USER")
    second = await invite(env, "USER")
    assert first["token"] == second["token"]
    assert [m.rcpt_to for m in smtp.messages] == ["zack@example.com", "zack@example.com"]


@ok
async def test_implicit_tls(server_factory, smtp_server_factory, ca_file) -> None:
    smtp = await smtp_server_factory(tls="implicit")
    env = await start(server_factory, port=smtp.port, use_ssl=True, ca_file=ca_file)
    assert (await invite(env, "DEVICE"))["email_sent"] == "SUCCESS"
    [received] = smtp.messages
    assert received.tls and not received.starttls


@ok
@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_untrusted_smtp_certificate(server_factory, smtp_server_factory, tls) -> None:
    # Without `ca_file`, the throwaway CA is not trusted (platform trust store): nothing is sent.
    smtp = await smtp_server_factory(tls=tls)
    env = await start(server_factory, port=smtp.port, use_tls=tls == "starttls", use_ssl=tls == "implicit")
    assert (await invite(env, "USER"))["email_sent"] == "NOT_AVAILABLE"
    assert smtp.messages == []


@ok
async def test_bad_ca_file_fails_start_up(server_factory, tmp_path) -> None:
    path = tmp_path / "empty.pem"
    path.write_bytes(b"")
    config = BackendConfig(email=EmailConfig(host="127.0.0.1", sender=SENDER, use_tls=True, ca_file=str(path)))
    with pytest.raises(ConfigError, match="e-mail CA file"):
        await server_factory(backend=config)


@ok
@pytest.mark.parametrize("invitation_type", ["USER", "DEVICE"])
async def test_refused_recipient(server_factory, smtp_server_factory, invitation_type) -> None:
    smtp = await smtp_server_factory(refuse=["zack@example.com", "alice@example.com"])
    env = await start(server_factory, port=smtp.port)
    rep = await invite(env, invitation_type)
    assert rep["email_sent"] == "BAD_RECIPIENT"
    assert smtp.messages == []


@ok
@pytest.mark.parametrize("invitation_type", ["USER", "DEVICE"])
async def test_unreachable_smtp_server(server_factory, closed_port, invitation_type) -> None:
    env = await start(server_factory, port=closed_port)
    rep = await invite(env, invitation_type)
    assert rep["email_sent"] == "NOT_AVAILABLE"


@ok
async def test_unusable_claimer_email(server_factory, smtp_server_factory) -> None:
    # The claimer e-mail is not validated by invite_new; one that cannot be an SMTP recipient
    # never reaches the SMTP server.
    smtp = await smtp_server_factory()
    env = await start(server_factory, port=smtp.port)
    rep = await invite(env, "USER", claimer_email="not an address")
    assert rep["email_sent"] == "BAD_RECIPIENT"
    assert smtp.connections_seen == 0


@ok
async def test_mocked_email_host(server_factory, monkeypatch, tmp_path) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    server = await server_factory(
        backend=BackendConfig(email=EmailConfig(host="MOCKED"), backend_addr=PUBLIC_ADDR)
    )
    env = InviteEnv(server, await bootstrap_organization(server))
    for invitation_type in ("USER", "DEVICE"):
        rep = await invite(env, invitation_type)
        assert rep["email_sent"] == "SUCCESS"
    [user_mail, device_mail] = sorted(tmp_path.glob("tmp-email-folder-*/tmp-email-*.html"), key=lambda p: p.stat().st_mtime_ns)
    assert "action=claim_user&token=" in user_mail.read_text("utf-8")


@ok
async def test_link_quotes_the_organization_id(server_factory, smtp_server_factory, monkeypatch) -> None:
    from urllib.parse import quote

    from tests import httpclient

    # (the test HTTP client sends the path as given: percent-encode it like real clients)
    anonymous = httpclient.anonymous
    monkeypatch.setattr(httpclient, "anonymous", lambda port, org_id, msg: anonymous(port, quote(org_id), msg))
    smtp = await smtp_server_factory()
    config = BackendConfig(
        email=EmailConfig(host="127.0.0.1", port=smtp.port, sender=SENDER), backend_addr=PUBLIC_ADDR
    )
    server = await server_factory(backend=config)
    env = InviteEnv(server, await bootstrap_organization(server, "Café-Org"))
    rep = await invite(env, "DEVICE")
    assert rep["email_sent"] == "SUCCESS"
    [received] = smtp.messages
    assert received.message["Subject"] == "[Parsec] New device invitation to Café-Org"
    check_link(received.message, "https://parsec.example.com", "Caf%C3%A9-Org", "claim_device", rep["token"])


@ok
async def test_greeter_leaves_while_the_email_is_being_sent(server_factory, smtp_server_factory) -> None:
    # The SMTP server accepts the connection and never answers: the greeter gives up and
    # disconnects. The server abandons the e-mail quietly (no error logged, no socket left).
    smtp = await smtp_server_factory(mute=True)
    env = await start(server_factory, port=smtp.port)
    alice = await env.connect("alice@dev1")
    alice.send("invite_new", type="USER", claimer_email="zack@example.com", send_email=True)
    await until(lambda: smtp.connections_seen == 1, "SMTP connection opened")
    await alice.close()
    await until(lambda: not smtp._open, "SMTP connection closed by the Parsec server")
    # The invitation was created before the e-mail was sent.
    alice = await env.connect("alice@dev1")
    [item] = (await alice.cmd("invite_list"))["invitations"]
    assert item["claimer_email"] == "zack@example.com"
    await env.close_all()
