"""Encoding a scrape: prometheus_client's encoders, with the costs of node_exporter-sized scrapes taken out.

With node_exporter's ~500 series, prometheus_client's serving costs more than
collecting them: its OpenMetrics writer escapes every sample name character by
character and weighs exemplars, timestamps and native histograms for every
sample, and it gzips at level 9. Here a scrape whose names need no escaping
and whose samples carry none of those (every scrape of ours) is written by a
loop that does only what remains, the same bytes (tests/test_exporter_endpoint.py
compares them), and gzip runs at level 1 (a tenth of the CPU, ~15 % more
bytes on the wire). Anything else is prometheus_client's own answer.
exporter/exposition.py serves it, joined to the bytes big collectors keep formatted.
"""

from __future__ import annotations

import functools
import re

from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.utils import floatToGoString

GZIP_LEVEL = 1
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# prometheus_client >= 0.22 escapes names for UTF-8 support; older ones write them as they are.
ALLOW_UTF8 = getattr(openmetrics, "ALLOWUTF8", None)


# Names already seen to need no escaping: a scrape checks each of its ~500 samples against these sets.
_PLAIN_METRICS: set[str] = set()
_PLAIN_LABELS: set[str] = set()
_PLAIN_MAX = 100_000  # names seen are forgotten past this many (label names are few; this is a bound, not a cache size)


class _Collected:
    """The families of one collection, for an encoder that expects a registry."""

    def __init__(self, families: list):
        self._families = families

    def collect(self):
        return iter(self._families)


def encode(registry, accept_header: str | None) -> tuple[bytes, str]:
    """The body and Content-Type that prometheus_client answers ``accept_header`` with, made cheaper."""
    encoder, content_type = choose_encoder(accept_header)
    openmetrics_1 = (
        ALLOW_UTF8 is not None
        and isinstance(encoder, functools.partial)
        and encoder.func is openmetrics.generate_latest
        and encoder.keywords.get("version") == "1.0.0"
        # Other escapings (dots, values) rewrite even plain names.
        and encoder.keywords.get("escaping") in (openmetrics.UNDERSCORES, ALLOW_UTF8)
    )
    if not openmetrics_1:
        return encoder(registry), content_type
    families = list(registry.collect())
    if all(_plain(family) for family in families):
        return _openmetrics(families), content_type
    return encoder(_Collected(families)), content_type


def _openmetrics(families: list) -> bytes:
    """OpenMetrics 1.0 text of families that _plain() accepts, byte for byte as prometheus_client writes it."""
    out = []
    for family in families:
        name = family.name
        out.append(f"# HELP {name} {escape(family.documentation)}\n# TYPE {name} {family.type}\n")
        if family.unit:
            out.append(f"# UNIT {name} {family.unit}\n")
        for s in family.samples:
            if s.labels:
                labels = ",".join([f'{k}="{escape(v)}"' for k, v in sorted(s.labels.items())])
                out.append(f"{s.name}{{{labels}}} {floatToGoString(s.value)}\n")
            else:
                out.append(f"{s.name} {floatToGoString(s.value)}\n")
    out.append("# EOF\n")
    return "".join(out).encode("utf-8")


def escape(text: str) -> str:
    """A label value or HELP text escaped as OpenMetrics writes it."""
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _plain(family) -> bool:
    """Whether prometheus_client writes ``family`` plainly: names that need no escaping, bare values."""
    if METRIC_NAME.fullmatch(family.name) is None:
        return False
    for sample in family.samples:
        if sample.timestamp is not None or sample.exemplar or getattr(sample, "native_histogram", None):
            return False
        if sample.value is None:
            return False
        if sample.name not in _PLAIN_METRICS:
            if not METRIC_NAME.fullmatch(sample.name):
                return False
            _remember(_PLAIN_METRICS, sample.name)
        for label in sample.labels:
            if label not in _PLAIN_LABELS:
                if not LABEL_NAME.fullmatch(label):
                    return False
                _remember(_PLAIN_LABELS, label)
    return True


def _remember(names: set[str], name: str) -> None:
    if len(names) >= _PLAIN_MAX:
        names.clear()
    names.add(name)
