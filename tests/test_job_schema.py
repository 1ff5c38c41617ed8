"""The job schema is generated from the specs themselves, so it cannot drift from them."""

from __future__ import annotations

from typing import Any

from modelops_calabaria.job import job_schema
from modelops_calabaria.job.problems import SPECS


def _properties(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out = [("CalibrationJob", name, prop) for name, prop in schema["properties"].items()]
    for model, sub in schema.get("$defs", {}).items():
        out += [(model, name, prop) for name, prop in sub.get("properties", {}).items()]
    return out


def test_every_field_of_every_spec_has_a_description() -> None:
    for spec in SPECS:
        for name, field in spec.model_fields.items():
            assert field.description, f"{spec.__name__}.{name} has no Field(description=...)"


def test_the_schema_carries_every_description_and_every_default() -> None:
    schema = job_schema()
    props = _properties(schema)
    assert len(props) >= sum(len(s.model_fields) for s in SPECS) - 1  # CalibrationJob's own fields plus every sub-spec
    for model, name, prop in props:
        assert prop.get("description"), f"{model}.{name}: no description in `calabaria schema`"


def test_a_description_does_not_restate_a_default_it_could_contradict() -> None:
    # Defaults are shown by the schema itself ("default"); a description that writes
    # "(default N)" next to a different default is how the ramp's `per` drifted.
    import re

    for spec in SPECS:
        for name, field in spec.model_fields.items():
            m = re.search(r"\(default (-?[0-9.]+)\)", field.description or "")
            if m and field.default is not None and not callable(field.default):
                assert float(m.group(1)) == float(field.default), f"{spec.__name__}.{name}: description says default {m.group(1)}, the field's is {field.default}"
