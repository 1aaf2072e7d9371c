"""What ``knowacq run FILE --dry-run`` substitutes, in one place: it runs the whole experiment on this machine in
seconds to minutes, to check the wiring, with everything costly swapped for something tiny.

* the experiment: the file's ``dry_run:`` block replaces its keys, the name gains ``-dry-run``
  (:func:`apply_dry_run`);
* the topics: the first :data:`TOPICS` of each test collection, unless ``--limit-topics`` says otherwise
  (:func:`topics_limit`);
* the models a stage names (``ce(model=...)``, ``biencoder(model=...)``, ``dense(model=...)``): a tiny random model
  (``tiny-bert``, or ``tiny-llama`` for a decoder), except the experiment's own trained models and the packaged
  aliases other than :data:`SWAPPED_ALIASES` (:func:`stage_model`);
* a ColBERT stage's checkpoint: a tiny ColBERT (``tiny-bert``, 16 dimensions) unless the name is a ColBERTv2
  checkpoint folder (:func:`colbert_checkpoint`);
* an end-to-end index (``colbert_retrieve``): the first :data:`INDEX_MAX_DOCS` documents (:func:`index_max_docs`).

The runner (:mod:`.runner`) and the built-in stages (:mod:`.components`, through :class:`~.components.StageContext`)
ask here. The trainers swap their own backbones and shorten their own schedules when called with ``dry_run=True``
(``training.stages.train_model``, ``training.dense.train_biencoder``, ``training.colbert.train_colbert``), and
``analysis.pipeline.run_analysis(dry_run=True)`` its own models: those layers sit below this one.

Example::

    config = apply_dry_run(load_config('experiments/multistage.yaml'))   # name 'multistage-dry-run'
    stage_model('cross-encoder/ms-marco-MiniLM-L-6-v2')                  # 'tiny-bert'
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ['TOPICS', 'INDEX_MAX_DOCS', 'SWAPPED_ALIASES', 'apply_dry_run', 'topics_limit', 'stage_model',
           'colbert_checkpoint', 'index_max_docs']

#: topics of each test collection a dry run evaluates (``--limit-topics N`` overrides it)
TOPICS = 3
#: documents an end-to-end index covers in a dry run
INDEX_MAX_DOCS = 2000
#: packaged aliases a dry run swaps for a tiny model all the same (the other aliases are loaded as they are)
SWAPPED_ALIASES = ('minilm-l6', 'smollm2-135m')
#: words in a model name that make its tiny stand-in a decoder (``tiny-llama``)
DECODER_HINTS = ('llama', 'smol', 'mistral', 'qwen', 'gpt')


def apply_dry_run(config: Dict[str, Any]) -> Dict[str, Any]:
    """The experiment a ``--dry-run`` runs: the ``dry_run:`` block's keys replace the file's, the name gains
    ``-dry-run`` (models are swapped for tiny ones by the runner and the trainers)."""
    from .config import KEYS
    overrides = config.get('dry_run') or {}
    overrides = overrides if isinstance(overrides, dict) else {}
    config = {**config, **{k: v for k, v in overrides.items() if k in KEYS}}
    config['name'] = f'{config.get("name", "experiment")}-dry-run'
    return config


def topics_limit(limit_topics: Optional[int]) -> int:
    """How many topics of each test collection a dry run evaluates."""
    return limit_topics or TOPICS


def stage_model(name: str) -> str:
    """The model a dry run's stage loads in place of ``name`` (not one of the experiment's trained models)."""
    from ..models.backbones import ALIASES
    if name not in ALIASES or name in SWAPPED_ALIASES:
        decoder = any(k in name.lower() for k in DECODER_HINTS)
        return 'tiny-llama' if decoder else 'tiny-bert'
    return name


def colbert_checkpoint(name: str) -> str:
    """The checkpoint a dry run's ColBERT stage loads in place of ``name``: ``name`` itself when it is a ColBERTv2
    checkpoint folder, else a tiny ColBERT (made once, in the model cache)."""
    if (Path(str(name)) / 'artifact.metadata').exists():
        return str(name)
    from .._util import cache_dir
    from ..models.colbert import ColBERTModel
    folder = cache_dir('models') / 'tiny-colbert'
    if not (folder / 'knowacq.json').exists():
        ColBERTModel.new('tiny-bert', dim=16, seed=0).save(folder)
    return str(folder)


def index_max_docs(dry_run: bool) -> Optional[int]:
    """The documents an end-to-end index covers: all (``None``), or the first :data:`INDEX_MAX_DOCS` in a dry run."""
    return INDEX_MAX_DOCS if dry_run else None
