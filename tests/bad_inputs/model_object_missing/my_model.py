"""A model file without the object the job names."""


def simulate_weekly(params, seed):
    return {"cases": [0.0] * 10}
