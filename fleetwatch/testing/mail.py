"""A real SMTP server on loopback (aiosmtpd) for alert emails."""

from __future__ import annotations

from fleetwatch.testing.waits import free_port


class Mailbox:
    """A real SMTP server on loopback (aiosmtpd) that keeps every message it is sent."""

    def __init__(self, **options):
        """``options``: aiosmtpd Controller's, e.g. ``tls_context`` and ``require_starttls``."""
        from aiosmtpd.controller import Controller

        self.messages: list = []
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, **options)

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's hook name
        from email import message_from_bytes

        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"

    def start(self):
        self._controller.start()
        return self

    def stop(self):
        self._controller.stop()
