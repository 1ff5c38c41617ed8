"""Keep database passwords out of logs, outputs and manifests: the one redaction point.

Every line the service prints goes through :func:`redact`: the CLI's output and
error printer, the structlog pipeline and the standard-library log handlers
(:mod:`modelops_calabaria.logging`), and the results files.

Two mechanisms, both in :func:`redact`:

- **Known secrets.** A storage URL or DSN the service is given (``--storage``,
  ``CALABARIA_STORAGE``, the job's ``execution.storage``) is registered with
  :func:`register_secrets_in`; its password, as written and percent-decoded, is
  then masked wherever it appears, whatever characters it holds, except inside a
  URL's scheme (a password ``postgres`` leaves ``postgresql://`` readable).
- **Patterns**, for secrets nobody registered: ``scheme://user:PASSWORD@host``,
  where the password runs to the *last* ``@`` on the line that is followed by a
  host (so a raw ``@``, space, ``:``, ``/``, ``%`` or quote in it stays masked; a
  line that also holds an unrelated ``@`` is over-masked, never under-masked); the
  user name is kept. And the keyword forms of every secret-bearing parameter
  (``password``, ``sslpassword``, ``passfile``, ``sslkey``, ``token``, ``secret``,
  ``api_key``, ...): ``name=...`` (libpq DSN, URL query) and ``'name': ...``,
  quoted or not.

Cost is linear in the text: the URL form is found by scanning for ``://`` (no
backtracking pattern runs over unbounded input), and the keyword pattern is
anchored on a word boundary and a fixed set of names.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

MASK = "***"
MAX_SCHEME = 32  # characters of a URL scheme looked back from '://'
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_USER = re.compile(r"[^:/@\s]*")  # a user name: stops at the next ':' '/' '@' or space
_HOST_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789[_.%-")
# Names whose value is a secret: password=..., "sslpassword": "...", api_key: ... (libpq DSN,
# URL query, dict reprs, environment dumps such as PGPASSWORD=...). The pattern starts with a
# fixed alternation of lower-case names (no word boundary, no prefix: PGPASSWORD and
# sslpassword end in one) and runs over the lower-cased text, where the engine skips every
# position that cannot start a name: linear, and several times faster than IGNORECASE.
_SECRET_NAMES = r"password|passwd|pwd|passfile|sslkey|secret|token|api[_-]?key|access[_-]?key"
_KV = r"""(?P<head>(?:%s)['"]?[ \t]{0,8}[=:][ \t]{0,8})(?P<pw>'(?:[^'\\\n]|\\.|'')*'|"(?:[^"\\\n]|\\.)*"|\S+)"""
_KV_PASSWORD = re.compile(_KV % _SECRET_NAMES)
_KV_ANY_CASE = re.compile(_KV % _SECRET_NAMES, re.IGNORECASE)  # text whose lower case changes its length


# Where a secret name can start, found with str.find (memchr speed) instead of running the
# pattern at every position: each literal, and the offsets back from it at which a name
# holding it starts (sslkey, api_key/apikey, access_key/accesskey hold "key").
_ANCHORS = (("pass", (0,)), ("pwd", (0,)), ("secret", (0,)), ("token", (0,)), ("key", (3, 4, 6, 7)))


def _kv_values(text: str) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each secret-bearing keyword value in ``text``, left to right,
    non-overlapping (as ``finditer`` would find them). The pattern is tried only where a
    secret name can start, so text without one costs a few ``str.find`` passes."""
    lower = text.lower()
    if len(lower) != len(text):  # a character whose lower case is longer: no position mapping
        for m in _KV_ANY_CASE.finditer(text):
            yield m.start("pw"), m.end("pw")
        return
    starts: set[int] = set()
    for literal, backs in _ANCHORS:
        i = lower.find(literal)
        while i >= 0:
            starts.update(i - b for b in backs if i - b >= 0)
            i = lower.find(literal, i + 1)
    end = -1
    for start in sorted(starts):
        if start < end:
            continue  # inside the previous match
        m = _KV_PASSWORD.match(lower, start)
        if m is not None:
            end = m.end()
            yield m.start("pw"), m.end("pw")


MIN_SECRET_LENGTH = 4  # shorter passwords are masked by the patterns only (literal masking would garble text)

_secrets: set[str] = set()
_lock = threading.Lock()


def _unquote_kv(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        inner = value[1:-1]
        return re.sub(r"\\(.)", r"\1", inner).replace("''", "'")
    return value


def _url_passwords(line: str) -> Iterator[tuple[int, int, int]]:
    """``(scheme start, password start, password end)`` of each ``scheme://user:PASSWORD@host``
    in one line, left to right. One pass: every ``://`` is found with ``str.find``, the
    scheme is looked back at most MAX_SCHEME characters, and the user name scan stops at
    the next ``:``/``/``, so no character is scanned more than a bounded number of times."""
    last_at = -1  # the password runs to the last '@' of the line that is followed by a host
    i = len(line)
    while True:
        i = line.rfind("@", 0, i)
        if i < 0:
            break
        if i + 1 < len(line) and line[i + 1] in _HOST_START:
            last_at = i
            break
    pos = 0
    while True:
        sep = line.find("://", pos)
        if sep < 0:
            return
        start = sep
        while start > 0 and sep - start < MAX_SCHEME and line[start - 1] in _SCHEME_CHARS:
            start -= 1
        user_end = _USER.match(line, sep + 3).end()  # type: ignore[union-attr]
        pos = user_end if user_end > sep else sep + 3
        if start == sep or not line[start].isalpha() or user_end >= len(line) or line[user_end] != ":":
            continue
        if last_at <= user_end:
            continue
        yield start, user_end + 1, last_at
        pos = last_at + 1


def _scheme_spans(text: str) -> list[tuple[int, int]]:
    """Spans of URL schemes (the characters before each ``://``), in order."""
    spans = []
    pos = 0
    while (sep := text.find("://", pos)) >= 0:
        start = sep
        while start > 0 and sep - start < MAX_SCHEME and text[start - 1] in _SCHEME_CHARS:
            start -= 1
        if start < sep:
            spans.append((start, sep))
        pos = sep + 3
    return spans


def register_secrets_in(text: str | None) -> None:
    """Remember the password(s) of a storage URL or DSN so that :func:`redact` masks them anywhere."""
    if not text:
        return
    found = [line[a:b] for line in text.splitlines() for _, a, b in _url_passwords(line)]
    found += [_unquote_kv(text[a:b]) for a, b in _kv_values(text)]
    with _lock:
        for pw in found:
            for form in {pw, unquote(pw)}:
                if len(form) >= MIN_SECRET_LENGTH and form != MASK:
                    _secrets.add(form)


def _mask_known(text: str, secret: str) -> str:
    """Replace each occurrence of ``secret`` by the mask, except those inside a URL scheme."""
    if secret not in text:
        return text
    spans = _scheme_spans(text) if "://" in text else []
    if not spans:
        return text.replace(secret, MASK)
    starts = [s for s, _ in spans]
    out, pos = [], 0
    i = text.find(secret)
    while i >= 0:
        k = bisect.bisect_right(starts, i) - 1
        inside = k >= 0 and i + len(secret) <= spans[k][1]
        if inside:
            i = text.find(secret, i + 1)
            continue
        out.append(text[pos:i])
        out.append(MASK)
        pos = i + len(secret)
        i = text.find(secret, pos)
    out.append(text[pos:])
    return "".join(out)


def _mask_urls(text: str) -> str:
    if "://" not in text:
        return text
    lines = text.split("\n")
    for n, line in enumerate(lines):
        if "://" not in line:
            continue
        pieces, pos = [], 0
        for _, a, b in _url_passwords(line):
            pieces += [line[pos:a], MASK]
            pos = b
        if pieces:
            lines[n] = "".join(pieces) + line[pos:]
    return "\n".join(lines)


def redact(text: str) -> str:
    """Return ``text`` with every known secret, URL password and secret-bearing ``name=`` value
    replaced by ``***``. Linear in ``len(text)`` (per registered secret)."""
    if not isinstance(text, str):
        text = str(text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        text = _mask_known(text, secret)
    text = _mask_urls(text)
    pieces, pos = [], 0
    for a, b in _kv_values(text):
        pieces += [text[pos:a], MASK]
        pos = b
    return "".join(pieces) + text[pos:] if pieces else text


def redact_value(value: Any) -> Any:
    """Redact strings inside nested dicts/lists/tuples; other values pass through."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value
