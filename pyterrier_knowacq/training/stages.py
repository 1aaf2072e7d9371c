"""Multi-stage cross-encoder fine-tuning from a YAML/dict spec; each stage starts from the previous stage's weights
with a fresh optimiser and schedule. Trained models are cached by a hash of (spec prefix, dataset, split, seed), so a
re-run (or C->D after C) does not retrain a stage it already has.

Spec (the ``models:`` entries of an experiment YAML, or a ``knowacq train FILE``)::

    backbone: minilm-l6          # any backbones.py name; or `init: <folder>` to start from a trained cross-encoder
    pooling: mean                # head pooling of the fresh 1-logit head (cls | mean | last)
    freeze_layers: 2             # optional: freeze the embeddings and the first 2 layers
    max_length: 128
    queries_per_batch: 4
    validation: {queries: 10, run: bm25, depth: 30}   # carved from the TRAINING split; keeps the best checkpoint
    stages:
      - loss: lce                # lce | bce: groups;  ranknet: teacher lists;  kl | margin_mse: teacher scores
        data: {run: bm25, negatives: 7, depth: 100, rel_threshold: 2, per_positive: true,
               extra: [msmarco-dev-positives, msmarco-train]}
        lr: 2.0e-5
        head_lr: 1.0e-3          # optional, a larger learning rate for a fresh head
        steps: 200               # or epochs
      - loss: ranknet
        data: {teacher: rankgpt-3.5, list_length: 20, select: random, teacher_min_coverage: 0.1}
        lr: 1.0e-5
        steps: 100

A ranknet stage trains on the training queries its teacher run covers (a released LLM ordering such as RankGPT's 100k
MS MARCO queries, converted with :mod:`.rankgpt_convert`, covers 20% of the 503k); the coverage is printed and
recorded in ``training.json`` (``data.teacher_coverage``), and ``teacher_min_coverage`` (a fraction, default 0: any
coverage) turns a coverage below it into an error. Training queries the first stage finds nothing for are skipped and
counted (``data.first_stage``).

Example::

    folder = train_model(spec, dataset=get_dataset('msmarco-passage'), train_split='dl20', seed=42)
    ce = CrossEncoder.from_pretrained(folder)
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Optional

from .._util import KnowacqError, check_keys  # noqa: F401  (check_keys: kept importable from here)
from ..models.first_stage import named_run
from .cached import TrainingFamily, train_cached
from .train_config import SELECTION_KEYS, TrainConfig, check_numbers, check_spec
from .train_file import train_from_config  # noqa: F401  (``knowacq train FILE``, every kind; kept importable from here)

__all__ = ['train_model', 'train_from_config', 'validate_spec', 'model_key', 'FAMILY']

#: the model-level shared keys (:mod:`.train_config`) are the settings every stage shares
MODEL_KEYS = {'backbone', 'init', 'pooling', 'max_length', 'queries_per_batch', 'validation', 'stages', 'head_seed',
              'freeze_layers', 'precision', 'gradient_checkpointing', 'micro_batch'}
#: a stage takes every shared optimisation key (:data:`~.train_config.TRAIN_KEYS` but the model-level ones)
STAGE_KEYS = {'loss', 'loss_params', 'data', 'lr', 'head_lr', 'steps', 'epochs', 'warmup', 'weight_decay', 'grad_accum',
              'max_grad_norm', 'queries_per_batch', 'checkpoint_every'} | SELECTION_KEYS
DATA_KEYS = {'run', 'negatives', 'depth', 'rel_threshold', 'neg_max_label', 'per_positive', 'extra', 'extra_depth',
             'teacher', 'list_length', 'select', 'scores', 'teacher_min_coverage'}
VERSION = 1


def validate_spec(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Check a model spec's keys and fill defaults; raises :class:`KnowacqError` naming the bad key."""
    if not isinstance(spec, dict):
        raise KnowacqError(f'a model spec must be a mapping, got {type(spec).__name__}')
    check_spec(spec, MODEL_KEYS, 'unknown model spec keys', 'the model spec')
    if not spec.get('backbone') and not spec.get('init'):
        raise KnowacqError('a model spec needs `backbone:` (e.g. minilm-l6) or `init:` (a trained cross-encoder folder)')
    stages = spec.get('stages')
    if not isinstance(stages, list) or not stages:
        raise KnowacqError('a model spec needs a non-empty `stages:` list')
    if spec.get('validation') is not None and not isinstance(spec['validation'], dict):
        raise KnowacqError(f'validation is {spec["validation"]!r:.60}; write it as a mapping such as {{queries: 10, run: bm25}}')
    _check_numbers(spec, ('max_length', 'head_seed', 'freeze_layers'), 'the model spec', whole=True)
    from .losses import LOSSES
    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            raise KnowacqError(f'stage {i + 1} must be a mapping such as {{loss: lce, lr: 2.0e-5, steps: 200}}')
        check_spec(st, STAGE_KEYS, f'stage {i + 1}: unknown keys', f'stage {i + 1}')
        loss = st.get('loss')
        if not isinstance(loss, str) or loss not in LOSSES:
            raise KnowacqError(f'stage {i + 1}: loss {loss!r} is not one of {sorted(LOSSES)}{LOSSES.suggestion(str(loss))}; '
                               'set `loss:` to one of them')
        if not st.get('steps') and not st.get('epochs'):
            raise KnowacqError(f'stage {i + 1}: give `steps:` or `epochs:`; add e.g. `steps: 200`')
        _check_numbers(st, ('head_lr',), f'stage {i + 1}')
        data = st.get('data') or {}
        if not isinstance(data, dict):
            raise KnowacqError(f'stage {i + 1}: data is {data!r:.60}; write it as a mapping such as {{run: bm25, negatives: 7}}')
        check_keys(data, DATA_KEYS, f'stage {i + 1}: unknown data keys')
        _check_numbers(data, ('teacher_min_coverage',), f'stage {i + 1}')
        if data.get('teacher_min_coverage') is not None and not 0 <= float(data['teacher_min_coverage']) <= 1:
            raise KnowacqError(f'stage {i + 1}: teacher_min_coverage is {data["teacher_min_coverage"]!r:.40}; write a '
                               'fraction of the training queries between 0 and 1, such as 0.1')
        if loss == 'ranknet' and not data.get('teacher'):
            raise KnowacqError(f'stage {i + 1}: a ranknet stage needs `data: {{teacher: <run name(s)>}}`; add one, e.g. '
                               '`data: {teacher: rankgpt-3.5}`')
        if loss in ('kl', 'margin_mse') and not data.get('scores'):
            raise KnowacqError(f'stage {i + 1}: a {loss} stage needs `data: {{scores: <run name or teacher model>}}`; add '
                               'the run or teacher model that scores the candidates')
    return spec


