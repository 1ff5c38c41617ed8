"""The study backend: Optuna's storage and the coordination ledger behind one interface."""
