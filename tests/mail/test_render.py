"""Invitation link and e-mail rendering (no network)."""

from __future__ import annotations

import uuid
from email.message import EmailMessage

import pytest

from parsec.config import BackendAddr, EmailConfig
from parsec.mail.render import build_invitation_email, build_invitation_link, format_reply_to

TOKEN = uuid.UUID("3c5a4b2e-9d1f-4e4a-8b7c-0f1e2d3c4b5a")
SENDER = "Parsec <no-reply@parsec.com>"
ADDR = BackendAddr.from_url("parsec://parsec.example.com")
BASE_URL = "https://parsec.example.com"
LOGO = (
    f'<img src="{BASE_URL}/static/parsec-vert.png" alt="Parsec Logo" title="Parsec"'
    ' width="150" height="100"/>'
)


def _email(
    *,
    language: str = "en",
    invitation_type: str = "USER",
    greeter_name: str = "Alicey McAliceFace",
    reply_to: str | None = "Alicey McAliceFace <alice@example.com>",
    to_addr: str = "zack@example.com",
    organization_id: str = "CoolOrg",
) -> EmailMessage:
    return build_invitation_email(
        config=EmailConfig(host="smtp.example.com", sender=SENDER, language=language),
        backend_addr=ADDR,
        to_addr=to_addr,
        greeter_name=greeter_name,
        reply_to=reply_to,
        organization_id=organization_id,
        token=TOKEN,
        invitation_type=invitation_type,
    )


def _parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


@pytest.mark.parametrize(
    ("url", "org", "kind", "expected"),
    [
        (
            "parsec://parsec.example.com",
            "CoolOrg",
            "USER",
            f"https://parsec.example.com/redirect/CoolOrg?action=claim_user&token={TOKEN.hex}",
        ),
        (
            "parsec://parsec.example.com:443",
            "CoolOrg",
            "DEVICE",
            f"https://parsec.example.com/redirect/CoolOrg?action=claim_device&token={TOKEN.hex}",
        ),
        (
            "parsec://127.0.0.1:6777?no_ssl=true",
            "Org-é_1",
            "USER",
            f"http://127.0.0.1:6777/redirect/Org-%C3%A9_1?action=claim_user&token={TOKEN.hex}",
        ),
        (
            "parsec://localhost:80?no_ssl=true",
            "a b+c",
            "DEVICE",
            f"http://localhost/redirect/a+b%2Bc?action=claim_device&token={TOKEN.hex}",
        ),
    ],
)
def test_invitation_link(url: str, org: str, kind: str, expected: str) -> None:
    link = build_invitation_link(BackendAddr.from_url(url), org, TOKEN, kind)
    assert link == expected
    assert len(TOKEN.hex) == 32 and "-" not in TOKEN.hex


def test_invitation_link_unknown_type() -> None:
    with pytest.raises(ValueError):
        build_invitation_link(ADDR, "CoolOrg", TOKEN, "ADMIN")


def test_user_email_en() -> None:
    message = _email()
    assert message["From"] == SENDER
    assert message["To"] == "zack@example.com"
    assert message["Reply-To"] == "Alicey McAliceFace <alice@example.com>"
    assert message["Subject"] == "[Parsec] Alicey McAliceFace invited you to CoolOrg"
    assert message["Date"]
    assert message["Message-ID"].endswith("@parsec.com>")

    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [p.get_content_charset() for p in parts] == ["us-ascii", "us-ascii"]

    text, html = _parts(message)
    sentence = (
        "You have received an invitation from Alicey McAliceFace to join the CoolOrg organization on Parsec."
    )
    link = f"{BASE_URL}/redirect/CoolOrg?action=claim_user&token={TOKEN.hex}"
    for body in (text, html):
        assert sentence in body
        assert "https://parsec.cloud/get-parsec" in body
        assert "https://docs.parsec.cloud" in body
        assert link in body
        assert "Alicey McAliceFace" in body  # who to contact
    assert f'<a href="{link}" target="_blank">Claim invitation</a>' in html
    assert LOGO in html
    assert "<img" not in text
    # The ASCII parts go out as they are (no transfer encoding to undo).
    assert sentence.encode() in message.as_bytes()


