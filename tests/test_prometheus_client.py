"""The gateway's Prometheus client (gateway/promql.py) against Debian's Prometheus: kept-alive connections
survive a restarted Prometheus, and a stopped one is a 503 in the spec's shape, not a 500."""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import pytest

from fleetwatch.testing import services
from gateway.errors import Unavailable
from gateway.promql import Prometheus

pytestmark = pytest.mark.integration


def test_a_restarted_prometheus_is_asked_again_on_a_new_connection(tmp_path):
    first = services.prometheus(tmp_path / "tsdb").up()
    prom = Prometheus(first.url, cache_ttl_s=0)
    try:
        assert prom.query("vector(42)")[0]["value"][1] == "42"
        # The connection this thread keeps is closed by the server that stops; the next one
        # listens on the same port: the query is answered, on a new connection.
        first.stop()
        again = services.prometheus(tmp_path / "tsdb", port=urlsplit(first.url).port).up()
        try:
            assert prom.query_range("vector(7)", 1_700_000_000, 1_700_000_060, 30)[0]["values"] == [
                [1_700_000_000, "7"],
                [1_700_000_030, "7"],
                [1_700_000_060, "7"],
            ]
            assert prom.ready()
            # Several threads, one kept connection each.
            answers: list[str] = []
            threads = [
                threading.Thread(target=lambda n=n: answers.append(prom.query(f"vector({n})")[0]["value"][1]))
                for n in range(8)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(answers) == [str(n) for n in range(8)]
        finally:
            again.stop()
        # Stopped, nothing listening: the retry on a new connection is refused too, a 503.
        with pytest.raises(Unavailable) as stopped:
            prom.query("1")
        assert stopped.value.status == 503 and stopped.value.details["prometheus"] == first.url
        assert not prom.ready()
    finally:
        first.stop()


def test_a_prometheus_behind_a_path_prefix_is_asked_under_it(tmp_path):
    server = services.prometheus(tmp_path / "tsdb", flags=("--web.route-prefix=/select/0/prometheus",))
    server.ready_url = f"{server.url}/select/0/prometheus/-/ready"
    with server:
        prom = Prometheus(f"{server.url}/select/0/prometheus/", cache_ttl_s=0)
        assert prom.ready()
        assert prom.query("vector(3)")[0]["value"][1] == "3"
