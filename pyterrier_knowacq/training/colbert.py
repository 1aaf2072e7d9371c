"""Training a ColBERT model offline on the shared trainer with the shared losses.

Spec (a ``models:`` entry with ``kind: colbert`` in an experiment YAML, or a dict)::

    kind: colbert
    backbone: minilm-l6        # any BERT-style backbones.py name (fresh seeded projection); or init: <ColBERT folder>
    dim: 128                   # projection size (fresh models)
    query_maxlen: 32
    doc_maxlen: 180            # stored in the checkpoint (used when scoring / indexing)
    train_doc_maxlen: 128      # truncation while training (speed)
    queries_per_batch: 8       # in-batch negatives = the other queries' documents
    negatives: 3               # hard negatives per query
    loss: infonce              # infonce (in-batch + hard negatives) | kl (distillation from teacher scores)
    loss_params: {tau: 1.0}    # e.g. {temperature: 1.0} for kl
    data: {run: bm25, depth: 50, rel_threshold: 2, neg_max_label: 1, per_positive: false,
           extra: [msmarco-dev-positives], teacher: null}   # kl: teacher = a run name of the dataset with scores
    lr: 5.0e-5
    head_lr: 1.0e-3            # learning rate of the projection
    steps: 150                 # or epochs
    warmup: 0.1
    precision: auto            # optional: auto (bf16 autocast on a capable GPU, fp32 elsewhere) | fp32 | bf16
    gradient_checkpointing: false   # optional: recompute activations in the backward pass (less memory, slower)
    micro_batch: auto          # optional: queries per forward pass: auto (fit the GPU; CPU: queries_per_batch) | N

Training groups: positives judged ``>= rel_threshold``, negatives from the first-stage run's top ``depth`` (the
dataset's BM25 run when it ships one, else PISA BM25 over its corpus); ``extra`` adds the 620 MS MARCO dev-small
positives (negatives: BM25 over the embedded 31k passages) and/or the 110 MS MARCO train queries. The trained model
is cached by a hash of (spec, dataset, split, seed); the returned folder is a ColBERT checkpoint. Passage texts are
looked up per batch (``dataset.get_texts``), never the whole corpus at once.

Example::

    from pyterrier_knowacq.training.colbert import train_colbert
    folder = train_colbert({'backbone': 'minilm-l6', 'steps': 150}, dataset='msmarco-passage', train_split='dl20',
                           output_dir=None, seed=42)
    pipeline = bm25 >> dataset.text_loader() >> ColBERT(folder)
"""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .._util import KnowacqError, check_keys
from .cached import TrainingFamily, train_cached
from .train_config import TRAIN_KEYS, TrainConfig, check_spec

__all__ = ['train_colbert', 'ColBERTTask', 'DEFAULT_SPEC', 'validate_colbert_spec', 'FAMILY']
VERSION = 1

DEFAULT_SPEC: Dict[str, Any] = {
    'backbone': 'minilm-l6', 'init': None, 'dim': 128, 'query_maxlen': 32, 'doc_maxlen': 180, 'train_doc_maxlen': 128,
    'queries_per_batch': 8, 'negatives': 3, 'loss': 'infonce', 'loss_params': {},
    'data': {'run': 'bm25', 'depth': 50, 'rel_threshold': 2, 'neg_max_label': 1, 'per_positive': False,
             'extra': ['msmarco-dev-positives'], 'teacher': None},
    'lr': 5e-5, 'head_lr': 1e-3, 'steps': 150, 'epochs': None, 'warmup': 0.1, 'weight_decay': 0.01,
    'max_grad_norm': 1.0, 'grad_accum': 1, 'checkpoint_every': 50,
}
DATA_KEYS = set(DEFAULT_SPEC['data']) | {'max_queries', 'extra_depth'}
#: optional settings, not filled in by default (so the cache keys of specs without them do not change): the shared
#: training keys (:mod:`.train_config`) DEFAULT_SPEC leaves out
OPTIONAL_KEYS = set(TRAIN_KEYS) - set(DEFAULT_SPEC)


