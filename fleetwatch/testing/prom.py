"""Just enough of the Prometheus HTTP API for assertions and benches."""

from __future__ import annotations

import requests

from fleetwatch.testing.waits import wait_until


class PromClient:
    """Instant queries against a Prometheus, and waiting until one returns something."""

    def __init__(self, url: str):
        self.url = url

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        """The result of ``promql`` now (or at ``at``, in Unix seconds); fails on an error answer."""
        params = {"query": promql, **({"time": at} if at is not None else {})}
        r = requests.get(f"{self.url}/api/v1/query", params=params, timeout=10)
        body = r.json()
        assert body["status"] == "success", f"{promql}: {body}"
        return body["data"]["result"]

    def wait_for(self, promql: str, timeout_s: float = 30.0) -> list[dict]:
        """Poll until ``promql`` returns something; fail with the query if it never does."""
        return wait_until(lambda: self.query(promql), timeout_s, f"data for {promql} at {self.url}", 0.5)
