#!/usr/bin/env bash
# Install the Debian packages fleetwatch runs on, only those missing, so a
# machine that has them all pays nothing. Needs root (or sudo) for apt-get.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v prometheus-node-exporter >/dev/null || need+=(prometheus-node-exporter)
# PostgreSQL: the tests run the gateway on it too (DATABASE_URL); nothing starts it but them.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# fleetwatch up --gateways N puts HAProxy in front of the gateway replicas (docs/replicas.md).
command -v haproxy >/dev/null || need+=(haproxy)
command -v openssl >/dev/null || need+=(openssl)  # the TLS test makes a certificate
# A one-node Slurm the tests start themselves (tests/slurm_cluster.py); nothing else runs it.
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v munged >/dev/null || need+=(munge)
command -v slurmrestd >/dev/null || need+=(slurmrestd)
compgen -G '/usr/lib/*/slurm-wlm/auth_jwt.so' >/dev/null || need+=(slurm-wlm-jwt-plugin)  # slurmrestd's tokens
command -v curl >/dev/null || need+=(curl)  # the README's first five minutes (tests/test_first_minutes.py runs them)
# `fleetwatch up --backend victoriametrics`: the single node, vmagent and vmalert (docs/backends.md).
command -v victoria-metrics >/dev/null || need+=(victoria-metrics)
command -v vmagent >/dev/null || need+=(victoria-metrics)
command -v vmalert >/dev/null || need+=(victoria-metrics)
# Only to validate docker-compose.yml offline (`docker-compose config`); no Docker engine is needed.
command -v docker-compose >/dev/null || need+=(docker-compose)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "system-deps: need root to install ${need[*]}" >&2; exit 1; }
  sudo=sudo
fi
echo "system-deps: installing ${need[*]} from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# The packages' own service scripts must not start a second Prometheus on
# the ports fleetwatch uses: where nothing forbids it yet, forbid it for
# the install only.
blocker=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  blocker=/usr/sbin/policy-rc.d
fi
trap '[ -n "$blocker" ] && $sudo rm -f "$blocker"' EXIT
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
