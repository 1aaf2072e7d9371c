"""Checks before any work: ``knowacq run FILE`` and ``knowacq train FILE`` (with or without ``--dry-run``) read the
whole file first and report every problem at once, in seconds, before a model is trained or an index is built.

What is checked:

- the experiment file itself: keys, folds, systems, stages, measures
  (:func:`~.experiment_config.config_problems`, all of them, not only the first);
- every model spec, by its kind's own validator (:data:`VALIDATORS`: cross-encoder ``validate_spec``, bi-encoder
  ``validate_dense_spec``, ColBERT ``validate_colbert_spec``), the analysis' ``{spec: ...}`` models too;
- every data path: datasets (embedded names, BEIR folders, ``irds:`` ids looked up in ir_datasets' registry, never
  downloaded) and their splits; run and teacher references of specs (a TREC file path, else a run the dataset ships,
  else ``bm25``) and of ``run(name=...)`` stages; the DPR JSON files of the analysis' probe data;
- every model name (``backbone``, ``init``, ``query_backbone``, teacher models, stage ``model=`` / ``query_model=``,
  the analysis' models): a local folder, a packaged alias, ``random:<name>``, the local Hugging Face cache or a hub id.
  While the hub is offline or unreachable a hub id cannot be verified: a dry run warns ("cannot check offline"), a
  real run stops (it would need the model).

A dry run runs the file's ``dry_run:`` variant on this machine, so the variant is checked as a real run would be. The
real experiment is checked as far as it can be from here: its specs, stages and dataset ids are errors as always; a
local file or folder that only the real run reads (a teacher run kept on the GPU machine) and unverifiable hub ids
are warnings. ``knowacq train FILE --dry-run`` has no variant: it checks the file for this machine and trains
nothing.

The code, by concern: ``report`` (:class:`Report`, :class:`PreflightError`), ``checks`` (one configuration's
checks, :data:`VALIDATORS`), ``experiment`` (:func:`check_experiment`) and ``train_file`` (:func:`check_train_file`).

Example::

    report = check_experiment('experiments/multistage-msmarco.yaml', dry_run=True)  # raises PreflightError
    report.warnings      # ["model 'roberta-base' cannot be checked offline ...", ...]
"""
# the public names, importable from here as before the package was split
from .checks import RUN_FIELDS, SPEC_MODEL_FIELDS, STAGE_MODEL_PARAMS, VALIDATORS  # noqa: F401
from .experiment import check_experiment
from .report import PreflightError, Report
from .train_file import check_train_file

__all__ = ['PreflightError', 'Report', 'check_experiment', 'check_train_file', 'VALIDATORS']
