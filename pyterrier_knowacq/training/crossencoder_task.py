"""The cross-encoder training task for :class:`~pyterrier_knowacq.training.trainer.Trainer`.

A task wraps a :class:`~pyterrier_knowacq.models.crossencoder.CrossEncoder`, a loss from the registry and a list of
*items* (contrastive :class:`~.examples.Group` s or teacher :class:`~.examples.TeacherList` s). Each epoch shuffles the
items with ``seed + epoch``, draws a group/list per item and packs ``queries_per_batch`` of them per batch. Batches
are light (query ids, queries, docnos, targets); the passage texts of a batch are looked up when it is trained on,
with one batched ``texts_of(docnos)`` call.

Example::

    ce = CrossEncoder.new('minilm-l6', pooling='mean')
    task = CrossEncoderTask(ce, 'lce', groups, texts_of=dataset.get_texts, group_size=8, queries_per_batch=4, seed=42)
    Trainer(task, TrainConfig(lr=2e-5, max_steps=200), 'out/').train()
"""
from __future__ import annotations

import random
from typing import Callable, Dict, List, Optional, Sequence

import pandas as pd
import torch

from .._util import KnowacqError
from .examples import TeacherList, sample_group, sample_list
from .losses import get_loss
from .trainer import as_texts_of, freeze_pooler

__all__ = ['CrossEncoderTask', 'RerankValidator']


class RerankValidator:
    """nDCG@10 (and RR@10) of a cross-encoder re-ranking a first-stage run's top ``depth`` for held-out queries."""

    def __init__(self, topics: pd.DataFrame, qrels: pd.DataFrame, run: pd.DataFrame,
                 text_of: Optional[Callable[[str], str]] = None, depth: int = 30, *,
                 texts_of: Optional[Callable[[List[str]], List[str]]] = None):
        qids = set(topics['qid'].astype(str))
        run = run.assign(qid=run['qid'].astype(str), docno=run['docno'].astype(str))
        run = run[run['qid'].isin(qids)].sort_values(['qid', 'rank'] if 'rank' in run.columns else ['qid'])
        run = run.groupby('qid', sort=False).head(depth)
        queries = dict(zip(topics['qid'].astype(str), topics['query'].astype(str)))
        self.qids = run['qid'].tolist()
        self.docnos = run['docno'].tolist()
        self.run_scores = (run['score'].astype(float) if 'score' in run.columns else -run['rank'].astype(float)).to_numpy()
        self.queries = [queries[q] for q in self.qids]
        self.texts = list(as_texts_of(text_of, texts_of)(self.docnos))   # one batched lookup
        self.qrels = qrels.assign(query_id=qrels['qid'].astype(str), doc_id=qrels['docno'].astype(str),
                                  relevance=qrels['label'].astype(int))[['query_id', 'doc_id', 'relevance']]
        self.qrels = self.qrels[self.qrels['query_id'].isin(qids)]

    def __call__(self, ce) -> Dict[str, float]:
        return self._measure(ce.score_pairs(self.queries, self.texts))

    def first_stage(self) -> Dict[str, float]:
        """The same measures for the first stage's own ranking of the validation queries (what re-ranking must beat)."""
        return self._measure(self.run_scores)

    def _measure(self, scores) -> Dict[str, float]:
        import ir_measures
        from ir_measures import RR, nDCG
        run = pd.DataFrame({'query_id': self.qids, 'doc_id': self.docnos, 'score': scores.astype(float)})
        agg = ir_measures.calc_aggregate([nDCG @ 10, RR(rel=2) @ 10], self.qrels, run)
        return {'nDCG@10': float(agg[nDCG @ 10]), 'RR(rel=2)@10': float(agg[RR(rel=2) @ 10])}


