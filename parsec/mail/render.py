"""Invitation e-mails, rendering (English / French).

Rendering uses ``string.Template`` layouts from ``parsec/templates/``
(``invitation_mail.<lang>.txt`` and ``.html``); the sentences that depend on
the invitation type live in ``_CATALOG`` below. Values inserted in the HTML
part are HTML-escaped. Delivery: `parsec.mail.delivery`.
"""

from __future__ import annotations

import html
import string
import uuid
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from importlib import resources
from typing import Any, Final
from urllib.parse import quote_plus

from twisted.logger import Logger

from parsec.config import BackendAddr, EmailConfig

__all__ = [
    "DEFAULT_LANGUAGE",
    "LANGUAGES",
    "build_invitation_email",
    "build_invitation_link",
    "format_reply_to",
]

# The namespace of the module these functions come from (log filters name it).
_log = Logger(namespace="parsec.mail")

LANGUAGES: Final = ("en", "fr")
DEFAULT_LANGUAGE: Final = "en"

_CLAIM_ACTIONS: Final = {"USER": "claim_user", "DEVICE": "claim_device"}

# Per-language sentences; `$greeter_name` and `$organization_id` are filled in
# (HTML-escaped for the HTML part) before the result goes into the layout.
_CATALOG: Final[dict[str, dict[str, str]]] = {
    "en": {
        "subject_user": "[Parsec] $greeter_name invited you to $organization_id",
        "subject_device": "[Parsec] New device invitation to $organization_id",
        "title_user": "Invitation to join $organization_id",
        "title_device": "New device for $organization_id",
        "intro_user": (
            "You have received an invitation from $greeter_name to join the"
            " $organization_id organization on Parsec."
        ),
        "intro_device": (
            "You have received an invitation to add a new device to the"
            " $organization_id organization on Parsec."
        ),
        "next_step_user": (
            "Parsec will then ask you to get in touch with $greeter_name, who sent"
            " this invitation. You will read short codes to each other (by phone or"
            " face to face) to make sure nobody else is part of the exchange, and"
            " you will then be a member of the organization."
        ),
        "next_step_device": (
            "On one of your existing devices, already connected to $organization_id,"
            " start adding a new device. Both devices will show short codes to"
            " compare; once they match, this new device is ready to use."
        ),
    },
    "fr": {
        "subject_user": "[Parsec] $greeter_name vous invite à rejoindre $organization_id",
        "subject_device": "[Parsec] Invitation à ajouter un nouvel appareil à $organization_id",
        "title_user": "Invitation à rejoindre $organization_id",
        "title_device": "Nouvel appareil pour $organization_id",
        "intro_user": (
            "Vous avez reçu une invitation de $greeter_name à rejoindre"
            " l'organisation $organization_id sur Parsec."
        ),
        "intro_device": (
            "Vous avez reçu une invitation à ajouter un nouvel appareil à"
            " l'organisation $organization_id sur Parsec."
        ),
        "next_step_user": (
            "Parsec vous demandera ensuite de contacter $greeter_name, qui vous a"
            " envoyé cette invitation. Vous vous lirez mutuellement de courts codes"
            " (par téléphone ou en personne) pour vérifier que personne d'autre ne"
            " participe à l'échange, puis vous serez membre de l'organisation."
        ),
        "next_step_device": (
            "Sur l'un de vos appareils existants, déjà connecté à $organization_id,"
            " lancez l'ajout d'un nouvel appareil. Les deux appareils afficheront de"
            " courts codes à comparer ; lorsqu'ils correspondent, ce nouvel appareil"
            " est prêt à l'emploi."
        ),
    },
}


def _load_templates() -> dict[tuple[str, str], string.Template]:
    # Read once at import: a missing template is a packaging error that must
    # show at start-up, and no file is read on the reactor thread afterwards.
    folder = resources.files("parsec") / "templates"
    return {
        (lang, kind): string.Template((folder / f"invitation_mail.{lang}.{kind}").read_text("utf-8"))
        for lang in LANGUAGES
        for kind in ("txt", "html")
    }


_TEMPLATES: Final = _load_templates()

# RFC 5322 hard limit on a line (without CRLF); above it, encode the part.
_MAX_7BIT_LINE: Final = 998


def _invitation_kind(invitation_type: object) -> str:
    """`USER` / `DEVICE` from a str or an enum-like value."""
    value = getattr(invitation_type, "value", invitation_type)
    kind = str(value).upper()
    if kind not in _CLAIM_ACTIONS:
        raise ValueError(f"Unknown invitation type: {invitation_type!r}")
    return kind


