"""Network addresses the user gives: the Dask scheduler to use, the host local servers listen on.

Pure parsing, no network and no Dask import, so that a bad address is refused when
the settings are resolved, before any file, study or cluster exists.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from modelops_calabaria.errors import ConfigurationError

INLINE = "inline"
SCHEDULER_SCHEMES = ("tcp", "tls", "ws", "wss")
_SCHEDULER_HINT = "use tcp://HOST:PORT (a Dask scheduler listens on 8786 by default), 'inline', or leave it empty to start a local cluster"
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")


def scheduler_address(value: str | None) -> str | None:
    """The scheduler setting, checked: None (start a local cluster), ``inline``, or ``SCHEME://HOST:PORT``.

    ``HOST:PORT`` without a scheme means ``tcp://HOST:PORT``. Accepted schemes:
    tcp, tls, ws, wss. The port is required and must be 1-65535.

    Raises:
        ConfigurationError: the address cannot name a Dask scheduler (one line: which part is wrong).
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.lower() == INLINE:
        return INLINE
    scheme, sep, _ = text.partition("://")
    if not sep:
        scheme, text = "tcp", f"tcp://{text}"
    scheme = scheme.lower()
    if scheme not in SCHEDULER_SCHEMES:
        raise ConfigurationError(f"scheduler address {value!r}: unknown scheme '{scheme}' (expected one of {', '.join(SCHEDULER_SCHEMES)})",
                                 hint=_SCHEDULER_HINT)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise ConfigurationError(f"scheduler address {value!r}: the port must be a number from 1 to 65535 ({e})",
                                 hint=_SCHEDULER_HINT) from e
    if parts.username is not None or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigurationError(f"scheduler address {value!r}: expected only SCHEME://HOST:PORT", hint=_SCHEDULER_HINT)
    if not parts.hostname or not _valid_host(parts.hostname):
        raise ConfigurationError(f"scheduler address {value!r}: the host is empty or not a valid host name", hint=_SCHEDULER_HINT)
    if port is None or not 1 <= port <= 65535:
        raise ConfigurationError(f"scheduler address {value!r}: the port is missing or 0 (expected 1-65535)", hint=_SCHEDULER_HINT)
    host = parts.hostname
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


EVERY_INTERFACE = ("0.0.0.0", "::")  # the only non-loopback values accepted, and only spelled out
_LISTEN_HINT = "use 127.0.0.1 (the default: this machine only), ::1, localhost, or exactly 0.0.0.0 (or ::) to listen on every interface"


def listen_host(value: str) -> str:
    """The host the service's own servers bind to: loopback, or every interface on purpose.

    Accepted: a loopback IP address (``127.0.0.1``, ``127.0.0.2``, ``::1``), a host name
    every address of which is loopback (``localhost``), or exactly ``0.0.0.0`` / ``::``
    (every interface: the local cluster's servers are unauthenticated). Anything else is
    refused, ``0`` (which the resolver reads as every interface) and a machine's own
    network address included: a value that binds beyond loopback must say so.

    Raises:
        ConfigurationError: not an IP address or host name, or not loopback (one line).
    """
    host = value.strip().strip("[]")
    if not host or not _valid_host(host):
        raise ConfigurationError(f"listen host {value!r} is not an IP address or host name", hint=_LISTEN_HINT)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        if str(address) in EVERY_INTERFACE and host == str(address) or address.is_loopback:
            return host
        raise ConfigurationError(f"listen host {value!r} is not a loopback address: the local cluster's servers are unauthenticated",
                                 hint=_LISTEN_HINT)
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError) as e:
        raise ConfigurationError(f"listen host {value!r} does not resolve ({e})", hint=_LISTEN_HINT) from None
    outside = sorted(a for a in resolved if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if outside or not resolved:
        raise ConfigurationError(f"listen host {value!r} resolves to {', '.join(outside) or 'nothing'}, not a loopback address: "
                                 "the local cluster's servers are unauthenticated", hint=_LISTEN_HINT)
    return host


def host_port(host: str, port: int) -> str:
    """``host:port``, with IPv6 addresses in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host))
