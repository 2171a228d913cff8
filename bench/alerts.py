"""Alerting latency on the real stack: rule create → live, 1,000 rules installed at once, breach → email.

Starts the stack as `fleetwatch up` does, with the product's defaults (scrape
5 s, rules evaluated every 30 s, Alertmanager's group_wait 5 s), an SMTP
server on loopback (aiosmtpd) as the smarthost, and measures:

1. rule create → live: POST /api/v1/alerts/rules answers only once Prometheus
   runs the rule; its latency, and a check that Prometheus lists the rule;
2. 1,000 rules compiled, checked by promtool/amtool, installed, reloaded and
   confirmed, in one batch request;
3. breach → email: a child process allocates memory past a `mem.used_pct`
   threshold; the time from the allocation to the email at the SMTP server,
   against the target of the rule's duration + 30 s.

    .venv/bin/python bench/alerts.py [--creates 20] [--batch 1000] [--duration 30s] [--breaches 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from fleetwatch.stack import Ports, Stack, StackConfig
from fleetwatch.testing.api import ADMIN, api_session
from fleetwatch.testing.mail import Mailbox
from fleetwatch.testing.prom import PromClient
from fleetwatch.testing.waits import free_port, wait_until
from rules_compiler.alerts import parse_duration

HOG = "import sys, time; b = bytearray(int(sys.argv[1])); b[::4096] = b'x' * len(b[::4096]); time.sleep(600)"


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def live_alert_names(prom: str) -> set[str]:
    groups = requests.get(f"{prom}/api/v1/rules", params={"type": "alert"}, timeout=30).json()["data"]["groups"]
    return {r["name"] for g in groups for r in g["rules"]}


def bench_creates(api: requests.Session, base: str, prom: str, n: int) -> list[float]:
    took = []
    for i in range(n):
        t0 = time.perf_counter()
        r = api.post(f"{base}/api/v1/alerts/rules", json={"name": f"bench {i}", "expression": "cpu.utilization > 99"})
        took.append(time.perf_counter() - t0)
        assert r.status_code == 201, r.text
        assert r.json()["id"] in live_alert_names(prom), "answered before the rule was live"
    return took


def bench_batch(api: requests.Session, base: str, prom: str, n: int) -> float:
    rules = [
        {"name": f"batch {i}", "expression": f"mem.used_pct > {50 + i % 50} OR cpu.utilization > 95", "duration": "5m"}
        for i in range(n)
    ]
    t0 = time.perf_counter()
    r = api.post(f"{base}/api/v1/alerts/rules/batch", json={"rules": rules}, timeout=120)
    took = time.perf_counter() - t0
    assert r.status_code == 201, r.text
    assert set(r.json()["ids"]) <= live_alert_names(prom)
    return took


def bench_breach(api, base: str, prom: str, mailbox: Mailbox, duration: str, margin_pct: float) -> float:
    """Seconds from the allocation that breaches the threshold to the email."""
    used = PromClient(prom).query("fleet:mem_used_pct")
    total = PromClient(prom).query("max(node_memory_MemTotal_bytes)")
    current, total_bytes = float(used[0]["value"][1]), float(total[0]["value"][1])
    threshold = current + margin_pct
    r = api.post(
        f"{base}/api/v1/alerts/rules",
        json={
            "name": "bench memory breach",
            "expression": f"mem.used_pct > {threshold:.2f}",
            "duration": duration,
            "channels": ["email:oncall@example.com"],
            "severity": "critical",
        },
    )
    assert r.status_code == 201, r.text
    rule_id = r.json()["id"]
    time.sleep(35)  # a whole evaluation with the rule quiet: the breach below is the only cause
    seen = len(mailbox.messages)
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(int(total_bytes * 2 * margin_pct / 100))])
    t0 = time.monotonic()
    try:
        wait_until(
            lambda: any(rule_id in m.as_string() for _, m in mailbox.messages[seen:]),
            parse_duration(duration) + 180,
            "the email",
        )
        return time.monotonic() - t0
    finally:
        hog.kill()
        hog.wait()
        api.delete(f"{base}/api/v1/alerts/rules/{rule_id}")
        time.sleep(10)  # memory back below the threshold before the next run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--creates", type=int, default=20)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--duration", default="30s", help="the breach rule's duration")
    p.add_argument("--breaches", type=int, default=2)
    args = p.parse_args()

    mailbox = Mailbox().start()
    with tempfile.TemporaryDirectory(prefix="fleetwatch-bench-alerts-") as state:
        config = StackConfig(
            state_dir=Path(state),
            ports=Ports(*(free_port() for _ in Ports._fields)),
            gateway_env={
                "FLEETWATCH_ADMIN_EMAIL": ADMIN[0],
                "FLEETWATCH_ADMIN_PASSWORD": ADMIN[1],
                "FLEETWATCH_RATE_LIMIT_WRITES_PER_MIN": "100000",
                "FLEETWATCH_RATE_LIMIT_READS_PER_MIN": "100000",
                "FLEETWATCH_SMTP_SMARTHOST": f"127.0.0.1:{mailbox.port}",
                "FLEETWATCH_SMTP_REQUIRE_TLS": "false",
            },
        )
        with Stack(config) as stack:
            urls = stack.urls()
            base, prom = urls["gateway"], urls["prometheus"]
            api = api_session(base)
            # The catalog's first samples: the breach bench reads mem.used_pct before it starts.
            PromClient(prom).wait_for("fleet:mem_used_pct", 60)

            creates = bench_creates(api, base, prom, args.creates)
            print(
                f"rule create → live ({args.creates} rules, {len(live_alert_names(prom))} live at the end): "
                f"p50 {statistics.median(creates) * 1000:.0f} ms, p95 {pct(creates, 0.95) * 1000:.0f} ms, "
                f"max {max(creates) * 1000:.0f} ms  (target ≤ 2000 ms: {'PASS' if max(creates) <= 2 else 'FAIL'})"
            )
            breaches = [bench_breach(api, base, prom, mailbox, args.duration, 3.0) for _ in range(args.breaches)]
            limit = parse_duration(args.duration) + 30
            print(
                f"breach → email (rule for {args.duration}, evaluation every 30 s): "
                + ", ".join(f"{b:.1f} s" for b in breaches)
                + f"  (target ≤ {limit} s: {'PASS' if max(breaches) <= limit else 'FAIL'})"
            )
            batch = bench_batch(api, base, prom, args.batch)
            print(
                f"{args.batch} rules in one batch, compiled + promtool + amtool + reload + confirmed: {batch:.2f} s"
                f"  (target ≤ 10 s: {'PASS' if batch <= 10 else 'FAIL'})"
            )
    mailbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
