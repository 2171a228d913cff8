"""fleetwatch-gateway: serve the API under gunicorn, or manage users from the shell."""

from __future__ import annotations

import argparse
import gc
import getpass
import os
import shutil
import ssl
import sys
from pathlib import Path

# gateway.app alone at the top: it imports Flask and nothing that imports prometheus_client,
# which must wait until serve() has set PROMETHEUS_MULTIPROC_DIR (see there).
from gateway.app import read_config

# TLS-001: TLS 1.2 and 1.3 only; for 1.2, forward-secret AEAD suites only (Mozilla's "intermediate"
# list). TLS 1.3's suites are all of that kind and are not set here.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    )
)


def tls_context(_config, default_ssl_context_factory) -> ssl.SSLContext:
    """gunicorn's ssl_context hook: its context, narrowed to TLS 1.2+ and modern ciphers."""
    context = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    return context


def serve(args: argparse.Namespace) -> int:
    config = read_config()
    bind, workers, threads = (
        args.bind or config["BIND"],
        args.workers or config["WORKERS"],
        args.threads or config["THREADS"],
    )
    certfile, keyfile = args.certfile or config["CERTFILE"], args.keyfile or config["KEYFILE"]
    if bool(certfile) != bool(keyfile):
        print("fleetwatch-gateway: --certfile and --keyfile go together", file=sys.stderr)
        return 2

    # Every worker writes its request metrics here; /metrics adds them up
    # (gateway/observability.py). prometheus_client reads PROMETHEUS_MULTIPROC_DIR
    # once, when it is first imported, and picks per-process or shared values
    # then: so it is set here, before anything imports prometheus_client (the
    # gateway's views do, which is why gateway.app imports them only inside
    # create_app, and why this module imports neither at its top).
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set")
    metrics_dir = Path(config["METRICS_DIR"] or Path(config["STATE_DIR"]) / "gateway-metrics")
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    from gunicorn.app.base import BaseApplication
    from prometheus_client import multiprocess

    from gateway.app import create_app

    app = create_app()  # in the master: the schema and first admin exist before workers fork
    if certfile:
        _webhook_over_tls(app, certfile)
    _install_alert_rules(app)

    class Gateway(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", bind)
            self.cfg.set("workers", workers)
            # gthread, with threads for open streams beyond those of the REST API (docs/live-updates.md).
            self.cfg.set("threads", threads + app.config["STREAM_MAX_PER_WORKER"])
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("timeout", 60)
            self.cfg.set("accesslog", None)
            # Should an access log be turned on: the path without its query, where ?access_token= may be.
            self.cfg.set("access_log_format", '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms')
            if os.access("/dev/shm", os.W_OK):
                # The workers' heartbeat is a utime() per request: on tmpfs, not a journalled disk.
                self.cfg.set("worker_tmp_dir", "/dev/shm")
            if certfile:  # TLS (§12.1) without a proxy in front: agents verify this certificate
                self.cfg.set("certfile", certfile)
                self.cfg.set("keyfile", keyfile)
                self.cfg.set("ssl_context", tls_context)
            self.cfg.set("child_exit", lambda _server, worker: multiprocess.mark_process_dead(worker.pid))
            self.cfg.set("post_worker_init", lambda worker: _worker_threads(app, worker))

        def load(self):
            return app

    # Everything made so far (app, routes, schemas, SQLAlchemy's mappers: some 10^5 objects)
    # lives as long as the process: frozen, a full collection no longer walks it. Unfrozen,
    # every few host-list pages paid 40 ms for one. Frozen before the fork, the workers'
    # copies of these pages also stay shared.
    gc.freeze()
    Gateway().run()
    return 0


def _worker_threads(app, worker) -> None:
    """Each worker's background threads, none in the master (the DB decides who does what)."""
    from gateway.alert_silences import start_reconciler

    app.extensions["report_scheduler"].start()  # report schedules
    start_reconciler(app)  # silences kept in force in Alertmanager
    app.extensions["status_watch"].start()  # host status changes into the live-update log
    # Open streams end (their clients reconnect elsewhere) as soon as the worker is told to stop.
    app.extensions["serving"] = lambda: worker.alive


def _webhook_over_tls(app, certfile: str) -> None:
    """Serving HTTPS: Alertmanager must reach the events webhook by https and trust our certificate."""
    if not app.config["GATEWAY_CA_FILE"]:
        # A leaf certificate among Go's roots is trusted as itself: this serves self-signed and CA-signed alike.
        app.config["GATEWAY_CA_FILE"] = str(Path(certfile).resolve())
    if not app.config["GATEWAY_URL"].startswith("https://"):
        app.logger.warning(
            "serving HTTPS, but FLEETWATCH_GATEWAY_URL is %s: Alertmanager cannot post alert events to it; "
            "set it to https://<a name in the certificate>:<port>",
            app.config["GATEWAY_URL"],
        )


def _install_alert_rules(app) -> None:
    """Put the DB's alert rules (the starter set on a first start) in force before serving."""
    from gateway.alert_rules import install_rules_on_start
    from gateway.alert_silences import reconcile_on_start
    from gateway.errors import ApiError
    from rules_compiler.alerts import RuleInvalid
    from rules_compiler.deploy import DeployFailed

    with app.app_context():
        try:
            install_rules_on_start()
        except (DeployFailed, ApiError, RuleInvalid) as exc:
            # Serving beats not serving: the rules go in force with the next rule change.
            app.logger.warning("alert rules not installed: %s %s", exc, getattr(exc, "details", ""))
        reconcile_on_start()


def create_user(args: argparse.Namespace) -> int:
    from gateway.app import create_app
    from gateway.db import db
    from gateway.errors import ApiError
    from gateway.users import create_user as add

    password = os.environ.get("FLEETWATCH_NEW_USER_PASSWORD") or getpass.getpass(f"password for {args.email}: ")
    if len(password) < 12:
        print("fleetwatch-gateway: the password needs at least 12 characters", file=sys.stderr)
        return 2
    app = create_app()
    with app.app_context():
        try:
            user = add(args.email, password, args.role)
        except ApiError as exc:
            print(f"fleetwatch-gateway: {exc.message}", file=sys.stderr)
            return 1
        db.session.commit()
        print(f"created {user.id} {user.email} ({user.role})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fleetwatch-gateway", description="The fleetwatch REST API.")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("serve", help="serve the API (the default)")
    for parser in (p, s):
        # Their defaults are the configuration's (BIND, WORKERS, … in gateway/app.py: FLEETWATCH_BIND, …).
        parser.add_argument("--bind", help="HOST:PORT (default 127.0.0.1:8080)")
        parser.add_argument("--workers", type=int, help="worker processes (default 2)")
        parser.add_argument("--threads", type=int, help="threads per worker (default 8)")
        parser.add_argument("--certfile", help="serve HTTPS")
        parser.add_argument("--keyfile")
    u = sub.add_parser("create-user", help="add a user (password from FLEETWATCH_NEW_USER_PASSWORD or a prompt)")
    u.add_argument("email")
    u.add_argument("--role", choices=["viewer", "admin"], default="viewer")
    args = p.parse_args(argv)
    return create_user(args) if args.command == "create-user" else serve(args)


if __name__ == "__main__":
    sys.exit(main())
