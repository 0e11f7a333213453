"""HTTPS in front of the test Orthanc: a TLS-terminating TCP forwarder (Python's ssl) with a self-signed
certificate made by openssl, so that certificate verification is tested against a real TLS server.

Debian's Orthanc 1.10.1 crashes (SIGSEGV) on the first TLS handshake with ``SslEnabled`` (its civetweb with
OpenSSL 3), so TLS is terminated here and the bytes go on to Orthanc's plain HTTP port on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import select
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services.orthanc import Orthanc


def self_signed_certificate(workdir: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files for 127.0.0.1 (subjectAltName IP), made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = workdir / "key.pem", workdir / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def _relay(tls: ssl.SSLSocket, upstream: socket.socket) -> None:
    """Copy bytes both ways in one thread (an SSL socket must not be read and written from two threads)."""
    with contextlib.suppress(OSError):
        while True:
            readable = [tls] if tls.pending() else select.select([tls, upstream], [], [], 60)[0]
            if not readable:
                break
            for src, dst in ((tls, upstream), (upstream, tls)):
                if src in readable:
                    data = src.recv(65536)
                    if not data:
                        raise ConnectionResetError  # one side closed: close both
                    dst.sendall(data)
    for s in (tls, upstream):
        with contextlib.suppress(OSError):
            s.close()


class TlsProxy:
    """Listens on 127.0.0.1 (a free port) with TLS and forwards each connection to ``target_port``."""

    def __init__(self, target_port: int, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed by stop()
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:  # ssl.SSLError included: a client that refused our certificate
            conn.close()
            return
        _relay(tls, upstream)

    def stop(self) -> None:
        self.listener.close()


@dataclass
class HttpsOrthanc:
    """The test Orthanc behind HTTPS: ``dicomweb`` is an https:// URL; ``ca_file`` the certificate to trust."""

    dicomweb: str
    ca_file: Path


@pytest.fixture(scope="session")
def orthanc_tls(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsOrthanc]:
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    proxy = TlsProxy(orthanc.port, cert, key)
    try:
        yield HttpsOrthanc(f"https://127.0.0.1:{proxy.port}/dicom-web", cert)
    finally:
        proxy.stop()
