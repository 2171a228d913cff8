"""Write grafana/dashboards/{fleet,hosts,alerts}.json: the fleet overview, host detail and alerts dashboards.

Every panel reads the ``fleet:`` layer by ``host_id`` (scraped, pushed, discovered and
adopted hosts alike), filtered by ``$host``, whose values come from ``fleet_host_info``
narrowed by a tag (``$tag`` = ``$tag_value``). Panels over more than 7 days read the
long-term datasource (its ``fleet:<metric>:avg1h`` series). tests/test_deploy_files.py
checks that the files are this script's output and that every query has data.

    .venv/bin/python scripts/grafana_dashboards.py
"""

from __future__ import annotations

import json
from pathlib import Path

from rules_compiler.catalog import CATALOG
from rules_compiler.recording import judged_records, summary_sources

OUT = Path(__file__).resolve().parents[1] / "grafana" / "dashboards"
RAW = {"type": "prometheus", "uid": "prometheus"}
LONGTERM = {"type": "prometheus", "uid": "prometheus-longterm"}
H = 'host_id=~"$host"'


def variables() -> list[dict]:
    """$tag (a tag name: a label of fleet_host_info), $tag_value, then $host: the hosts with that tag value."""

    def var(name, label, query, **extra):
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": RAW,
            "definition": query,
            "query": {"query": query, "refId": f"{name}-var"},
            "refresh": 2,
            "sort": 1,
            "hide": 0,
            **extra,
        }

    every = {"includeAll": True, "multi": True, "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}
    return [
        # A tag name typed in (any label of fleet_host_info); hostname is every host's, so "All" is the fleet.
        {
            "name": "tag",
            "label": "Tag",
            "type": "textbox",
            "query": "hostname",
            "current": {"text": "hostname", "value": "hostname"},
            "hide": 0,
        },
        var("tag_value", "Tag value", "label_values(fleet_host_info, $tag)", allValue=".*", **every),
        # No allValue: "All" is the hosts the tag selects, not every host.
        var("host", "Host", 'label_values(fleet_host_info{$tag=~"$tag_value"}, host_id)', **every),
    ]


def target(expr: str, legend: str = "", ref: str = "A", ds: dict = RAW, instant: bool = False) -> dict:
    t = {"datasource": ds, "expr": expr, "legendFormat": legend, "refId": ref}
    if instant:
        t |= {"instant": True, "range": False, "format": "table"}
    return t


def panel(pid, kind, title, targets, x, y, w=12, h=8, unit="none", ds=RAW, **extra) -> dict:
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": ds,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": targets,
        **extra,
    }


def row(pid: int, title: str, y: int) -> dict:
    return {"id": pid, "type": "row", "title": title, "collapsed": False, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}}


def dashboard(uid: str, title: str, description: str, panels: list[dict], tags: list[str]) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["fleetwatch", *tags],
        "editable": False,
        "graphTooltip": 1,
        "timezone": "browser",
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "schemaVersion": 38,
        "version": 1,
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["fleetwatch"], "asDropdown": True, "title": "fleetwatch"}],
        "templating": {"list": variables()},
        "panels": panels,
    }


def longterm(pid: int, title: str, record: str, y: int, unit: str = "percent") -> dict:
    """A 30-day chart from the long-term tier's hourly averages."""
    expr = f"avg by (host_id) ({record}:avg1h{{{H}}})"
    return panel(pid, "timeseries", title, [target(expr, "{{host_id}}", ds=LONGTERM)], 0, y, 24, 8, unit, LONGTERM) | {
        "timeFrom": "30d",
        "interval": "1h",
        "description": "30 days of hourly averages from the long-term Prometheus (the raw tier keeps 7 d).",
    }


def host_summary() -> str:
    """Each host's summary fields as the host list shows them, one series per host and field (label ``summary``)."""
    return " or ".join(
        f'label_replace({how} by (host_id) ({record}{{{H}}}), "summary", "{field}", "", "")'
        for record, (field, how) in summary_sources(CATALOG).items()
    )


def fleet() -> dict:
    judged = "|".join(judged_records(CATALOG))
    return dashboard(
        "fleetwatch-fleet",
        "fleetwatch / Fleet overview",
        "Every host of the inventory (scraped or pushed): status, busiest hosts, firing alerts.",
        [
            panel(1, "stat", "Hosts", [target(f"count(max by (host_id) (fleet_host_info{{{H}}}))")], 0, 0, 6, 4),
            panel(
                2,
                "stat",
                "Hosts above 90 % (CPU, memory or disk)",
                [target(f'count(max by (host_id) ({{__name__=~"{judged}",{H}}} > 90)) or vector(0)')],
                6,
                0,
                6,
                4,
            ),
            panel(3, "stat", "Alerts firing", [target('count(ALERTS{alertstate="firing"}) or vector(0)')], 12, 0, 6, 4),
            panel(
                4,
                "stat",
                "Hosts silent over 2 min",
                [target(f"count(max by (host_id) (up{{{H}}}) == 0) or vector(0)")],
                18,
                0,
                6,
                4,
            ),
            panel(
                5,
                "table",
                "Status by host",
                [target(host_summary(), ref="A", instant=True)],
                0,
                4,
                24,
                10,
                "percent",
                description="Each host's now: CPU, memory, disk, GPU (%) and network; warn from 70, crit above 90.",
                transformations=[{"id": "labelsToFields", "options": {"mode": "columns", "valueLabel": "summary"}}],
            ),
            row(6, "Busiest hosts", 14),
            panel(
                7,
                "bargauge",
                "Top 10 by CPU",
                [target(f"topk(10, fleet:cpu_utilization{{{H}}})", "{{host_id}}", instant=True)],
                0,
                15,
                8,
                8,
                "percent",
            ),
            panel(
                8,
                "bargauge",
                "Top 10 by memory",
                [target(f"topk(10, fleet:mem_used_pct{{{H}}})", "{{host_id}}", instant=True)],
                8,
                15,
                8,
                8,
                "percent",
            ),
            panel(
                9,
                "bargauge",
                "Top 10 by GPU utilization",
                [target(f"topk(10, avg by (host_id) (fleet:gpu_utilization{{{H}}}))", "{{host_id}}", instant=True)],
                16,
                15,
                8,
                8,
                "percent",
            ),
            row(10, "Fleet over time", 23),
            panel(
                11,
                "timeseries",
                "CPU, fleet average",
                [target(f"avg(fleet:cpu_utilization{{{H}}})", "fleet")],
                0,
                24,
                12,
                8,
                "percent",
            ),
            panel(
                12,
                "timeseries",
                "Memory, fleet average",
                [target(f"avg(fleet:mem_used_pct{{{H}}})", "fleet")],
                12,
                24,
                12,
                8,
                "percent",
            ),
            longterm(13, "CPU by host, 30 days", "fleet:cpu_utilization", 32),
        ],
        ["fleet"],
    )