def build_invitation_link(
    backend_addr: BackendAddr, organization_id: str, token: uuid.UUID, invitation_type: str
) -> str:
    """HTTP redirection URL put in the e-mail (GET /redirect/... answers 302 to parsec://)."""
    action = _CLAIM_ACTIONS[_invitation_kind(invitation_type)]
    org = quote_plus(str(organization_id))
    return f"{backend_addr.http_url}/redirect/{org}?action={action}&token={token.hex}"


def format_reply_to(label: str, email: str) -> str:
    """`<label> <<email>>`, quoted as needed (a label may hold commas or quotes)."""
    label = _one_line(label)
    email = _one_line(email)
    try:
        return str(Address(display_name=label, addr_spec=email))
    except (ValueError, IndexError, TypeError):
        return formataddr((label, email))


def _one_line(value: str) -> str:
    """Header values must not contain line breaks (header injection)."""
    return " ".join(str(value).splitlines()).strip()


def _language(config: EmailConfig) -> str:
    lang = (config.language or DEFAULT_LANGUAGE).lower()
    if lang not in LANGUAGES:
        _log.warn(
            "Unsupported e-mail language {language!r}, using {default}",
            language=config.language,
            default=DEFAULT_LANGUAGE,
        )
        return DEFAULT_LANGUAGE
    return lang


def _html_attr_url(url: str) -> str:
    """Escape a URL we built for an HTML attribute.

    `&` is kept as is: our URLs only use it as the `&token=` query separator,
    which HTML reads literally, and the upstream tests assert that exact form.
    """
    return html.escape(url, quote=True).replace("&amp;", "&")


def _set_text_part(message: EmailMessage, text: str, subtype: str, *, first: bool) -> None:
    if text.isascii() and max(map(len, text.splitlines()), default=0) <= _MAX_7BIT_LINE:
        kwargs: dict[str, Any] = {"charset": "us-ascii", "cte": "7bit"}
    else:
        kwargs = {"charset": "utf-8", "cte": "quoted-printable"}
    if first:
        message.set_content(text, subtype=subtype, **kwargs)
    else:
        message.add_alternative(text, subtype=subtype, **kwargs)


def build_invitation_email(
    *,
    config: EmailConfig,
    backend_addr: BackendAddr,
    to_addr: str,
    greeter_name: str,
    reply_to: str | None,
    organization_id: str,
    token: uuid.UUID,
    invitation_type: str,
) -> EmailMessage:
    """The invitation e-mail: multipart/alternative, text/plain then text/html.

    `greeter_name` is the greeter's human handle label (or user id);
    `reply_to` the full header value (see `format_reply_to`) or None.
    Raises ValueError if `to_addr` contains a line break.
    """
    kind = _invitation_kind(invitation_type).lower()
    lang = _language(config)
    strings = _CATALOG[lang]
    link = build_invitation_link(backend_addr, organization_id, token, invitation_type)
    http_url = backend_addr.http_url

    raw = {"greeter_name": _one_line(greeter_name), "organization_id": str(organization_id)}
    escaped = {key: html.escape(value, quote=True) for key, value in raw.items()}

    def sentence(key: str, values: dict[str, str]) -> str:
        return string.Template(strings[f"{key}_{kind}"]).substitute(values)

    text = _TEMPLATES[(lang, "txt")].substitute(
        intro=sentence("intro", raw),
        next_step=sentence("next_step", raw),
        link=link,
        http_url=http_url,
    )
    html_body = _TEMPLATES[(lang, "html")].substitute(
        title=sentence("title", escaped),
        intro=sentence("intro", escaped),
        next_step=sentence("next_step", escaped),
        link=_html_attr_url(link),
        http_url=_html_attr_url(http_url),
    )

    sender = _one_line(config.sender)
    message = EmailMessage()
    message["Subject"] = _one_line(sentence("subject", raw))
    message["From"] = sender
    message["To"] = to_addr
    if reply_to:
        message["Reply-To"] = _one_line(reply_to)
    # Not in the reference; mail filters frown upon messages without them.
    # (make_msgid gets an explicit domain: its default calls getfqdn(), which blocks.)
    message["Date"] = formatdate(usegmt=True)
    sender_domain = parseaddr(sender)[1].rpartition("@")[2]
    message["Message-ID"] = make_msgid("parsec", domain=sender_domain or backend_addr.hostname)
    _set_text_part(message, text, "plain", first=True)
    _set_text_part(message, html_body, "html", first=False)
    return message
