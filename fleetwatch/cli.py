"""`fleetwatch up`: run Prometheus, Alertmanager and the exporter together until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path

from fleetwatch import backfill
from fleetwatch.replicas import Layout
from fleetwatch.stack import Ports, ServiceFailed, Stack, StackConfig, slurm_answers
from fleetwatch.victoria import BACKENDS
from rules_compiler.catalog import CATALOG
from rules_compiler.host_ids import DERIVATIONS
from rules_compiler.promql import seconds
from rules_compiler.recording import rate_window_for, render_normalisation_rules

log = logging.getLogger("fleetwatch")


def _duration(value: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]*(ms|s|m|h|d|w)", value):
        raise argparse.ArgumentTypeError(f"expected a duration such as 5s or 1m, got {value!r}")
    return value


def _days(low: int, high: int):
    """An argparse type: a whole number of days from ``low`` to ``high``, e.g. 7d."""

    def parse(value: str) -> str:
        m = re.fullmatch(r"([0-9]+)d", value)
        if not m or not low <= int(m.group(1)) <= high:
            raise argparse.ArgumentTypeError(f"expected {low}d to {high}d, got {value!r}")
        return value

    return parse


def _base_port(value: str) -> int:
    if not value.isdigit() or not 1024 <= int(value) <= 65528:  # up to N+7, the downsampler
        raise argparse.ArgumentTypeError(f"expected a port from 1024 to 65528, got {value!r}")
    return int(value)


def _gateways(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 16:
        raise argparse.ArgumentTypeError(f"expected 1 to 16 gateways, got {value!r}")
    return int(value)


def _gogc(value: str) -> int:
    if not value.isdigit() or not 50 <= int(value) <= 1000:
        raise argparse.ArgumentTypeError(f"expected a GOGC of 50 to 1000, got {value!r}")
    return int(value)


def _memory_limit(value: str) -> int:
    if not value.isdigit() or not 512 <= int(value) <= 1 << 20:
        raise argparse.ArgumentTypeError(f"expected MiB from 512 to 1048576, got {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetwatch", description="Run the fleetwatch stack locally.")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the stack and stop it cleanly on Ctrl-C")
    up.add_argument(
        "--state-dir", type=Path, default=Path("state"), help="where configs, data and logs go (default ./state)"
    )
    up.add_argument(
        "--base-port",
        type=_base_port,
        metavar="N",
        help="Prometheus at N, Alertmanager N+1, exporter N+2, gateway N+3, long-term "
        "Prometheus N+4, downsampler N+7 (default: 9090, 9093, 9101, 8080, 9091, 9095)",
    )
    up.add_argument(
        "--listen-host",
        default="127.0.0.1",
        help="address the gateway and the exporter bind (default 127.0.0.1; 0.0.0.0 to expose them); "
        "Prometheus and Alertmanager stay on 127.0.0.1 unless --expose-backends",
    )
    up.add_argument(
        "--expose-backends",
        action="store_true",
        help="bind Prometheus (both tiers) and Alertmanager to --listen-host too: their APIs have no "
        "authentication, and whoever reaches them can stop them, write series and silence alerts "
        "(docs/security-ingest.md)",
    )
    up.add_argument("--scrape-interval", type=_duration, default="5s")
    up.add_argument("--evaluation-interval", type=_duration, default="30s")
    up.add_argument(
        "--retention", type=_days(3, 14), default="7d", help="how long the raw tier keeps samples (3d-14d, default 7d)"
    )
    up.add_argument(
        "--longterm-retention",
        type=_days(30, 90),
        default="90d",
        help="how long the long-term tier keeps the 5m and 1h averages (30d-90d, default 90d; 1m: 30d at most)",
    )
    up.add_argument(
        "--exporter-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra flag for fleetwatch-exporter (repeatable)",
    )
    up.add_argument(
        "--backend",
        choices=BACKENDS,
        default="prometheus",
        help="storage and rule evaluation: Prometheus, or VictoriaMetrics with vmagent and vmalert "
        "(their ports N+5, N+6; docs/backends.md)",
    )
    up.add_argument(
        "--prometheus-gogc",
        type=_gogc,
        default=200,
        metavar="PCT",
        help="Go's GOGC for the raw-tier Prometheus: 200 (default) spends less CPU on garbage collection "
        "for about 1.8x the memory of Go's 100 (docs/benchmarks.md)",
    )
    up.add_argument(
        "--prometheus-memory-limit",
        type=_memory_limit,
        default=0,
        metavar="MIB",
        help="a fixed heap goal for the raw-tier Prometheus instead of --prometheus-gogc (GOGC=off, "
        "GOMEMLIMIT): steadier rule groups for large fleets; keep it well above the live heap "
        "(docs/configuration.md)",
    )
    up.add_argument(
        "--no-slurm",
        action="store_true",
        help="no Slurm cluster collector or job accounting, even where sinfo answers (SLURM_CONF honoured)",
    )
    up.add_argument(
        "--gateways",
        type=_gateways,
        default=1,
        metavar="N",
        help="N gateway processes behind HAProxy on the gateway's port, on a PostgreSQL in the state dir "
        "(default 1: one gateway on SQLite; docs/replicas.md)",
    )
    backfill.add_parser(sub)
    rules = sub.add_parser(
        "rules", help="write the catalog's recording rules for a Prometheus you run yourself (docs/hosts.md)"
    )
    rules.add_argument("--out", type=Path, required=True, help="directory for fleet-normalisation.yml")
    rules.add_argument("--scrape-interval", type=_duration, default="15s", help="that Prometheus's (default 15s)")
    rules.add_argument(
        "--host-id-from",
        choices=DERIVATIONS,
        help="its exporters carry no host_id: derive it from `instance` without the port, or from nodename",
    )
    return p


def write_rules(args: argparse.Namespace) -> int:
    """The catalog's normalisation layer for another Prometheus, host ids derived as asked."""
    interval_s = seconds(args.scrape_interval)
    text = render_normalisation_rules(
        CATALOG, args.scrape_interval, rate_window_for(interval_s), args.host_id_from or ""
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fleet-normalisation.yml"
    path.write_text(text)
    print(f"wrote {path}: add `{args.out.resolve()}/*.yml` to that Prometheus's rule_files")
    return 0


def stack_config(args: argparse.Namespace, slurm: bool | None = None) -> StackConfig:
    """The stack `fleetwatch up ARGS` runs; ``slurm`` as StackConfig's (None: the exporter decides)."""
    return StackConfig(
        state_dir=args.state_dir,
        ports=Ports.from_base(args.base_port) if args.base_port else Ports(),
        listen_host=args.listen_host,
        backend_host=args.listen_host if args.expose_backends else "127.0.0.1",
        scrape_interval=args.scrape_interval,
        evaluation_interval=args.evaluation_interval,
        raw_retention=args.retention,
        longterm_retention=args.longterm_retention,
        exporter_args=args.exporter_arg,
        slurm=slurm,
        gateways=args.gateways,
        backend=args.backend,
        prometheus_gogc=args.prometheus_gogc,
        prometheus_memory_limit_mib=args.prometheus_memory_limit,
    )


def up(args: argparse.Namespace) -> int:
    slurm, slurm_line = (False, "off (--no-slurm)") if args.no_slurm else slurm_answers()
    config = stack_config(args, slurm if slurm or args.no_slurm else None)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = Stack(config)
    try:
        stack.start()
    except ServiceFailed as exc:
        print(f"fleetwatch: {exc}", file=sys.stderr)
        return 1
    print("fleetwatch is up (Ctrl-C stops it):")
    for name, url in stack.urls().items():
        print(f"  {name:<13} {url}")
    print(f"  state         {config.state_dir.resolve()} (logs in logs/)")
    print(f"  slurm         {slurm_line}")
    if not os.environ.get("FLEETWATCH_ADMIN_EMAIL"):
        print(
            f"  first admin   FLEETWATCH_STATE_DIR={config.state_dir.resolve()} {_database_env(config)}"
            f"{Path(sys.executable).parent}/fleetwatch-gateway create-user --role admin EMAIL\n"
            "                (or start with FLEETWATCH_ADMIN_EMAIL and FLEETWATCH_ADMIN_PASSWORD set)"
        )
    sys.stdout.flush()
    rc = 0
    while not stop.wait(1.0):
        failed = stack.exited()
        if failed is not None:
            print(
                f"fleetwatch: {failed.name} stopped by itself (exit {failed.process.returncode}):\n{failed.log_tail()}",
                file=sys.stderr,
            )
            rc = 1
            break
    print("fleetwatch: stopping …", flush=True)
    stack.stop()
    print("fleetwatch: stopped", flush=True)
    return rc


def _database_env(config: StackConfig) -> str:
    """DATABASE_URL=… for a shell command on the replicas' PostgreSQL; nothing with one gateway (SQLite)."""
    if config.gateways < 2:
        return ""
    return f"DATABASE_URL={Layout(config.listen_host, config.ports.gateway, config.gateways).database_url()} "


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    commands = {"backfill": backfill.run, "rules": write_rules, "up": up}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
