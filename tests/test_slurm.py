"""The Slurm cluster collector on answers Slurm 22.05 gave on these machines (tests/fixtures/slurm/)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from exporter.registry import ExporterConfig, build_registry
from exporter.slurm import SlurmCollector
from exporter.slurm_state import ClusterState, SlurmCommands, SlurmRest, SlurmUnavailable, parse

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"
MiB = 1024 * 1024


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def state(sinfo: str, squeue: str) -> ClusterState:
    return parse(load(sinfo)["nodes"], load(squeue)["jobs"])


class Answers:
    """A source that gives the states it is handed, one per read; an exception in the list is raised."""

    def __init__(self, *answers):
        self.answers = list(answers)

    def read(self) -> ClusterState:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def scrape(collector, clock=None):
    """The registry the exporter serves, with only this collector; sampled once now."""
    registry, _ = build_registry(
        ExporterConfig(host=False, gpu=False, processes=False, jobs=False, extra_collectors={"slurm": collector})
    )
    collector.sampler.sample_now()
    return registry


def value(registry, family: str, **labels) -> float | None:
    return registry.get_sample_value(family, labels)


def test_two_running_one_pending_on_a_full_node():
    r = scrape(SlurmCollector(Answers(state("sinfo-allocated.json", "squeue-running-pending.json"))))
    assert value(r, "slurm_nodes_alloc") == 1 and value(r, "slurm_nodes_idle") == 0
    assert [value(r, f"slurm_cpus_{k}") for k in ("alloc", "idle", "other", "total")] == [2, 0, 0, 2]
    assert value(r, "slurm_queue_running") == 2 and value(r, "slurm_queue_pending") == 1
    assert value(r, "slurm_partition_jobs_pending", partition="debug") == 1
    assert value(r, "slurm_partition_cpus_allocated", partition="debug") == 2
    assert value(r, "slurm_user_jobs_running", user="root") == 2
    assert value(r, "slurm_user_cpus_running", user="root") == 2
    node = "fw2dacbb22"
    info = {"node": node, "hostname": "vm", "state": "allocated", "partitions": "debug"}
    assert value(r, "fleet_slurm_node_info", **info) == 1
    assert value(r, "fleet_slurm_node_cpus", node=node) == 2
    assert value(r, "fleet_slurm_node_cpus_allocated", node=node) == 2
    assert value(r, "fleet_slurm_node_memory_bytes", node=node) == 21694 * MiB
    assert value(r, "fleet_slurm_node_gpus", node=node) == 0
    job = {"jobid": "3", "user": "root", "account": "", "partition": "debug", "name": "wrap", "nodes": ""}
    assert value(r, "fleet_slurm_job_info", state="PENDING", **job) == 1
    assert value(r, "fleet_slurm_job_start_timestamp_seconds", jobid="3") is None  # not started
    assert value(r, "fleet_slurm_job_start_timestamp_seconds", jobid="1") == 1796017762
    assert value(r, "fleet_slurm_job_memory_bytes", jobid="3") == 21694 * MiB  # requested
    assert value(r, "fleet_slurm_jobs") == 3 and value(r, "fleet_slurm_jobs_dropped") == 0
    assert value(r, "fleet_slurm_up") == 1
    assert value(r, "fleet_exporter_collector_success", collector="slurm") == 1


def test_finished_jobs_count_until_slurmctld_forgets_them():
    r = scrape(SlurmCollector(Answers(state("sinfo-mixed.json", "squeue-finished.json"))))
    assert value(r, "slurm_nodes_mix") == 1
    assert [value(r, f"slurm_cpus_{k}") for k in ("alloc", "idle", "other", "total")] == [1, 1, 0, 2]
    assert (value(r, "slurm_queue_completed"), value(r, "slurm_queue_cancelled")) == (2, 1)
    assert value(r, "slurm_queue_running") == 1
    assert value(r, "fleet_slurm_job_end_timestamp_seconds", jobid="1") == 1795418320
    assert value(r, "fleet_slurm_job_end_timestamp_seconds", jobid="4") is None  # still running


def _nodes() -> list[dict]:
    """Five nodes made from the real record: drained, draining, down, and two GPU nodes."""
    real = load("sinfo-allocated.json")["nodes"][0]

    def node(name, state, flags=(), alloc=0, **more):
        return {**real, "name": name, "hostname": name, "state": state, "state_flags": list(flags),
                "alloc_cpus": alloc, "idle_cpus": real["cpus"] - alloc, **more}  # fmt: skip

    return [
        node("n1", "idle", ["DRAIN"]),
        node("n2", "allocated", ["DRAIN"], alloc=2),
        node("n3", "down", ["NOT_RESPONDING"]),
        node(
            "g1", "mixed", alloc=1, tres="cpu=2,mem=1000M,gres/gpu=4", tres_used="cpu=1,gres/gpu=1", partitions=["gpu"]
        ),
        # Without gres/gpu in tres: the gres strings, whose parentheses hold commas.
        node("g2", "mixed", alloc=1, gres="gpu:a100:2(S:0,1),gpu:v100:1", gres_used="gpu:a100:1(IDX:0),gpu:v100:0"),
    ]


def test_node_states_cpus_and_gpus_as_sinfo_counts_them():
    r = scrape(SlurmCollector(Answers(parse(_nodes(), []))))
    assert value(r, "slurm_nodes_drain") == 2 and value(r, "slurm_nodes_down") == 1
    assert value(r, "slurm_nodes_mix") == 2
    # sinfo's %C: the free CPUs of drained, draining and down nodes are "other".
    assert [value(r, f"slurm_cpus_{k}") for k in ("alloc", "idle", "other", "total")] == [4, 2, 4, 10]
    assert (value(r, "slurm_gpus_total"), value(r, "slurm_gpus_alloc"), value(r, "slurm_gpus_idle")) == (7, 2, 5)
    assert value(r, "slurm_gpus_utilization") == pytest.approx(2 / 7)
    assert value(r, "fleet_slurm_node_gpus", node="g2") == 3
    assert value(r, "fleet_slurm_node_gpus_allocated", node="g2") == 1
    assert value(r, "fleet_slurm_node_info", node="n1", hostname="n1", state="drained", partitions="debug") == 1
    assert value(r, "fleet_slurm_node_info", node="n2", hostname="n2", state="draining", partitions="debug") == 1
    assert value(r, "slurm_partition_cpus_total", partition="gpu") == 2
    assert value(r, "slurm_partition_cpus_other", partition="debug") == 4


def test_per_job_series_are_capped_running_jobs_first():
    r = scrape(SlurmCollector(Answers(state("sinfo-allocated.json", "squeue-running-pending.json")), max_jobs=2))
    infos = [s for m in r.collect() if m.name == "fleet_slurm_job_info" for s in m.samples]
    assert sorted((s.labels["jobid"], s.labels["state"]) for s in infos) == [("1", "RUNNING"), ("2", "RUNNING")]
    assert value(r, "fleet_slurm_jobs_dropped") == 1 and value(r, "fleet_slurm_jobs") == 3
    assert value(r, "slurm_queue_pending") == 1  # the totals still count every job


def test_when_slurm_stops_answering_the_last_answer_stays_with_its_age():
    now = [1000.0]
    good = state("sinfo-allocated.json", "squeue-running-pending.json")
    collector = SlurmCollector(
        Answers(good, SlurmUnavailable("sinfo --json: exit 1: Unable to contact slurm controller")),
        clock=lambda: now[0],
    )
    r = scrape(collector)
    assert value(r, "fleet_slurm_last_success_timestamp_seconds") == 1000
    now[0] = 1030.0
    collector.sampler.sample_now()
    assert value(r, "fleet_slurm_up") == 0
    assert value(r, "fleet_slurm_last_success_timestamp_seconds") == 1000  # 30 s old now
    assert value(r, "slurm_queue_running") == 2  # the last good answer
    assert value(r, "fleet_exporter_collector_success", collector="slurm") == 1


def test_slurm_never_answered_serves_only_its_state():
    r = scrape(SlurmCollector(Answers(SlurmUnavailable("sinfo: not found"))))
    assert value(r, "fleet_slurm_up") == 0
    assert value(r, "slurm_nodes_idle") is None
    assert value(r, "fleet_slurm_last_success_timestamp_seconds") is None


def _conf(tmp_path, *lines: str) -> dict:
    """The environment of a Slurm client whose slurmctld is not there (nothing listens on port 1)."""
    conf = tmp_path / "slurm.conf"
    conf.write_text("\n".join(["ClusterName=gone", "SlurmctldHost=gone(127.0.0.1)", "SlurmctldPort=1", *lines]))
    return {**os.environ, "SLURM_CONF": str(conf)}


@pytest.fixture
def sinfo():
    if not shutil.which("sinfo"):
        pytest.skip("Slurm's client commands are not installed (`make test` installs slurm-wlm)")


def test_an_unreachable_controller_is_a_failure_not_an_empty_cluster(sinfo, tmp_path):
    # sinfo --json then exits 0 with "nodes": [] and the failure only in "errors".
    commands = SlurmCommands(timeout=10, env=_conf(tmp_path, "MessageTimeout=1"))
    with pytest.raises(SlurmUnavailable, match="sinfo: Unspecified error"):
        commands.read()


def test_a_slurm_that_does_not_answer_costs_one_timeout(sinfo, tmp_path):
    # Without its configuration file sinfo retries for a minute: the exporter waits --slurm-timeout.
    commands = SlurmCommands(timeout=1, env={**os.environ, "SLURM_CONF": str(tmp_path / "missing.conf")})
    start = time.monotonic()
    with pytest.raises(SlurmUnavailable, match="sinfo --json: no answer within 1 s"):
        commands.read()
    assert time.monotonic() - start < 5


def test_an_answer_that_is_not_slurm_json_is_refused(tmp_path):
    (tmp_path / "sinfo").write_text('#!/bin/sh\necho \'{"nodes": [{"cpus": 2}]}\'\n')
    (tmp_path / "sinfo").chmod(0o755)
    (tmp_path / "squeue").write_text("#!/bin/sh\necho '{\"jobs\": []}'\n")
    (tmp_path / "squeue").chmod(0o755)
    commands = SlurmCommands(timeout=5, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    with pytest.raises(SlurmUnavailable, match="unexpected Slurm JSON"):
        commands.read()


class _Slurmrestd(BaseHTTPRequestHandler):
    """slurmrestd's two endpoints with the fixtures' answers; a wrong token is refused as it refuses it."""

    token = "good-token"
    seen: list[dict] = []

    def do_GET(self):
        type(self).seen.append(dict(self.headers))
        if self.headers.get("X-SLURM-USER-TOKEN") != self.token:
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b"Authentication failure")
            return
        body = {"/slurm/v0.0.38/nodes": "sinfo-allocated.json", "/slurm/v0.0.38/jobs": "squeue-running-pending.json"}
        name = body.get(self.path)
        self.send_response(200 if name else 404)
        self.end_headers()
        self.wfile.write((FIXTURES / name).read_bytes() if name else b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def slurmrestd():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slurmrestd)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Slurmrestd.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_slurmrestd_with_a_token_from_its_file(slurmrestd, tmp_path):
    token = tmp_path / "token"
    token.write_text("good-token\n")
    got = SlurmRest(slurmrestd, str(token), user="alice").read()
    assert got == state("sinfo-allocated.json", "squeue-running-pending.json")
    assert {h["X-SLURM-USER-NAME"] for h in _Slurmrestd.seen} == {"alice"}
    token.write_text("expired")  # rotated by cron, say: read again at every sample
    with pytest.raises(SlurmUnavailable, match="HTTP 401: Authentication failure"):
        SlurmRest(slurmrestd, str(token), user="alice").read()


def test_fleetwatch_up_says_why_slurm_stays_off(sinfo, tmp_path):
    from fleetwatch.stack import SLURM_CONF_PATHS, slurm_answers

    assert slurm_answers(_conf(tmp_path, "MessageTimeout=1"))[0] is False
    missing = {**os.environ, "SLURM_CONF": str(tmp_path / "missing.conf")}
    assert slurm_answers(missing, timeout_s=1) == (False, "off: sinfo did not answer within 1 s")
    assert slurm_answers({**os.environ, "PATH": str(tmp_path)}) == (False, "off: no sinfo on PATH")
    if not any(Path(p).exists() for p in SLURM_CONF_PATHS):  # as on these machines: asks no DNS for one
        unset = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
        assert slurm_answers(unset) == (False, "off: no Slurm configuration (SLURM_CONF, /etc/slurm/slurm.conf)")
