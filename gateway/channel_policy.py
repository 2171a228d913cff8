"""Where alert channels may point, and what of them a viewer sees (issue 13 #7, #8).

Alertmanager POSTs to every webhook and Slack URL a rule names, from inside
the deployment: a channel like ``webhook:http://127.0.0.1:9090/-/quit`` would
make it an SSRF relay into Prometheus, Alertmanager or a cloud's metadata
service. Receivers on loopback, link-local, private, shared or reserved
addresses, and names that are internal by their form, are refused unless the
admin lists them in CHANNEL_ALLOW_HOSTS. Names are not resolved: a public
name that resolves to an internal address is not caught here (see
docs/security-ingest.md); Alertmanager's egress is the place to close that.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from rules_compiler.alerts import Channel, RuleInvalid

# Beyond what ipaddress calls private: carrier-grade NAT (Alibaba's metadata is 100.100.100.200),
# IETF protocol assignments, benchmarking.
_ALSO_INTERNAL = [ipaddress.ip_network(n) for n in ("100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15")]
_METADATA_NAMES = {"metadata", "metadata.google.internal", "instance-data", "instance-data.ec2.internal"}
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa", ".intranet", ".corp")
_NUMERIC = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*$")  # 2130706433, 0x7f.1, 017700000001


def check_receiver(channel: Channel, allow_hosts: str) -> None:
    """Refuse a webhook/Slack channel whose URL carries credentials or points at an internal address.

    Raises:
        RuleInvalid: naming the rule the channel breaks, and the setting that would allow it.
    """
    if channel.kind not in ("webhook", "slack"):
        return
    try:
        url = urlsplit(channel.target)
        host = (url.hostname or "").rstrip(".")
        url.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise _refused(channel, f"not a URL: {exc}") from None
    if url.username is not None or url.password is not None:
        raise _refused(channel, "credentials in the URL (user:password@) are refused: they would be stored and shown")
    why = _internal(host)
    if why and not _allowed(host, allow_hosts):
        raise _refused(
            channel,
            f"{host!r} is {why}: Alertmanager would send to the gateway's own network; "
            "list it in FLEETWATCH_CHANNEL_ALLOW_HOSTS if it is a receiver of yours",
        )


def _internal(host: str) -> str | None:
    """Why ``host`` is internal, or None."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if host == "localhost" or host.endswith(".localhost"):
            return "localhost"
        if host in _METADATA_NAMES:
            return "a cloud metadata service"
        if _NUMERIC.match(host):
            return "a numeric address not in dotted-quad form (a resolver may read it as 127.0.0.1 and the like)"
        if "." not in host or host.endswith(_INTERNAL_SUFFIXES):
            return "an internal name (single-label or an internal domain)"
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link-local", "unspecified", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind.replace('-', '_')}"):
            return f"a {kind} address"
    if any(ip in net for net in _ALSO_INTERNAL):
        return "a shared or reserved address"
    return None


def _allowed(host: str, allow_hosts: str) -> bool:
    """Whether CHANNEL_ALLOW_HOSTS (comma-separated names, addresses and CIDRs) names ``host``."""
    entries = [e.strip().lower() for e in allow_hosts.split(",") if e.strip()]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host.lower() in entries
    for entry in entries:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue  # a name: it matches names only
    return False


def _refused(channel: Channel, why: str) -> RuleInvalid:
    return RuleInvalid("channels", f"channel {mask_channel(str(channel))!r}: {why}", channel=mask_channel(str(channel)))


def mask_channel(text: str) -> str:
    """A channel as a viewer or the audit log sees it: a URL's path, query and credentials hidden."""
    kind, _, target = text.partition(":")
    if kind not in ("webhook", "slack"):
        return text
    target, hash_, slack_channel = target.partition("#") if kind == "slack" else (target, "", "")
    try:
        url = urlsplit(target)
        host = url.hostname or ""
        port = f":{url.port}" if url.port else ""
    except ValueError:
        return f"{kind}:***"
    host = f"[{host}]" if ":" in host else host
    user = "***@" if url.username is not None or url.password is not None else ""
    rest = "/***" if url.path.strip("/") or url.query else url.path
    return f"{kind}:{url.scheme}://{user}{host}{port}{rest}{hash_}{slack_channel}"
