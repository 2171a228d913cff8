"""/metrics for collectors too big to format at every scrape.

prometheus_client formats a sample in about 15 µs: the 12,000 series of a
node running 1,000 jobs would cost ~200 ms a scrape. A collector with a
``rendered()`` method (the per-job and Slurm collectors) formats its gauges
once per background sample instead, as text and gzip; a scrape formats only
the small collectors and joins the cached bytes to them. Gzip members may be
concatenated (RFC 1952), so the cached part is never compressed again either.
"""

from __future__ import annotations

import contextvars
import gzip
import socket
from collections.abc import Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import NamedTuple
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from exporter.encoding import GZIP_LEVEL, encode, escape
from exporter.sampling import SampledCollector

# Set while a scrape formats the registry: collectors with rendered() add their bytes here instead of families.
RENDERED: contextvars.ContextVar[list[Rendered] | None] = contextvars.ContextVar("rendered", default=None)
_EOF = b"# EOF\n"


class Rendered(NamedTuple):
    """Gauge families formatted once: the text, and the same text gzipped."""

    text: bytes
    gzipped: bytes

    @classmethod
    def of(cls, families: Iterable[Metric]) -> Rendered:
        text = render_gauges(families)
        return cls(text, gzip.compress(text, compresslevel=GZIP_LEVEL))

    @classmethod
    def joined(cls, *parts: Rendered) -> Rendered:
        """Several renderings as one: texts end to end, gzip members one after the other."""
        return cls(b"".join(p.text for p in parts), b"".join(p.gzipped for p in parts))


def render_gauges(families: Iterable[Metric]) -> bytes:
    """Gauge families in the text format; the same lines are valid OpenMetrics (before its "# EOF")."""
    out: list[str] = []
    for family in families:
        if not family.samples:
            continue  # as exporter/registry.py leaves such a family out: node_exporter writes none
        if family.type != "gauge":
            raise ValueError(f"{family.name}: only gauges are pre-rendered, not {family.type}")
        if '"' in family.documentation:  # OpenMetrics escapes it in HELP, the text format does not
            raise ValueError(f"{family.name}: no double quote in a pre-rendered family's help")
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {family.name} {doc}\n# TYPE {family.name} gauge\n")
        for s in family.samples:
            if s.labels:
                labels = ",".join(f'{k}="{escape(v)}"' for k, v in sorted(s.labels.items()))
                out.append(f"{s.name}{{{labels}}} {floatToGoString(s.value)}\n")
            else:
                out.append(f"{s.name} {floatToGoString(s.value)}\n")
    return "".join(out).encode()


class PreRenderedCollector(SampledCollector):
    """A sampled collector whose readings carry ``families`` and the same ``rendered`` once (jobs, Slurm)."""

    def collect(self) -> Iterator[Metric]:
        sample = self._sampler.latest()
        if sample is not None:
            yield from sample.value.families

    def rendered(self) -> Rendered | None:
        """The newest reading's families, formatted when it was taken."""
        sample = self._sampler.latest()
        return None if sample is None else sample.value.rendered


class ExporterRegistry(CollectorRegistry):
    """A registry whose scrape output joins pre-rendered collectors' bytes to the rest, formatted now."""

    def exposition(self, accept: str | None, gzipped: bool) -> tuple[bytes, str]:
        """The body of one scrape in the format ``accept`` asks for, and its content type."""
        rendered: list[Rendered] = []
        token = RENDERED.set(rendered)
        try:
            head, content_type = encode(self, accept)
        finally:
            RENDERED.reset(token)
        openmetrics = content_type.startswith("application/openmetrics-text")
        if openmetrics:
            head = head.removesuffix(_EOF)
        tail = _EOF if openmetrics else b""
        if not gzipped:
            return head + b"".join(r.text for r in rendered) + tail, content_type
        parts = [gzip.compress(head, compresslevel=GZIP_LEVEL), *(r.gzipped for r in rendered)]
        if tail:
            parts.append(gzip.compress(tail, compresslevel=GZIP_LEVEL))
        return b"".join(parts), content_type


def make_app(registry: ExporterRegistry):
    """The WSGI app serving ``registry`` on every GET path, as prometheus_client's does."""

    def app(environ, start_response):
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET")])
            return [b"use GET\n"]
        params = parse_qs(environ.get("QUERY_STRING", ""))
        gzipped = gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING"))
        if "name[]" in params:  # a filtered scrape: the plain path, formatting everything asked for
            encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT"))
            body = encoder(_Only(registry, set(params["name[]"])))
            body = gzip.compress(body, compresslevel=GZIP_LEVEL) if gzipped else body
        else:
            body, content_type = registry.exposition(environ.get("HTTP_ACCEPT"), gzipped)
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        if gzipped:
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]

    return app


class _Only:
    """The families of ``registry`` named in ``names`` (prometheus_client's restriction needs describe())."""

    def __init__(self, registry: CollectorRegistry, names: set[str]):
        self._registry, self._names = registry, names

    def collect(self):
        names = self._names
        return (f for f in self._registry.collect() if f.name in names or any(s.name in names for s in f.samples))


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        pass


def serve(host: str, port: int, registry: ExporterRegistry) -> WSGIServer:
    """Serve ``registry`` on host:port from a daemon thread; the caller calls ``shutdown()``."""
    import threading

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("Server", (_Server,), {"address_family": family})
    server = make_server(host, port, make_app(registry), server_class, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
