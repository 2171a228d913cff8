"""Metrics that cron jobs and scripts write to *.prom files: node_exporter's textfile collector."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)


class TextfileCollector:
    """Every family of ``directory``/*.prom, their files' mtimes, and node_textfile_scrape_error.

    With no directory it exports only ``node_textfile_scrape_error 0``, as
    node_exporter does. A file that cannot be read or parsed, or that carries
    timestamps, is skipped whole and sets the error to 1. Check by hand::

        echo 'backup_last_success_timestamp_seconds 1.7e9' > /var/lib/fleetwatch/textfile/backup.prom
        curl -s localhost:9101/metrics | grep -e ^backup_ -e ^node_textfile
    """

    def __init__(self, directory: str = ""):
        self._dir = Path(directory) if directory else None

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        mtimes: dict[str, float] = {}
        errored = False
        files = []
        if self._dir is not None:
            try:
                files = sorted(p for p in self._dir.iterdir() if p.name.endswith(".prom"))
            except OSError as exc:
                log.error("cannot read textfile directory %s: %s", self._dir, exc)
                errored = True
        for path in files:
            try:
                families = _read(path)
            except (OSError, ValueError) as exc:
                log.error("textfile %s skipped: %s", path, exc)
                errored = True
                continue
            mtimes[str(path)] = float(int(path.stat().st_mtime))
            for fam in families:
                if not fam.documentation:
                    fam.documentation = f"Metric read from {path}"
                if fam.name not in merged:
                    merged[fam.name] = fam
                elif merged[fam.name].type == fam.type:
                    merged[fam.name].samples.extend(fam.samples)
                else:
                    log.error("textfile %s: %s is a %s elsewhere, skipped", path, fam.name, merged[fam.name].type)
                    errored = True
        yield from merged.values()
        if mtimes:
            mtime = GaugeMetricFamily(
                "node_textfile_mtime_seconds", "Unixtime mtime of textfiles successfully read.", labels=["file"]
            )
            for path, seconds in mtimes.items():
                mtime.add_metric([path], seconds)
            yield mtime
        yield GaugeMetricFamily(
            "node_textfile_scrape_error",
            "1 if there was an error opening or reading a file, 0 otherwise",
            value=1 if errored else 0,
        )


def _read(path: Path) -> list[Metric]:
    families = list(text_string_to_metric_families(path.read_text()))
    if any(s.timestamp is not None for fam in families for s in fam.samples):
        raise ValueError("contains unsupported client-side timestamps, skipping entire file")
    return families
