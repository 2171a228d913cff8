"""Delivering notifications for real: an alert storm grouped into one message, retries, the templates' content.

Series are pushed into the stack's Prometheus by remote write (50 hosts at
once, each a node_load1 no real host reaches); email goes to the SMTP server
on loopback, webhooks and Slack messages to HTTP receivers on loopback.
"""

from __future__ import annotations

import time

import pytest

from fleetwatch.testing.api import api_session
from fleetwatch.testing.waits import wait_until
from fleetwatch.testing.webhooks import Receiver
from gateway.remote_write import RemoteWriter, encode_labels, encode_timeseries


@pytest.fixture(scope="module")
def api(stack):
    return api_session(stack.urls()["gateway"])


def push(stack, name: str, host_ids: list[str], value: float) -> None:
    """One sample of ``name`` for each host, now, into the stack's Prometheus (one write: one evaluation sees all)."""
    now_ms = int(time.time() * 1000)
    series = [
        encode_timeseries(encode_labels([("__name__", name), ("host_id", h), ("job", "test-push")]), [(now_ms, value)])
        for h in host_ids
    ]
    RemoteWriter(f"{stack.urls()['prometheus']}/api/v1/write").write(series)


def rule(api, **body) -> str:
    r = api.post(f"{api.base}/api/v1/alerts/rules", json=body, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def mail_text(message) -> tuple[str, str]:
    """(text part, html part) of an email, decoded."""
    parts = {p.get_content_type(): p.get_payload(decode=True).decode() for p in message.walk() if not p.is_multipart()}
    return parts.get("text/plain", ""), parts.get("text/html", "")


def test_fifty_hosts_failing_at_once_send_one_grouped_email_webhook_and_slack_message(api, stack, mailbox):
    hook, slack = Receiver(), Receiver()
    hosts = [f"storm-{i:02d}" for i in range(50)]
    push(stack, "node_load1", hosts, 1e6)
    # Fires 8 s after the rule is made: Prometheus 2.42 drops what it sends to Alertmanager for up to 5 s
    # after the reload that installs the rule (prometheus#13064), and Alertmanager sends a group at once,
    # with whatever it holds, when its alerts started more than group_wait before they reached it.
    rule_id = rule(
        api,
        name="Storm test",
        expression="cpu.load1 > 100000",
        duration="8s",
        group_by="rule",
        channels=["email:storm@example.com", f"webhook:{hook.url}", f"slack:{slack.url}#storms"],
    )
    try:
        first = wait_until(lambda: hook.posts, what="the grouped webhook", timeout_s=60)[0]
        assert len(first["alerts"]) == 50 and first["groupLabels"] == {"rule_id": rule_id}
        assert {a["labels"]["host_id"] for a in first["alerts"]} == set(hosts)

        mails = wait_until(lambda: [m for to, m in mailbox.messages if "storm@example.com" in to], what="the email")
        text, html = mail_text(mails[0])
        assert mails[0]["Subject"] == "[FIRING:50] Storm test (warning) on 50 hosts"
        assert "50 firing, 0 resolved" in text and "(the first 10 of 50 hosts)" in text
        lines = [line for line in text.splitlines() if line.startswith("- storm-")]
        assert len(lines) == 10
        assert all("value 1e+06, rule cpu.load1 > 100000, since 20" in line for line in lines)
        gateway = stack.urls()["gateway"]
        assert f"event: {gateway}/api/v1/alerts/events?rule_id={rule_id}&host_id=storm-" in text
        assert "dashboard: http://127.0.0.1:3000/d/fleetwatch-hosts/?var-host_id=storm-" in text
        assert "<table" in html and html.count("<td>storm-") == 10

        message = wait_until(lambda: slack.posts, what="the Slack message")[0]
        assert message["channel"] == "#storms"
        assert message["attachments"][0]["title"] == "[FIRING:50] Storm test (warning) on 50 hosts"
        assert "(the first 10 of 50 hosts)" in message["attachments"][0]["text"]

        # Every message since is the whole group again (repeats), never one per host.
        time.sleep(3)  # a few of the stack's 2 s repeat intervals: a per-host storm would have sent 50 by now
        assert all(len(p["alerts"]) == 50 for p in hook.posts)
        assert len([m for to, m in mailbox.messages if "storm@example.com" in to]) < 5
    finally:
        api.delete(f"{api.base}/api/v1/alerts/rules/{rule_id}", timeout=30)
        hook.stop()
        slack.stop()


def test_a_webhook_that_fails_twice_gets_the_alert_on_the_third_attempt(api, stack):
    flaky = Receiver(fail_first=2)
    rule_id = rule(
        api, name="Retry test", expression="cpu.load5 > 100000", duration="static", channels=[f"webhook:{flaky.url}"]
    )
    channel = f"webhook:{flaky.url}"
    try:
        before = api.get(f"{api.base}/api/v1/alerts/channels", timeout=30).json()
        assert before["alertmanager_reachable"] and before["alertmanager_log"]  # fleetwatch up's layout
        mine = next(c for c in before["channels"] if c["channel"] == channel)
        assert mine["rules"] == [rule_id] and mine["kind"] == "webhook" and mine["last_failure"] is None

        push(stack, "node_load5", ["retry-host"], 1e6)
        post = wait_until(lambda: flaky.posts, what="the webhook, after two failures")[0]
        assert flaky.answers[:3] == [500, 500, 200]  # Alertmanager's own retry, with backoff
        assert [a["labels"]["host_id"] for a in post["alerts"]] == ["retry-host"]
        assert post["alerts"][0]["labels"]["rule_id"] == rule_id

        # Visible: the channel's last failure and why, its success after retrying, its kind's counters.
        def seen():
            channels = api.get(f"{api.base}/api/v1/alerts/channels", timeout=30).json()["channels"]
            found = next(c for c in channels if c["channel"] == channel)
            return found if found["last_success"] else None

        after = wait_until(seen, what="the retried delivery in /alerts/channels")
        assert after["last_failure"] <= after["last_success"]
        assert "unexpected status code 500" in after["last_error"] and flaky.url in after["last_error"]
        counters = after["integration"]
        assert counters["failed_attempts"] >= 2 + mine["integration"]["failed_attempts"]
        assert counters["last_failure"] and counters["last_success"]
    finally:
        api.delete(f"{api.base}/api/v1/alerts/rules/{rule_id}", timeout=30)
        flaky.stop()


def test_alertmanagers_log_gives_each_channel_its_last_failure_and_error(tmp_path):
    from gateway.alert_deliveries import notify_log

    log = tmp_path / "alertmanager.log"
    log.write_text(
        "ts=2026-11-30T06:26:02.293Z caller=notify.go:732 level=warn component=dispatcher receiver=rule-010 "
        'integration=webhook[1] msg="Notify attempt failed, will retry later" attempts=1 '
        'err="unexpected status code 500: http://127.0.0.1:31344/hook: \\"down\\""\n'
        "ts=2026-11-30T06:26:03.386Z caller=notify.go:743 level=info component=dispatcher receiver=rule-010 "
        'integration=webhook[1] msg="Notify success" attempts=3\n'
        "ts=2026-11-30T06:30:00.000Z caller=dispatch.go:354 level=error component=dispatcher "
        'msg="Notify for alerts failed" num_alerts=1 err="rule-011/email[0]: notify retry canceled after 4 '
        'attempts: establish connection to server: dial tcp 127.0.0.1:25: connect: connection refused"\n'
    )
    seen = notify_log(log)
    assert seen[("rule-010", "webhook", 1)] == {
        "last_failure": "2026-11-30T06:26:02.293Z",
        "error": 'unexpected status code 500: http://127.0.0.1:31344/hook: "down"',
        "last_success": "2026-11-30T06:26:03.386Z",
    }
    email = seen[("rule-011", "email", 0)]
    assert email["last_failure"] == "2026-11-30T06:30:00.000Z" and "connection refused" in email["error"]
