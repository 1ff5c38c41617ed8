"""IMIS stages cost what is new: the sampler reads each trial once through the backend's
cursor and keeps the weights incrementally, and they equal the from-scratch weights.

Real storages (SQLite, Optuna journal file, PostgreSQL), a real Optuna study asking the
sampler, a closed-form log-likelihood told back; some trials told FAIL (they count in the
mixture with weight 0).
"""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from modelops_calabaria.backend.factory import open_store
from modelops_calabaria.job import job_from_dict
from modelops_calabaria.posterior import build_posterior_sampler
from modelops_calabaria.posterior.prior import joint_prior
from modelops_calabaria.posterior.records import weigh
from modelops_calabaria.storage import parse_storage_url
from modelops_calabaria.targets.scores import ZERO_LIKELIHOOD_NLL

from conftest import unique


@pytest.fixture(params=["journal", "postgresql"])  # the generic backend and the relational one (SQLite's is PostgreSQL's code)
def storage(request, tmp_path) -> str:
    return f"journal:///{tmp_path}/study.log" if request.param == "journal" else request.getfixturevalue("pg_url")


def test_stages_read_each_trial_once_and_weigh_as_the_full_recomputation(storage):
    storage_url = storage
    job = job_from_dict({
        "study": unique("inc"), "model": "seir", "seed": 5, "n_replicates": 1,
        "parameters": {"a": {"lower": -5.0, "upper": 5.0}, "b": {"lower": 0.1, "upper": 10.0, "log": True}},
        "targets": [{"name": "c", "output": "cases", "data": {"w": [0], "c": [1]}, "score": "poisson_nll"}],
        "posterior": {"initial": 40, "per_stage": 10}})
    store = open_store(parse_storage_url(storage_url))
    try:
        sampler = build_posterior_sampler(job)
        study = optuna.create_study(study_name=job.study, storage=store.optuna_storage, sampler=sampler)
        sid = store.study_id(job.study)
        reads: list[int] = []

        class Counted:  # the real backend, counting what each stage's cursor read returns
            def __getattr__(self, name):
                return getattr(store, name)

            def trials_since(self, study_id, cursor, skip, recheck):
                stored, top = store.trials_since(study_id, cursor, skip, recheck)
                reads.append(len(stored))
                return stored, top

        sampler.attach(Counted(), sid, None)
        space = {"a": FloatDistribution(-5.0, 5.0), "b": FloatDistribution(0.1, 10.0, log=True)}
        for i in range(150):
            trial = study.ask(space)
            a, b = trial.params["a"], trial.params["b"]
            if i % 17 == 5:
                study.tell(trial, state=TrialState.FAIL)
                continue
            if i % 13 == 7:  # a likelihood estimate of 0 (uBSL): completes, weighs 0
                study.tell(trial, ZERO_LIKELIHOOD_NLL)
                continue
            nll = 0.5 * ((a - 1.0) / 0.4) ** 2 + 0.5 * ((np.log(b) - 0.5) / 0.3) ** 2
            study.tell(trial, nll)
        assert sampler.stages >= 8
        # the first stage reads the prior draws, each later one a stage's worth, plus the trial being
        # asked (RUNNING while the sampler draws it), which the next stage reads again
        assert reads[0] <= 41 and max(reads[1:]) <= 11
        trials = store.optuna_storage.get_all_trials(sid, deepcopy=False)
        # fold in the trials after the last stage, then compare with the from-scratch weights
        sampler._read_new(store.optuna_storage, sid)
        assert len(trials) <= sum(reads) <= len(trials) + len(reads)  # each trial once, each asking one once more
        mine = sampler._state.sample()
        full = weigh(joint_prior(job.parameters), trials, store.optuna_storage.get_study_system_attrs(sid))
        assert mine.numbers == full.numbers and mine.n_draws == full.n_draws == len(trials)
        assert np.allclose(mine.weights, full.weights, rtol=1e-9, atol=1e-15) and mine.ess == pytest.approx(full.ess)
        zero = [i for i, n in enumerate(full.numbers) if trials[n].value == ZERO_LIKELIHOOD_NLL]
        assert zero and not full.weights[zero].any() and not mine.weights[zero].any()
    finally:
        store.close()