#: the one number check (:func:`~.train_config.check_numbers`), under its old name
_check_numbers = check_numbers


def model_key(spec: Dict[str, Any], n_stages: int, dataset, split: str, seed: int) -> str:
    """Hash of everything that determines the model after ``n_stages`` stages: the spec so far, the training data's
    content and the weights it starts from (:func:`~.cache_keys.training_key`)."""
    from .cached import stage_key
    return stage_key(FAMILY, spec, n_stages, dataset, split, seed)


def _validator(spec, dataset, split, val_qids, texts_of):
    from .crossencoder_task import RerankValidator
    v = spec.get('validation') or {}
    if not val_qids:
        return None
    topics = dataset.get_topics(split)
    topics = topics[topics['qid'].astype(str).isin(val_qids)]
    return RerankValidator(topics, dataset.get_qrels(split), named_run(dataset, v.get('run', 'bm25'), split),
                           depth=int(v.get('depth', 30)), texts_of=texts_of)


def _freeze(model, n_layers):
    """Freeze the embeddings and the first ``n_layers`` transformer layers (no backward through them: faster, and
    fewer weights to fit on small data). ``None`` trains everything."""
    if n_layers is None:
        return
    backbone = getattr(model, 'backbone', model)
    base = getattr(backbone, 'base_model', backbone)
    if hasattr(base, 'embeddings'):
        base.embeddings.requires_grad_(False)
    layers = getattr(getattr(base, 'encoder', None), 'layer', None) or getattr(base, 'layers', None)
    if layers is None:
        raise KnowacqError(f'freeze_layers: cannot find the transformer layers of {type(base).__name__}; remove freeze_layers')
    for layer in list(layers)[:int(n_layers)]:
        layer.requires_grad_(False)


