"""A real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) on 127.0.0.1 for the DICOMweb tests.

:func:`start_orthanc` writes a JSON config (a free HTTP port, a temporary storage folder, the DICOM port off,
remote access off, HTTP basic authentication with one registered user, the DICOMweb plugin), starts the binary
and waits until ``/system`` answers (about 0.3-3 s). The session fixture ``orthanc`` in tests/conftest.py starts
one for the whole test session and stops it at the end; tests skip cleanly where Orthanc is not installed.
"""

from __future__ import annotations

import base64
import ctypes
import glob
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

USER = "medpipe"
# a sentinel: tests check that it never reaches output, logs or errors
PASSWORD = "ZZPWSENTINEL-orthanc-7c1d"
PLUGIN_GLOBS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*", "/usr/lib/orthanc/libOrthancDicomWeb.so*")


@dataclass
class Orthanc:
    """A running Orthanc: ``root`` is its base URL, ``dicomweb`` the DICOMweb root."""

    process: subprocess.Popen
    port: int
    storage: Path
    log: Path

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.root}/dicom-web"

    def get_json(self, path: str) -> object:
        """GET ``root + path`` with the registered user (Orthanc's own REST API, an independent check)."""
        request = urllib.request.Request(self.root + path, headers={"Authorization": _basic(USER, PASSWORD)})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin library that ``orthanc-dicomweb`` installed (``dpkg -L``, then known paths)."""
    if shutil.which("dpkg"):
        listing = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=False)
        libs = [Path(line) for line in listing.stdout.splitlines() if "libOrthancDicomWeb.so" in line]
        if existing := [p for p in libs if p.is_file()]:
            return existing[0]
    for pattern in PLUGIN_GLOBS:
        if hits := sorted(glob.glob(pattern)):
            return Path(hits[0])
    return None


def _die_with_parent() -> None:
    """Linux: Orthanc gets SIGTERM when the test process dies (a killed pytest leaves no server behind)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_orthanc(workdir: Path, timeout_s: float = 30.0) -> Orthanc:
    """Start Orthanc with the DICOMweb plugin in ``workdir``; skip when it is not installed."""
    binary, plugin = shutil.which("Orthanc"), dicomweb_plugin()
    if binary is None or plugin is None:
        pytest.skip("Orthanc with the DICOMweb plugin is not installed (Debian: apt-get install orthanc "
                    "orthanc-dicomweb)")
    last = ""
    for _ in range(3):  # a port taken between free_port() and Orthanc's bind: try another
        port = free_port()
        storage = workdir / f"storage-{port}"
        config = {
            "Name": "medpipe-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [str(plugin)], "HttpThreadsCount": 8, "SaveJobs": False,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": "127.0.0.1"},
        }
        cfg = workdir / f"orthanc-{port}.json"
        cfg.write_text(json.dumps(config, indent=2))
        log = workdir / f"orthanc-{port}.log"
        with log.open("wb") as fh:
            process = subprocess.Popen([binary, str(cfg)], stdout=fh, stderr=subprocess.STDOUT, cwd=workdir,
                                       preexec_fn=_die_with_parent)
        server = Orthanc(process, port, storage, log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if "dicom-web" in server.get_json("/plugins"):  # type: ignore[operator]
                    return server
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            time.sleep(0.1)
        server.stop()
        last = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"Orthanc did not start; last log:\n{last}")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc with DICOMweb and basic authentication for the whole test session."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        server.stop()
