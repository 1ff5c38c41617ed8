"""Calibration: the wire (parallel / batched), the Optuna adapter, budget and stop logic."""
