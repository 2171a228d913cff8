"""A Server-Sent Events client for tests and benches: reads a stream in a thread, keeps every event."""

from __future__ import annotations

import contextlib
import json
import socket
import threading

import requests

from fleetwatch.testing.waits import wait_until


class SseClient:
    """One open ``GET`` of an event stream; ``events`` fills as they arrive, ``comments`` with heartbeats."""

    def __init__(self, url: str, headers: dict | None = None, params: dict | None = None, timeout_s: float = 60):
        self.events: list[dict] = []  # {"id": int | None, "event": str, "data": dict}
        self.comments: list[str] = []
        self.closed = threading.Event()
        self.response = requests.get(url, headers=headers, params=params, stream=True, timeout=timeout_s)
        self.status = self.response.status_code
        if self.status != 200:
            self.error = self.response.json()
            self.closed.set()
            return
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            for line in self.response.iter_lines(chunk_size=None, decode_unicode=True):
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line:
                    key, _, value = line.partition(":")
                    fields[key] = value.removeprefix(" ")
                elif "event" in fields:
                    event_id = fields.get("id")
                    self.events.append(
                        {
                            "id": int(event_id) if event_id else None,
                            "event": fields["event"],
                            "data": json.loads(fields.get("data", "null")),
                        }
                    )
                    fields = {}
                else:
                    fields = {}
        except (requests.RequestException, AttributeError, ValueError):
            pass  # closed under the reader (close()), or the server went
        finally:
            self.closed.set()

    def wait_for(self, check, timeout_s: float = 30.0, what: str = "event") -> list[dict]:
        """Wait until ``check(event)`` holds for some event; all those that match."""
        return wait_until(lambda: [e for e in list(self.events) if check(e)], timeout_s, what, 0.1)

    def close(self) -> None:
        """Hang up at once, as a browser closing its tab does."""
        # The reader thread sits in a read holding the stream's buffer lock: closing the
        # response would wait for the next event; shutting the socket down wakes the read.
        sock = getattr(getattr(self.response.raw, "connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.closed.wait(5)
        self.response.close()
