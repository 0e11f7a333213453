"""One DICOMweb server: a dicomweb-client with medpipe's credentials, TLS, retry and error policy."""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from medpipe.errors import InputError, RemoteError
from medpipe.io.dicomweb.auth import CREDENTIAL_HINT, Credentials, check_url, resolve_credentials, server_name

FORMAT_VERSION = 1
RETRIABLE_HTTP = (408, 429, 502, 503, 504)
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
T = TypeVar("T")


@dataclass(frozen=True)
class DicomwebOptions:
    """How to talk to a server: netrc file, TLS verification, retries (after the first try) and timeouts."""

    netrc_file: Path | None = None
    insecure: bool = False
    retries: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 30.0



class Connection:
    """A dicomweb-client bound to one server with medpipe's retry, TLS and error policy."""

    def __init__(self, url: str, options: DicomwebOptions) -> None:
        import requests
        from dicomweb_client import DICOMwebClient

        self.url = check_url(url)
        self.server = server_name(url)
        self.options = options
        self.credentials: Credentials = resolve_credentials(self.url, options.netrc_file)
        session = requests.Session()
        session.verify = not options.insecure
        if self.credentials.kind == "basic":
            session.auth = (self.credentials.user or "", self.credentials.secret or "")
        elif self.credentials.kind == "bearer":
            session.headers["Authorization"] = f"Bearer {self.credentials.secret}"
        self.client = DICOMwebClient(self.url, session=session, timeout=options.timeout_s)
        self.client.set_http_retry_params(retry=False)  # medpipe's own bounded loop below

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` with bounded retries; a :class:`RemoteError` naming the server and ``what`` when it fails."""
        import requests
        from pydicom.errors import InvalidDicomError
        from urllib3.exceptions import InsecureRequestWarning

        attempts = max(1, self.options.retries + 1)
        for attempt in range(1, attempts + 1):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", InsecureRequestWarning)
                    return fn()
            except requests.HTTPError as err:
                status = err.response.status_code if err.response is not None else 0
                if status in RETRIABLE_HTTP and attempt < attempts:
                    self._wait(attempt)
                    continue
                raise self._http_error(what, status, attempt) from err
            except requests.exceptions.SSLError as err:
                raise RemoteError(f"{what} failed: TLS certificate verification failed", path=self.server,
                                  hint="set REQUESTS_CA_BUNDLE to your CA file; --insecure only for a server "
                                       "you trust") from err
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
                if attempt < attempts:
                    self._wait(attempt)
                    continue
                kind = ("timed out" if isinstance(err, requests.Timeout) or "timed out" in str(err)
                        else "the connection broke" if isinstance(err, requests.exceptions.ChunkedEncodingError)
                        else "could not connect")
                raise RemoteError(f"{what} failed: {kind} after {attempts} attempt(s)", path=self.server,
                                  hint="check the URL and that the server is running") from err
            except requests.RequestException as err:
                raise RemoteError(f"{what} failed: {type(err).__name__}", path=self.server) from err
            except (ValueError, InvalidDicomError) as err:  # a response dicomweb-client/pydicom cannot decode
                raise RemoteError(f"{what} failed: the server's answer could not be decoded", path=self.server,
                                  hint="is the URL the DICOMweb root (e.g. http://host:8042/dicom-web)?") from err
        raise RemoteError(f"{what} failed", path=self.server)  # not reached: the loop returns or raises

    def _wait(self, attempt: int) -> None:
        time.sleep(self.options.backoff_s * 2 ** (attempt - 1))

    def _http_error(self, what: str, status: int, attempts: int) -> RemoteError:
        if status == 401:
            found = ("the server requires credentials" if self.credentials.kind == "none"
                     else f"the server refused the {self.credentials.describe()}")
            return RemoteError(f"{what} failed: {found} (HTTP 401)", path=self.server, hint=CREDENTIAL_HINT)
        if status == 403:
            return RemoteError(f"{what} failed: access forbidden for the {self.credentials.describe()} (HTTP 403)",
                               path=self.server)
        if status == 404:
            return RemoteError(f"{what} failed: not found (HTTP 404)", path=self.server,
                               hint="is the URL the DICOMweb root (e.g. http://host:8042/dicom-web)?")
        tries = f" after {attempts} attempt(s)" if status in RETRIABLE_HTTP else ""
        return RemoteError(f"{what} failed: HTTP {status}{tries}", path=self.server)



def json_value(item: dict[str, Any], tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


def check_uid(uid: str, what: str, server: str | None = None) -> None:
    if not (0 < len(uid) <= 64 and UID_RE.match(uid)):
        if server:
            raise RemoteError(f"the server listed a {what} UID that is not a DICOM UID", path=server)
        raise InputError(f"not a DICOM {what} UID: {uid!r}", hint="UIDs are digits and dots, at most 64 characters")

