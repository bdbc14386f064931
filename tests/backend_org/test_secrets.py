"""Secrets (issue: the webhook URL, which often carries a token, was logged on every failure;
the bootstrap token was compared with `!=` and SQL `=`).

* the bootstrap token is compared in constant time (parsec.confidential.same_secret,
  in the memory and the PostgreSQL storages alike): a token that differs by its last
  character, is a prefix, is longer, or holds a NUL is refused like any wrong token;
* no log line holds the webhook URL's user info, path or query: only its scheme and host.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web import server as web_server

from parsec.confidential import redact_url, same_secret, scrub_url
from parsec.config import BackendConfig
from tests.backend_org.test_bootstrap import _Hook, bootstrap_msg, http_bootstrap
from tests.orgs import bootstrap_organization, create_organization

ok = pytest_twisted.ensureDeferred

SECRET_PATH = "/hooks/T0KEN-PATH-SECRET"
SECRET_QUERY = "key=T0KEN-QUERY-SECRET"


@pytest.fixture
def log_lines():
    lines: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def test_same_secret() -> None:
    assert same_secret("abc", "abc") and same_secret(b"abc", "abc")
    for other in ("abd", "ab", "abcd", "", "ab\x00", "ÀBC"):
        assert not same_secret("abc", other)


def test_redact_url() -> None:
    url = f"https://user:pass@hooks.example.com:8443{SECRET_PATH}?{SECRET_QUERY}#frag"
    assert redact_url(url) == "https://hooks.example.com:8443/…"
    assert redact_url("http://[::1]/x?y") == "http://[::1]/…"
    assert redact_url("not a url") == "<invalid URL>"
    text = f"Connection to {url} refused; GET {SECRET_PATH}?{SECRET_QUERY} user:pass@hooks.example.com"
    scrubbed = scrub_url(text, url)
    for secret in ("T0KEN", "user:pass", "frag"):
        assert secret not in scrubbed, scrubbed


@ok
async def test_bootstrap_token_compared_as_a_secret(server):
    token = await create_organization(server, "CoolOrg")
    for wrong in (token[:-1] + ("0" if token[-1] != "0" else "1"), token[:-1], token + "0", token + "\x00", ""):
        assert await http_bootstrap(server, "CoolOrg", bootstrap_msg(wrong)) == {"status": "not_found"}
    assert await http_bootstrap(server, "CoolOrg", bootstrap_msg(token)) == {"status": "ok"}
    assert await http_bootstrap(server, "CoolOrg", bootstrap_msg(token)) == {"status": "already_bootstrapped"}


@ok
async def test_webhook_url_never_logged(server_factory, log_lines):
    hook = _Hook(code=500)
    site = web_server.Site(hook)
    site.log = lambda request: None  # the receiving end's access log is not ours
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        answering = f"http://127.0.0.1:{port.getHost().port}{SECRET_PATH}?{SECRET_QUERY}"
        server = await server_factory(backend=BackendConfig(organization_bootstrap_webhook=answering))
        await bootstrap_organization(server, "NewOrg")  # answered 500
        assert len(hook.calls) == 1, [line for line in log_lines if "webhook" in line]
    finally:
        await port.stopListening()
    # With user info (which twisted's Agent refuses: another failure, its text scrubbed too).
    unreachable = f"http://user:T0KEN-PASS@127.0.0.1:9{SECRET_PATH}?{SECRET_QUERY}"
    server = await server_factory(backend=BackendConfig(organization_bootstrap_webhook=unreachable))
    await bootstrap_organization(server, "OtherOrg")
    failures = [line for line in log_lines if "Bootstrap webhook" in line]
    assert len(failures) == 2, log_lines
    assert any("answered 500" in line for line in failures)
    assert all("http://127.0.0.1:" in line for line in failures), failures
    leaked = [line for line in log_lines if "T0KEN" in line]
    assert leaked == []
    # Nor does the configuration's repr show it.
    assert "T0KEN" not in repr(server.app.config)
