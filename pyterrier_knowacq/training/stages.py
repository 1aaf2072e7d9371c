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
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

from .._util import KnowacqError, check_keys, atomic_directory, atomic_write_json, cache_dir
from ..models.first_stage import named_run

__all__ = ['train_model', 'train_from_config', 'validate_spec', 'model_key']

MODEL_KEYS = {'backbone', 'init', 'pooling', 'max_length', 'queries_per_batch', 'validation', 'stages', 'head_seed',
              'freeze_layers', 'precision', 'gradient_checkpointing', 'micro_batch'}
STAGE_KEYS = {'loss', 'loss_params', 'data', 'lr', 'head_lr', 'steps', 'epochs', 'warmup', 'weight_decay', 'grad_accum',
              'max_grad_norm', 'queries_per_batch', 'eval_every', 'checkpoint_every', 'keep_best'}
DATA_KEYS = {'run', 'negatives', 'depth', 'rel_threshold', 'neg_max_label', 'per_positive', 'extra', 'extra_depth',
             'teacher', 'list_length', 'select', 'scores', 'teacher_min_coverage'}
VERSION = 1


def validate_spec(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Check a model spec's keys and fill defaults; raises :class:`KnowacqError` naming the bad key."""
    if not isinstance(spec, dict):
        raise KnowacqError(f'a model spec must be a mapping, got {type(spec).__name__}')
    check_keys(spec, MODEL_KEYS, 'unknown model spec keys')
    from .trainer import PRECISIONS
    if spec.get('precision', 'auto') not in PRECISIONS:
        raise KnowacqError(f'precision must be one of {list(PRECISIONS)}, got {spec.get("precision")!r}')
    mb = spec.get('micro_batch', 'auto')
    if not (mb == 'auto' or (isinstance(mb, int) and not isinstance(mb, bool) and mb >= 1)):
        raise KnowacqError(f'micro_batch must be auto or a whole number of queries >= 1, got {mb!r}')
    if not spec.get('backbone') and not spec.get('init'):
        raise KnowacqError('a model spec needs `backbone:` (e.g. minilm-l6) or `init:` (a trained cross-encoder folder)')
    stages = spec.get('stages')
    if not isinstance(stages, list) or not stages:
        raise KnowacqError('a model spec needs a non-empty `stages:` list')
    if spec.get('validation') is not None and not isinstance(spec['validation'], dict):
        raise KnowacqError(f'validation is {spec["validation"]!r:.60}; write it as a mapping such as {{queries: 10, run: bm25}}')
    _check_numbers(spec, ('max_length', 'queries_per_batch', 'head_seed', 'freeze_layers'), 'the model spec', whole=True)
    from .losses import LOSSES
    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            raise KnowacqError(f'stage {i + 1} must be a mapping such as {{loss: lce, lr: 2.0e-5, steps: 200}}')
        check_keys(st, STAGE_KEYS, f'stage {i + 1}: unknown keys')
        loss = st.get('loss')
        if not isinstance(loss, str) or loss not in LOSSES:
            import difflib
            close = difflib.get_close_matches(str(loss), list(LOSSES), n=1)
            hint = f' (did you mean {close[0]!r}?)' if close else ''
            raise KnowacqError(f'stage {i + 1}: loss {loss!r} is not one of {sorted(LOSSES)}{hint}; set `loss:` to one of them')
        if not st.get('steps') and not st.get('epochs'):
            raise KnowacqError(f'stage {i + 1}: give `steps:` or `epochs:`; add e.g. `steps: 200`')
        _check_numbers(st, ('steps', 'grad_accum', 'queries_per_batch', 'eval_every', 'checkpoint_every'), f'stage {i + 1}',
                       whole=True)
        _check_numbers(st, ('lr', 'head_lr', 'epochs', 'warmup', 'weight_decay', 'max_grad_norm'), f'stage {i + 1}')
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


def _check_numbers(mapping, keys, where: str, whole: bool = False) -> None:
    """The values at ``keys`` (when given) must be numbers (``2e-5`` reads as text in YAML and is accepted)."""
    for key in keys:
        value = mapping.get(key)
        if value is None:
            continue
        try:
            ok = not isinstance(value, bool) and float(value) == float(value) and (not whole or float(value) == int(float(value)))
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            kind = 'an integer' if whole else 'a number'
            raise KnowacqError(f'{where}: {key} is {value!r:.40}; write {kind} such as {"100" if whole else "2.0e-5"}')


def model_key(spec: Dict[str, Any], n_stages: int, dataset, split: str, seed: int) -> str:
    """Hash of everything that determines the model after ``n_stages`` stages: the spec so far, the training data's
    content and the weights it starts from (:func:`~.cache_keys.training_key`)."""
    from .cache_keys import training_key
    prefix = {k: v for k, v in spec.items() if k != 'stages'}
    prefix['stages'] = spec['stages'][:n_stages]
    return training_key(prefix, dataset, split, seed, VERSION)


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
    from .trainer import TrainConfig, Trainer
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
    task = CrossEncoderTask(ce, stage['loss'], items, texts_of=texts_of, group_size=group_size,
                            queries_per_batch=int(stage.get('queries_per_batch', spec.get('queries_per_batch', 4))),
                            max_length=max_length, seed=seed, targets=targets, select=select,
                            head_lr=stage.get('head_lr'), validator=_validator(spec, dataset, split, val_qids, texts_of),
                            loss_params=stage.get('loss_params'))
    steps = stage.get('steps')
    every = int(stage.get('eval_every', max(1, int(steps or 100) // 4))) if task.validator is not None else 0
    cfg = TrainConfig(lr=float(stage.get('lr', 2e-5)), weight_decay=float(stage.get('weight_decay', 0.01)),
                      warmup=float(stage.get('warmup', 0.1)), max_steps=int(steps) if steps else None,
                      epochs=stage.get('epochs'), grad_accum=int(stage.get('grad_accum', 1)),
                      max_grad_norm=stage.get('max_grad_norm', 1.0), seed=seed, eval_every=every,
                      keep_best=bool(stage.get('keep_best', True)), checkpoint_every=int(stage.get('checkpoint_every', 50)),
                      progress=verbose, log_every=10, precision=str(spec.get('precision', 'auto')),
                      gradient_checkpointing=bool(spec.get('gradient_checkpointing', False)),
                      micro_batch=spec.get('micro_batch', 'auto'))
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
    from ..datasets.core import get_dataset
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
        key = model_key(spec, k, dataset, train_split, seed)
        final = root / key
        if (final / 'knowacq.json').exists():
            prev = final
            log.append({'stage': k, 'key': key, 'cached': True})
            continue
        work = root / f'{key}.work'
        notes = {}
        result, yardsticks = _train_stage(spec, stage, prev, dataset, train_split, seed, train_qids, val_qids, work,
                                          verbose, notes=notes)
        with atomic_directory(final, overwrite=True) as tmp:
            shutil.copytree(result.model_dir, tmp, dirs_exist_ok=True)
            atomic_write_json(tmp / 'training.json', {'spec': spec, 'stage': k, 'dataset': dataset.id,
                                                      'split': train_split, 'seed': seed, 'steps': result.steps,
                                                      'best_metric': result.best_metric, 'selected': result.model_dir.name,
                                                      'validation_qids': val_qids, 'validation': yardsticks,
                                                      'data': notes, 'history': result.history})
        shutil.rmtree(work, ignore_errors=True)
        log.append({'stage': k, 'key': key, 'cached': False, 'best_metric': result.best_metric,
                    'selected': result.model_dir.name, 'validation': yardsticks, 'data': notes,
                    'history': result.history})
        prev = final
    if output_dir is not None:
        atomic_write_json(Path(output_dir) / 'training.json', {'model': str(prev), 'stages': log})
    return prev


def train_from_config(path, *, seed: Optional[int] = None) -> Dict[str, Path]:
    """``knowacq train FILE``: train every entry of ``models:`` on ``train_split`` (or on each fold's train split).

    The file holds ``dataset``, ``seed``, ``models: {name: spec}`` and either ``train_split:`` or ``folds:``.
    Returns ``{name or name@split: model folder}``. Every problem in the file (YAML syntax, a missing key, a bad
    model spec, an unknown dataset or split) is one ``<file>:<line>: <problem>; <fix>`` error, raised before any
    training starts.
    """
    from ..datasets.core import get_dataset
    from ..datasets.readers import file_error, load_yaml, locate_error, yaml_line
    path = Path(path)
    if not path.exists():
        raise KnowacqError(f'{path} does not exist; give the path of a training YAML file')
    cfg, node = load_yaml(path, 'training file')
    layout = 'write `dataset:`, `models:` (name -> spec) and `train_split:` or `folds: [{train: ..., test: ...}]`'
    if not isinstance(cfg, dict):
        raise file_error(path, yaml_line(node), 'is empty' if cfg is None else f'is a {type(cfg).__name__}, not a mapping', layout)
    for key in ('dataset', 'models'):
        if not cfg.get(key):
            raise file_error(path, yaml_line(node, key), f'needs `{key}:`' + (' (name -> spec)' if key == 'models' else ''), layout)
    if not isinstance(cfg['models'], dict):
        raise file_error(path, yaml_line(node, 'models'), f'models is {cfg["models"]!r:.60}, not a mapping', layout)
    if seed is None:
        seed = cfg.get('seed', 42)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise file_error(path, yaml_line(node, 'seed'), f'seed is {seed!r:.40}', 'write an integer such as 42')
    seed = int(seed)
    # the splits, each with the line it is named on
    if cfg.get('train_split'):
        splits = [(str(cfg['train_split']), yaml_line(node, 'train_split'))]
    else:
        folds = cfg.get('folds') or []
        if not isinstance(folds, list):
            raise file_error(path, yaml_line(node, 'folds'), 'folds is not a list', layout)
        splits = []
        for i, f in enumerate(folds):
            if not isinstance(f, dict) or not f.get('train'):
                raise file_error(path, yaml_line(node, 'folds', i), f'fold {i + 1} has no `train:` split',
                                 'write each fold as {train: dl20, test: dl19}')
            splits.append((str(f['train']), yaml_line(node, 'folds', i)))
    if not splits:
        raise file_error(path, yaml_line(node), 'needs `train_split:` or `folds:`', layout)
    try:
        dataset = get_dataset(cfg['dataset'])
    except KnowacqError as e:
        raise file_error(path, yaml_line(node, 'dataset'), str(e)) from None
    for split, line in splits:
        try:
            dataset._check_split(split)
        except KnowacqError as e:
            raise file_error(path, line, str(e)) from None
    specs = {}
    for name, spec in cfg['models'].items():
        if not isinstance(spec, dict):
            raise file_error(path, yaml_line(node, 'models', name), f'model {name!r} is {spec!r:.40}, not a mapping',
                             'write its spec as a mapping such as {backbone: minilm-l6, stages: [...]}')
        spec = dict(spec)
        kind = spec.pop('kind', 'cross-encoder')
        if kind != 'cross-encoder':
            raise file_error(path, yaml_line(node, 'models', name, 'kind'), f'model {name!r} has kind {kind!r:.40}; '
                             '`knowacq train` trains cross-encoders', 'train it with `knowacq run` on the experiment, or remove it')
        try:
            specs[name] = validate_spec(spec)
        except KnowacqError as e:
            scopes = [(r'\bstage (\d+)', lambda m, name=name: ('models', name, 'stages', int(m[1]) - 1)),
                      (r'', ('models', name))]
            raise file_error(path, locate_error(str(e), node, scopes), f'model {name!r}: {e}') from None
    out = {}
    for split, _ in splits:
        for name, spec in specs.items():
            out[f'{name}@{split}' if len(splits) > 1 else name] = train_model(spec, dataset=dataset, train_split=split,
                                                                              seed=seed)
    return out
