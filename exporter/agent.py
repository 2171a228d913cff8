"""Push mode (``fleetwatch-exporter --push URL``): the scrape collectors, sampled and sent to the gateway.

Every ``interval`` the registry's families are turned into the catalog's
points (the same arithmetic as the normalisation rules of
``rules_compiler/catalog.py``) and queued in a durable ``PushBuffer``; a
second thread sends the oldest ≤100 points per POST and removes them only
when the gateway answered 2xx (or refused them for good), so outages of the
gateway or of Prometheus delay data but do not lose it. Resending after an
unanswered request is safe: the gateway stores a point once.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from dataclasses import dataclass

import urllib3
import yaml

from exporter import __version__
from exporter.catalog_points import Translator, rfc3339
from exporter.push_buffer import PushBuffer

log = logging.getLogger("fleetwatch.agent")


@dataclass
class AgentConfig:
    """Where and how to push; flags or a YAML file of the same keys (``api_key``, ``interval``, …)."""

    push: str
    api_key: str
    host_id: str
    hostname: str = ""
    interval_s: float = 5.0
    heartbeat_s: float = 30.0
    batch: int = 100  # points per POST (REQ-METRIC-004)
    buffer: str = "fleetwatch-agent.db"
    buffer_max_points: int = 50_000  # ≈ 40 min of a 100-point sample every 5 s
    ca_file: str | None = None  # None: the system's CAs; verification is never off
    timeout_s: float = 10.0


# What the gateway may set (REQ-AGENT-003), and the bounds an agent accepts it within. At most
# 30 s between samples: every 1-minute average (the 1m tier) still gets one, and every
# query's 5-minute look-back finds the host.
PUSHED_SETTINGS = {"interval_s": (1.0, 30.0), "heartbeat_s": (5.0, 60.0)}


def parse_duration(text: str | float) -> float:
    """Seconds from ``5s``, ``500ms``, ``1m`` or a bare number of seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", str(text))
    if not m:
        raise ValueError(f"not a duration: {text!r} (e.g. 5s, 500ms, 1m)")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m.group(2)]


