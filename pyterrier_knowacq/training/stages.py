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
        data: {teacher: rankgpt-3.5, list_length: 20, select: random}
        lr: 1.0e-5
        steps: 100

Example::

    folder = train_model(spec, dataset=get_dataset('msmarco-passage'), train_split='dl20', seed=42)
    ce = CrossEncoder.from_pretrained(folder)
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

from .._util import KnowacqError, check_keys, atomic_directory, atomic_write_json, cache_dir
from ..first_stage import named_run

__all__ = ['train_model', 'train_from_config', 'validate_spec', 'model_key']

MODEL_KEYS = {'backbone', 'init', 'pooling', 'max_length', 'queries_per_batch', 'validation', 'stages', 'head_seed',
              'freeze_layers'}
STAGE_KEYS = {'loss', 'loss_params', 'data', 'lr', 'head_lr', 'steps', 'epochs', 'warmup', 'weight_decay', 'grad_accum',
              'max_grad_norm', 'queries_per_batch', 'eval_every', 'checkpoint_every', 'keep_best'}
DATA_KEYS = {'run', 'negatives', 'depth', 'rel_threshold', 'neg_max_label', 'per_positive', 'extra', 'extra_depth',
             'teacher', 'list_length', 'select', 'scores'}
VERSION = 1


