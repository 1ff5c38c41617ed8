"""Re-simulating chosen parameters: ``calabaria simulate`` and the report's fit bands.

Two ways to run a job's model with fixed parameters:

- :func:`simulate_outputs` runs it in this process (``calabaria simulate``) and
  :func:`write_outputs` writes every output: an array as CSV with its real index
  and column names, a table (mapping of columns, DataFrame) as a long CSV of its
  key columns and values (:mod:`modelops_calabaria.targets.longform`), or all of
  them in one long Parquet file;
- :func:`simulate_at_observed` runs replicates through a
  :class:`~modelops_calabaria.simulation.SimulationService` (Dask or inline,
  as a calibration does) and brings back the simulated values at each
  target's observed points only. The service returns scalars, never outputs,
  so each observed point is asked for as a *probe* target whose "score" is the
  simulated value at that point (:class:`PointProbe`).

Replicate seeds for both come from :func:`fresh_seeds`: derived from the job
seed but distinct from the seeds of every trial (see
:mod:`modelops_calabaria.calibration.seeds`).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from modelops_calabaria.errors import ConfigurationError, JobSpecError
from modelops_calabaria.job import CalibrationJob, TargetSpec, midpoint
from modelops_calabaria.models import LoadedModel
from modelops_calabaria.reporting.fit import FitData
from modelops_calabaria.simulation.base import SimulationService
from modelops_calabaria.targets.align import EPOCH
from modelops_calabaria.targets.data import PARQUET_SUFFIXES
from modelops_calabaria.targets.evaluate import CompiledTarget
from modelops_calabaria.targets.longform import LongFormError, LongTable, to_long

# Trial seeds are SeedSequence([job seed, r]) (common) or ([job seed, trial + 1, r]) (independent);
# this tag in the second place keeps re-simulation seeds apart from both for any realistic trial count.
FRESH_SEED_TAG = 0x7265706F


def fresh_seeds(job_seed: int, n: int) -> list[int]:
    """``n`` replicate seeds from the job seed, none of them a seed any trial used."""
    return [int(np.random.SeedSequence([job_seed, FRESH_SEED_TAG, r]).generate_state(1, dtype=np.uint32)[0]) for r in range(n)]


def _coerce(job: CalibrationJob, name: str, raw: Any, where: str) -> Any:
    if name not in job.parameters and name not in job.fixed:
        raise ConfigurationError(f"{where} {name}: not a parameter of this job",
                                 hint=f"parameters: {', '.join(job.parameters)}; fixed: {', '.join(job.fixed) or '-'}")
    spec = job.parameters.get(name)
    if spec is not None and spec.kind == "categorical":
        for choice in spec.choices or []:  # a --param value is text: match it to a choice's written form
            if raw == choice or (isinstance(raw, str) and raw == (str(choice).lower() if isinstance(choice, bool) else str(choice))):
                return choice
        raise ConfigurationError(f"{where} {name}: {str(raw)[:40]!r} is not one of its choices {spec.choices}")
    if isinstance(raw, bool) or (isinstance(raw, str) and raw.strip().lower() in ("true", "false")):
        raise ConfigurationError(f"{where} {name}: {raw!r} is a boolean, not a number")
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        raise ConfigurationError(f"{where} {name}: {str(raw)[:40]!r} is not a number") from None
    if not np.isfinite(value):
        raise ConfigurationError(f"{where} {name}: {raw!r} is not a finite number")
    if spec is not None and spec.kind == "int":
        if value != int(value):
            raise ConfigurationError(f"{where} {name}: {raw!r} is not a whole number, but {name} is an int parameter")
        return int(value)
    return value


def parse_params(job: CalibrationJob, items: list[str], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``NAME=VALUE`` strings over ``base`` (default: the middle of every range) → parameter values."""
    params = {name: midpoint(spec) for name, spec in job.parameters.items()}
    for name, raw in (base or {}).items():
        params[name] = _coerce(job, name, raw, "parameter")
    given: set[str] = set()
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise ConfigurationError(f"--param {item[:60]!r}: expected NAME=VALUE")
        if name in given:
            raise ConfigurationError(f"--param {name} is given twice", hint="give each parameter once")
        given.add(name)
        params[name] = _coerce(job, name, raw, "--param")
    return params


def params_file(path: Path) -> dict[str, Any]:
    """Parameters from a ``best.yaml`` (its ``best_params``) or a plain YAML mapping of name → value.

    Raises:
        ConfigurationError: missing, unreadable, or not a mapping of parameters.
    """
    if not path.is_file():
        raise ConfigurationError(f"parameters file not found: {path}", hint="pass a run's best.yaml, or --best RUN_DIR")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigurationError(f"parameters file {path} cannot be read as YAML: {str(e).splitlines()[0]}") from None
    if isinstance(data, dict) and "best_params" in data:
        data = data["best_params"]
    if not isinstance(data, dict) or not data:
        raise ConfigurationError(f"parameters file {path} holds no parameters",
                                 hint="expected best.yaml of a run (best_params: ...) or a mapping NAME: VALUE")
    return data


