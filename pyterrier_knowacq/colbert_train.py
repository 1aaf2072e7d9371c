"""Training a ColBERT model offline: groups of (query, positive, hard negatives) and InfoNCE with in-batch negatives.

Training groups come from a dataset's qrels (positives: label >= ``min_label``) and BM25 negatives (the dataset's BM25
run when it ships one, else PISA BM25 over its corpus, judged-relevant documents excluded). For MS MARCO the 620
dev-small queries with a positive passage (``msmarco-passage-train``) can be added, their negatives retrieved by BM25
over the 31k-passage slice.

Example::

    from pyterrier_knowacq.colbert_train import train_colbert
    folder = train_colbert({'backbone': 'minilm-l6', 'steps': 200}, dataset='msmarco-passage', train_split='dl20',
                           output_dir='models/colbert-dl20', seed=42)
    pipeline = bm25 >> dataset.text_loader() >> ColBERT(folder)
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from ._util import KnowacqError, atomic_write_json

__all__ = ['train_colbert', 'training_groups', 'DEFAULT_SPEC']

DEFAULT_SPEC = {
    'backbone': 'minilm-l6', 'init': None, 'dim': 128, 'query_maxlen': 32, 'doc_maxlen': 180,
    'steps': 200, 'batch_queries': 8, 'negatives': 3, 'lr': 2e-5, 'head_lr': 1e-3, 'warmup': 0.1,
    'weight_decay': 0.01, 'max_grad_norm': 1.0, 'min_label': 2, 'neg_depth': 50, 'in_batch': True,
    'extra_train': ['dev-small-positives'], 'train_doc_maxlen': 128,
}


def _bm25_candidates(dataset, topics, depth: int, split: Optional[str]):
    """``qid -> [docno...]``: the dataset's BM25 run for ``split`` if it has one, else PISA BM25 over its corpus."""
    try:
        run = dataset.get_run('bm25', split)
    except Exception:
        from .first_stage import PisaBM25
        run = PisaBM25(dataset, num_results=depth)(topics[['qid', 'query']])
    run = run.sort_values(['qid', 'score'], ascending=[True, False])
    return {qid: list(g['docno'][:depth]) for qid, g in run.groupby('qid')}


def training_groups(dataset, split: str, *, min_label: int = 2, neg_depth: int = 50) -> List[Dict]:
    """``[{'query', 'pos': [texts], 'neg': [texts]}]`` for every query of ``split`` with a positive that has text."""
    from .datasets import get_dataset
    ds = get_dataset(dataset) if isinstance(dataset, str) else dataset
    topics = ds.get_topics(split)
    qrels = ds.get_qrels(split)
    labels = {(r.qid, r.docno): r.label for r in qrels.itertuples()}
    cands = _bm25_candidates(ds, topics, neg_depth, split)
    texts = {}

    def text(docno):
        if docno not in texts:
            try:
                texts[docno] = ds.get_texts([docno])[0]
            except Exception:
                texts[docno] = None
        return texts[docno]
    groups = []
    for qid, query in zip(topics['qid'], topics['query']):
        pos = [text(d) for d in qrels.loc[(qrels.qid == qid) & (qrels.label >= min_label), 'docno']]
        pos = [p for p in pos if p]
        neg = [text(d) for d in cands.get(qid, []) if labels.get((qid, d), 0) <= 0]
        neg = [n for n in neg if n]
        if pos and neg:
            groups.append({'query': query, 'pos': pos, 'neg': neg})
    return groups


def _dev_small_groups(neg_depth: int) -> List[Dict]:
    """The 620 dev-small queries with a positive text; negatives: BM25 over the embedded 31k MS MARCO passages."""
    from .datasets import get_dataset
    train = get_dataset('msmarco-passage-train')
    pairs = train._pairs()
    topics = pairs[['qid', 'query']].drop_duplicates('qid')
    corpus = get_dataset('msmarco-passage')
    from .first_stage import PisaBM25
    run = PisaBM25(corpus, num_results=neg_depth)(topics)
    positives = set(zip(pairs['qid'], pairs['docno']))
    texts = dict(zip(run['docno'], corpus.get_texts(run['docno'].tolist())))
    groups = []
    for qid, g in pairs.groupby('qid', sort=True):
        neg = [texts[d] for d in run.loc[run.qid == qid].sort_values('score', ascending=False)['docno'] if (qid, d) not in positives]
        if neg:
            groups.append({'query': g['query'].iloc[0], 'pos': list(g['text']), 'neg': neg})
    return groups


def _check_spec(spec: Optional[Dict]) -> Dict:
    spec = dict(spec or {})
    unknown = set(spec) - set(DEFAULT_SPEC)
    if unknown:
        raise KnowacqError(f'unknown ColBERT training settings {sorted(unknown)}; known: {sorted(DEFAULT_SPEC)}')
    spec = {**DEFAULT_SPEC, **spec}
    for key in ('steps', 'batch_queries', 'dim', 'neg_depth'):
        if not isinstance(spec[key], int) or spec[key] < 1:
            raise KnowacqError(f'ColBERT training setting {key} must be a positive integer, got {spec[key]!r}')
    if not isinstance(spec['negatives'], int) or spec['negatives'] < 0:
        raise KnowacqError(f'negatives must be a non-negative integer, got {spec["negatives"]!r}')
    if isinstance(spec['extra_train'], str):
        spec['extra_train'] = [spec['extra_train']]
    bad = set(spec['extra_train'] or []) - {'dev-small-positives'}
    if bad:
        raise KnowacqError(f'extra_train may only name dev-small-positives, got {sorted(bad)}')
    return spec


