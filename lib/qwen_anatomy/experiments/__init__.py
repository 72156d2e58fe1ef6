"""Reproducible experiments: run notebooks as parameterised experiments (chapter 90_experiments).

A package split along the life of an experiment:

- :mod:`.metrics`: :func:`save_metrics`, which notebooks call to record their headline numbers;
- :mod:`.params`: a notebook's `parameters` cell, checking values, planning the runs of a grid;
- :mod:`.runner`: executing runs (one kernel process each, a run record each, resumable);
- :mod:`.results`: reading run directories and their metrics as one table;
- :mod:`.aggregate`: intervals over seeds, paired differences, verdicts and their plots.

Importing the package stays light (json, os, pathlib): notebooks import it first thing; pandas,
scipy, papermill and matplotlib are imported by the functions that need them.
"""

from .aggregate import aggregate, paired_differences, plot_aggregate, plot_paired, ratio_verdict
from .metrics import RUN_DIR_ENV, save_metrics
from .params import (
    METRICS_FILE,
    NOTEBOOKS_DIR,
    RUN_FILE,
    check_parameter,
    notebook_parameters,
    parameter_hash,
    parse_cli_value,
    parse_shard,
    plan_runs,
    resolve_notebook,
)
from .results import iter_runs, load_results, results_table
from .runner import run_experiments, run_status

__all__ = [
    "METRICS_FILE",
    "NOTEBOOKS_DIR",
    "RUN_DIR_ENV",
    "RUN_FILE",
    "aggregate",
    "check_parameter",
    "iter_runs",
    "load_results",
    "notebook_parameters",
    "paired_differences",
    "parameter_hash",
    "parse_cli_value",
    "parse_shard",
    "plan_runs",
    "plot_aggregate",
    "plot_paired",
    "ratio_verdict",
    "resolve_notebook",
    "results_table",
    "run_experiments",
    "run_status",
    "save_metrics",
]