class CrossEncoderTask:
    """Trains ``ce.model`` with a registry loss on groups (lce, bce, kl, margin_mse) or teacher lists (ranknet).

    Args:
        ce: a :class:`CrossEncoder` (its ``model`` is trained in place; ``save`` writes ``ce.save``).
        loss: a registry name or :class:`Loss`.
        items: groups or teacher lists.
        text_of: docno -> passage text (groups may carry their own texts); or give ``texts_of``.
        texts_of: docnos -> passage texts, one call per batch (e.g. ``dataset.get_texts``).
        group_size: candidates per query (1 positive + negatives) for groups; the list length for teacher lists.
        queries_per_batch: items per micro-batch.
        targets: ``{qid: {docno: score}}`` teacher scores (for kl / margin_mse).
        select: teacher-list selection (``random`` / ``top``).
        head_lr: learning rate of a fresh head (``None`` = the trainer's lr).
        validator: a :class:`RerankValidator` (or any ``ce -> dict``).
    """

    def __init__(self, ce, loss, items: Sequence, text_of: Optional[Callable[[str], str]] = None, *, group_size: int = 8,
                 queries_per_batch: int = 4, max_length: int = 128, seed: int = 42,
                 targets: Optional[Dict[str, Dict[str, float]]] = None, select: str = 'random',
                 head_lr: Optional[float] = None, validator=None, loss_params: Optional[dict] = None,
                 texts_of: Optional[Callable[[List[str]], List[str]]] = None):
        self.ce = ce
        self.model = ce.model
        if not getattr(ce.model, 'classifier', True):
            freeze_pooler(ce.model.backbone)   # a fresh head pools hidden states itself: the BERT pooler gets no gradient
        self.loss_fn = get_loss(loss, **(loss_params or {}))
        self.items = list(items)
        if not self.items:
            raise KnowacqError('no training examples; check the training data of this stage')
        self.texts_of = as_texts_of(text_of, texts_of)
        self.group_size = int(group_size)
        self.queries_per_batch = int(queries_per_batch)
        self.max_length = int(max_length)
        self.seed = int(seed)
        self.targets = targets
        self.select = select
        self.head_lr = head_lr
        self.validator = validator
        kind = self.loss_fn.target_kind
        if kind == 'teacher_ranks' and not isinstance(self.items[0], TeacherList):
            raise KnowacqError(f'loss {self.loss_fn.name} needs teacher lists; give the stage data a teacher run')
        if kind == 'teacher_scores' and targets is None:
            raise KnowacqError(f'loss {self.loss_fn.name} needs teacher scores; give the stage data `scores:`')

    # -- data
    def batches(self, epoch: int, rank: int, world_size: int) -> List[list]:
        """This rank's batches of ``epoch``: lists of ``(qid, query, docnos, target, item index)``, no texts."""
        rng = random.Random(self.seed * 100003 + epoch)
        order = list(range(len(self.items)))
        rng.shuffle(order)
        per_step = self.queries_per_batch * world_size
        usable = max(per_step, len(order) - len(order) % per_step)
        order = (order * ((usable // max(1, len(order))) + 1))[:usable]   # every rank gets the same number of batches
        order = order[rank::world_size]
        out = []
        for i in range(0, len(order), self.queries_per_batch):
            out.append([self._draw(j, rng) for j in order[i:i + self.queries_per_batch]])
        return out

    def _draw(self, index: int, rng) -> tuple:
        item, n = self.items[index], self.group_size
        if isinstance(item, TeacherList):
            qid, query, docnos, labels = sample_list(item, n, rng, self.select)
            while len(docnos) < n:                 # pad short lists; label 0 = ignored by ranknet
                docnos.append(docnos[-1])
                labels.append(0)
            target = labels
        else:
            qid, query, docnos = sample_group(item, n - 1, rng)
            if self.loss_fn.target_kind == 'teacher_scores':
                tq = self.targets.get(qid, {})
                missing = [d for d in docnos if d not in tq]
                if missing:
                    raise KnowacqError(f'teacher scores miss {len(missing)} candidates of query {qid}; '
                                       'score the same run (and depth) the groups are drawn from')
                target = [tq[d] for d in docnos]
            else:
                target = [1] + [0] * (n - 1)
        return qid, query, docnos, target, index

    def texts(self, batch) -> tuple:
        """``(queries, texts)`` of a batch's pairs: the groups' own texts, the rest in one ``texts_of`` call."""
        queries, texts, lookup = [], [], []
        for _qid, query, docnos, _target, index in batch:
            own = getattr(self.items[index], 'texts', None) or {}
            for d in docnos:
                queries.append(query)
                texts.append(own.get(d))
                if d not in own:
                    lookup.append((len(texts) - 1, d))
        if lookup:
            for (i, _), t in zip(lookup, self.texts_of([d for _, d in lookup])):
                texts[i] = t
        return queries, texts

    def batch_ids(self, batch):
        return [item[0] for item in batch]

    # -- optimisation
    def loss(self, model, batch):
        queries, texts = self.texts(batch)
        enc = self.ce.tokenizer(queries, texts, padding=True, truncation='only_second',
                                max_length=self.max_length, return_tensors='pt')
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        scores = model(**enc).view(len(batch), -1)
        targets = torch.tensor([item[3] for item in batch], dtype=torch.float32, device=device)
        if self.loss_fn.name == 'lce':
            value = self.loss_fn(scores, targets)
        elif self.loss_fn.name == 'bce':
            value = self.loss_fn(scores.reshape(-1), targets.reshape(-1))
        else:
            value = self.loss_fn(scores, targets)
        return value, {}

    def param_groups(self, model, config):
        head = getattr(model, 'head', None) if not getattr(model, 'classifier', True) else None
        if head is None or self.head_lr is None:
            return None
        head_ids = {id(p) for p in head.parameters()}
        rest = [p for p in model.parameters() if id(p) not in head_ids and p.requires_grad]
        return [{'params': rest, 'lr': config.lr, 'weight_decay': config.weight_decay},
                {'params': list(head.parameters()), 'lr': self.head_lr, 'weight_decay': 0.0}]

    def validate(self, model):
        if self.validator is None:
            return {}
        return self.validator(self.ce)

    def save(self, folder):
        self.ce.save(folder)
