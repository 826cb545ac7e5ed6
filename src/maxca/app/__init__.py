"""The application layer: paths in, files out. What the ``maxca`` commands run.

* :mod:`~maxca.app.registration`: :func:`register_files` (one pair -> a results folder),
  :func:`register_dataset` (a Learn2Reg pair list -> the submission layout),
  :func:`show_results` (the overview figure of a results folder), :func:`load_model`.
* :mod:`~maxca.app.evaluation`: :func:`evaluate_files`, :func:`evaluate_dataset` and
  :func:`write_evaluation` (``maxca evaluate``).
* :mod:`~maxca.app.demo`: :func:`~maxca.app.demo.run_demo` (``maxca demo``), imported on use.

Only :mod:`maxca.cli` (and users) import this package; the library below it never does (see
docs/architecture.md).
"""

from maxca.app.evaluation import evaluate_dataset, evaluate_files, write_evaluation
from maxca.app.registration import (
    RESULT_FILES,
    PairReport,
    load_model,
    pair_metrics,
    register_dataset,
    register_files,
    show_results,
    write_result,
)
from maxca.inference._output import check_output_dir

__all__ = [
    "RESULT_FILES",
    "PairReport",
    "check_output_dir",
    "evaluate_dataset",
    "evaluate_files",
    "load_model",
    "pair_metrics",
    "register_dataset",
    "register_files",
    "show_results",
    "write_evaluation",
    "write_result",
]