def load_yaml(path: str) -> dict:
    """The agent's settings from a YAML file (REQ-AGENT-003); keys as AgentConfig's fields, dashes allowed."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    for key in ("interval", "heartbeat"):
        if key in data:
            data[f"{key}_s"] = parse_duration(data.pop(key))
    unknown = set(data) - set(AgentConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
    return data


class Agent:
    """Samples ``registry`` every interval into ``buffer``; sends the buffer in order; beats every 30 s."""

    def __init__(self, config: AgentConfig, registry, buffer: PushBuffer, clock=time.time):
        self.config = config
        self._registry = registry
        self._buffer = buffer
        self._clock = clock
        self._translator = Translator()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._retimed = threading.Event()  # the gateway changed the interval: the next tick moves
        self._own = {key: getattr(config, key) for key in PUSHED_SETTINGS}
        self._threads: list[threading.Thread] = []
        self._retry_after = 0.0  # seconds the gateway asked us to wait, from its last answer
        self._http = urllib3.PoolManager(
            maxsize=1,
            cert_reqs="CERT_REQUIRED",
            ca_certs=config.ca_file,
            timeout=urllib3.Timeout(connect=5.0, read=config.timeout_s),
            retries=False,
        )
        base = config.push.rstrip("/")
        self._metrics_url = base if base.endswith("/ingest/metrics") else f"{base}/api/v1/ingest/metrics"
        self._beat_url = self._metrics_url.removesuffix("/metrics") + "/heartbeat"
        self._headers = {"X-API-Key": config.api_key, "Content-Type": "application/json"}
        self._prefix = json.dumps({"host_id": config.host_id, "agent_version": __version__})[:-1] + ', "metrics": ['

    def start(self) -> Agent:
        for name, target in (("sample", self._sample_loop), ("send", self._send_loop)):
            thread = threading.Thread(target=target, name=f"agent-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._retimed.set()
        for thread in self._threads:
            thread.join(timeout_s)

    def sample_once(self, now: float) -> int:
        """Queue the catalog points of one scrape of the registry, stamped ``now``; return how many."""
        ts = rfc3339(now)
        points = [
            json.dumps({"metric": m, "ts": ts, "value": round(v, 6), **({"labels": lab} if lab else {})})
            for m, v, lab in self._translator.points(self._registry.collect(), now)
        ]
        self._buffer.append(points)
        log.debug("sampled %d points at %s", len(points), ts)
        return len(points)

    def send_once(self) -> bool:
        """POST the oldest points; True when the gateway took (or refused for good) them."""
        last_id, points = self._buffer.oldest(self.config.batch)
        if not points:
            return True
        body = (self._prefix + ",".join(points) + "]}").encode()
        status, answer = self._post(self._metrics_url, body)
        error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
        details = error.get("details") if isinstance(error.get("details"), dict) else {}
        if status == 200 or (status == 400 and details.get("rejected")):
            if status == 400 or answer.get("rejected"):
                log.warning("gateway refused %s points: %s", answer.get("rejected", "some"), str(answer)[:300])
            self._buffer.remove_through(last_id)
            return True
        if status is not None:
            log.warning("gateway answered %s; keeping %d points to send again", status, len(points))
        return False

    def heartbeat(self) -> bool:
        """Tell the gateway this host is alive (REQ-AGENT-006), and take the settings it answers with."""
        body = {"host_id": self.config.host_id, "agent_version": __version__}
        if self.config.hostname:
            body["hostname"] = self.config.hostname
        status, answer = self._post(self._beat_url, json.dumps(body).encode())
        if status == 200:
            self.apply(answer.get("config"))
        return status == 200

    def apply(self, pushed: object) -> None:
        """The gateway's settings (REQ-AGENT-003) over this agent's own; one it leaves unset is the agent's own."""
        pushed = pushed if isinstance(pushed, dict) else {}
        for key, (low, high) in PUSHED_SETTINGS.items():
            value = pushed.get(key)
            valid = type(value) in (int, float) and low <= value <= high
            if value is not None and not valid:
                log.warning("ignoring %s=%r from the gateway: not in [%g, %g] s", key, value, low, high)
            wanted = float(value) if valid else self._own[key]
            if wanted != getattr(self.config, key):
                log.info("%s is now %g (%s)", key, wanted, "set by the gateway" if valid else "this agent's own")
                setattr(self.config, key, wanted)
                if key == "interval_s":
                    self._retimed.set()

    def _post(self, url: str, body: bytes) -> tuple[int | None, dict]:
        try:
            r = self._http.request("POST", url, body=body, headers=self._headers)
        except urllib3.exceptions.SSLError as exc:
            # Not an outage: the gateway's certificate is not trusted (--ca-file); say so every time.
            log.warning("TLS to %s failed: %s", url, exc)
            return None, {}
        except urllib3.exceptions.HTTPError as exc:
            log.debug("no answer from %s: %s", url, exc)
            return None, {}
        try:
            answer = json.loads(r.data or b"{}")
        except ValueError:
            answer = {}
        try:
            self._retry_after = float(r.headers.get("Retry-After", 0) or 0)
        except ValueError:  # an HTTP date from a proxy: the backoff decides instead
            self._retry_after = 0.0
        return r.status, answer if isinstance(answer, dict) else {}

    def _sample_loop(self) -> None:
        # Ticks on a fixed grid: a slow scrape delays one sample, not every later one.
        tick = self._clock()
        while not self._stop.is_set():
            try:
                self.sample_once(tick)
            except Exception:  # one failed sample must not end sampling
                log.exception("sampling failed")
            self._wake.set()
            sampled, tick = tick, tick + self.config.interval_s
            now = self._clock()
            if now > tick + self.config.interval_s:  # suspended or starved: resume from now, no burst of catch-up
                tick = now
            elif tick - now > self.config.interval_s:  # the clock was set back: no pause as long as the step
                tick = now + self.config.interval_s
            while now < tick and not self._stop.is_set():
                if self._retimed.wait(tick - now):  # a new interval counts from the last sample
                    self._retimed.clear()
                    tick = sampled + self.config.interval_s
                now = self._clock()

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._send_until_stopped()
            except Exception:  # an answer or a buffer error nobody foresaw: keep sending, after a pause
                log.exception("send loop failed; going on in 5 s")
                self._stop.wait(5.0)

    def _send_until_stopped(self) -> None:
        backoff, next_beat = 0.0, 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + (self.config.heartbeat_s if self.heartbeat() else 5.0)
            self._retry_after = 0.0
            if self.send_once():
                backoff = 0.0
                if len(self._buffer):
                    continue  # catching up after an outage: send the next batch at once
                self._wake.wait(min(self.config.interval_s, max(0.0, next_beat - time.monotonic())))
                self._wake.clear()
            else:
                # Exponential with jitter, so a fleet coming back does not knock in step.
                backoff = min(30.0, max(0.5, backoff * 2))
                self._stop.wait(max(self._retry_after, backoff * random.uniform(0.5, 1.0)))


def run(config: AgentConfig, registry, background: list, stop: threading.Event) -> int:
    """Push until ``stop`` is set; the points still queued stay in the buffer for the next start."""
    buffer = PushBuffer(config.buffer, config.buffer_max_points)
    for collector in background:
        collector.start()
    agent = Agent(config, registry, buffer).start()
    log.info(
        "pushing to %s every %gs as host %s (%d points queued)",
        config.push,
        config.interval_s,
        config.host_id,
        len(buffer),
    )
    stop.wait()
    agent.stop()
    for collector in background:
        collector.stop()
    buffer.close()
    return 0