def train_colbert(spec: Optional[Dict], *, dataset, train_split: str, output_dir: Union[str, Path], seed: int = 42,
                  verbose: bool = True) -> Path:
    """Train a ColBERT (fresh projection on ``spec['backbone']``, or continue from ``spec['init']``) and save it.

    Loss: cross-entropy over MaxSim scores of each query against its positive, its hard negatives and (``in_batch``)
    every other document of the batch (InfoNCE). Returns ``output_dir``, a checkpoint folder :class:`ColBERT` loads.
    """
    import torch
    from .colbert import ColBERTModel, maxsim_matrix
    spec = _check_spec(spec)
    output_dir = Path(output_dir)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    started = time.time()
    groups = training_groups(dataset, train_split, min_label=spec['min_label'], neg_depth=spec['neg_depth'])
    n_fold = len(groups)
    if 'dev-small-positives' in (spec['extra_train'] or []):
        groups += _dev_small_groups(spec['neg_depth'])
    if not groups:
        raise KnowacqError(f'no training groups in {dataset}:{train_split} (no positive with text and a BM25 negative); '
                           'check the split name and min_label')
    if spec['init']:
        model = ColBERTModel.from_pretrained(spec['init'], query_maxlen=spec['query_maxlen'], doc_maxlen=spec['doc_maxlen'])
    else:
        model = ColBERTModel.new(spec['backbone'], dim=spec['dim'], seed=seed, query_maxlen=spec['query_maxlen'],
                                 doc_maxlen=spec['doc_maxlen'])
    model.train()
    head = list(model.linear.parameters())
    body = [p for n, p in model.named_parameters() if not n.startswith('linear.')]
    opt = torch.optim.AdamW([{'params': body, 'lr': spec['lr']}, {'params': head, 'lr': spec['head_lr']}],
                            weight_decay=spec['weight_decay'])
    warm = max(1, int(spec['warmup'] * spec['steps']))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (spec['steps'] - s) / max(1, spec['steps'] - warm))))
    rng = random.Random(seed)
    full_maxlen = model.config['doc_maxlen']
    model.config['doc_maxlen'] = min(full_maxlen, spec['train_doc_maxlen'])
    log = []
    order: List[int] = []
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for step in range(spec['steps']):
            if len(order) < spec['batch_queries']:
                perm = list(range(len(groups)))
                rng.shuffle(perm)
                order += perm
            batch = [groups[i] for i in order[:spec['batch_queries']]]
            del order[:spec['batch_queries']]
            queries, docs = [], []
            for g in batch:
                queries.append(g['query'])
                docs.append(rng.choice(g['pos']))
                docs += [rng.choice(g['neg']) for _ in range(spec['negatives'])]
            Q = model.encode_queries(*model.tokenize_queries(queries))
            D, keep = model.encode_docs(*model.tokenize_docs(docs))
            width = 1 + spec['negatives']
            scores = maxsim_matrix(Q, D, keep)                                  # [B, B * width]
            if not spec['in_batch']:
                own = torch.zeros_like(scores, dtype=torch.bool)
                for i in range(len(batch)):
                    own[i, i * width:(i + 1) * width] = True
                scores = scores.masked_fill(~own, -1e4)
            target = torch.arange(len(batch)) * width
            loss = torch.nn.functional.cross_entropy(scores, target)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec['max_grad_norm'])
            opt.step()
            sched.step()
            log.append(round(float(loss), 5))
            if verbose and (step % 20 == 0 or step == spec['steps'] - 1):
                print(f'colbert train step {step + 1}/{spec["steps"]} loss {np.mean(log[-20:]):.4f} '
                      f'({time.time() - started:.0f}s)', flush=True)
    model.config['doc_maxlen'] = full_maxlen
    model.eval()
    model.name = f'colbert:{spec["init"] or spec["backbone"]}:{train_split}'
    model.save(output_dir, overwrite=True)
    atomic_write_json(output_dir / 'training.json', {
        'spec': spec, 'dataset': str(getattr(dataset, 'name', dataset)), 'train_split': train_split, 'seed': seed,
        'groups': len(groups), 'groups_from_split': n_fold, 'losses': log, 'wall_time_s': round(time.time() - started, 1)})
    return output_dir


def _main(argv=None):  # pragma: no cover - convenience entry point: python -m pyterrier_knowacq.colbert_train
    import argparse
    parser = argparse.ArgumentParser(description='train a ColBERT model on an embedded dataset')
    parser.add_argument('--dataset', default='msmarco-passage')
    parser.add_argument('--train-split', required=True)
    parser.add_argument('--output', required=True)
    parser.add_argument('--seed', type=int, default=42)
    parser.add_argument('--spec', default='{}', help='JSON dict of training settings')
    args = parser.parse_args(argv)
    print(train_colbert(json.loads(args.spec), dataset=args.dataset, train_split=args.train_split,
                        output_dir=args.output, seed=args.seed))


if __name__ == '__main__':  # pragma: no cover
    _main()
