"""Real receivers for the notification tests: an HTTP server on 127.0.0.1 and an aiosmtpd SMTP server."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class _Server(ThreadingHTTPServer):
    # A listen backlog as servers have (http.server's is 5): with 5, a round's concurrent connects overflowed it
    # and each dropped SYN cost a 1 s retransmission, which is what once limited delivery here to ~44 events/s.
    request_queue_size = 128


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int = 0  # the sender's side of the TCP connection: one value per connection it opened

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """Records every POST; `dedup` counts distinct CloudEvent ids, as a receiver deduplicating by id would.
    `hang_first`: the first request blocks until `release` is set (then the connection is dropped).
    `keep_alive`: HTTP/1.1 with persistent connections, as real receivers answer; `drop_kept`: with it, close
    each connection after its response without saying so (as a receiver's idle timeout does)."""

    def __init__(self, port: int = 0, status: int = 200, hang_first: bool = False, keep_alive: bool = False,
                 drop_kept: bool = False) -> None:
        self.requests: list[Received] = []
        self.status = status
        self.hang_first = hang_first
        self.hanging = threading.Event()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.requests.append(Received(time.time(), self.path, dict(self.headers.items()), body,
                                                  self.client_address[1]))
                if receiver.hang_first and len(receiver.requests) == 1:
                    receiver.hanging.set()
                    receiver.release.wait(60)
                    self.close_connection = True
                    return
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if drop_kept:
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ids(self) -> list[str]:
        return [r.json().get("id") for r in self.requests if r.headers.get("Content-Type", "").startswith(
            "application/cloudevents+json")]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Mailbox:
    messages: list[tuple[Envelope, Message]] = field(default_factory=list)
    peers: list[object] = field(default_factory=list)  # the client address of each message's SMTP session

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        self.messages.append((envelope, message_from_bytes(content)))
        self.peers.append(session.peer)
        return "250 Message accepted for delivery"


class SmtpServer:
    def __init__(self) -> None:
        self.mailbox = Mailbox()
        self.port = free_port()
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def close(self) -> None:
        self.controller.stop()