def best_params_of(run_dir: Path) -> dict[str, Any]:
    """The best parameters of a run directory (its best.yaml)."""
    if not run_dir.is_dir():
        raise ConfigurationError(f"run directory {run_dir} does not exist", hint="pass the --output of a calibration")
    return params_file(run_dir / "best.yaml")


def check_output_dir(out_dir: Path) -> None:
    """Raise ConfigurationError unless ``out_dir`` is, or can be made, a directory (creates nothing)."""
    from modelops_calabaria.outputs import check_output_dir as check

    check(out_dir, "output")


def simulate_outputs(model: LoadedModel, job: CalibrationJob, params: Mapping[str, Any], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Run the model once per seed in this process; the outputs of each run.

    Raises:
        JobSpecError: the model raised, or returned something other than a mapping of outputs.
    """
    runs = []
    for seed in seeds:
        try:
            outputs = model.run({**job.fixed, **params}, seed)
        except Exception as e:  # noqa: BLE001 - the user's model failed: report it, no traceback dump
            raise JobSpecError(f"model {job.model} raised {type(e).__name__}: {e} with parameters {dict(params)}") from e
        if not isinstance(outputs, Mapping):
            raise JobSpecError(f"model {job.model} returned {type(outputs).__name__}, expected a mapping of output name "
                               f"to array: return a dict such as {{'cases': array}}")
        runs.append(dict(outputs))
    return runs


def _labels(job: CalibrationJob, targets: Sequence[CompiledTarget], output: str, value: Any, width: int) -> tuple[str, list[str]]:
    """Index name and column names of one array output: the pandas ones, else the targets', else generic."""
    index_name = getattr(getattr(value, "index", None), "name", None)
    columns = getattr(value, "columns", None)
    if columns is not None and len(columns) == width:
        cols = [str(c) for c in columns]
    elif getattr(value, "name", None) is not None and width == 1 and not hasattr(value, "columns"):
        cols = [str(value.name)]
    else:
        cols = []
    for spec, t in zip(job.targets, targets):
        if t.output == output:
            index_name = index_name or spec.index_column
            if not cols and len(t.observed.columns) == width:
                cols = list(t.observed.columns)
    if not cols:
        cols = [output] if width == 1 else [f"{output}_{j}" for j in range(width)]
    return str(index_name or "index"), cols


def is_table(value: Any) -> bool:
    """Whether an output is a table (a mapping of columns, a DataFrame, a Series): written long."""
    return isinstance(value, Mapping) or hasattr(value, "columns") or (hasattr(value, "index") and hasattr(value, "name"))


def long_output(job: CalibrationJob, targets: Sequence[CompiledTarget], name: str, value: Any) -> LongTable:
    """One output as a long table, its keys named as the job's targets name them.

    Raises:
        JobSpecError: the output is not a table :func:`to_long` can read.
    """
    on = [k for spec in job.targets if spec.output == name for k in (spec.on or [])]
    index = next((spec.index_column for spec in job.targets if spec.output == name and spec.index_column), None)
    width_cols = next((list(t.observed.columns) for t in targets if t.output == name), [])
    try:
        table = to_long(value, name=name, key_columns=on, value_columns=width_cols if not is_table(value) else (),
                        index_name=index or "index")
    except LongFormError as e:
        raise JobSpecError(f"model {job.model}: {e}") from e
    for spec, t in zip(job.targets, targets):  # day numbers of a target with start_date: shown as its dates
        if spec.output != name or spec.start_date is None:
            continue
        start = np.datetime64(str(spec.start_date)[:10], "D")
        for k in t.observed.keys or ():
            if k.kind == "date" and table.kinds.get(k.name) == "number":
                table.keys[k.name] = start + np.round(table.keys[k.name]).astype(np.int64).astype("timedelta64[D]")
                table.kinds[k.name] = "date"
    return table


def _long_rows(job: CalibrationJob, targets: Sequence[CompiledTarget], runs: list[dict[str, Any]], seeds: Sequence[int],
               name: str) -> dict[str, list[Any]]:
    """``replicate, seed, output, <keys...>, value`` columns of one output over every run."""
    parts = []
    for r, run in enumerate(runs):
        records = long_output(job, targets, name, run[name]).records()
        value_name = list(records)[-1]
        n = len(records[value_name])
        parts.append({"replicate": [r] * n, "seed": [seeds[r]] * n, "output": [name] * n,
                      **{k: v for k, v in records.items() if k != value_name}, "value": records[value_name]})
    return _union(parts)


def _union(parts: Sequence[dict[str, list[Any]]]) -> dict[str, list[Any]]:
    """Columns of several tables stacked; a column a table lacks is None there; ``value`` last."""
    names: list[str] = []
    for part in parts:
        names += [k for k in part if k not in names and k != "value"]
    names.append("value")
    out: dict[str, list[Any]] = {k: [] for k in names}
    for part in parts:
        n = len(part["value"])
        for k in names:
            out[k].extend(part.get(k, [None] * n))
    return out


def write_outputs(job: CalibrationJob, targets: Sequence[CompiledTarget], runs: list[dict[str, Any]],
                  seeds: Sequence[int], out: Path) -> list[Path]:
    """Write the runs' outputs.

    ``out`` a directory: ``<output>.csv`` per output. An array output keeps its wide
    form (its index column, one column per value column; ``replicate``, ``seed``
    first with several runs). A table output (mapping of columns, DataFrame,
    Series) is long: ``replicate, seed, output, <key columns...>, value`` (plus a
    ``column`` key when it has several value columns), dates as ISO dates.
    ``out`` ending in ``.parquet``: one Parquet file of every output, long (keys an
    output lacks are null).
    """
    if out.suffix.lower() in PARQUET_SUFFIXES:
        return [_write_parquet(job, targets, runs, seeds, out)]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in runs[0]:
        path = out / f"{name}.csv"
        if is_table(runs[0][name]):
            columns = _long_rows(job, targets, runs, seeds, name)
            with path.open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(list(columns))
                w.writerows(["" if v is None else v for v in row] for row in zip(*columns.values()))
            written.append(path)
            continue
        first = runs[0][name]
        index = getattr(first, "index", None)
        arrays = []
        for run in runs:
            v = run[name]
            arr = np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=float)
            arrays.append(arr.reshape(-1, 1) if arr.ndim <= 1 else arr.reshape(arr.shape[0], -1))
        width = arrays[0].shape[1]
        index_name, cols = _labels(job, targets, name, first, width)
        idx = list(index) if index is not None and len(index) == arrays[0].shape[0] else list(range(arrays[0].shape[0]))
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            many = len(runs) > 1
            w.writerow([*(["replicate", "seed"] if many else []), index_name, *cols])
            for r, arr in enumerate(arrays):
                for i, row in zip(idx, arr):
                    w.writerow([*([r, seeds[r]] if many else []), i, *row.tolist()])
        written.append(path)
    return written