def _stage_items(stage, dataset, split, train_qids, seed, text_known, notes=None, verbose=False):
    """``(items, group size, targets, select)`` of a stage; ``notes`` (a dict) receives the data counts that
    ``training.json`` records: ``teacher_coverage`` (ranknet) or ``first_stage`` (queries without candidates)."""
    from . import examples as ex
    data = dict(stage.get('data') or {})
    notes = {} if notes is None else notes
    loss = stage['loss']
    topics = dataset.get_topics(split)
    targets = None
    if loss == 'ranknet':
        teachers = data.get('teacher')
        if not teachers:
            raise KnowacqError('a ranknet stage needs `data: {teacher: <run name(s)>}`, e.g. rankgpt-3.5')
        teachers = [teachers] if isinstance(teachers, str) else list(teachers)
        coverage = {}
        items = ex.teacher_lists(topics, [named_run(dataset, t, split) for t in teachers], qids=train_qids,
                                 known_docnos=text_known, min_coverage=float(data.get('teacher_min_coverage') or 0.0),
                                 stats=coverage)
        notes['teacher_coverage'] = coverage
        if verbose:
            print(coverage['message'], flush=True)
        return items, int(data.get('list_length', 20)), None, data.get('select', 'random')
    run_name = data.get('run', 'bm25')
    run = named_run(dataset, run_name, split, depth=int(data.get('depth', 100)))
    rel = int(data.get('rel_threshold', 1))
    items = ex.contrastive_groups(topics, dataset.get_qrels(split), run, depth=int(data.get('depth', 100)),
                                  rel_threshold=rel, neg_max_label=data.get('neg_max_label'),
                                  per_positive=bool(data.get('per_positive', False)), qids=train_qids,
                                  known_docnos=text_known, stats=notes.setdefault('first_stage', {}))
    if verbose and notes['first_stage'].get('no_first_stage_hits'):
        fs = notes['first_stage']
        print(f"skipped {fs['no_first_stage_hits']:,} of {fs['queries']:,} training queries with no first-stage "
              f"candidates (e.g. qid {fs['no_first_stage_hits_qids'][0]})", flush=True)
    for name in data.get('extra') or []:
        items += ex.extra_groups(name, dataset, depth=int(data.get('extra_depth', 30)), seed=seed)
    if loss in ('kl', 'margin_mse'):
        scores = data.get('scores')
        if not scores:
            raise KnowacqError(f'a {loss} stage needs `data: {{scores: <run name or teacher model>}}`')
        from .teachers import teacher_scores
        targets = teacher_scores(scores, dataset, split, run_name, depth=int(data.get('depth', 100)))
    return items, int(data.get('negatives', 7)) + 1, targets, 'random'


