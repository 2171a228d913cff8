"""What Slurm says about its nodes and jobs, read from ``sinfo/squeue --json`` or slurmrestd.

Both sources answer in the same openapi/v0.0.38 shape on Slurm 22.05 (the
``nodes`` and ``jobs`` lists); this module turns them into `ClusterState`.
Reads are bounded in time: a slurmctld that hangs costs one timeout, never a
stuck thread.
"""

from __future__ import annotations

import getpass
import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import urllib3

MiB = 1024 * 1024
_UNITS = {"K": 1024, "M": MiB, "G": 1024 * MiB, "T": 1024 * 1024 * MiB}
_GRES_GPU = re.compile(r"^gpu(?::[^:(]+)?:(\d+)")


class SlurmUnavailable(RuntimeError):
    """Slurm did not answer, or answered something that is not its JSON; the message says which."""


class Node(NamedTuple):
    name: str
    hostname: str
    state: str  # sinfo's long state: idle, mixed, allocated, draining, drained, down, …
    partitions: tuple[str, ...]
    cpus: int
    alloc_cpus: int
    cpu_load: float | None  # load average (Slurm reports it x100)
    memory_bytes: int  # RealMemory
    alloc_memory_bytes: int
    free_memory_bytes: int | None
    gpus: int  # from gres/tres; 0 without GPUs
    alloc_gpus: int


class Job(NamedTuple):
    jobid: str  # the raw id, as cgroups and jobstats name it (array tasks have their own)
    name: str
    user: str
    uid: int
    account: str
    partition: str
    state: str  # RUNNING, PENDING, COMPLETED, …
    reason: str  # state_reason: None, Resources, Dependency, …
    nodes: str  # Slurm's hostlist, "" while pending
    cpus: int
    gpus: int
    memory_bytes: int | None  # allocated, else requested (pending, or CR_CPU)
    submit_time: int  # Unix seconds
    start_time: int  # 0 until it starts
    end_time: int  # 0 until it ends
    time_limit_s: int | None  # None = unlimited


class ClusterState(NamedTuple):
    nodes: list[Node]
    jobs: list[Job]


class SlurmCommands:
    """Runs ``sinfo --json`` and ``squeue --json`` (SLURM_CONF from the environment), each bounded by ``timeout``."""

    def __init__(self, timeout: float = 10.0, env: Mapping[str, str] | None = None):
        self._timeout = timeout
        self._env = dict(env) if env is not None else None

    def read(self) -> ClusterState:
        """Nodes then jobs, as Slurm answers now.

        Raises:
            SlurmUnavailable: a command failed, timed out or printed no JSON.
        """
        nodes = self._json(["sinfo", "--json"])["nodes"]
        # squeue --json ignores filters (22.05): it lists every job slurmctld still holds.
        jobs = self._json(["squeue", "--json"])["jobs"]
        return parse(nodes, jobs)

    def _json(self, argv: list[str]) -> dict:
        try:
            r = subprocess.run(argv, capture_output=True, timeout=self._timeout, env=self._env, check=False)
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(f"{' '.join(argv)}: no answer within {self._timeout:g} s") from None
        except OSError as exc:
            raise SlurmUnavailable(f"{argv[0]}: {exc.strerror or exc}") from None
        if r.returncode != 0:
            message = r.stderr.decode(errors="replace").strip().splitlines()
            raise SlurmUnavailable(f"{' '.join(argv)}: exit {r.returncode}: {message[-1] if message else ''}")
        return _decode(r.stdout, argv[0])


