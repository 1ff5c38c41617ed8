"""IMIS as an Optuna sampler, so a posterior run uses the calibration wire unchanged.

:class:`ImisSampler` proposes every point from what the shared study records
(:mod:`.records`): the first ``initial`` points from the prior; after that,
each coordinator adds a component (:func:`.imis.new_component`, built from the
COMPLETE trials it can read at that moment) and draws ``per_stage`` points
from it, then adds the next. RUNNING trials have no likelihood yet: they count
nowhere until they complete. Before a point is returned its source is written
to the shared study, so the final weights never depend on a coordinator's
memory or random state: a killed coordinator loses nothing, and a restarted or
joining one reads the components and sources back.

A stage costs in proportion to the trials that finished since the last one:
with a ``reader`` (the study backend's ``trials_since``) the sampler reads only
trials newer than its cursor (plus the ones it saw RUNNING), and folds them
into an incremental :class:`.incremental.MixtureState`; the study's records
are re-read only when a trial's source or component is not known yet (another
coordinator's draw). Without a reader every stage reads every trial.

Contract: thread-safe (one draw at a time); :meth:`attach` must be called
with the shared study's storage before the first draw when the sampler runs on
a copy of the study (the fast path's mirror). Without it, the study passed to
the sampler is the one recorded into.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial

from modelops_calabaria.backend.base import StudyBackend
from modelops_calabaria.dbretry import retry_db
from modelops_calabaria.job import ParameterSpec, PosteriorSpec
from modelops_calabaria.logging import get_logger
from modelops_calabaria.posterior.imis import PRIOR, Component, new_component
from modelops_calabaria.posterior.incremental import MixtureState
from modelops_calabaria.posterior.prior import joint_prior
from modelops_calabaria.posterior.records import COMPONENT_PREFIX, FINISHED, draw_key, parse_records

# (study_id, cursor, skip, recheck) -> (stored trials with .trial_id and .trial, new cursor): StudyBackend.trials_since
Reader = Callable[[int, int, set[int], set[int]], tuple[list[Any], int]]

log = get_logger(__name__)


class ImisSampler(optuna.samplers.BaseSampler):
    """Incremental mixture importance sampling over a job's float parameters."""

    def __init__(self, parameters: Mapping[str, ParameterSpec], spec: PosteriorSpec, seed: int = 0) -> None:
        self.prior = joint_prior(parameters)
        self.spec = spec
        self._seed = seed
        self._space: dict[str, BaseDistribution] = {
            n: FloatDistribution(float(p.lower), float(p.upper), log=p.log)  # type: ignore[arg-type]
            for n, p in parameters.items()
        }
        self._lock = threading.Lock()
        self._target: tuple[Any, int] | None = None
        self._entropy = 0
        self._rng: np.random.Generator | None = None
        self._components: dict[str, Component] = {}
        self._sources: dict[str, str] = {}
        self._loaded = False
        self._active: Component | None = None
        self._active_draws = 0
        self._since_refresh = 0
        self.ess: float | None = None  # at the last stage; read by the run's ESS stop rule
        self.stages = 0
        self._reader: Reader | None = None
        self._state = MixtureState(self.prior)
        self._cursor = -1  # trial ids start at 0 in some storages (the journal)
        self._pending: set[int] = set()  # ids of trials read while not finished: read again next stage
        self.trials_read = 0  # trials read from the study by the stages (the cost the cursor keeps flat)

    def attach(self, backend: StudyBackend, study_id: int, entropy: str | None = None, incremental: bool = True) -> None:
        """Record into (and read from) this study of ``backend``. ``entropy`` (a coordinator id)
        decorrelates the draws of coordinators sharing a study; None keeps a lone run reproducible
        from the job seed. ``incremental`` (the default): each stage reads only the trials new
        since the last one (``StudyBackend.trials_since``); else the whole study every stage."""
        reader: Reader | None = backend.trials_since if incremental else None
        with self._lock:
            self._target = (backend, study_id)
            self._entropy = zlib.crc32(entropy.encode()) if entropy else 0
            self._rng = None
            self._loaded = False
            self._reader = reader
            self._state, self._cursor, self._pending = MixtureState(self.prior), -1, set()

    # -- Optuna's sampler interface ------------------------------------------------------------

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        with self._lock:
            return self._draw(study)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        raise RuntimeError(f"IMIS samples all parameters jointly; '{param_name}' is not in the job's space")

    def reseed_rng(self) -> None:
        with self._lock:
            self._rng = None
            self._entropy = (self._entropy + 1) & 0xFFFFFFFF

    # -- drawing -----------------------------------------------------------------------------

    def _where(self, study: optuna.Study) -> tuple[Any, int]:
        if self._target is None:
            raise RuntimeError("ImisSampler.attach(backend, study_id) must be called before the first draw")
        return self._target

    def _refresh(self, storage: StudyBackend, study_id: int) -> None:
        attrs = retry_db("posterior records", lambda: storage.study_attrs(study_id))
        components, sources = parse_records(attrs)
        self._components.update(components)
        self._sources.update(sources)
        self._loaded = True
        self._since_refresh = 0

    def _draw(self, study: optuna.Study) -> dict[str, float]:
        storage, study_id = self._where(study)
        if self._rng is None:
            self._rng = np.random.default_rng([self._seed, self._entropy])
        if not self._loaded:
            self._refresh(storage, study_id)
        n_prior = sum(1 for s in self._sources.values() if s == PRIOR)
        if n_prior < self.spec.initial and self._since_refresh >= max(1, self.spec.initial // 10):
            self._refresh(storage, study_id)  # other coordinators' prior draws count too
            n_prior = sum(1 for s in self._sources.values() if s == PRIOR)
        source = PRIOR
        if n_prior >= self.spec.initial:
            if self._active is None or self._active_draws >= self.spec.per_stage:
                self._new_stage(storage, study_id)
            if self._active is not None:
                source = self._active.id
        if source == PRIOR:
            u = self.prior.sample_u(self._rng, 1)
        else:
            u = self._active.sample(self._rng, 1)  # type: ignore[union-attr]
            self._active_draws += 1
        x = self.prior.from_u(u)[0]
        params = {name: float(v) for name, v in zip(self.prior.names, x)}
        key = draw_key(self.prior.names, params)
        retry_db("posterior records", lambda: storage.set_study_attr(study_id, key, source))
        self._sources[key] = source
        self._since_refresh += 1
        return params

    def _read_new(self, storage: StudyBackend, study_id: int) -> None:
        """Fold the trials finished since the last stage into the mixture state."""
        if self._reader is None:
            trials = retry_db("posterior trials", lambda: storage.trials(study_id, states=FINISHED))
            self.trials_read += len(trials)
            finished = [t for t in trials if t.number not in self._state.seen]
        else:
            reader, cursor, pending = self._reader, self._cursor, set(self._pending)
            stored, self._cursor = retry_db("posterior trials", lambda: reader(study_id, cursor, set(), pending))
            self.trials_read += len(stored)
            finished = []
            for st in stored:
                if st.trial.state in FINISHED:
                    self._pending.discard(st.trial_id)
                    finished.append(st.trial)
                else:
                    self._pending.add(st.trial_id)
        later = self._state.add_trials(finished, self._sources)
        if later:  # another coordinator's draws or components: read the records, then count what is still unknown
            self._refresh(storage, study_id)
            for cid, component in self._components.items():
                self._state.add_component(cid, component)
            self._state.add_trials(later, self._sources, final=True)

    def _new_stage(self, storage: StudyBackend, study_id: int) -> None:
        """Add a component around the highest-weight COMPLETE trial (or keep drawing from the prior)."""
        for cid, component in self._components.items():
            self._state.add_component(cid, component)
        self._read_new(storage, study_id)
        sample = self._state.sample()
        n = len(sample.numbers)
        self.ess = sample.ess if n else None
        if n < max(2 * self.prior.dim + 2, 5) or not sample.weights.any():
            self._active = None  # too little told yet: the prior again, still a valid source
            return
        centres = {c.mean for c in self._components.values()}
        exclude = [i for i in range(n) if tuple(float(v) for v in sample.u[i]) in centres]
        component, _ = new_component(sample.u, sample.weights, self.spec.per_stage, exclude)
        retry_db("posterior records", lambda: storage.set_study_attr(
            study_id, COMPONENT_PREFIX + component.id, component.to_json()))
        self._components[component.id] = component
        self._state.add_component(component.id, component)
        self._active, self._active_draws = component, 0
        self.stages += 1
        log.info("posterior stage", stage=self.stages, complete=n, ess=round(sample.ess, 1),
                 components=len(self._components), read=self.trials_read)