def validate_colbert_spec(spec: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Fill defaults and check keys and values; raises :class:`KnowacqError` naming the bad setting."""
    spec = dict(spec or {})
    spec.pop('kind', None)
    check_spec(spec, set(DEFAULT_SPEC) | OPTIONAL_KEYS, 'unknown ColBERT training settings')
    data = dict(spec.get('data') or {})
    check_keys(data, DATA_KEYS, 'unknown ColBERT data settings')
    spec = {**copy.deepcopy(DEFAULT_SPEC), **spec, 'data': {**DEFAULT_SPEC['data'], **data}}
    for key in ('dim', 'query_maxlen', 'doc_maxlen', 'train_doc_maxlen'):
        if not isinstance(spec[key], int) or spec[key] < 1:
            raise KnowacqError(f'ColBERT training setting {key} must be a positive integer, got {spec[key]!r}')
    if not isinstance(spec['negatives'], int) or spec['negatives'] < 0:
        raise KnowacqError(f'negatives must be a non-negative integer, got {spec["negatives"]!r}')
    if spec['steps'] is None and spec['epochs'] is None:
        raise KnowacqError('give steps or epochs for ColBERT training')
    if spec['loss'] not in ('infonce', 'kl'):
        raise KnowacqError(f"ColBERT training loss must be 'infonce' or 'kl', got {spec['loss']!r}")
    if spec['loss'] == 'kl' and not spec['data']['teacher']:
        raise KnowacqError('loss: kl needs data.teacher, a run with teacher scores (e.g. a cross-encoder run); '
                           'or use loss: infonce')
    if isinstance(spec['data']['extra'], str):
        spec['data']['extra'] = [spec['data']['extra']]
    return spec


class ColBERTTask:
    """The trainer task: batches of ``(qid, query, [positive] + negatives)``; InfoNCE over MaxSim of every query
    against every document of the batch, or KL to teacher scores over each query's own documents.

    The passages of a batch are looked up with one ``texts_of(docnos)`` call (a single-docno ``text_of`` is wrapped).
    The BERT pooler, which ColBERT never uses (it projects every token's hidden state), is frozen."""

    def __init__(self, model, groups, text_of=None, *, negatives=3, queries_per_batch=8, loss='infonce',
                 loss_params=None, teacher=None, head_lr=None, train_doc_maxlen=128, seed=42, texts_of=None):
        from .losses import get_loss
        from .trainer import as_texts_of, freeze_pooler
        if not groups:
            raise KnowacqError('no training groups for ColBERT; check the qrels, the run and rel_threshold')
        self.model, self.groups, self.texts_of = model, list(groups), as_texts_of(text_of, texts_of)
        freeze_pooler(model.bert)
        self.negatives, self.qpb, self.seed = int(negatives), int(queries_per_batch), seed
        self.loss_name, self.loss_fn = loss, get_loss(loss, **(loss_params or {}))
        self.teacher, self.head_lr, self.train_doc_maxlen = teacher or {}, head_lr, int(train_doc_maxlen)

    def batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> List[list]:
        from .examples import sampled_group_batches
        return sampled_group_batches(self.groups, self.negatives, self.qpb, self.seed, epoch, rank, world_size)

    def batch_ids(self, batch):
        return [qid for qid, _, _ in batch]

    def param_groups(self, model, config):
        if self.head_lr is None:
            return None
        head = [p for n, p in model.named_parameters() if n.startswith('linear.') and p.requires_grad]
        body = [p for n, p in model.named_parameters() if not n.startswith('linear.') and p.requires_grad]
        return [{'params': body, 'lr': config.lr}, {'params': head, 'lr': float(self.head_lr)}]

    def loss(self, model, batch):
        import torch
        m = self.model
        device = next(m.parameters()).device
        q_ids, q_mask = m.tokenize_queries([query for _, query, _ in batch])
        full = m.config['doc_maxlen']
        m.config['doc_maxlen'] = min(full, self.train_doc_maxlen)
        try:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                d_ids, d_mask = m.tokenize_docs(list(self.texts_of([d for _, _, ds in batch for d in ds])))
        finally:
            m.config['doc_maxlen'] = full
        scores = model(q_ids.to(device), q_mask.to(device), d_ids.to(device), d_mask.to(device))    # [B, B * k]
        k = 1 + self.negatives
        if self.loss_name == 'kl':
            own = torch.stack([scores[i, i * k:(i + 1) * k] for i in range(len(batch))])
            targets = torch.tensor([[self.teacher.get(q, {}).get(d, -1e4) for d in ds] for q, _, ds in batch],
                                   dtype=own.dtype, device=device)
            loss = self.loss_fn(own, targets)
        else:
            loss = self.loss_fn(scores, torch.arange(len(batch), device=device) * k)
        with torch.no_grad():
            acc = (scores.argmax(1) == torch.arange(len(batch), device=device) * k).float().mean()
        return loss, {'in_batch_acc': float(acc)}

    def save(self, folder: Path) -> None:
        self.model.write(folder)


def _groups(spec, dataset, split, seed):
    from . import examples as ex
    data = spec['data']
    topics, qrels = dataset.get_topics(split), dataset.get_qrels(split)
    depth = int(data['depth'])
    try:
        run = dataset.get_run(data['run'], split)
    except KnowacqError:
        if data['run'] != 'bm25':
            raise
        from ..models.first_stage import PisaBM25
        judged = topics[topics['qid'].astype(str).isin(set(qrels['qid'].astype(str)))]
        run = PisaBM25(dataset, num_results=depth + 10)(judged[['qid', 'query']])
    teacher = None
    if data.get('teacher'):
        teacher = ex.score_targets(dataset.get_run(data['teacher'], split))
        run = dataset.get_run(data['teacher'], split)
    from .dense import docnos_with_text
    known = docnos_with_text(dataset, set(run['docno'].astype(str)) | set(qrels['docno'].astype(str)))
    groups = ex.contrastive_groups(topics, qrels, run, depth=depth, rel_threshold=int(data['rel_threshold']),
                                   neg_max_label=data['neg_max_label'], per_positive=bool(data['per_positive']),
                                   known_docnos=known)
    n_split = len(groups)
    for name in data['extra'] or []:
        if teacher is None:
            groups += ex.extra_groups(name, dataset, depth=int(data.get('extra_depth') or 30), seed=seed)
    if data.get('max_queries'):
        groups = random.Random(seed).sample(groups, min(len(groups), int(data['max_queries'])))
    return groups, n_split, teacher


class ColBERTFamily(TrainingFamily):
    """ColBERT's part of :func:`~.cached.train_cached`: one stage, cached in ``models/trained-colbert``."""
    kind, cache, version, neutral_keys = 'colbert', 'trained-colbert', VERSION, frozenset({'gradient_checkpointing'})

    def prepare(self, spec, dataset, train_split, dry_run=False):
        spec = validate_colbert_spec(spec)
        if dry_run:
            spec.update(backbone='tiny-bert', init=None, steps=2, epochs=None)
            spec['data'] = {**spec['data'], 'max_queries': 8, 'extra': []}
        return spec, train_split

    def train_stage(self, spec, stage, init, dataset, train_split, seed, work, shared, verbose):
        import torch
        from ..models.colbert import ColBERTModel
        from .dense import group_texts_of
        from .trainer import Trainer
        torch.manual_seed(seed)
        if spec['init']:
            model = ColBERTModel.from_pretrained(spec['init'], query_maxlen=spec['query_maxlen'], doc_maxlen=spec['doc_maxlen'])
        else:
            model = ColBERTModel.new(spec['backbone'], dim=spec['dim'], seed=seed, query_maxlen=spec['query_maxlen'],
                                     doc_maxlen=spec['doc_maxlen'])
        model.name = f'colbert:{spec["init"] or spec["backbone"]}:{dataset.name}:{train_split}'
        groups, n_split, teacher = _groups(spec, dataset, train_split, seed)
        cfg = TrainConfig.from_spec(spec, seed=seed, progress=verbose, log_every=5)
        task = ColBERTTask(model, groups, texts_of=group_texts_of(dataset.get_texts, groups), negatives=spec['negatives'],
                           queries_per_batch=cfg.queries_per_batch, loss=spec['loss'], loss_params=spec['loss_params'],
                           teacher=teacher, head_lr=spec['head_lr'], train_doc_maxlen=spec['train_doc_maxlen'], seed=seed)
        result = Trainer(task, cfg, work).train()
        return result, {'groups': len(groups), 'groups_from_split': n_split}


FAMILY = ColBERTFamily()


def train_colbert(spec: Optional[Dict[str, Any]], *, dataset, train_split: str, output_dir: Optional[Union[str, Path]] = None,
                  seed: int = 42, dry_run: bool = False, verbose: bool = False) -> Path:
    """Train (or fetch from the cache) the ColBERT ``spec`` on ``dataset``'s ``train_split``; returns its checkpoint folder
    (:func:`~.cached.train_cached`: cached by the content of the spec, the data and the weights).

    ``dry_run`` swaps the backbone for ``tiny-bert``, 2 steps and 8 queries (checks the wiring in seconds).
    """
    return train_cached('colbert', spec, dataset=dataset, train_split=train_split, output_dir=output_dir, seed=seed,
                        dry_run=dry_run, verbose=verbose)


def _main(argv=None):  # pragma: no cover - python -m pyterrier_knowacq.training.colbert --train-split dl20 --spec '{...}'
    import argparse
    parser = argparse.ArgumentParser(description='train a ColBERT model on an embedded dataset')
    parser.add_argument('--dataset', default='msmarco-passage')
    parser.add_argument('--train-split', required=True)
    parser.add_argument('--seed', type=int, default=42)
    parser.add_argument('--spec', default='{}', help='JSON dict of training settings')
    args = parser.parse_args(argv)
    print(train_colbert(json.loads(args.spec), dataset=args.dataset, train_split=args.train_split, seed=args.seed,
                        verbose=True))


if __name__ == '__main__':  # pragma: no cover
    _main()
