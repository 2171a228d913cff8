"""The whole stack as tests start it: `fleetwatch up`'s own StackConfig with the tests' settings, in one place.

Free loopback ports, one-second scrapes and evaluations, the first admin
``ADMIN`` with bcrypt's cheapest cost, alert notifications within seconds and
the rate limits lifted (tests poll); each fixture adds or overrides only what
it is about. Also what a running stack's tests do to it: the state directory
another user (the replicas' PostgreSQL) can reach, restarting a service, and
where a backend's recording results enter its tiers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fleetwatch.replicas import REPLICA_PORT_OFFSET
from fleetwatch.stack import Ports, Stack, StackConfig
from fleetwatch.testing.api import ADMIN
from fleetwatch.testing.waits import free_port, port_free

LIFTED_LIMITS = {
    "FLEETWATCH_RATE_LIMIT_READS_PER_MIN": "100000",
    "FLEETWATCH_RATE_LIMIT_WRITES_PER_MIN": "100000",
}
QUICK_ALERTS = {
    "FLEETWATCH_ALERT_GROUP_WAIT": "1s",
    "FLEETWATCH_ALERT_GROUP_INTERVAL": "1s",
    "FLEETWATCH_ALERT_EVENTS_GROUP_INTERVAL": "1s",
}


def stack_config(
    state_dir: Path,
    *,
    admin: tuple[str, str] = ADMIN,
    lift_limits: bool = True,
    env: dict[str, str] | None = None,
    **fields,
) -> StackConfig:
    """A StackConfig on free ports with the tests' settings; ``env`` adds gateway settings, ``fields`` StackConfig's."""
    gateway_env = {
        "FLEETWATCH_ADMIN_EMAIL": admin[0],
        "FLEETWATCH_ADMIN_PASSWORD": admin[1],
        "FLEETWATCH_BCRYPT_ROUNDS": "4",  # bcrypt's minimum: tests log in hundreds of times
        **(LIFTED_LIMITS if lift_limits else {}),
        **QUICK_ALERTS,
        **(env or {}),
    }
    config = StackConfig(
        state_dir=state_dir,
        ports=Ports(*(free_port() for _ in Ports._fields)),
        **{"scrape_interval": "1s", "evaluation_interval": "1s", **fields},
        gateway_env=gateway_env,
    )
    if config.gateways > 1:
        # PostgreSQL and the replicas listen at fixed offsets above the gateway's port: free ones too.
        above = range(REPLICA_PORT_OFFSET, REPLICA_PORT_OFFSET + config.gateways + 1)
        while not all(
            port_free(config.ports.gateway + i) and config.ports.gateway + i not in config.ports for i in above
        ):
            config.ports = config.ports._replace(gateway=free_port())
    return config


@contextmanager
def shared_state_dir(prefix: str = "fleetwatch-stack-") -> Iterator[Path]:
    """A state directory the postgres user can pass through when we are root (pytest's own are 0700); removed after."""
    state = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(state, 0o711)
    try:
        yield state
    finally:
        shutil.rmtree(state, ignore_errors=True)


def restart(stack: Stack, *names: str) -> None:
    """Stop the named services in reverse start order, then start them again in order, each ready before the next."""
    chosen = [s for s in stack.services if s.name in names]
    for service in reversed(chosen):
        service.stop()
    for service in chosen:
        service.start()
        service.wait_ready()


def recorded_write_url(stack: Stack) -> str:
    """Where the downsampling rules' results enter the stack, and from there the long-term tier: remote write's URL."""
    urls = stack.urls()
    if stack.config.backend == "victoriametrics":
        return f"{urls['vmagent']}/api/v1/write"  # vmalert writes through vmagent's fan-out
    return f"{urls['downsampler']}/api/v1/write"  # its remote_write forwards the levels
