"""The built-in age-structured SEIR, reporting weekly cases keyed by date and age group.

Week w of model days 7w..7w+6 is dated by its last day (START + 7w + 6). The
schedules the built-in accepts (per-day beta and reporting_rate) pass through:
``model.schedulable`` declares them (docs/projections.md).
"""

import numpy as np

from modelops_calabaria.models.compartmental import DEFAULT_AGE_GROUPS, age_seir

START = np.datetime64("2024-09-02")


def model(params, seed):
    weekly = age_seir(params, seed)["cases_by_age"]
    weeks, groups = weekly.shape
    ends = (START + 7 * np.arange(weeks) + 6).astype(str)
    return {"cases": {"date": np.repeat(ends, groups), "age_group": np.tile(np.array(DEFAULT_AGE_GROUPS), weeks),
                      "cases": weekly.reshape(-1)}}


model.outputs = ("cases",)
model.schedulable = age_seir.schedulable