def _write_parquet(job: CalibrationJob, targets: Sequence[CompiledTarget], runs: list[dict[str, Any]],
                   seeds: Sequence[int], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = _union([_long_rows(job, targets, runs, seeds, name) for name in runs[0]])
    arrays = {}
    for k, v in columns.items():
        try:
            arrays[k] = pa.array(v)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # one key holding numbers in one output, labels in another
            arrays[k] = pa.array([None if x is None else str(x) for x in v])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(arrays), path)
    return path


def fit_data(spec: TargetSpec, t: CompiledTarget, quantiles: dict[float, np.ndarray] | None = None, **extra: Any) -> FitData:
    """A target's observations as the fit figures draw them: keyed targets with their
    keys (dates as dates), targets by row index with their index column's name."""
    obs = t.observed
    if obs.keys is not None:
        keys = {}
        for k in obs.keys:
            if k.kind == "date":
                keys[k.name] = (EPOCH + np.round(k.values).astype(np.int64).astype("timedelta64[D]")).astype("datetime64[D]")
            else:
                keys[k.name] = k.values.astype(float) if k.kind == "number" else k.values.astype(str).astype(object)
        x_label = obs.time_key or obs.keys[0].name
        return FitData(t.name, None, obs.columns, obs.values, quantiles, keys=keys, time_key=obs.time_key,
                               x_label=x_label, output=t.output, **extra)
    return FitData(t.name, obs.index, obs.columns, obs.values, quantiles,
                           x_label=spec.index_column or "index", output=t.output, **extra)


def observed_quantiles(values: np.ndarray) -> dict[float, np.ndarray]:
    """Quantiles (2.5, 25, 50, 75, 97.5 %) over replicates of an (R, n, m) array."""
    from modelops_calabaria.reporting.figures import QUANTILES

    return {q: np.quantile(values, q, axis=0) for q in QUANTILES}


