"""The /metrics endpoint answers what prometheus_client's would, byte for byte, only cheaper."""

from __future__ import annotations

import gzip
import threading
from wsgiref.simple_server import make_server

import requests
from prometheus_client import make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder

from exporter import encoding
from exporter.encoding import encode
from exporter.exposition import ExporterRegistry, serve
from exporter.registry import ExporterConfig, build_registry
from fleetwatch.testing.waits import free_port

PROMETHEUS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
ACCEPTS = [
    PROMETHEUS_ACCEPT,
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    "application/openmetrics-text",
    "application/openmetrics-text; version=0.0.1",
    "text/plain;version=0.0.4",
    None,  # curl
]


class Fixed:
    """The same families at every scrape, so two servers can be compared."""

    def __init__(self, *families):
        self.families = families

    def collect(self):
        return iter(self.families)


def families(variant: str = ""):
    errors = CounterMetricFamily("node_network_receive_errs", "Network device statistic.", labels=["device"])
    errors.add_metric(["eth0"], 3)
    errors.add_metric(["eth1"], 2**53 + 1)
    info = GaugeMetricFamily("node_network_info", 'Data "from" \\sys\nclass.', labels=["device", "ifalias"])
    info.add_metric(["eth0", 'uplink "A"\\b\nc'], 1)  # quotes, a backslash and a newline in a label value
    speed = GaugeMetricFamily("node_network_speed_bytes", "Speed.", labels=["device"], unit="bytes")
    speed.add_metric(["eth0"], -125000)
    speed.add_metric(["lo"], float("nan"))
    speed.add_metric(["ifb0"], float("inf"))
    latency = HistogramMetricFamily(
        "backup_seconds", "Backup duration.", buckets=[("1.0", 2), ("+Inf", 5)], sum_value=9
    )
    fams = [errors, info, speed, latency, UnknownMetricFamily("node_vmstat_pgfault", "Field pgfault.", value=1e12)]
    fams.append(InfoMetricFamily("fleet_build", "Build.", value={"version": "1.0"}))
    if variant == "odd name":
        fams.append(GaugeMetricFamily("backup.last_success", "A textfile name outside the legacy set.", value=1))
    if variant == "timestamp":
        stamped = GaugeMetricFamily("fleet_gpu_last", "Served with the time it was sampled.", labels=["gpu"])
        stamped.add_metric(["0"], 1, timestamp=1_790_000_000.25)
        fams.append(stamped)
    return fams


def fetch(url: str, accept: str | None) -> requests.Response:
    return requests.get(url, headers={"Accept": accept or "*/*", "Accept-Encoding": "gzip"}, timeout=10)


def test_same_bytes_as_prometheus_client_for_every_accept_header():
    for variant in ("", "odd name", "timestamp"):
        registry = ExporterRegistry(auto_describe=False)
        registry.register(Fixed(*families(variant)))
        theirs_port, ours_port = free_port(), free_port()
        theirs = make_server("127.0.0.1", theirs_port, make_wsgi_app(registry), ThreadingWSGIServer)
        threading.Thread(target=theirs.serve_forever, daemon=True).start()
        ours = serve("127.0.0.1", ours_port, registry)
        try:
            for accept in ACCEPTS:
                a = fetch(f"http://127.0.0.1:{theirs_port}/metrics", accept)
                b = fetch(f"http://127.0.0.1:{ours_port}/metrics", accept)
                assert b.status_code == 200 and b.headers["Content-Type"] == a.headers["Content-Type"], accept
                assert b.content == a.content, (accept, variant)  # requests undoes the gzip of both
        finally:
            for server in (theirs, ours):
                server.shutdown()
                server.server_close()


def test_gzip_on_request_and_not_otherwise():
    registry = ExporterRegistry(auto_describe=False)
    registry.register(Fixed(*families()))
    port = free_port()
    server = serve("127.0.0.1", port, registry)
    try:
        raw = requests.get(f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": "gzip"}, stream=True)
        assert raw.headers["Content-Encoding"] == "gzip"
        assert b"node_network_receive_errs_total" in gzip.decompress(raw.raw.read())
        plain = requests.get(f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in plain.headers and b"node_vmstat_pgfault" in plain.content
        assert requests.post(f"http://127.0.0.1:{port}/metrics").status_code == 405  # prometheus_client's answer
    finally:
        server.shutdown()
        server.server_close()


def test_same_bytes_for_this_machines_whole_scrape():
    """Our own families, as collected here, written both ways; every one of them takes the quick path."""
    registry, _ = build_registry(ExporterConfig(gpu=False, processes=False))
    collected = Fixed(*registry.collect())
    assert all(encoding._plain(family) for family in collected.families)
    for accept in ACCEPTS:
        encoder, _ = choose_encoder(accept)
        assert encode(collected, accept)[0] == encoder(collected), accept
