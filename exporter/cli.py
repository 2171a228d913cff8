"""fleetwatch-exporter: serve host, GPU and top-process metrics for Prometheus to scrape."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading

from prometheus_client import ProcessCollector

from exporter import __version__
from exporter.exposition import serve
from exporter.node.process import AddressSpaceLimitCollector
from exporter.registry import ExporterConfig, build_registry

log = logging.getLogger("fleetwatch.exporter")


def parse_listen(value: str) -> tuple[str, int]:
    """Parse HOST:PORT (HOST may be empty for all interfaces, or a [v6] address)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, e.g. 0.0.0.0:9101, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _bounded(kind, low, high):
    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return number

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleetwatch-exporter",
        description="Serve node_exporter- and dcgm-exporter-compatible metrics at /metrics.",
    )
    p.add_argument(
        "--listen",
        type=parse_listen,
        default=("0.0.0.0", 9101),
        metavar="HOST:PORT",
        help="address to serve /metrics on (default 0.0.0.0:9101)",
    )
    p.add_argument(
        "--host",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="host metrics in node_exporter's names (default on)",
    )
    p.add_argument(
        "--gpu",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="NVIDIA GPU metrics in dcgm-exporter's names (default on; no GPU is fine)",
    )
    p.add_argument(
        "--processes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="top-N processes by CPU, memory and GPU memory (default on)",
    )
    p.add_argument(
        "--top-n",
        type=_bounded(int, 1, 100),
        default=10,
        metavar="N",
        help="processes kept in each top-N ranking (1-100, default 10)",
    )
    p.add_argument(
        "--process-interval",
        type=_bounded(float, 0.5, 300),
        default=5.0,
        metavar="SECONDS",
        help="how often the process table is scanned (default 5)",
    )
    p.add_argument(
        "--gpu-interval",
        type=_bounded(float, 0.5, 300),
        default=5.0,
        metavar="SECONDS",
        help="how often NVML is sampled (default 5)",
    )
    p.add_argument(
        "--proc-root",
        default="/proc",
        metavar="DIR",
        help="procfs to read, e.g. /host/proc in a container (default /proc)",
    )
    p.add_argument(
        "--sys-root",
        default="/sys",
        metavar="DIR",
        help="sysfs to read, e.g. /host/sys in a container (default /sys)",
    )
    p.add_argument(
        "--rootfs",
        default="/",
        metavar="DIR",
        help="the host's root filesystem, for /etc/os-release, e.g. /host/root in a container (default /)",
    )
    p.add_argument(
        "--textfile-directory",
        default="",
        metavar="DIR",
        help="export the metrics of DIR/*.prom, as node_exporter's --collector.textfile.directory (default: none)",
    )
    p.add_argument(
        "--hostname",
        default=socket.gethostname(),
        help="value of the GPU series' hostname label (default: this host's name)",
    )
    p.add_argument(
        "--hostname-label",
        choices=["Hostname", "hostname"],
        default="Hostname",
        help="key of that label: dcgm-exporter releases use Hostname, newer builds hostname",
    )
    slurm = p.add_argument_group("Slurm (docs/slurm.md)")
    slurm.add_argument(
        "--slurm",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="cluster state from sinfo/squeue (SLURM_CONF from the environment) or slurmrestd (default off)",
    )
    slurm.add_argument(
        "--slurm-interval",
        type=_bounded(float, 1, 600),
        default=15.0,
        metavar="SECONDS",
        help="how often Slurm is read (default 15)",
    )
    slurm.add_argument(
        "--slurm-timeout",
        type=_bounded(float, 1, 120),
        default=10.0,
        metavar="SECONDS",
        help="longest wait for one sinfo/squeue/slurmrestd answer (default 10)",
    )
    slurm.add_argument(
        "--slurm-max-jobs",
        type=_bounded(int, 0, 1_000_000),
        default=2000,
        metavar="N",
        help="jobs with per-job fleet_slurm_job_* series, running ones first (default 2000)",
    )
    slurm.add_argument("--slurmrestd-url", metavar="URL", help="read slurmrestd, e.g. http://127.0.0.1:6820")
    slurm.add_argument(
        "--slurmrestd-token-file",
        metavar="FILE",
        help="file holding a JWT from `scontrol token` (re-read at every sample, so it can be rotated)",
    )
    slurm.add_argument("--slurmrestd-user", metavar="NAME", help="the user the token is for (default: this user)")
    slurm.add_argument(
        "--jobs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="per-job CPU, memory and GPU from Slurm's job cgroups (default: on where slurmd made its cgroups)",
    )
    slurm.add_argument(
        "--jobs-interval",
        type=_bounded(float, 0.5, 300),
        default=5.0,
        metavar="SECONDS",
        help="how often the job cgroups are read (default 5)",
    )
    slurm.add_argument(
        "--cgroup-root",
        default="/sys/fs/cgroup",
        metavar="DIR",
        help="cgroup mount to read, e.g. /host/sys/fs/cgroup in a container (default /sys/fs/cgroup)",
    )
    push = p.add_argument_group("push mode (agent): send to the gateway instead of serving /metrics")
    push.add_argument("--push", metavar="URL", help="the gateway, e.g. https://fleet.example.com")
    push.add_argument("--api-key", help="an API key made by an admin (POST /api/v1/api-keys)")
    push.add_argument("--config", metavar="FILE", help="YAML file of these settings; flags win over it")
    push.add_argument("--interval", help="sampling interval, e.g. 5s (default 5s)")
    push.add_argument("--host-id", help="this host's id at the gateway (default: --hostname)")
    push.add_argument("--ca-file", help="CA bundle to verify the gateway's TLS certificate (default: the system's)")
    push.add_argument("--buffer", help="SQLite file that keeps points while the gateway is unreachable")
    push.add_argument("--buffer-max-points", type=_bounded(int, 1000, 10_000_000), help="default 50000")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.slurmrestd_url and not args.slurmrestd_token_file:
        parser.error("--slurmrestd-url needs --slurmrestd-token-file")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ExporterConfig(
        host=args.host,
        gpu=args.gpu,
        processes=args.processes,
        top_n=args.top_n,
        process_interval_s=args.process_interval,
        gpu_interval_s=args.gpu_interval,
        proc_root=args.proc_root,
        sys_root=args.sys_root,
        rootfs=args.rootfs,
        textfile_directory=args.textfile_directory,
        hostname=args.hostname,
        hostname_label=args.hostname_label,
        slurm=args.slurm or bool(args.slurmrestd_url),
        slurm_interval_s=args.slurm_interval,
        slurm_timeout_s=args.slurm_timeout,
        slurm_max_jobs=args.slurm_max_jobs,
        slurmrestd_url=args.slurmrestd_url or "",
        slurmrestd_token_file=args.slurmrestd_token_file or "",
        slurmrestd_user=args.slurmrestd_user or "",
        jobs=args.jobs,
        jobs_interval_s=args.jobs_interval,
        cgroup_root=args.cgroup_root,
    )
    # Handlers first: a signal that arrives once /metrics answers must stop us cleanly.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    registry, background = build_registry(config)
    if args.push or args.config:
        return _push(args, registry, background, stop)
    ProcessCollector(registry=registry)  # the exporter's own CPU and RSS, as node_exporter's process_*
    registry.register(AddressSpaceLimitCollector())
    host, port = args.listen
    try:
        server = serve(host, port, registry)
    except OSError as exc:
        print(f"fleetwatch-exporter: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for collector in background:
        collector.start()
    log.info("serving metrics on http://%s:%d/metrics", host, port)
    stop.wait()
    log.info("stopping")
    server.shutdown()
    server.server_close()
    for collector in background:
        collector.stop()
    return 0


def _push(args, registry, background, stop: threading.Event) -> int:
    from exporter import agent

    try:
        settings = agent.load_yaml(args.config) if args.config else {}
        flags = {
            "push": args.push,
            "api_key": args.api_key,
            "interval_s": args.interval and agent.parse_duration(args.interval),
            "host_id": args.host_id,
            "ca_file": args.ca_file,
            "buffer": args.buffer,
            "buffer_max_points": args.buffer_max_points,
        }
        settings |= {k: v for k, v in flags.items() if v}
        settings.setdefault("host_id", args.hostname)
        settings.setdefault("hostname", args.hostname)
        config = agent.AgentConfig(**settings)
    except (OSError, ValueError, TypeError) as exc:
        print(f"fleetwatch-exporter: {exc}", file=sys.stderr)
        return 2
    return agent.run(config, registry, background, stop)


if __name__ == "__main__":
    sys.exit(main())
