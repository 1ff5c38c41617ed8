"""The one redaction point: what it masks, what it leaves, and that it stays linear.

No timing assertion: linearity is guarded by running redaction of adversarial 1 MB
lines (the shapes that made the old pattern quadratic) in a subprocess with a generous
hard timeout, a hang guard. The measurements are in benchmarks/redaction.py and
docs/reliability.md ("Redaction cost").
"""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO

import pytest

from modelops_calabaria import redaction
from modelops_calabaria.logging import MAX_LOGGED_CHARS, bound, configure_logging, get_logger
from modelops_calabaria.redaction import redact, register_secrets_in


@pytest.fixture
def own_secrets(monkeypatch):
    """Secrets registered by a test are forgotten after it ('postgres' would mask every later line)."""
    monkeypatch.setattr(redaction, "_secrets", set(redaction._secrets))


@pytest.mark.parametrize("text, expected", [
    ("postgresql://u:pw1@db:5432/x", "postgresql://u:***@db:5432/x"),
    ("postgresql://u@db/x?sslpassword=Kq1 and more", "postgresql://u@db/x?sslpassword=*** and more"),
    ("postgresql://u@db/x?sslmode=require&password=Kq1", "postgresql://u@db/x?sslmode=require&password=***"),
    ("PGPASSWORD=s3cr HOME=/root", "PGPASSWORD=*** HOME=/root"),
    ("{'api_key': 'abc', 'n': 1}", "{'api_key': ***, 'n': 1}"),
    ("token=abc secret: 'x y'", "token=*** secret: ***"),
    ("n_tokens: 5, passes: 3", "n_tokens: 5, passes: 3"),
    ("tcp://10.0.0.1:8786 and postgresql://h:5432/db", "tcp://10.0.0.1:8786 and postgresql://h:5432/db"),
    ("sqlite:////tmp/run/study.db", "sqlite:////tmp/run/study.db"),
])
def test_masks_every_secret_bearing_form(text, expected):
    assert redact(text) == expected


def test_a_password_equal_to_the_user_is_masked_in_place_not_inside_the_scheme(own_secrets):
    register_secrets_in("postgresql://postgres:postgres@127.0.0.1:5432/db")
    shown = redact("cannot open postgresql+psycopg2://postgres:postgres@127.0.0.1:5432/db; also postgres elsewhere")
    assert shown == "cannot open postgresql+psycopg2://***:***@127.0.0.1:5432/db; also *** elsewhere"
    assert redact("postgresql://h/db") == "postgresql://h/db"


def test_a_registered_query_password_is_masked_anywhere(own_secrets):
    register_secrets_in("postgresql://u@db/x?sslpassword=Wq8keyPass")
    assert redact("the key file said Wq8keyPass") == "the key file said ***"


_ADVERSARIAL = """
import sys, time
sys.path[:0] = {path!r}
from modelops_calabaria.redaction import redact, register_secrets_in
register_secrets_in("postgresql://u:abcd@h/db")
n = 1 << 20
for text in ["a" * n, "postgresql://" + "a" * n + ":" + "b" * n + "@h", "x://a:b" * (n // 7), "password='a " * (n // 12),
             "a@" * (n // 2), "a b " * (n // 4), "a://" * (n // 4), "abcd" * (n // 4), "p" * n, ":" * n, "@" * n]:
    redact(text)
print("done")
"""


def test_redaction_of_adversarial_megabyte_lines_finishes():
    """A hang guard, not a timing test: the old pattern took minutes on these shapes."""
    proc = subprocess.run([sys.executable, "-c", _ADVERSARIAL.format(path=sys.path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr


def test_logged_values_are_bounded_after_redaction():
    stream = StringIO()
    configure_logging("json", stream=stream)
    try:
        get_logger("test").info("model error", error="x" * 1_000_000 + " postgresql://u:Lk2secret@db/x")
        get_logger("test").info("best", params={"choice": "c" * 500_000})
    finally:
        configure_logging("json")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and all(len(line) < 3 * MAX_LOGGED_CHARS for line in lines)
    first = json.loads(lines[0])
    assert first["error"].startswith("x" * 100) and "more characters]" in first["error"]
    assert "Lk2secret" not in stream.getvalue()


def test_bound_cuts_after_the_limit_and_says_so():
    assert bound("abc", 5) == "abc"
    assert bound("abcdefgh", 5) == "abcde... [3 more characters]"
