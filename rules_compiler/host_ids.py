"""A host_id for series that come without one: adopting a Prometheus that scrapes plain node_exporter/dcgm-exporter.

fleetwatch's own targets carry ``host_id`` (file_sd labels). A Prometheus set
up without fleetwatch has ``instance`` and ``job`` only, and the catalog's
aggregations ``by (host_id)`` would fold every host into one. With a
derivation chosen, each exporter family the catalog reads is first recorded
as ``fleet_src:<family>`` with a host_id, and the catalog reads those:

- ``instance``: the ``instance`` label without its port (``10.0.1.5:9100`` → ``10.0.1.5``);
- ``nodename``: node_exporter's ``node_uname_info{nodename}`` of the same target;
  dcgm-exporter's families carry the node's name as ``Hostname``.

Series that have a host_id keep it. ``fleet_src:up`` is every target's
heartbeat with its host_id. Pure: text in, text out.
"""

from __future__ import annotations

import re

DERIVATIONS = ("instance", "nodename")
PREFIX = "fleet_src:"
HEARTBEAT = PREFIX + "up"
# The exporter families in the catalog's PromQL: node_exporter's and dcgm-exporter's names.
_FAMILY = re.compile(r"(?<![\w:])(?:node|DCGM)_[A-Za-z0-9_]+\b")
_UNAME = 'label_replace(node_uname_info, "host_id", "$1", "nodename", "(.+)")'
_GPU_HOSTNAME = (
    'label_replace(group by (instance, job, Hostname) (DCGM_FI_DEV_GPU_UTIL), "host_id", "$1", "Hostname", "(.+)")'
)


def families(exprs: list[str]) -> list[str]:
    """The exporter families the expressions read."""
    return sorted({m.group(0) for e in exprs for m in _FAMILY.finditer(e)})


def reading_derived(expr: str) -> str:
    """``expr`` reading each family's ``fleet_src:`` copy."""
    return _FAMILY.sub(lambda m: PREFIX + m.group(0), expr)


def derivation_rules(names: list[str], how: str) -> list[dict]:
    """One recording rule per family (and ``up``): the family with a host_id derived by ``how``."""
    if how not in DERIVATIONS:
        raise ValueError(f"host_id derivation is one of {', '.join(DERIVATIONS)}, not {how!r}")
    return [{"record": PREFIX + name, "expr": _with_host_id(name, how)} for name in ["up", *names]]


def _with_host_id(name: str, how: str) -> str:
    kept = f'{name}{{host_id!=""}}'
    bare = f'{name}{{host_id=""}}'
    if how == "instance":
        return f'label_replace({bare}, "host_id", "$1", "instance", "(.+):[0-9]+") or {kept}'
    if name.startswith("DCGM_"):
        return f'label_replace({bare}, "host_id", "$1", "Hostname", "(.+)") or {kept}'
    # `* on(...) group_left(host_id)` by a series whose value is 1: the value stays, host_id joins.
    joined = f"{bare} * on(instance, job) group_left(host_id) {_UNAME}"
    if name == "up":  # a dcgm-exporter target has no node_uname_info: its GPUs name the node
        joined += f" or {bare} * on(instance, job) group_left(host_id) {_GPU_HOSTNAME}"
    return f"{joined} or {kept}"
