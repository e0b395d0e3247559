"""A small HTTP file server on 127.0.0.1 for download tests: ranges, cut connections, a gate.

It serves bytes from a dict, answers ``Range: bytes=N-`` with 206 (unless told to ignore ranges),
can close the connection after a number of bytes of a full (non-range) response, can hold a
response halfway until the test opens a gate, and records every request it saw.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FileServer:
    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: int | None = None
    """Full responses stop (connection closed) after this many bytes, ``cuts`` times."""
    cuts: int = 1
    honor_range: bool = True
    pause_at: int | None = None
    """Full responses wait at this byte until :attr:`gate` is set."""
    gate: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    """(path, Range header) of every GET."""
    sent: int = 0
    """Body bytes sent, over all responses."""
    base_url: str = ""

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            range_header = self.headers.get("Range")
            with lock:
                state.requests.append((name, range_header))
            body = state.files.get(name)
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            if range_header and state.honor_range:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
                self.send_header("Accept-Ranges", "bytes" if state.honor_range else "none")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            payload = body[start:]
            cut = None
            if start == 0 and state.cut_after is not None and state.cuts > 0:
                with lock:
                    state.cuts -= 1
                cut = state.cut_after
            if start == 0 and state.pause_at is not None:
                self._send(payload[: state.pause_at])
                state.paused.set()
                state.gate.wait(60)
                payload = payload[state.pause_at :]
            if cut is not None:
                self._send(payload[:cut])
                self.close_connection = True
                return
            self._send(payload)

        def _send(self, data: bytes) -> None:
            for offset in range(0, len(data), 64 * 1024):
                chunk = data[offset : offset + 64 * 1024]
                self.wfile.write(chunk)
                with lock:
                    state.sent += len(chunk)
            self.wfile.flush()

    return Handler


@contextmanager
def serve_files(state: FileServer) -> Iterator[FileServer]:
    """Run ``state``'s server on a free 127.0.0.1 port for the ``with`` block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.gate.set()
        server.shutdown()
        server.server_close()
