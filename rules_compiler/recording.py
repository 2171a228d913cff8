"""Recording rules from the catalog (pure: objects in, text out).

Two groups. GROUP: the normalisation layer (every catalog metric as
``fleet:<name>``), then each host's judged levels held over the last minute,
which a status needs for every host at once (for vmalert, in a group of its
own: SUMMARY_GROUP). DISCOVERY_GROUP, every DISCOVERY_EVERY of its intervals:
the hosts Prometheus scrapes that the inventory lacks.

The host list's summary (HOST_SUMMARY) is not recorded: the gateway reads a
page's layer series in one selector and combines them (gateway/host_status.py).
Recorded for every host at every evaluation it was 40,000 series read and
40,000 written per round at 10,000 hosts (bench/fleet.py), for pages that show 50.
"""

from __future__ import annotations

import yaml

from rules_compiler import host_ids
from rules_compiler.catalog import CatalogMetric
from rules_compiler.promql import seconds as promql_seconds

# field of the host list's metrics_summary -> (catalog metric, how a host's several series combine:
# gateway/host_status.py combines them as these PromQL aggregations would)
HOST_SUMMARY = {
    "cpu_pct": ("cpu.utilization", "max"),
    "mem_pct": ("mem.used_pct", "max"),
    "gpu_pct": ("gpu.utilization", "avg"),
    "disk_pct": ("disk.used_pct", "max"),
    "net_tx_mbps": ("net.tx_mbps", "sum"),
}
# The percentages whose level sets a host's status; GPUs at 100 % are a busy
# cluster doing its job, not a sick host, so GPU utilisation is shown but not judged.
JUDGED = ("cpu_pct", "mem_pct", "disk_pct")
HELD_FOR = "1m"  # REQ-HOST-004: crit when above 90 % for at least a minute
CRIT_PCT = 90.0
GROUP = "fleet-normalisation"
# vmalert only: the held levels' own group (render_normalisation_rules says why).
SUMMARY_GROUP = "fleet-host-summary"
HELD = "fleet:host_summary_held"  # one rule per JUDGED field, after the layer's in GROUP
# Hosts with a heartbeat that the gateway's fleet_host_info (the inventory) lacks: the host list's
# discovered hosts, joined once per evaluation of their group instead of at every page (10,000 series
# each side). Not in GROUP: a host found a minute later is soon enough, and the join was the costliest
# of the summary's rules at 10,000 hosts (bench/fleet.py), paid at every scrape interval.
DISCOVERED, DISCOVERY_GROUP = "fleet:host_discovered", "fleet-discovery"
DISCOVERY_EVERY = 4  # layer intervals: 1 min at 15 s scrapes
# Layer series computed from another layer series rather than from the exporter's families: the
# per-CPU idle rate (80,000 series at 10,000 hosts of 4 CPUs) was read twice per evaluation, for
# cpu.core and for cpu.utilization, the mean of the cores. Prometheus runs a group's rules in order,
# each seeing those before it at the same timestamp (the source sorts first); vmalert's next rule
# would read what VictoriaMetrics held before this round, so its file computes each one afresh.
FROM_LAYER = {"cpu.utilization": ("cpu.core", "avg by (host_id) ({})")}