def aligned(targets: Sequence[CompiledTarget], runs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Each target's simulated values at its observed points over the runs: target → (R, n, m).

    Raises:
        JobSpecError: an output does not fit its target (missing, too short, wrong width).
    """
    from modelops_calabaria.errors import SimulationError

    try:
        return {t.name: np.stack([t.align(run) for run in runs]) for t in targets}
    except SimulationError as e:
        raise JobSpecError(str(e)) from e


@dataclass(frozen=True)
class PointProbe(CompiledTarget):
    """A target whose per-replicate "score" is the simulated value at one observed point.

    Run through a simulation service, the replicate scores of a trial are then
    the simulated series at the observed index, without the service ever
    returning outputs.
    """

    row: int = 0
    col: int = 0

    def loss(self, sim: np.ndarray, outputs: Mapping[str, Any] | None = None) -> float:
        return float(sim[self.row, self.col])


def probes(targets: Sequence[CompiledTarget]) -> tuple[PointProbe, ...]:
    """One probe per observed point of every target (named ``<target>[row,col]``)."""
    out = []
    for t in targets:
        n, m = t.observed.values.shape
        for i in range(n):
            for j in range(m):
                # By keyword: CompiledTarget's fields grew (aligner), and positional row/col landed in them.
                out.append(PointProbe(f"{t.name}[{i},{j}]", t.output, t.observed, t.score, "mean_of_scores", 1.0,
                                      aligner=t.aligner, row=i, col=j))
    return tuple(out)


def simulate_at_observed(service: SimulationService, targets: Sequence[CompiledTarget],
                         param_sets: Sequence[Mapping[str, Any]], seeds: Sequence[Sequence[int]]) -> list[dict[str, np.ndarray] | str]:
    """Run one replicate per seed of ``seeds[k]`` for each parameter set ``param_sets[k]`` on
    ``service`` (whose context holds :func:`probes` of ``targets``), all submitted before any is awaited.

    Returns:
        Per parameter set: target → (R, n, m) simulated values at the observed
        points, or the error text when a replicate failed.
    """
    handles = [service.submit(-1 - k, params, list(seeds[k])) for k, params in enumerate(param_sets)]
    results: list[dict[str, np.ndarray] | str] = []
    for evaluation in service.gather(handles):
        if evaluation.error is not None:
            results.append(evaluation.error)
            continue
        reps = evaluation.replicate_scores
        per: dict[str, np.ndarray] = {}
        for t in targets:
            n, m = t.observed.values.shape
            per[t.name] = np.array([[[rep[f"{t.name}[{i},{j}]"] for j in range(m)] for i in range(n)] for rep in reps])
        results.append(per)
    return results


def run_simulate(job_file: Path, items: list[str], params_path: Path | None, best_dir: Path | None, replicates: int,
                 seed: int | None, out: Path, plot: bool) -> list[Path]:
    """``calabaria simulate``: check every input, run the model ``replicates`` times in this
    process, write the outputs (:func:`write_outputs`: a directory of CSV files, or one
    ``.parquet`` file) and, with ``plot``, ``fit-<target>.png`` (and ``fit-<target>-log.png``
    when the values span decades) beside them.

    Raises:
        JobSpecError, ConfigurationError: a bad job, parameter, parameters file or
            output path, or a model that fails or returns no mapping (nothing written).
    """
    from modelops_calabaria.job import load_job
    from modelops_calabaria.models import canonical_ref, load_model
    from modelops_calabaria.targets.evaluate import compile_targets

    job = load_job(job_file)
    if params_path is not None and best_dir is not None:
        raise ConfigurationError("--params and --best both name parameters", hint="pass one of them")
    base = params_file(params_path) if params_path is not None else best_params_of(best_dir) if best_dir is not None else None
    parquet = out.suffix.lower() in PARQUET_SUFFIXES
    check_output_dir(out.parent if parquet else out)
    if parquet and out.is_dir():
        raise ConfigurationError(f"output {out} is a directory: pass a file name ending in .parquet, or a directory without it")
    model = load_model(canonical_ref(job.model, job.base_dir))
    targets = compile_targets(job, model.outputs)
    params = parse_params(job, items, base)
    from modelops_calabaria.models.catalog import range_problems

    if problems := range_problems(job.model, {**job.fixed, **params}, {}):
        raise JobSpecError(f"values outside what model {job.model} accepts:", problems=problems)
    seeds = fresh_seeds(job.seed, replicates) if seed is None else [seed + r for r in range(replicates)]
    runs = simulate_outputs(model, job, params, seeds)
    fits = aligned(targets, runs) if plot else {}
    for name in runs[0]:
        if is_table(runs[0][name]):
            long_output(job, targets, name, runs[0][name])  # an unreadable table: refused before anything is written
    written = write_outputs(job, targets, runs, seeds, out)
    if plot:
        from modelops_calabaria.reporting import figures, style

        folder = out.parent if parquet else out
        for spec, t in zip(job.targets, targets):
            fit = fit_data(spec, t, observed_quantiles(fits[t.name]), label=f"{replicates} replicate(s)")
            for suffix, log in (("", False), ("-log", True)):
                if log and not fit.wants_log():
                    continue
                with style.styled():
                    png = style.to_png(figures.fit_figure(fit, log=log))
                path = folder / f"fit-{t.name}{suffix}.png"
                path.write_bytes(png)
                written.append(path)
    return written