def hosts() -> dict:
    def ts(pid, title, expr, legend, x, y, unit="percent"):
        return panel(pid, "timeseries", title, [target(expr, legend)], x, y, 12, 8, unit)

    return dashboard(
        "fleetwatch-hosts",
        "fleetwatch / Host detail",
        "One host or several: CPU, memory, disks, network and processes from the fleet: layer.",
        [
            ts(1, "CPU busy", f"fleet:cpu_utilization{{{H}}}", "{{host_id}}", 0, 0),
            ts(2, "Memory used", f"fleet:mem_used_pct{{{H}}}", "{{host_id}}", 12, 0),
            ts(3, "Disk used", f"fleet:disk_used_pct{{{H}}}", "{{host_id}} {{mountpoint}}", 0, 8),
            ts(4, "Load average (1m)", f"fleet:cpu_load1{{{H}}}", "{{host_id}}", 12, 8, "none"),
            panel(
                5,
                "timeseries",
                "Network traffic",
                [
                    target(f"sum by (host_id) (fleet:net_rx_mbps{{{H}}})", "{{host_id}} in"),
                    target(f"-sum by (host_id) (fleet:net_tx_mbps{{{H}}})", "{{host_id}} out", "B"),
                ],
                0,
                16,
                unit="Mbits",
            ),
            panel(
                6,
                "timeseries",
                "Disk throughput",
                [
                    target(f"sum by (host_id) (fleet:disk_throughput_read_mbps{{{H}}})", "{{host_id}} read"),
                    target(f"-sum by (host_id) (fleet:disk_throughput_write_mbps{{{H}}})", "{{host_id}} write", "B"),
                ],
                12,
                16,
                unit="MBs",
            ),
            panel(
                7,
                "table",
                "Top processes by CPU",
                [target(f"topk(10, fleet:proc_top_cpu_pct{{{H}}})", ref="A", instant=True)],
                0,
                24,
                24,
                8,
                "percent",
            ),
            longterm(8, "CPU, 30 days", "fleet:cpu_utilization", 32),
            longterm(9, "Memory, 30 days", "fleet:mem_used_pct", 40),
        ],
        ["host"],
    )


def alerts() -> dict:
    firing = f'ALERTS{{alertstate="firing",{H}}}'
    return dashboard(
        "fleetwatch-alerts",
        "fleetwatch / Alerts",
        "What fires now and what fired, from Prometheus' ALERTS series (acknowledgements: the gateway's API).",
        [
            panel(1, "stat", "Firing now", [target(f"count({firing}) or vector(0)")], 0, 0, 8, 4),
            panel(
                2, "stat", "Pending", [target(f'count(ALERTS{{alertstate="pending",{H}}}) or vector(0)')], 8, 0, 8, 4
            ),
            panel(
                3,
                "stat",
                "Hosts with an alert",
                [target(f"count(count by (host_id) ({firing})) or vector(0)")],
                16,
                0,
                8,
                4,
            ),
            panel(
                4,
                "table",
                "Firing alerts",
                [target(f"max by (alertname, rule_name, host_id, severity) ({firing})", ref="A", instant=True)],
                0,
                4,
                24,
                8,
            ),
            panel(
                5,
                "state-timeline",
                "History",
                [target(f"max by (rule_name, host_id) ({firing})", "{{rule_name}} {{host_id}}")],
                0,
                12,
                24,
                10,
                description="When each alert fired over the range (ALERTS lives as long as the raw tier).",
            ),
            panel(
                6,
                "bargauge",
                "Most firing rules over the range",
                [
                    target(
                        f"topk(10, sum by (rule_name) (count_over_time({firing}[$__range])))",
                        "{{rule_name}}",
                        instant=True,
                    )
                ],
                0,
                22,
                24,
                8,
                "s",
                description="Evaluations in firing state (one per evaluation interval) per rule.",
            ),
        ],
        ["alerts"],
    )


def main() -> None:
    for name, build in (("fleet", fleet), ("hosts", hosts), ("alerts", alerts)):
        (OUT / f"{name}.json").write_text(json.dumps(build(), indent=2) + "\n")


if __name__ == "__main__":
    main()