def _train_stage(spec, stage, init_folder, dataset, split, seed, train_qids, val_qids, work: Path, verbose: bool,
                 notes=None):
    from ..models.crossencoder import CrossEncoder
    from .crossencoder_task import CrossEncoderTask
    from .trainer import Trainer
    known = dataset.known_docnos()   # None for irds: too large to list, every docno is assumed to have text
    if init_folder is None:
        ce = CrossEncoder.new(spec['backbone'], pooling=spec.get('pooling', 'cls'), seed=int(spec.get('head_seed', seed)))
    else:
        ce = CrossEncoder.from_pretrained(str(init_folder))
    items, group_size, targets, select = _stage_items(stage, dataset, split, train_qids, seed, known, notes, verbose)
    extra_texts = {}
    for it in items:
        extra_texts.update(getattr(it, 'texts', {}) or {})

    def texts_of(docnos):
        """One batched corpus look-up per training batch; texts the groups carry (extra data) are served first."""
        docnos = list(docnos)
        rest = [d for d in docnos if d not in extra_texts]
        found = dict(zip(rest, dataset.get_texts(rest))) if rest else {}
        return [extra_texts[d] if d in extra_texts else found[d] for d in docnos]
    max_length = int(spec.get('max_length', 128))
    ce.max_length = max_length
    _freeze(ce.model, spec.get('freeze_layers'))
    validator = _validator(spec, dataset, split, val_qids, texts_of)
    # the stage's settings over the model's (a stage's queries_per_batch wins; precision & co. are the model's)
    cfg = TrainConfig.from_spec({**spec, **stage}, seed=seed, validating=validator is not None,
                                defaults={'queries_per_batch': 4}, progress=verbose, log_every=10)
    task = CrossEncoderTask(ce, stage['loss'], items, texts_of=texts_of, group_size=group_size,
                            queries_per_batch=cfg.queries_per_batch, max_length=max_length, seed=seed, targets=targets,
                            select=select, head_lr=stage.get('head_lr'), validator=validator,
                            loss_params=stage.get('loss_params'))
    # the first stage and the untrained starting point on the same validation queries: the yardsticks a recipe is
    # selected against (never the test fold)
    yardsticks = {}
    if task.validator is not None:
        yardsticks = {'first_stage': task.validator.first_stage(), 'start': task.validator(ce)}
    return Trainer(task, cfg, work).train(), yardsticks


class CrossEncoderFamily(TrainingFamily):
    """The cross-encoder's part of :func:`~.cached.train_cached`: one cached model per stage prefix of the spec."""
    kind, cache, version, staged = 'cross-encoder', 'trained', VERSION, True

    def prepare(self, spec, dataset, train_split, dry_run=False):
        return copy.deepcopy(validate_spec(spec)), train_split

    def stage_count(self, spec):
        return len(spec['stages'])

    def key_spec(self, spec, stage):
        """The spec up to ``stage`` stages (so C then C->D shares C's model)."""
        prefix = {k: v for k, v in spec.items() if k != 'stages'}
        prefix['stages'] = spec['stages'][:stage]
        return prefix

    def setup(self, spec, dataset, train_split, seed):
        """The validation queries, carved from the training split's judged queries once for every stage."""
        from .examples import split_validation
        topics = dataset.get_topics(train_split)
        qrels = dataset.get_qrels(train_split)
        judged = set(qrels['qid'].astype(str)) & set(topics['qid'].astype(str))
        if not judged:
            raise KnowacqError(f'the topics and qrels of {dataset.name}:{train_split} share no query ids; check the split')
        n_val = int((spec.get('validation') or {}).get('queries', 0))
        train_qids, val_qids = split_validation(judged, n_val, seed)
        return {'train_qids': train_qids, 'val_qids': val_qids}

    def train_stage(self, spec, stage, init, dataset, train_split, seed, work, shared, verbose):
        notes = {}
        result, yardsticks = _train_stage(spec, spec['stages'][stage - 1], init, dataset, train_split, seed,
                                          shared['train_qids'], shared['val_qids'], work, verbose, notes=notes)
        return result, {'validation_qids': shared['val_qids'], 'validation': yardsticks, 'data': notes}


FAMILY = CrossEncoderFamily()


def train_model(spec: Dict[str, Any], *, dataset, train_split: str, output_dir: Optional[Path] = None, seed: int = 42,
                validation: Optional[Dict[str, Any]] = None, verbose: bool = True) -> Path:
    """Train (or fetch from the cache) the cross-encoder described by ``spec`` on ``dataset``'s ``train_split``.

    Returns the folder of the final model (``CrossEncoder.from_pretrained(folder)`` loads it). ``validation``
    overrides ``spec['validation']``. ``output_dir``, when given, receives ``training.json`` (per-stage history).
    Interrupted training resumes from the stage's checkpoint on the next call (:func:`~.cached.train_cached`).
    """
    if validation is not None:
        spec = {**validate_spec(spec), 'validation': validation}
    return train_cached('cross-encoder', spec, dataset=dataset, train_split=train_split, output_dir=output_dir,
                        seed=seed, verbose=verbose)