class SlurmRest:
    """Reads ``/nodes`` and ``/jobs`` from slurmrestd with a JWT (``scontrol token``) re-read from its file."""

    def __init__(
        self,
        url: str,
        token_file: str,
        user: str | None = None,
        api: str = "v0.0.38",
        timeout: float = 10.0,
    ):
        self._base = f"{url.rstrip('/')}/slurm/{api}"
        self._token_file = Path(token_file)
        self._user = user or getpass.getuser()
        self._http = urllib3.PoolManager(timeout=urllib3.Timeout(total=timeout), retries=False)

    def read(self) -> ClusterState:
        """Nodes then jobs, as slurmrestd answers now.

        Raises:
            SlurmUnavailable: slurmrestd refused, failed, timed out or sent no JSON.
        """
        try:
            token = self._token_file.read_text().strip()
        except OSError as exc:
            raise SlurmUnavailable(f"cannot read the slurmrestd token {self._token_file}: {exc.strerror}") from None
        headers = {"X-SLURM-USER-NAME": self._user, "X-SLURM-USER-TOKEN": token}
        return parse(self._get("nodes", headers)["nodes"], self._get("jobs", headers)["jobs"])

    def _get(self, what: str, headers: dict) -> dict:
        url = f"{self._base}/{what}"
        try:
            r = self._http.request("GET", url, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            raise SlurmUnavailable(f"GET {url}: {exc}") from None
        if r.status != 200:
            said = r.data[:200].decode(errors="replace").strip()
            raise SlurmUnavailable(f"GET {url}: HTTP {r.status}: {said}")
        return _decode(r.data, "slurmrestd")


def _decode(raw: bytes, source: str) -> dict:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise SlurmUnavailable(f"{source}: not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise SlurmUnavailable(f"{source}: not a JSON object")
    # An unreachable slurmctld still exits 0, with an empty list and the failure in "errors" only.
    errors = body.get("errors") or []
    if errors:
        first = errors[0] if isinstance(errors[0], dict) else {"error": str(errors[0])}
        words = [first.get("source"), first.get("description"), first.get("error")]
        raise SlurmUnavailable(f"{source}: " + ": ".join(str(w) for w in words if w))
    return body


def parse(nodes: list[dict], jobs: list[dict]) -> ClusterState:
    """The openapi/v0.0.38 ``nodes`` and ``jobs`` lists as records.

    Raises:
        SlurmUnavailable: the answer lacks a field every Slurm of that API sends.
    """
    try:
        return ClusterState([_node(n) for n in nodes], [_job(j) for j in jobs])
    except (KeyError, TypeError, ValueError) as exc:
        raise SlurmUnavailable(f"unexpected Slurm JSON ({type(exc).__name__}: {exc})") from None


def node_state(state: str, flags: list[str]) -> str:
    """sinfo's long state (%T) from the JSON's base state and flags: ``allocated`` + DRAIN is ``draining``."""
    base, flags = state.lower(), {f.upper() for f in flags}
    busy = base in ("allocated", "mixed")
    if "DRAIN" in flags:
        return "draining" if busy else "drained"
    if "FAIL" in flags:
        return "failing" if busy else "fail"
    for flag, name in (("MAINTENANCE", "maint"), ("RESERVED", "reserved"), ("COMPLETING", "completing")):
        if flag in flags:
            return name
    return base


def _node(n: dict) -> Node:
    gpus = _tres(n.get("tres") or "", "gres/gpu")
    alloc_gpus = _tres(n.get("tres_used") or "", "gres/gpu")
    if gpus is None:  # older slurmctlds leave GPUs out of tres: count the gres strings
        gpus, alloc_gpus = _gres_gpus(n.get("gres") or ""), _gres_gpus(n.get("gres_used") or "")
    free = n.get("free_memory")
    load = n.get("cpu_load")
    return Node(
        name=n["name"],
        hostname=n.get("hostname") or n["name"],
        state=node_state(n["state"], n.get("state_flags") or []),
        partitions=tuple(n.get("partitions") or ()),
        cpus=int(n["cpus"]),
        alloc_cpus=int(n.get("alloc_cpus") or 0),
        cpu_load=None if load is None else load / 100,
        memory_bytes=int(n.get("real_memory") or 0) * MiB,
        alloc_memory_bytes=int(n.get("alloc_memory") or 0) * MiB,
        free_memory_bytes=None if free is None else int(free) * MiB,
        gpus=gpus or 0,
        alloc_gpus=alloc_gpus or 0,
    )


def _job(j: dict) -> Job:
    alloc, req = j.get("tres_alloc_str") or "", j.get("tres_req_str") or ""
    tres = alloc or req  # "" until it starts: what it asked for
    limit = j.get("time_limit")
    state = str(j["job_state"]).upper()
    return Job(
        jobid=str(j["job_id"]),
        name=j.get("name") or "",
        user=j.get("user_name") or str(j.get("user_id", "")),
        uid=int(j.get("user_id", -1)),
        account=j.get("account") or "",
        partition=j.get("partition") or "",
        state=state,
        reason=j.get("state_reason") or "",
        nodes=j.get("nodes") or "",
        cpus=int(j.get("cpus") or 0),
        gpus=_tres(tres, "gres/gpu") or 0,
        # Under CR_CPU Slurm allocates no memory: what the job asked for is then the best figure.
        memory_bytes=_tres(alloc, "mem") or _tres(req, "mem"),
        submit_time=int(j.get("submit_time") or 0),
        start_time=int(j.get("start_time") or 0),
        # Slurm fills end_time with start + limit while a job runs: only a finished job's is an end.
        end_time=int(j.get("end_time") or 0) if state not in ("RUNNING", "PENDING", "SUSPENDED") else 0,
        time_limit_s=None if limit is None else int(limit) * 60,
    )


def _tres(text: str, key: str) -> int | None:
    """One count of a TRES string ("cpu=2,mem=23000M,gres/gpu=4"); memory in bytes; None if absent."""
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name == key and value:
            unit = _UNITS.get(value[-1].upper())
            return int(float(value[:-1]) * unit) if unit else int(value)
    return None


def _gres_gpus(text: str) -> int:
    """GPUs in a gres string ("gpu:a100:4(S:0-1),gpu:v100:2"); commas also sit inside the parentheses."""
    total, depth, item = 0, 0, []
    for ch in text + ",":
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            m = _GRES_GPU.match("".join(item))
            total += int(m.group(1)) if m else 0
            item = []
        else:
            item.append(ch)
    return total
