"""`--metrics-listen` on a real twistd, scraped with curl: Prometheus text on its own endpoint."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from tests.ops.conftest import MOCKED_ARGS, free_port
from tests.tools import curl

ok = pytest_twisted.ensureDeferred


@ok
async def test_metrics_endpoint(daemons, tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    daemon = daemons.twistd(
        *MOCKED_ARGS, "--port", str(port), "--log-level", "INFO",
        env={"PARSEC_METRICS_LISTEN": f"tcp:{metrics_port}:interface=127.0.0.1"},
    )  # fmt: skip
    await daemon.wait_ready(f"http://127.0.0.1:{port}")
    await daemon.wait_output(f"Listening on tcp:{metrics_port}:interface=127.0.0.1 (metrics)")
    for _ in range(3):
        assert (await curl(f"http://127.0.0.1:{port}/health")).status == 200
    scraped = await curl(f"http://127.0.0.1:{metrics_port}/metrics", "-D", "-")
    assert scraped.status == 200
    assert "Content-Type: text/plain; version=0.0.4" in scraped.body
    text = scraped.body.split("\r\n\r\n", 1)[1]
    assert "# TYPE parsec_commands_total counter" in text
    assert "# TYPE parsec_command_duration_seconds histogram" in text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    http = [s for s in families["parsec_connections"].samples if s.labels == {"kind": "http"} and s.name.endswith("_total")]
    assert http and http[0].value >= 3
    # Only /metrics there; the server's own routes are not on this endpoint.
    assert (await curl(f"http://127.0.0.1:{metrics_port}/health")).status == 404
    assert (await curl(f"http://127.0.0.1:{port}/metrics")).status == 404
    assert await daemon.stop() == 0
