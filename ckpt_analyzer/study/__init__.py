"""Studies: several runs (one cube per run: seeds × label-noise rates) analysed together.

* :mod:`.aggregate`: checks that cubes belong together and aggregates their reports (per width
  mean ± std over seeds, model-wise agreement, the pooled T_R,peak vs T_E,peak fit with a
  confidence interval);
* :mod:`.text`: the study as text; :mod:`.figures`: figures with bands over seeds, one line per
  noise rate; :mod:`.html`: one self-contained HTML report (figures embedded as base64 PNG);
* :mod:`.runs`: the run folders under a study root.

A study keeps the cube format unchanged: each run folder has its own ``analysis.h5``.
"""

from __future__ import annotations

from .aggregate import STUDY_FORMAT, aggregate, agreement, load_study, slope_ci, summarize
from .runs import find_runs, run_folder_name
from .text import format_study

__all__ = ["STUDY_FORMAT", "aggregate", "agreement", "find_runs", "format_study", "load_study",
           "run_folder_name", "slope_ci", "summarize"]
