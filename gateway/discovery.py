"""Hosts Prometheus scrapes that the inventory lacks, listed as ``source: "discovered"``.

Found from the heartbeat series Prometheus has anyway: ``up`` of the
fleetwatch job (targets of any file_sd file, the gateway's or one written by
hand), or, adopting a Prometheus whose exporters carry no host_id
(HOST_ID_FROM), ``fleet_src:up`` with the host_id the recording rules derive
(rules_compiler/host_ids.py); those without a ``fleet_host_info`` are recorded
as ``fleet:host_discovered`` by a rule group of their own (every minute at 15 s
scrapes). A GPU is known from the catalog's ``fleet:gpu_utilization``. Nothing
is stored: such a host is in the list while Prometheus scrapes it, and an admin
adds it to the inventory to tag it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app

from gateway.db import Host, db
from gateway.promql import selector
from rules_compiler.host_ids import HEARTBEAT
from rules_compiler.recording import DISCOVERED


@dataclass
class DiscoveredHost:
    """A host as the host list shows it, with nothing but what Prometheus says of it."""

    id: str
    exporter: str | None
    has_gpu: bool = False
    hostname: str = ""
    ips: list = field(default_factory=list)
    tags: dict = field(default_factory=dict)
    agent_version: str | None = None
    source: str = "discovered"
    last_seen_at: None = None
    pushes: bool = False

    def __post_init__(self):
        self.hostname = self.hostname or self.id


def heartbeat() -> tuple[str, dict[str, str]]:
    """The series that is 1 while a host's exporter is scraped, and its matchers."""
    return (HEARTBEAT, {}) if current_app.config["HOST_ID_FROM"] else ("up", {"job": "fleetwatch"})


def discovered_hosts(prom, host_id: str | None = None) -> list[DiscoveredHost]:
    """Hosts with a heartbeat in Prometheus and no row in the inventory (only ``host_id``, if given)."""
    return discovered_from(*prom.query_many(discovery_queries(host_id)))


def discovery_queries(host_id: str | None = None) -> list[str]:
    """The PromQL discovered_from reads: asked beside other queries, a host list costs one round trip."""
    # The join of heartbeats and fleet_host_info is recorded at each evaluation (rules_compiler/recording.py):
    # at 10,000 hosts it cost every page of the list a tenth of a second.
    return [
        selector(DISCOVERED, {"host_id": host_id} if host_id else {}),
        'group by (host_id) (fleet:gpu_utilization{host_id!=""})',
    ]


def discovered_from(targets: list[dict], gpus: list[dict]) -> list[DiscoveredHost]:
    """The hosts the answers to discovery_queries name that the inventory lacks, by id."""
    instances: dict[str, str] = {}
    for s in targets:
        if s["metric"].get("host_id"):
            instances.setdefault(s["metric"]["host_id"], s["metric"].get("instance"))
    known = set()
    ids = sorted(instances)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        known |= set(db.session.execute(db.select(Host.id).where(Host.id.in_(chunk))).scalars())
    with_gpu = {s["metric"].get("host_id") for s in gpus}
    return [DiscoveredHost(i, instances[i], has_gpu=i in with_gpu) for i in ids if i not in known]
