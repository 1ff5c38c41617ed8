"""A model module that fails at import."""

RATE = 1 / 0


def simulate(params, seed):
    return {"cases": [0.0] * 10}