def validate_spec(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Check a model spec's keys and fill defaults; raises :class:`KnowacqError` naming the bad key."""
    if not isinstance(spec, dict):
        raise KnowacqError(f'a model spec must be a mapping, got {type(spec).__name__}')
    check_keys(spec, MODEL_KEYS, 'unknown model spec keys')
    if not spec.get('backbone') and not spec.get('init'):
        raise KnowacqError('a model spec needs `backbone:` (e.g. minilm-l6) or `init:` (a trained cross-encoder folder)')
    stages = spec.get('stages')
    if not isinstance(stages, list) or not stages:
        raise KnowacqError('a model spec needs a non-empty `stages:` list')
    from .losses import LOSSES
    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            raise KnowacqError(f'stage {i + 1} must be a mapping')
        check_keys(st, STAGE_KEYS, f'stage {i + 1}: unknown keys')
        if st.get('loss') not in LOSSES:
            raise KnowacqError(f'stage {i + 1}: loss {st.get("loss")!r} is not one of {sorted(LOSSES)}')
        if not st.get('steps') and not st.get('epochs'):
            raise KnowacqError(f'stage {i + 1}: give `steps:` or `epochs:`')
        check_keys(st.get('data') or {}, DATA_KEYS, f'stage {i + 1}: unknown data keys')
    return spec


def model_key(spec: Dict[str, Any], n_stages: int, dataset_name: str, split: str, seed: int) -> str:
    """Hash of everything that determines the model after ``n_stages`` stages."""
    prefix = {k: v for k, v in spec.items() if k != 'stages'}
    prefix['stages'] = spec['stages'][:n_stages]
    blob = json.dumps({'v': VERSION, 'spec': prefix, 'dataset': dataset_name, 'split': split, 'seed': seed},
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _validator(spec, dataset, split, val_qids, text_of):
    from .crossencoder_task import RerankValidator
    v = spec.get('validation') or {}
    if not val_qids:
        return None
    topics = dataset.get_topics(split)
    topics = topics[topics['qid'].astype(str).isin(val_qids)]
    return RerankValidator(topics, dataset.get_qrels(split), named_run(dataset, v.get('run', 'bm25'), split), text_of,
                           depth=int(v.get('depth', 30)))


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


def _stage_items(stage, dataset, split, train_qids, seed, text_known):
    from . import examples as ex
    data = dict(stage.get('data') or {})
    loss = stage['loss']
    topics = dataset.get_topics(split)
    targets = None
    if loss == 'ranknet':
        teachers = data.get('teacher')
        if not teachers:
            raise KnowacqError('a ranknet stage needs `data: {teacher: <run name(s)>}`, e.g. rankgpt-3.5')
        teachers = [teachers] if isinstance(teachers, str) else list(teachers)
        items = ex.teacher_lists(topics, [named_run(dataset, t, split) for t in teachers], qids=train_qids,
                                 known_docnos=text_known)
        return items, int(data.get('list_length', 20)), None, data.get('select', 'random')
    run_name = data.get('run', 'bm25')
    run = named_run(dataset, run_name, split, depth=int(data.get('depth', 100)))
    rel = int(data.get('rel_threshold', 1))
    items = ex.contrastive_groups(topics, dataset.get_qrels(split), run, depth=int(data.get('depth', 100)),
                                  rel_threshold=rel, neg_max_label=data.get('neg_max_label'),
                                  per_positive=bool(data.get('per_positive', False)), qids=train_qids,
                                  known_docnos=text_known)
    for name in data.get('extra') or []:
        items += ex.extra_groups(name, dataset, depth=int(data.get('extra_depth', 30)), seed=seed)
    if loss in ('kl', 'margin_mse'):
        scores = data.get('scores')
        if not scores:
            raise KnowacqError(f'a {loss} stage needs `data: {{scores: <run name or teacher model>}}`')
        from .teachers import teacher_scores
        targets = teacher_scores(scores, dataset, split, run_name, depth=int(data.get('depth', 100)))
    return items, int(data.get('negatives', 7)) + 1, targets, 'random'


def _train_stage(spec, stage, init_folder, dataset, split, seed, train_qids, val_qids, work: Path, verbose: bool):
    from ..crossencoder import CrossEncoder
    from .crossencoder_task import CrossEncoderTask
    from .trainer import TrainConfig, Trainer
    from ..datasets import IrdsDataset
    if isinstance(dataset, IrdsDataset):      # millions of passages: look texts up lazily in the docstore
        class _Lazy(dict):
            def get(self, d, default=None):
                try:
                    return dataset.get_texts([d])[0]
                except Exception:
                    return default
        texts, known = _Lazy(), None
    else:
        texts = dataset._texts
        known = texts.keys()
    extra_texts = {}
    if init_folder is None:
        ce = CrossEncoder.new(spec['backbone'], pooling=spec.get('pooling', 'cls'), seed=int(spec.get('head_seed', seed)))
    else:
        ce = CrossEncoder.from_pretrained(str(init_folder))
    items, group_size, targets, select = _stage_items(stage, dataset, split, train_qids, seed, known)
    for it in items:
        extra_texts.update(getattr(it, 'texts', {}) or {})

    def text_of(d):
        t = texts.get(d)
        return t if t is not None else extra_texts[d]
    max_length = int(spec.get('max_length', 128))
    ce.max_length = max_length
    _freeze(ce.model, spec.get('freeze_layers'))
    task = CrossEncoderTask(ce, stage['loss'], items, text_of, group_size=group_size,
                            queries_per_batch=int(stage.get('queries_per_batch', spec.get('queries_per_batch', 4))),
                            max_length=max_length, seed=seed, targets=targets, select=select,
                            head_lr=stage.get('head_lr'), validator=_validator(spec, dataset, split, val_qids, text_of),
                            loss_params=stage.get('loss_params'))
    steps = stage.get('steps')
    every = int(stage.get('eval_every', max(1, int(steps or 100) // 4))) if task.validator is not None else 0
    cfg = TrainConfig(lr=float(stage.get('lr', 2e-5)), weight_decay=float(stage.get('weight_decay', 0.01)),
                      warmup=float(stage.get('warmup', 0.1)), max_steps=int(steps) if steps else None,
                      epochs=stage.get('epochs'), grad_accum=int(stage.get('grad_accum', 1)),
                      max_grad_norm=stage.get('max_grad_norm', 1.0), seed=seed, eval_every=every,
                      keep_best=bool(stage.get('keep_best', True)), checkpoint_every=int(stage.get('checkpoint_every', 50)),
                      progress=verbose, log_every=10)
    # the first stage and the untrained starting point on the same validation queries: the yardsticks a recipe is
    # selected against (never the test fold)
    yardsticks = {}
    if task.validator is not None:
        yardsticks = {'first_stage': task.validator.first_stage(), 'start': task.validator(ce)}
    return Trainer(task, cfg, work).train(), yardsticks


def train_model(spec: Dict[str, Any], *, dataset, train_split: str, output_dir: Optional[Path] = None, seed: int = 42,
                validation: Optional[Dict[str, Any]] = None, verbose: bool = True) -> Path:
    """Train (or fetch from the cache) the cross-encoder described by ``spec`` on ``dataset``'s ``train_split``.

    Returns the folder of the final model (``CrossEncoder.from_pretrained(folder)`` loads it). ``validation``
    overrides ``spec['validation']``. ``output_dir``, when given, receives ``training.json`` (per-stage history).
    Interrupted training resumes from the stage's checkpoint on the next call.
    """
    from ..datasets import get_dataset
    from .examples import split_validation
    dataset = get_dataset(dataset)
    spec = copy.deepcopy(validate_spec(spec))
    if validation is not None:
        spec['validation'] = validation
    topics = dataset.get_topics(train_split)
    qrels = dataset.get_qrels(train_split)
    judged = set(qrels['qid'].astype(str)) & set(topics['qid'].astype(str))
    if not judged:
        raise KnowacqError(f'the topics and qrels of {dataset.name}:{train_split} share no query ids; check the split')
    n_val = int((spec.get('validation') or {}).get('queries', 0))
    train_qids, val_qids = split_validation(judged, n_val, seed)
    root = cache_dir('models', 'trained')
    init = spec.get('init')
    prev = Path(init) if init else None
    log = []
    for k, stage in enumerate(spec['stages'], start=1):
        key = model_key(spec, k, dataset.name, train_split, seed)
        final = root / key
        if (final / 'knowacq.json').exists():
            prev = final
            log.append({'stage': k, 'key': key, 'cached': True})
            continue
        work = root / f'{key}.work'
        result, yardsticks = _train_stage(spec, stage, prev, dataset, train_split, seed, train_qids, val_qids, work,
                                          verbose)
        with atomic_directory(final, overwrite=True) as tmp:
            shutil.copytree(result.model_dir, tmp, dirs_exist_ok=True)
            atomic_write_json(tmp / 'training.json', {'spec': spec, 'stage': k, 'dataset': dataset.name,
                                                      'split': train_split, 'seed': seed, 'steps': result.steps,
                                                      'best_metric': result.best_metric, 'selected': result.model_dir.name,
                                                      'validation_qids': val_qids, 'validation': yardsticks,
                                                      'history': result.history})
        shutil.rmtree(work, ignore_errors=True)
        log.append({'stage': k, 'key': key, 'cached': False, 'best_metric': result.best_metric,
                    'selected': result.model_dir.name, 'validation': yardsticks, 'history': result.history})
        prev = final
    if output_dir is not None:
        atomic_write_json(Path(output_dir) / 'training.json', {'model': str(prev), 'stages': log})
    return prev


def train_from_config(path, *, seed: Optional[int] = None) -> Dict[str, Path]:
    """``knowacq train FILE``: train every entry of ``models:`` on ``train_split`` (or on each fold's train split).

    The file holds ``dataset``, ``seed``, ``models: {name: spec}`` and either ``train_split:`` or ``folds:``.
    Returns ``{name or name@split: model folder}``.
    """
    import yaml
    path = Path(path)
    if not path.exists():
        raise KnowacqError(f'{path} does not exist; give the path of a training YAML file')
    cfg = yaml.safe_load(path.read_text())
    if not isinstance(cfg, dict) or not cfg.get('models') or not cfg.get('dataset'):
        raise KnowacqError(f'{path} needs `dataset:` and `models:` (name -> spec)')
    seed = int(cfg.get('seed', 42) if seed is None else seed)
    splits = [cfg['train_split']] if cfg.get('train_split') else [f['train'] for f in cfg.get('folds') or []]
    if not splits:
        raise KnowacqError(f'{path} needs `train_split:` or `folds: [{{train: ..., test: ...}}]`')
    out = {}
    for split in splits:
        for name, spec in cfg['models'].items():
            out[f'{name}@{split}' if len(splits) > 1 else name] = train_model(spec, dataset=cfg['dataset'],
                                                                              train_split=split, seed=seed)
    return out
