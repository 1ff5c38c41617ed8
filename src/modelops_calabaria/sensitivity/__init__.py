"""Sensitivity analysis: sweep designs, Sobol' and Morris indices, the sweep's page (docs/sensitivity.md).

:mod:`.design` turns a job's ``sweep`` block into its rows (SALib's samplers, seeded by the
job), :mod:`.analysis` computes the indices from the kept summaries (SALib's analysers),
:mod:`.html` draws ``sensitivity.html``. All pure but the page's file; the run itself is
``calibration/sweep.py`` (the calibration wire, with the design enqueued as trials).
"""
