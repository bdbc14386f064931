"""TLS served by the server itself, checked with openssl and curl against real daemons.

* `--ssl-certfile fullchain.pem` (server certificate + intermediate): both are served, leaf
  first, and a client that trusts only the root CA verifies the chain;
* a file that does not load stops the start-up with one line naming the option and the file;
* SIGHUP re-reads key and chain: new handshakes get the new certificate, an open websocket
  stays up; a bad new file is logged (option and file named) and the previous one kept.
"""

from __future__ import annotations

import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import ssl

from tests import httpclient
from tests.ops.conftest import MOCKED_ARGS, PARSEC, TWISTD, clean_environ, free_port
from tests.tlsutil import Chain, TestCA
from tests.tools import curl, served_certificates
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred

INTERMEDIATE = "CN = Parsec Test Intermediate CA"


def _tls_args(chain: Chain) -> list[str]:
    return ["--ssl-certfile", str(chain.fullchain), "--ssl-keyfile", str(chain.key)]


def _curl_args(chain: Chain, port: int) -> list[str]:
    return ["--cacert", str(chain.root), "--resolve", f"localhost:{port}:127.0.0.1"]


def _client_options(chain: Chain) -> ssl.IOpenSSLClientConnectionCreator:
    return ssl.optionsForClientTLS("localhost", trustRoot=ssl.Certificate.loadPEM(chain.root.read_bytes()))


@ok
async def test_whole_chain_is_served(daemons, tmp_path: Path) -> None:
    chain = TestCA(tmp_path / "tls").issue("first")
    port = free_port()
    daemon = daemons.twistd("--dev", "--port", str(port), *_tls_args(chain))
    url = f"https://localhost:{port}"
    await daemon.wait_ready(url, *_curl_args(chain, port))

    subjects, verified = await served_certificates(port, ca_file=str(chain.root))
    assert subjects == ["CN = localhost first", INTERMEDIATE]
    assert verified == "Verify return code: 0 (ok)"
    result = await curl(f"{url}/health", *_curl_args(chain, port))
    assert (result.status, result.body) == (200, "ok\n")
    assert await daemon.stop() == 0

    # The same check fails when the file lacks the intermediate (what the issue saw).
    port = free_port()
    leaf_only = daemons.twistd("--dev", "--port", str(port), "--ssl-certfile", str(chain.leaf), "--ssl-keyfile", str(chain.key))
    await leaf_only.wait_ready(f"https://localhost:{port}", "--insecure")
    subjects, verified = await served_certificates(port, ca_file=str(chain.root))
    assert subjects == ["CN = localhost first"]
    assert verified == "Verify return code: 20 (unable to get local issuer certificate)"
    assert (await curl(f"https://localhost:{port}/health", *_curl_args(chain, port))).status == 0
    assert await leaf_only.stop() == 0


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=clean_environ()
    )


def _bad_files(tmp_path: Path) -> list[tuple[list[str], str]]:
    ca = TestCA(tmp_path / "tls")
    good, other = ca.issue("good"), ca.issue("other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    reversed_chain = tmp_path / "reversed.pem"
    leaf, intermediate = good.fullchain.read_text().split("-----END CERTIFICATE-----\n")[:2]
    reversed_chain.write_text(intermediate + "-----END CERTIFICATE-----\n" + leaf + "-----END CERTIFICATE-----\n")
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(good.key), "-aes256", "-passout", "pass:secret", "-out", str(encrypted)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    unreadable = tmp_path / "unreadable.key"
    unreadable.write_bytes(good.key.read_bytes())
    unreadable.chmod(0)
    cases = [
        (
            ["--ssl-certfile", str(good.fullchain), "--ssl-keyfile", str(garbage)],
            f"Error: Invalid value for '--ssl-keyfile': '{garbage}': holds no PEM private key "
            "(-----BEGIN PRIVATE KEY-----)",
        ),
        (
            ["--ssl-certfile", str(garbage), "--ssl-keyfile", str(good.key)],
            f"Error: Invalid value for '--ssl-certfile': '{garbage}': holds no PEM certificate "
            "(-----BEGIN CERTIFICATE-----)",
        ),
        (
            ["--ssl-certfile", str(good.fullchain), "--ssl-keyfile", str(other.key)],
            f"Error: Invalid value for '--ssl-keyfile': '{other.key}': this private key does not "
            f"match the certificate of '{good.fullchain}'",
        ),
        (
            ["--ssl-certfile", str(reversed_chain), "--ssl-keyfile", str(good.key)],
            f"Error: Invalid value for '--ssl-keyfile': '{good.key}': this private key does not "
            f"match the certificate of '{reversed_chain}' (the server's own certificate must come "
            "first in the file, the intermediates after it)",
        ),
        (
            ["--ssl-certfile", str(good.fullchain), "--ssl-keyfile", str(encrypted)],
            f"Error: Invalid value for '--ssl-keyfile': '{encrypted}': the private key is "
            "encrypted: give an unencrypted key",
        ),
        (
            [
                "--listen",
                f"ssl:0:interface=127.0.0.1:privateKey={good.key}:certKey={garbage}",
            ],
            f"Error: Invalid value for '--listen ssl:...:certKey': '{garbage}': holds no PEM "
            "certificate (-----BEGIN CERTIFICATE-----)",
        ),
    ]
    if os.geteuid() != 0:  # root reads any file
        cases.append(
            (
                ["--ssl-certfile", str(good.fullchain), "--ssl-keyfile", str(unreadable)],
                f"Error: Invalid value for '--ssl-keyfile': '{unreadable}': cannot read it (Permission denied)",
            )
        )
    return cases


def test_unusable_files_fail_start_up_naming_option_and_file(tmp_path: Path) -> None:
    runs = []
    for index, (args, message) in enumerate(_bad_files(tmp_path)):
        port = [] if "--listen" in args else ["--port", "0"]
        runs.append(([PARSEC, "backend", "run", *MOCKED_ARGS, *port, *args], message))
        if index in (0, 5):  # the same code path under twistd: two cases are enough
            runs.append(([TWISTD, "-n", "--pidfile=", "parsec", *MOCKED_ARGS, *port, *args], message))
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_run, [argv for argv, _ in runs]))
    for (_, message), result in zip(runs, results, strict=True):
        assert result.returncode == 1, result
        assert result.stderr.splitlines()[-1] == message, result.stderr
        assert "Traceback" not in result.stderr


