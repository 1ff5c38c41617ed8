"""Projections and scenarios from a calibrated model (docs/projections.md)."""
