# The fleetwatch gateway (REST API, alert rules, live updates). Built from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t fleetwatch-gateway .
# docker-compose.yml runs it beside both Prometheus tiers and Alertmanager; its state
# (SQLite DB, compiled alert rules, Alertmanager config, file_sd targets) is the volume
# at /var/lib/fleetwatch, which Prometheus and Alertmanager read.
FROM prom/prometheus:v2.42.0 AS prometheus
FROM prom/alertmanager:v0.25.0 AS alertmanager

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLEETWATCH_STATE_DIR=/var/lib/fleetwatch \
    FLEETWATCH_BIND=0.0.0.0:8080

# The gateway checks every rule and Alertmanager file it writes before it puts it in force.
COPY --from=prometheus /bin/promtool /usr/local/bin/promtool
COPY --from=alertmanager /bin/amtool /usr/local/bin/amtool

WORKDIR /app
COPY README.md setup.cfg pyproject.toml /app/
COPY exporter /app/exporter
COPY gateway /app/gateway
COPY rules_compiler /app/rules_compiler
COPY fleetwatch /app/fleetwatch
# Editable: the Alembic migrations are read from gateway/migrations/ where they lie.
RUN pip install ./exporter -e . \
 && mkdir -p /var/lib/fleetwatch && chown 65534:65534 /var/lib/fleetwatch

# nobody, as in the Prometheus and Alertmanager images: they read the files it writes (0600 ones too).
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["fleetwatch-gateway", "serve"]
