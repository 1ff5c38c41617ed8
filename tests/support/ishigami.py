"""The Ishigami function as a model (tests/test_sensitivity*.py, test_sweep*.py).

y = sin x1 + a sin² x2 + b x3⁴ sin x1 on [-π, π]³; with a = 7, b = 0.1 its Sobol'
indices are known in closed form (S1 = 0.3139, S2 = 0.4424, S3 = 0; ST1 = 0.5576,
ST2 = 0.4424, ST3 = 0.2437). ``noise`` (fixed) adds N(0, noise²) from the seed, for
replicate noise. Also a series output, to summarise with final/peak/sum/at.
"""

from __future__ import annotations

import math

import numpy as np

A, B = 7.0, 0.1


def value(x1: float, x2: float, x3: float) -> float:
    return math.sin(x1) + A * math.sin(x2) ** 2 + B * x3**4 * math.sin(x1)


def _exact() -> dict[str, list[float]]:
    v = A**2 / 8 + B * math.pi**4 / 5 + B**2 * math.pi**8 / 18 + 0.5
    v1 = 0.5 * (1 + B * math.pi**4 / 5) ** 2
    v2 = A**2 / 8
    v13 = B**2 * math.pi**8 * (1 / 18 - 1 / 50)
    return {"S1": [v1 / v, v2 / v, 0.0], "ST": [(v1 + v13) / v, v2 / v, v13 / v]}


EXACT = _exact()


def ishigami(params, seed):
    y = value(params["x1"], params["x2"], params["x3"])
    noise = float(params.get("noise", 0.0))
    if noise:
        y += noise * np.random.default_rng(seed).standard_normal()
    return {"y": np.array([y]), "series": y * np.linspace(0.0, 1.0, 11)}


ishigami.outputs = ("y", "series")
