"""Searched parameters: kinds, bounds, steps, guesses and posterior priors.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from modelops_calabaria.job._base import _Spec
from modelops_calabaria.job.limits import MAX_ABS_BOUND, MAX_CHOICES, MAX_POSITIVE

class PriorSpec(_Spec):
    """An explicit prior of one float parameter for a posterior run, truncated to its bounds.

    ``normal`` takes ``mean`` and ``sd``; ``beta`` takes ``a`` and ``b`` (on the
    value itself, support 0..1); ``gamma`` takes ``shape`` and ``rate``.
    Without a prior a parameter is uniform on its bounds (log-uniform with ``log: true``).
    """

    dist: Literal["normal", "beta", "gamma"] = Field(description="prior distribution, truncated to the parameter's bounds: normal | beta | gamma")
    mean: float | None = Field(default=None, ge=-MAX_ABS_BOUND, le=MAX_ABS_BOUND, description='normal prior: mean')
    sd: float | None = Field(default=None, gt=0, le=MAX_POSITIVE, description='normal prior: standard deviation (> 0)')
    a: float | None = Field(default=None, gt=0, le=MAX_POSITIVE, description='beta prior: first shape parameter (> 0), on the value itself (support 0..1)')
    b: float | None = Field(default=None, gt=0, le=MAX_POSITIVE, description='beta prior: second shape parameter (> 0)')
    shape: float | None = Field(default=None, gt=0, le=MAX_POSITIVE, description='gamma prior: shape (> 0)')
    rate: float | None = Field(default=None, gt=0, le=MAX_POSITIVE, description='gamma prior: rate (> 0)')

    @model_validator(mode="after")
    def _check(self) -> PriorSpec:
        needs = {"normal": ("mean", "sd"), "beta": ("a", "b"), "gamma": ("shape", "rate")}[self.dist]
        missing = [n for n in needs if getattr(self, n) is None]
        if missing:
            raise ValueError(f"a {self.dist} prior needs {' and '.join(needs)} (missing: {', '.join(missing)})")
        return self


class ParameterSpec(_Spec):
    """One searched parameter.

    ``kind`` float/int take ``lower < upper`` (``log`` needs ``lower > 0``);
    categorical takes ``choices``. ``prior`` is used only by a posterior run.
    """

    kind: Literal["float", "int", "categorical"] = Field(default="float", description='float (default), int or categorical')
    lower: float | None = Field(default=None, description='lowest value (float and int)')
    upper: float | None = Field(default=None, description='highest value (float and int)')
    log: bool = Field(default=False, description='search on a log scale (needs lower > 0)')
    step: float | None = Field(default=None, description='search only lower, lower + step, ... (not with log)')
    choices: list[str | int | float | bool] | None = Field(default=None, max_length=MAX_CHOICES, description='the values of a categorical parameter')
    prior: PriorSpec | None = Field(default=None, description='explicit prior for a posterior run: {dist: normal|beta|gamma, ...}; default uniform (log-uniform with log: true)')
    guess: float | int | str | bool | None = Field(default=None, description='a starting guess: evaluated first (other parameters at their midpoint), exactly once per study')
    transform: Literal["none", "log", "logit"] | None = Field(
        default=None, description="float: the scale the sampler searches on: none | log (the same as log: true) | "
        "logit (a probability: needs 0 < lower < upper < 1); the model, outputs and reports see natural values")

    @model_validator(mode="after")
    def _check_guess(self) -> ParameterSpec:
        if self.kind != "categorical" and (self.lower is None or self.upper is None):
            return self  # the range check reports the missing bound
        if self.guess is not None and not self.admits(self.guess):
            off_step = (self.kind != "categorical" and isinstance(self.guess, (int, float)) and not isinstance(self.guess, bool)
                        and self.lower is not None and self.upper is not None and self.lower <= self.guess <= self.upper
                        and (self.kind != "int" or self.guess == int(self.guess)))
            raise _field_error("guess", f"the guess {self.guess!r} is between steps: this parameter takes {self.lower:g} + k x "
                               f"{self.step:g} (the search would silently move it)" if off_step else
                               f"the guess {self.guess!r} is outside this parameter's "
                               + (f"choices {self.choices}" if self.kind == "categorical" else f"range [{self.lower:g}, {self.upper:g}]"))
        return self

    def admits(self, value: Any) -> bool:
        """Whether ``value`` is a point of this parameter's space (a starting guess must be)."""
        if self.kind == "categorical":
            return value in (self.choices or [])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or self.lower is None or self.upper is None:
            return False
        if self.kind == "int" and value != int(value):
            return False
        return self.lower <= value <= self.upper and self.on_step(value)

    def on_step(self, value: float) -> bool:
        """Whether ``value`` is ``lower + k * step`` (always, without a step): Optuna would
        silently move a point between steps to the nearest one."""
        if self.step is None or self.lower is None or not self.step > 0 or not math.isfinite(self.step):
            return True  # no step, or a bad one (reported by the range check)
        k = (value - self.lower) / self.step
        return abs(k - round(k)) <= 1e-9 * max(1.0, abs(k))

    @model_validator(mode="after")
    def _check_transform(self) -> ParameterSpec:
        t = self.transform
        if t is None or t == "none" and not self.log:
            return self
        if self.kind != "float":
            raise _field_error("transform", f"'transform' is for float parameters (this one is {self.kind})")
        if t == "none" or (t == "logit" and self.log):
            raise _field_error("transform", f"transform: {t} contradicts log: true; keep one of them")
        if self.step is not None:
            raise _field_error("transform", "a transformed parameter cannot have a 'step'")
        if t == "logit" and not (self.lower is not None and self.upper is not None and 0 < self.lower and self.upper < 1):
            raise _field_error("lower" if self.lower is None or self.lower <= 0 else "upper",
                               f"transform: logit needs 0 < lower < upper < 1 (got [{self.lower}, {self.upper}])")
        if t == "log" and not self.log:
            object.__setattr__(self, "log", True)  # transform: log is log: true (one scale, one mechanism)
        return self

    @property
    def logit(self) -> bool:
        """Whether the sampler searches this parameter on the logit scale."""
        return self.transform == "logit"

    @model_validator(mode="after")
    def _check(self) -> ParameterSpec:
        if self.kind == "categorical":
            if not self.choices:
                raise _field_error("choices", "a categorical parameter needs a non-empty 'choices' list")
            if self.lower is not None or self.upper is not None or self.log:
                given = "lower" if self.lower is not None else "upper" if self.upper is not None else "log"
                raise _field_error(given, "a categorical parameter takes 'choices', not 'lower'/'upper'/'log'")
            return self
        if self.choices is not None:
            raise _field_error("choices", f"'choices' is only for kind: categorical (this parameter is {self.kind})")
        if self.lower is None or self.upper is None:
            raise _field_error("lower" if self.lower is None else "upper", "a numeric parameter needs both 'lower' and 'upper'")
        for name, value in (("lower", self.lower), ("upper", self.upper)):
            if not math.isfinite(value) or abs(value) > MAX_ABS_BOUND:
                raise _field_error(name, f"'lower' and 'upper' must be finite numbers within ±{MAX_ABS_BOUND:g} (got {value:g})")
        if self.lower >= self.upper:
            hint = " (equal bounds: move it to 'fixed' instead)" if self.lower == self.upper else ""
            raise _field_error("upper", f"'lower' ({self.lower:g}) must be less than 'upper' ({self.upper:g}){hint}")
        if self.log and self.lower <= 0:
            raise _field_error("lower", f"log scale needs 'lower' > 0 (got {self.lower:g}): raise 'lower' or set log: false")
        for name, value in (("lower", self.lower), ("upper", self.upper)):
            if self.kind == "int" and value != int(value):
                raise _field_error(name, "an int parameter needs whole-number 'lower' and 'upper'")
        if self.step is not None:
            if self.step <= 0 or self.log:
                raise _field_error("step", "'step' must be > 0 and cannot be combined with log scale")
            if self.kind == "int" and self.step != int(self.step):
                raise _field_error("step", f"an int parameter needs a whole-number 'step' (got {self.step:g})")
            if self.step > self.upper - self.lower:
                raise _field_error("step", f"'step' ({self.step:g}) is larger than the range upper - lower ({self.upper - self.lower:g})")
        return self