def render_normalisation_rules(
    catalog: dict[str, CatalogMetric],
    interval: str,
    rate_window: str,
    host_id_from: str = "",
    from_layer: bool = True,
) -> str:
    """Both groups: GROUP evaluated every ``interval`` (the scrape interval, so the layer keeps raw
    resolution), DISCOVERY_GROUP every DISCOVERY_EVERY intervals.

    ``host_id_from`` (``instance`` or ``nodename``): the exporters' series come without
    host_id, and the layer reads copies with one derived (rules_compiler/host_ids.py).
    ``from_layer``: FROM_LAYER's series read the layer, and the held levels follow it in GROUP
    (Prometheus); false for vmalert, whose rules read what VictoriaMetrics held before the round
    (docs/backends.md): there they read the last round's layer wherever they run, so they are
    SUMMARY_GROUP, their evaluation timed apart (vmalert times groups, not rules).
    """
    rules = [
        {"record": m.record, "expr": _layer_expr(m, catalog, rate_window, from_layer)}
        for m in sorted(catalog.values(), key=lambda m: m.name)
    ]
    if host_id_from:
        # First in the group: rules of a group run in order, so the layer reads this evaluation's copies.
        derived = host_ids.derivation_rules(host_ids.families([r["expr"] for r in rules]), host_id_from)
        rules = derived + [{**r, "expr": host_ids.reading_derived(r["expr"])} for r in rules]
    # Only hosts held above the crit line: usually none, so judging the fleet reads a handful of series.
    # Filtered before the hosts' series are combined, so the aggregation groups those few, not every
    # host's (the same answer: a host's largest value is above the line where any of its values is).
    held = [
        {
            "record": HELD,
            "expr": f"max by (host_id) (min_over_time({record}[{HELD_FOR}]) > {CRIT_PCT:g})",
            "labels": {"summary": field},
        }
        for record, field in judged_records(catalog).items()
    ]
    beat = host_ids.HEARTBEAT if host_id_from else 'up{job="fleetwatch"}'
    discovery = {
        "record": DISCOVERED,
        "expr": f'group by (host_id, instance) ({beat} unless on(host_id) fleet_host_info{{host_id!=""}})',
    }
    every = f"{DISCOVERY_EVERY * promql_seconds(interval):g}s"
    # The held levels follow the layer in its group, not in a group of their own: a group of its own ran
    # at an offset Prometheus derives from the file's path, so on some installs it ran while the layer's
    # per-CPU rate (80,000 series at 10,000 hosts) held the CPUs, and took seconds (bench/fleet.py,
    # docs/benchmarks.md). After the layer they never do, and they read this evaluation's layer.
    layer = [(GROUP, rules + held)] if from_layer else [(GROUP, rules), (SUMMARY_GROUP, held)]
    groups = [{"name": name, "interval": interval, "rules": r} for name, r in layer]
    doc = {"groups": [*groups, {"name": DISCOVERY_GROUP, "interval": every, "rules": [discovery]}]}
    header = "# Generated by fleetwatch from rules_compiler/catalog.py: edit that, not this file.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, width=1000)


def summary_sources(catalog: dict[str, CatalogMetric]) -> dict[str, tuple[str, str]]:
    """The layer series each HOST_SUMMARY field combines: recorded name -> (field, how its host's series combine)."""
    return {catalog[metric].record: (field, how) for field, (metric, how) in HOST_SUMMARY.items()}


def judged_records(catalog: dict[str, CatalogMetric]) -> dict[str, str]:
    """The layer series a status judges: recorded name -> its JUDGED field, in HOST_SUMMARY's order."""
    return {record: field for record, (field, _) in summary_sources(catalog).items() if field in JUDGED}


def _layer_expr(metric: CatalogMetric, catalog: dict[str, CatalogMetric], rate_window: str, from_layer: bool) -> str:
    source = FROM_LAYER.get(metric.name) if from_layer else None
    if source is None or source[0] not in catalog:
        return metric.promql(rate_window)
    name, template = source
    if name >= metric.name:
        raise ValueError(f"{metric.name} would read {name} before this evaluation recorded it")
    return template.format(catalog[name].record)


def rate_window_for(scrape_interval_s: float) -> str:
    """The rate() window for a scrape interval: four scrapes, at least 15 s."""
    # Four scrapes: rate() needs two samples and should survive a missed one. A
    # 15 s floor, not longer: at 1 s scrapes the layer fills after two scrapes
    # and follows a change within seconds; at the default 5 s it is 20 s.
    return f"{max(15, int(4 * scrape_interval_s))}s"
