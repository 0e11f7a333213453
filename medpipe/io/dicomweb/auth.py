"""Where DICOMweb credentials come from, and a URL that is safe to show.

Credentials are read from the environment or a netrc file, never from the command line; they live only in the
:class:`Credentials` record (whose repr hides them) and the HTTP session. Everything shown to a user (errors,
results, sidecars) names the server by :func:`server_name`: scheme, host, port and path, never userinfo or a query.

Precedence (first that applies): ``--netrc FILE`` > ``MEDPIPE_DICOMWEB_TOKEN`` (bearer) >
``MEDPIPE_DICOMWEB_USER`` + ``MEDPIPE_DICOMWEB_PASSWORD`` (basic) > ``~/.netrc`` > no credentials.
"""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from medpipe.errors import ConfigError

ENV_USER = "MEDPIPE_DICOMWEB_USER"
ENV_PASSWORD = "MEDPIPE_DICOMWEB_PASSWORD"
ENV_TOKEN = "MEDPIPE_DICOMWEB_TOKEN"
CREDENTIAL_HINT = (f"set {ENV_USER} and {ENV_PASSWORD}, or {ENV_TOKEN} for a bearer token, "
                   "or add a 'machine HOST login USER password PASSWORD' line to a netrc file (--netrc FILE)")


@dataclass(frozen=True)
class Credentials:
    """How to authenticate: ``kind`` is none, basic or bearer; ``source`` says where it came from (no secret)."""

    kind: str = "none"
    source: str = "none"
    user: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """A phrase for messages, e.g. ``"basic credentials from MEDPIPE_DICOMWEB_USER/PASSWORD"``."""
        return "no credentials" if self.kind == "none" else f"{self.kind} credentials from {self.source}"


def server_name(url: str) -> str:
    """``url`` without userinfo, query or fragment: what messages and records may show."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"


def check_url(url: str) -> str:
    """The DICOMweb root ``url`` if it is usable (http/https, a host, no credentials or query in it); else a
    :class:`ConfigError` that shows only the scrubbed URL."""
    parts = urlsplit(url.strip())
    shown = server_name(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("not a DICOMweb URL: expected http(s)://HOST[:PORT]/PATH", path=shown,
                          hint="e.g. http://127.0.0.1:8042/dicom-web")
    try:
        _ = parts.port
    except ValueError as err:
        raise ConfigError("the URL's port is not a number", path=shown) from err
    if parts.username is not None or parts.password is not None:
        raise ConfigError("the URL carries credentials (user:password@); they would end up in shell history "
                          "and process lists", path=shown, hint=CREDENTIAL_HINT)
    if parts.query or parts.fragment:
        raise ConfigError("the URL has a query string or fragment; give the DICOMweb root only", path=shown)
    return url.strip().rstrip("/")


def resolve_credentials(url: str, netrc_file: Path | None = None) -> Credentials:
    """The credentials for ``url`` by the documented precedence (see the module docstring)."""
    host = urlsplit(url).hostname or ""
    if netrc_file is not None:
        found = _from_netrc(Path(netrc_file), host, explicit=True)
        if found is None:
            raise ConfigError(f"no 'machine {host}' (or 'default') entry in the netrc file", path=netrc_file,
                              hint=CREDENTIAL_HINT)
        return found
    token = os.environ.get(ENV_TOKEN)
    if token:
        return Credentials("bearer", ENV_TOKEN, secret=token)
    user, password = os.environ.get(ENV_USER), os.environ.get(ENV_PASSWORD)
    if user or password:
        if not (user and password):
            missing = ENV_PASSWORD if user else ENV_USER
            raise ConfigError(f"{missing} is not set (both {ENV_USER} and {ENV_PASSWORD} are needed)",
                              hint=CREDENTIAL_HINT)
        return Credentials("basic", f"{ENV_USER}/{ENV_PASSWORD}", user, password)
    home = Path.home() / ".netrc"
    if home.is_file():
        found = _from_netrc(home, host, explicit=False)
        if found is not None:
            return found
    return Credentials()


def _from_netrc(path: Path, host: str, *, explicit: bool) -> Credentials | None:
    if not path.is_file():
        raise ConfigError("netrc file not found", path=path, hint="give an existing file to --netrc")
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except netrc.NetrcParseError as err:
        # the parser's own message can quote a token of the file (a password): show only the line number
        raise ConfigError(f"netrc file cannot be parsed (line {err.lineno})", path=path) from None
    except OSError as err:
        raise ConfigError(f"netrc file cannot be read: {err.strerror}", path=path) from None
    if entry is None:
        return None
    login, _account, password = entry
    if not login or not password:
        if explicit:
            raise ConfigError(f"the netrc entry for {host} needs both login and password", path=path)
        return None
    return Credentials("basic", f"netrc {path}", login, password)
