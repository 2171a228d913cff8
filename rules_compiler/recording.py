"""Recording rules from the catalog (pure: objects in, text out).

Three groups. GROUP: the normalisation layer (every catalog metric as
``fleet:<name>``). SUMMARY_GROUP, at the same interval and SUMMARY_LAG of it
later: the per-host summary the host list shows and judges status by, computed
at each evaluation rather than at each request. DISCOVERY_GROUP, every
DISCOVERY_EVERY of its intervals: the hosts Prometheus scrapes that the
inventory lacks.
"""

from __future__ import annotations

import yaml

from rules_compiler import group_phase, host_ids
from rules_compiler.catalog import CatalogMetric
from rules_compiler.promql import seconds as promql_seconds

# field of the host list's metrics_summary -> (catalog metric, how a host's several series combine)
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
SUMMARY, HELD = "fleet:host_summary", "fleet:host_summary_held"
SUMMARY_RECORDS = (SUMMARY, HELD)  # the summary's rules, SUMMARY_GROUP's
# The summary reads the layer, so it must not run in the layer's round; nor as that round ends: the
# round allocates most of what the raw tier does (at 10,000 hosts 400-650 MiB/s for its 4-5 s, 10-200
# between rounds), so Prometheus collects its garbage then, and marking it took both cores of this
# machine for a second or two: the summary, then right after the layer in its group, took 0.5-1.4 s
# instead of 0.3 when it overlapped a collection (bench/fleet.py --timeline, docs/benchmarks.md).
# Prometheus evaluates a group at a phase it hashes from the group's name and its file's path: the
# summary's group is named (fleet-host-summary-N) to run this far into the interval after the layer's.
SUMMARY_GROUP = "fleet-host-summary"
SUMMARY_LAG = (0.55, 0.65)  # of the interval after the layer's start: 8.25-9.75 s at 15 s
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
    rule_file: str = "",
) -> str:
    """The three groups: GROUP and SUMMARY_GROUP evaluated every ``interval`` (the scrape interval, so
    the layer keeps raw resolution), DISCOVERY_GROUP every DISCOVERY_EVERY intervals.

    ``host_id_from`` (``instance`` or ``nodename``): the exporters' series come without
    host_id, and the layer reads copies with one derived (rules_compiler/host_ids.py).
    ``from_layer``: FROM_LAYER's series read the layer (Prometheus); false for vmalert.
    ``rule_file``: the path Prometheus loads the file from, which sets each group's phase: the
    summary's group is named to run SUMMARY_LAG after the layer's. Without it (vmalert, which
    phases groups its own way), SUMMARY_GROUP as it is.
    """
    rules = [
        {"record": m.record, "expr": _layer_expr(m, catalog, rate_window, from_layer)}
        for m in sorted(catalog.values(), key=lambda m: m.name)
    ]
    if host_id_from:
        # First in the group: rules of a group run in order, so the layer reads this evaluation's copies.
        derived = host_ids.derivation_rules(host_ids.families([r["expr"] for r in rules]), host_id_from)
        rules = derived + [{**r, "expr": host_ids.reading_derived(r["expr"])} for r in rules]
    interval_s = promql_seconds(interval)
    # The summary runs after the layer's last values, by less than an interval: a window one interval
    # longer than HELD_FOR takes the values of a whole minute wherever in the interval it runs.
    held_s = promql_seconds(HELD_FOR) + interval_s
    held_window = f"{held_s:g}s" if held_s == int(held_s) else f"{round(1000 * held_s)}ms"
    summary = []
    for field, (name, how) in HOST_SUMMARY.items():
        record = catalog[name].record
        summary.append(_summary_rule(SUMMARY, field, f"{how} by (host_id) ({record})"))
        if field in JUDGED:
            # Only hosts held above the crit line: usually none, so the list reads a handful of series.
            held = f"max by (host_id) (min_over_time({record}[{held_window}])) > {CRIT_PCT:g}"
            summary.append(_summary_rule(HELD, field, held))
    beat = host_ids.HEARTBEAT if host_id_from else 'up{job="fleetwatch"}'
    discovery = {
        "record": DISCOVERED,
        "expr": f'group by (host_id, instance) ({beat} unless on(host_id) fleet_host_info{{host_id!=""}})',
    }
    every = f"{DISCOVERY_EVERY * interval_s:g}s"
    summary_group = SUMMARY_GROUP
    if rule_file:
        lag = (SUMMARY_LAG[0] * interval_s, SUMMARY_LAG[1] * interval_s)
        summary_group = group_phase.name_at(rule_file, SUMMARY_GROUP, interval_s, after=GROUP, lag_s=lag)
    doc = {
        "groups": [
            {"name": GROUP, "interval": interval, "rules": rules},
            {"name": summary_group, "interval": interval, "rules": summary},
            {"name": DISCOVERY_GROUP, "interval": every, "rules": [discovery]},
        ]
    }
    header = "# Generated by fleetwatch from rules_compiler/catalog.py: edit that, not this file.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, width=1000)


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


def _summary_rule(record: str, field: str, expr: str) -> dict:
    # One series per host and field: a host page is then one plain selector, not a join.
    return {"record": record, "expr": expr, "labels": {"summary": field}}