def _replace(live: Chain, new: Chain) -> None:
    """Install `new` under the live file names, the way certbot's deploy does (rename)."""
    for source, target in ((new.key, live.key), (new.fullchain, live.fullchain)):
        staging = target.with_suffix(".new")
        staging.write_bytes(source.read_bytes())
        os.replace(staging, target)


@ok
async def test_sighup_reloads_key_and_chain(daemons, tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "tls")
    first = ca.issue("first")
    live = Chain(
        root=ca.root,
        fullchain=tmp_path / "live-fullchain.pem",
        leaf=first.leaf,
        key=tmp_path / "live.key",
        subject="",
    )
    _replace(live, first)
    port = free_port()
    daemon = daemons.twistd("--dev", "--port", str(port), "-l", "INFO", *_tls_args(live))
    url = f"https://localhost:{port}"
    await daemon.wait_ready(url, *_curl_args(live, port))
    options = _client_options(live)
    rep = await httpclient.request(
        port,
        "POST",
        "/administration/organizations",
        body=b'{"organization_id": "CoolOrg"}',
        headers={"Authorization": "Bearer s3cr3t"},
        tls_options=options,
    )
    assert rep.status == 200, rep
    websocket = await WsClient.connect(port, host="localhost", tls_options=options)
    assert (await websocket.handshake_anonymous_v1("CoolOrg"))["result"] == "ok"
    assert await websocket.cmd("ping", ping="before") == {"status": "ok", "pong": "before"}

    second = ca.issue("second")
    _replace(live, second)
    daemon.send(signal.SIGHUP)
    line = await daemon.wait_output("TLS certificate reloaded")
    assert str(live.fullchain) in line and "localhost second" in line and "2 certificate(s)" in line
    subjects, verified = await served_certificates(port, ca_file=str(ca.root))
    assert subjects == ["CN = localhost second", INTERMEDIATE]
    assert verified == "Verify return code: 0 (ok)"
    # The websocket opened before the reload is still up.
    assert await websocket.cmd("ping", ping="after") == {"status": "ok", "pong": "after"}

    # A new certificate that does not load: logged, the previous one stays in service.
    live.fullchain.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    daemon.send(signal.SIGHUP)
    line = await daemon.wait_output("TLS certificate not reloaded")
    assert "[error" in line and f"'--ssl-certfile': '{live.fullchain}': invalid PEM certificate" in line
    subjects, _ = await served_certificates(port, ca_file=str(ca.root))
    assert subjects == ["CN = localhost second", INTERMEDIATE]
    assert await websocket.cmd("ping", ping="still") == {"status": "ok", "pong": "still"}
    assert (await curl(f"{url}/ready", *_curl_args(live, port))).status == 200

    await websocket.close()
    assert await daemon.stop() == 0
    assert "Traceback" not in daemon.output()


@pytest.mark.parametrize("front_end", ["twistd", "parsec"])
@ok
async def test_listen_ssl_endpoint_serves_the_chain(daemons, tmp_path: Path, front_end: str) -> None:
    chain = TestCA(tmp_path / "tls").issue("endpoint")
    port = free_port()
    listen = f"ssl:{port}:interface=127.0.0.1:privateKey={chain.key}:certKey={chain.fullchain}"
    start = daemons.twistd if front_end == "twistd" else daemons.parsec
    daemon = start("--dev", "--listen", listen)
    await daemon.wait_ready(f"https://localhost:{port}", *_curl_args(chain, port))
    subjects, verified = await served_certificates(port, ca_file=str(chain.root))
    assert subjects == ["CN = localhost endpoint", INTERMEDIATE]
    assert verified == "Verify return code: 0 (ok)"
    assert await daemon.stop(signal.SIGINT) == 0
