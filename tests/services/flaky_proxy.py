"""An unreliable network in front of the test Orthanc: an HTTP forwarder on 127.0.0.1 that answers a chosen
number of requests with an HTTP error (503 by default) instead of forwarding them, and counts every request by
method. Used to show that medpipe's DICOMweb retries happen, are bounded, and lose or duplicate nothing.
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.services.orthanc import Orthanc

#: Headers that describe one hop, not the message: never forwarded.
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
        "proxy-authenticate", "host", "content-length"}


@dataclass
class FlakyProxy:
    """``url``: the proxy's root (same paths as Orthanc's). ``fail_next(n)`` makes the next ``n`` requests fail;
    ``fail_after(n)`` lets ``n`` more through and fails every later one. ``requests`` counts requests by method."""

    server: ThreadingHTTPServer
    upstream_port: int
    requests: Counter[str] = field(default_factory=Counter)
    status: int = 503
    _fail: int = 0
    _pass_then_fail: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def fail_next(self, n: int, status: int = 503) -> None:
        with self._lock:
            self._fail, self._pass_then_fail, self.status = n, None, status
            self.requests.clear()

    def fail_after(self, n: int, status: int = 503) -> None:
        with self._lock:
            self._fail, self._pass_then_fail, self.status = 0, n, status
            self.requests.clear()

    def should_fail(self, method: str) -> bool:
        with self._lock:
            self.requests[method] += 1
            if self._fail > 0:
                self._fail -= 1
                return True
            if self._pass_then_fail is not None:
                if self._pass_then_fail == 0:
                    return True
                self._pass_then_fail -= 1
            return False


def _handler(proxy: FlakyProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    data += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return data
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self) -> None:
            body = self._body()
            if proxy.should_fail(self.command):
                message = b"unavailable (test proxy)"
                self.send_response(proxy.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(message)))
                self.end_headers()
                self.wfile.write(message)
                return
            upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                data = response.read()
            finally:
                upstream.close()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in _HOP:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _forward

    return Handler


@pytest.fixture
def flaky_orthanc(orthanc: Orthanc) -> Iterator[FlakyProxy]:
    """The session's Orthanc behind a :class:`FlakyProxy` (forwarding everything until told otherwise)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    proxy = FlakyProxy(server, orthanc.port)
    server.RequestHandlerClass = _handler(proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
