"""/metrics with pre-rendered collectors: the bytes prometheus_client would send, both formats, gzipped or not."""

from __future__ import annotations

import gzip

import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.exposition import Rendered, render_gauges, serve
from exporter.registry import ExporterConfig, build_registry
from fleetwatch.testing.waits import free_port

OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"


def families():
    info = GaugeMetricFamily("fleet_slurm_job_info", "A job; always 1\\ here\n", labels=["jobid", "name", "user"])
    info.add_metric(["7", 'we"ird\\name\nline', "alice"], 1)
    info.add_metric(["8", "plain", "bob"], 1)
    used = GaugeMetricFamily("cgroup_memory_used_bytes", "Memory used", labels=["task", "jobid", "step"])
    used.add_metric(["", "7", ""], 2.2747807744e10)
    used.add_metric(["", "8", ""], float("nan"))
    return [info, used, GaugeMetricFamily("fleet_jobs", "Jobs", value=2), GaugeMetricFamily("empty", "No samples")]


class Cached:
    """A collector that keeps its families formatted, as the per-job and Slurm collectors do."""

    def __init__(self, fams):
        self.fams = fams

    def collect(self):
        return self.fams

    def rendered(self):
        return Rendered.of(self.fams)


class Small:
    def collect(self):
        c = CounterMetricFamily("node_cpu_seconds", "CPU", labels=["cpu", "mode"])
        c.add_metric(["0", "idle"], 12.5)
        return [c]


def reference(fams, small=True) -> CollectorRegistry:
    r = CollectorRegistry(auto_describe=False)
    r.register(Cached(fams))
    return r


def test_gauges_render_as_prometheus_client_renders_them():
    assert render_gauges(families()) == generate_latest(reference([f for f in families() if f.samples]))


def test_only_what_both_formats_write_alike_is_pre_rendered():
    with pytest.raises(ValueError, match="only gauges"):
        render_gauges(Small().collect())
    with pytest.raises(ValueError, match="no double quote"):
        render_gauges([GaugeMetricFamily("quoted", 'a "quoted" help', value=1)])


@pytest.fixture
def served():
    """Our exporter's registry and HTTP server, with one cached collector beside an ordinary one."""
    config = ExporterConfig(host=False, gpu=False, processes=False, jobs=False,
                            extra_collectors={"small": Small(), "jobs": Cached(families())})  # fmt: skip
    registry, _ = build_registry(config)
    port = free_port()
    server = serve("127.0.0.1", port, registry)
    yield f"http://127.0.0.1:{port}/metrics", registry
    server.shutdown()


@pytest.mark.parametrize("accept", [None, OPENMETRICS])
@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_a_scrape_is_what_prometheus_client_would_send(served, accept, encoding):
    url, registry = served
    headers = {"Accept-Encoding": encoding, **({"Accept": accept} if accept else {})}
    r = requests.get(url, headers=headers, timeout=5, stream=True)
    wire = r.raw.read(decode_content=False)
    assert (r.headers.get("Content-Encoding") == "gzip") == (encoding == "gzip")
    body = gzip.decompress(wire) if encoding == "gzip" else wire  # several gzip members, one stream
    encoder = generate_openmetrics if accept else generate_latest
    assert r.headers["Content-Type"].startswith("application/openmetrics-text" if accept else "text/plain")
    want = encoder(registry).decode()  # the plain path: every family formatted now, in registry order
    got = body.decode()
    durations = [line for line in want.splitlines() if "collector_duration" in line and not line.startswith("#")]
    strip = lambda text: sorted(line for line in text.splitlines() if "collector_duration" not in line)  # noqa: E731
    assert strip(got) == strip(want) and len(durations) == 4  # fleet_exporter_ and node_scrape_, two collectors
    assert got.endswith("# EOF\n") == bool(accept)


def test_a_filtered_scrape_still_works(served):
    url, _ = served
    text = requests.get(url, params={"name[]": "fleet_jobs"}, timeout=5).text
    assert [line for line in text.splitlines() if not line.startswith("#")] == ["fleet_jobs 2.0"]