def test_device_email_en() -> None:
    message = _email(invitation_type="DEVICE", reply_to=None, to_addr="alice@example.com")
    assert message["To"] == "alice@example.com"
    assert "Reply-To" not in message
    assert message["Subject"] == "[Parsec] New device invitation to CoolOrg"
    text, html = _parts(message)
    sentence = "You have received an invitation to add a new device to the CoolOrg organization on Parsec."
    link = f"{BASE_URL}/redirect/CoolOrg?action=claim_device&token={TOKEN.hex}"
    for body in (text, html):
        assert sentence in body
        assert link in body
        assert "existing devices" in body
        assert "https://parsec.cloud/get-parsec" in body
        assert "https://docs.parsec.cloud" in body
    assert f'<a href="{link}" target="_blank">Claim invitation</a>' in html
    assert LOGO in html


def test_user_email_without_human_handle_uses_user_id() -> None:
    message = _email(greeter_name="alice", reply_to=None)
    assert "Reply-To" not in message
    assert message["Subject"] == "[Parsec] alice invited you to CoolOrg"
    text, _ = _parts(message)
    assert "invitation from alice to join the CoolOrg organization" in text


def test_user_email_fr() -> None:
    message = _email(language="fr", greeter_name="Zoé Durand", reply_to="Zoé Durand <zoe@example.com>")
    assert message["Subject"] == "[Parsec] Zoé Durand vous invite à rejoindre CoolOrg"
    assert message["Reply-To"] == "Zoé Durand <zoe@example.com>"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [p.get_content_charset() for p in parts] == ["utf-8", "utf-8"]
    # Non-ASCII content is transfer-encoded: the raw message stays 7-bit.
    assert message.as_bytes().isascii()

    text, html = _parts(message)
    link = f"{BASE_URL}/redirect/CoolOrg?action=claim_user&token={TOKEN.hex}"
    sentence = "Vous avez reçu une invitation de Zoé Durand à rejoindre l'organisation CoolOrg sur Parsec."
    assert sentence in text
    assert sentence in html
    for body in (text, html):
        assert link in body
        assert "https://parsec.cloud/get-parsec" in body
        assert "https://docs.parsec.cloud" in body
        assert "Bonjour" in body
    assert f'<a href="{link}" target="_blank">Accepter l\'invitation</a>' in html
    assert LOGO in html
    assert '<html lang="fr">' in html


def test_device_email_fr() -> None:
    message = _email(language="fr", invitation_type="DEVICE", reply_to=None)
    assert message["Subject"] == "[Parsec] Invitation à ajouter un nouvel appareil à CoolOrg"
    text, html = _parts(message)
    sentence = (
        "Vous avez reçu une invitation à ajouter un nouvel appareil à l'organisation CoolOrg sur Parsec."
    )
    assert sentence in text
    assert sentence in html
    link = f"{BASE_URL}/redirect/CoolOrg?action=claim_device&token={TOKEN.hex}"
    assert f'<a href="{link}" target="_blank">Accepter l\'invitation</a>' in html
    assert LOGO in html


def test_unknown_language_falls_back_to_english() -> None:
    message = _email(language="de")
    assert message["Subject"] == "[Parsec] Alicey McAliceFace invited you to CoolOrg"


def test_html_part_escapes_values() -> None:
    name = 'Mallory <script>alert("x")</script> & co'
    message = _email(greeter_name=name, reply_to=None)
    text, html = _parts(message)
    assert name in text  # plain text: verbatim
    assert "<script>" not in html
    assert "Mallory &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in html
    assert message["Subject"] == f"[Parsec] {name} invited you to CoolOrg"


def test_headers_cannot_be_injected() -> None:
    message = _email(
        greeter_name="Eve\r\nBcc: victim@example.com", reply_to="Eve <eve@example.com>\nBcc: x@y"
    )
    assert "Bcc" not in message
    assert "\n" not in message["Subject"]
    with pytest.raises(ValueError):
        _email(to_addr="zack@example.com\r\nBcc: victim@example.com")


@pytest.mark.parametrize(
    ("label", "email", "expected"),
    [
        ("Alicey McAliceFace", "alice@example.com", "Alicey McAliceFace <alice@example.com>"),
        ("Doe, John", "john@example.com", '"Doe, John" <john@example.com>'),
        ("Zoé", "zoe@example.com", "Zoé <zoe@example.com>"),
    ],
)
def test_format_reply_to(label: str, email: str, expected: str) -> None:
    assert format_reply_to(label, email) == expected
