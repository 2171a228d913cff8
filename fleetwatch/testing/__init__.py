"""The test and bench harness: real services on free loopback ports, logins, waits, and a Prometheus client.

Used by tests/ and bench/ alike, never by the product: ``waits`` (free ports,
waiting on a condition), ``services`` (Prometheus, Alertmanager, node_exporter,
our exporter and the gateway as processes), ``api`` (the gateway in-process
and logins over HTTP), ``prom`` (queries for assertions), ``mail``, ``postgres``
and ``tls`` (an SMTP server, a throwaway PostgreSQL, a self-signed certificate), ``slurm``
(a one-node Slurm: munged, slurmctld, slurmd and slurmrestd, as root, in a temp dir) and ``cgroups``
(fake Slurm job cgroup trees and proc roots).
"""
