"""Cost of the one redaction point (redaction.redact) on long lines: is it linear?

Times redact() on each adversarial shape at 1 MiB and 4 MiB (best of 5), and prints the
ratio: 4x the input should cost about 4x the time (the old backtracking pattern cost 16x).
(Below about 256 KiB the text fits in the CPU caches and the ratios mislead.) Run by hand:

    .venv/bin/python benchmarks/redaction.py

Numbers, command and commit: docs/reliability.md ("Redaction cost").
"""

from __future__ import annotations

import time

from modelops_calabaria.redaction import redact, register_secrets_in

SHAPES = {
    "one token (a model error)": lambda n: "a" * n,
    "URL with a long user and password": lambda n: "postgresql://" + "a" * (n // 2) + ":" + "b" * (n // 2) + "@h",
    "many URL schemes": lambda n: "x://a:b" * (n // 7),
    "many password= keys": lambda n: "password='a " * (n // 12),
    "many '@'": lambda n: "a@" * (n // 2),
    "many words": lambda n: "a b " * (n // 4),
    "many '://'": lambda n: "a://" * (n // 4),
    "a registered secret repeated": lambda n: "abcd" * (n // 4),
}


def best_of(text: str, runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        redact(text)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    register_secrets_in("postgresql://u:abcd@h/db")
    print(f"{'shape':<36} {'1 MiB ms':>10} {'4 MiB ms':>10} {'ratio':>6}")
    for name, make in SHAPES.items():
        small, large = best_of(make(1024 * 1024)), best_of(make(4 * 1024 * 1024))
        print(f"{name:<36} {small * 1e3:>10.1f} {large * 1e3:>10.1f} {large / small:>6.1f}")


if __name__ == "__main__":
    main()
