"""The posterior as arviz ``InferenceData``, written to ``posterior.nc`` (``posterior.arviz: true``).

arviz (with xarray and h5netcdf) is the optional ``posterior`` extra
(``pip install 'modelops-calabaria[posterior]'``): imported only here, only when asked for.

Groups: ``posterior`` holds an equally weighted, systematic resample of the weighted
trials (one chain, ``draws`` draws; arviz's summaries assume equal weights, so the
importance sample itself cannot go there); ``sample_stats`` holds, per resampled draw,
the ``trial`` it came from and that trial's normalised importance ``weight``;
``observed_data`` each target's observations (NaN for a gap). The importance-weighted
trials themselves are posterior.csv.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.job import CalibrationJob
from modelops_calabaria.posterior.records import WeightedSample
from modelops_calabaria.posterior.summary import resample

EXTRA = "pip install 'modelops-calabaria[posterior]'"


def load_arviz() -> Any:
    """The arviz module, or JobSpecError (one line naming the extra) when it is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # arviz announces its refactor on import
            import arviz
    except ImportError as e:
        raise JobSpecError(f"posterior.arviz: true needs arviz, which is not installed here: {EXTRA}, "
                           "or remove the field") from e
    return arviz


def inference_data(job: CalibrationJob, sample: WeightedSample, observed: dict[str, np.ndarray],
                   draws: int = 4000, seed: int = 0) -> Any:
    """arviz InferenceData of ``sample`` (module docstring); ``observed``: target name -> (n, m) values."""
    az = load_arviz()
    names = list(job.parameters)
    picks = resample(sample.weights, draws, np.random.default_rng(seed)) if sample.numbers else np.zeros(0, dtype=int)
    posterior = {n: sample.x[picks, j][None, :] for j, n in enumerate(names)}
    stats = {"trial": np.asarray(sample.numbers, dtype=np.int64)[picks][None, :],
             "weight": sample.weights[picks][None, :]}
    dims = {f"obs_{t}": [f"{t}_row", f"{t}_column"] for t in observed}
    idata = az.from_dict(posterior=posterior, sample_stats=stats,
                         observed_data={f"obs_{t}": v for t, v in observed.items()}, dims=dims)
    idata.posterior.attrs.update({"method": "imis", "ess": float(sample.ess), "n_trials": len(sample.numbers),
                                  "resampled": "systematic resample of the importance-weighted trials"})
    return idata


def write_netcdf(path: Path, idata: Any) -> Path:
    """Write ``idata`` to ``path`` (replaced atomically)."""
    tmp = path.with_name(f".{path.name}.tmp")
    idata.to_netcdf(str(tmp))
    tmp.replace(path)
    return path