def _field_error(field: str, message: str) -> PydanticCustomError:
    """A ParameterSpec error reported at ``parameters.<name>.<field>`` (see validation_problems)."""
    return PydanticCustomError("parameter_spec", message, {"field": field})


def midpoint(spec: ParameterSpec) -> Any:
    """The middle of a parameter's range (geometric on log scale; first choice if categorical)."""
    if spec.kind == "categorical":
        return (spec.choices or [None])[0]
    lo, hi = float(spec.lower), float(spec.upper)  # type: ignore[arg-type]
    if spec.logit:
        return logit_to_natural(spec, (natural_to_logit(spec, lo) + natural_to_logit(spec, hi)) / 2)
    mid = math.sqrt(lo * hi) if spec.log else (lo + hi) / 2
    return int(round(mid)) if spec.kind == "int" else mid


def natural_to_logit(spec: ParameterSpec, x: float) -> float:
    """A logit parameter's value on the scale its sampler searches: ``log(x / (1 - x))``."""
    return math.log(x) - math.log1p(-x)


def logit_to_natural(spec: ParameterSpec, z: float) -> float:
    """The natural value of a point the sampler drew on the logit scale, kept within the bounds
    (a float round trip may step just past one)."""
    x = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    return min(max(x, float(spec.lower)), float(spec.upper))  # type: ignore[arg-type]
