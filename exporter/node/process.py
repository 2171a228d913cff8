"""The one process_* family Go's client adds that prometheus_client's ProcessCollector lacks."""

from __future__ import annotations

import resource
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

UNLIMITED = float(2**64 - 1)  # how Go's collector reports RLIM_INFINITY


class AddressSpaceLimitCollector:
    """process_virtual_memory_max_bytes: this process's RLIMIT_AS, read by node_exporter's "Exporter" panels."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        yield GaugeMetricFamily(
            "process_virtual_memory_max_bytes",
            "Maximum amount of virtual memory available in bytes.",
            value=UNLIMITED if soft == resource.RLIM_INFINITY else soft,
        )
