"""Keep database passwords out of logs, outputs and manifests: the one redaction point.

Every line the service prints goes through :func:`redact`: the CLI's output and
error printer, the structlog pipeline and the standard-library log handlers
(:mod:`modelops_calabaria.logging`), and the results files.

Two mechanisms, both in :func:`redact`:

- **Known secrets.** A storage URL or DSN the service is given (``--storage``,
  ``CALABARIA_STORAGE``, the job's ``execution.storage``) is registered with
  :func:`register_secrets_in`; its password, as written and percent-decoded, is
  then masked wherever it appears, whatever characters it holds.
- **Patterns**, for secrets nobody registered: ``scheme://user:PASSWORD@host``,
  where the password runs to the *last* ``@`` on the line that is followed by a
  host (so a raw ``@``, space,
  ``:``, ``/``, ``%`` or quote in it stays masked; a line that also holds an
  unrelated ``@`` is over-masked, never under-masked), and the keyword forms
  ``password=...`` (libpq DSN, URL query) and ``'password': ...``, quoted or not.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import unquote

MASK = "***"
# scheme://user:password@host  ->  scheme://user:***@host (greedy: to the last '@' of the line
# that is followed by a host)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^\n]*)(?P<tail>@)(?=[A-Za-z0-9\[_.%\-])")
# password=secret, password = 'it''s', "password": "x" (libpq keyword DSN, URL query, dict reprs)
_KV_PASSWORD = re.compile(
    r"""(?P<head>\bpassword['"]?\s*[=:]\s*)(?P<pw>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.)*"|\S+)""",
    re.IGNORECASE,
)
MIN_SECRET_LENGTH = 4  # shorter passwords are masked by the patterns only (literal masking would garble text)

_secrets: set[str] = set()
_lock = threading.Lock()


def _unquote_kv(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        inner = value[1:-1]
        return re.sub(r"\\(.)", r"\1", inner).replace("''", "'")
    return value


def register_secrets_in(text: str | None) -> None:
    """Remember the password(s) of a storage URL or DSN so that :func:`redact` masks them anywhere."""
    if not text:
        return
    found = [m["pw"] for line in text.splitlines() for m in _URL_PASSWORD.finditer(line)]
    found += [_unquote_kv(m["pw"]) for m in _KV_PASSWORD.finditer(text)]
    with _lock:
        for pw in found:
            for form in {pw, unquote(pw)}:
                if len(form) >= MIN_SECRET_LENGTH and form != MASK:
                    _secrets.add(form)


def redact(text: str) -> str:
    """Return ``text`` with every known secret, URL password and ``password=`` value replaced by ``***``."""
    if not isinstance(text, str):
        text = str(text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", text)
    return _KV_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)


def redact_value(value: Any) -> Any:
    """Redact strings inside nested dicts/lists/tuples; other values pass through."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value
