"""Probe examples: (query, 1 relevant passage, N-1 non-relevant passages), split by query, seeded.

Sources:

* qrels of any dataset (:func:`pyterrier_knowacq.datasets.core.get_dataset`): positives are judged at or above
  ``rel_min``; negatives are judged non-relevant (``negatives='judged'``, MS MARCO DL), taken from a first-stage run
  (``'bm25'`` = PISA BM25 over the corpus, or ``'run:NAME'`` = a shipped run) minus the judged positives, or
  ``'random'`` corpus passages; ``'auto'`` uses judged negatives when the qrels have enough and BM25 otherwise.
* DPR-format JSON (``{question, positive_ctxs, hard_negative_ctxs, negative_ctxs}``), e.g. the NQ sample.

No query appears in two of the train / validation / test parts. Every example keeps its ``N_max - 1`` negatives, so
the examples for a smaller N are the same queries and positives with the first ``N-1`` of them, re-shuffled by a
seeded generator that depends only on (seed, N, example): all models are probed on identical examples (paired tests).

Example::

    from pyterrier_knowacq.analysis.probe_data import probe_set_from_dataset
    ps = probe_set_from_dataset('msmarco-passage', 'dl19', n_max=5, negatives='judged', rel_min=2, seed=42)
    q_idx, p_idx, label = ps.for_n(3)
    texts = ps.queries, ps.passages
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .._util import KnowacqError

__all__ = ['ProbeSet', 'build_probe_set', 'probe_set_from_dataset', 'probe_set_from_dpr_json', 'load_probe_set']

SPLITS = ('train', 'val', 'test')


@dataclass
class ProbeSet:
    """Examples over deduplicated texts; ``negatives[e]`` holds ``n_max - 1`` passage indices of example ``e``."""
    queries: List[str]
    passages: List[str]
    qids: List[str]                     # per example
    query_index: np.ndarray             # [E]
    positive: np.ndarray                # [E]
    negatives: np.ndarray               # [E, n_max-1]
    split: np.ndarray                   # [E] of 'train' | 'val' | 'test'
    n_max: int
    seed: int
    info: Dict = field(default_factory=dict)

    def __len__(self):
        return len(self.qids)

    def for_n(self, n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(query_index [E], passage_index [E, n], label [E])``: the positive sits at ``label`` in a seeded shuffle."""
        if not 2 <= n <= self.n_max:
            raise KnowacqError(f'N={n} is not available: this probe set was built with n_max={self.n_max}; use 2..{self.n_max} '
                               f'or rebuild it with a larger n_max')
        cand = np.concatenate([self.positive[:, None], self.negatives[:, :n - 1]], axis=1)
        rng = np.random.default_rng([self.seed, n, 7919])
        perm = np.argsort(rng.random(cand.shape), axis=1)
        shuffled = np.take_along_axis(cand, perm, axis=1)
        label = np.argmax(perm == 0, axis=1)
        return self.query_index.copy(), shuffled, label

    def mask(self, part: str) -> np.ndarray:
        if part not in SPLITS:
            raise KnowacqError(f'unknown probe split {part!r}; choose one of {SPLITS}')
        return self.split == part

    def summary(self) -> Dict:
        return {'examples': len(self), 'queries': len(set(self.qids)), 'passages': len(self.passages), 'n_max': self.n_max,
                **{f'{s}_examples': int(self.mask(s).sum()) for s in SPLITS},
                **{f'{s}_queries': len(set(np.asarray(self.qids)[self.mask(s)])) for s in SPLITS}, **self.info}


def _split_queries(qids: Sequence[str], seed: int, test_frac: float, val_frac: float) -> Dict[str, str]:
    unique = sorted(set(qids))
    if len(unique) < 3:
        raise KnowacqError(f'a probe needs at least 3 queries (train, validation and test are split by query), got {len(unique)}; '
                           'use more queries or a larger dataset')
    rng = np.random.default_rng([seed, 104729])
    order = [unique[i] for i in rng.permutation(len(unique))]
    n_test = max(1, int(round(test_frac * len(unique))))
    n_val = max(1, int(round(val_frac * len(unique))))
    if n_test + n_val >= len(unique):
        n_test, n_val = 1, 1
    out = {q: 'test' for q in order[:n_test]}
    out.update({q: 'val' for q in order[n_test:n_test + n_val]})
    out.update({q: 'train' for q in order[n_test + n_val:]})
    return out


def build_probe_set(groups: Sequence[Tuple[str, str, Sequence[str], Sequence[str]]], *, n_max: int = 5, seed: int = 42,
                    max_per_query: int = 10, test_frac: float = 0.3, val_frac: float = 0.15, info: Optional[Dict] = None,
                    min_examples: int = 6) -> ProbeSet:
    """Build a :class:`ProbeSet` from ``(qid, query, positive_texts, negative_texts)`` groups.

    Each positive (at most ``max_per_query`` per query) becomes one example with ``n_max - 1`` negatives sampled
    without replacement from the query's negatives. Queries with fewer than ``n_max - 1`` negatives are dropped;
    when none is left, :class:`KnowacqError` says so.
    """
    if not isinstance(n_max, (int, np.integer)) or n_max < 2:
        raise KnowacqError(f'n_max must be an integer >= 2 (one relevant and at least one non-relevant passage), got {n_max!r}')
    rng = np.random.default_rng([seed, 15485863])
    passages: Dict[str, int] = {}
    queries: Dict[str, int] = {}
    rows = []
    short = []
    for qid, query, pos, neg in groups:
        neg = list(dict.fromkeys(t for t in neg if t not in set(pos)))
        pos = list(dict.fromkeys(pos))
        if not pos:
            continue
        if len(neg) < n_max - 1:
            short.append((qid, len(neg)))
            continue
        qi = queries.setdefault(query, len(queries))
        chosen = pos if len(pos) <= max_per_query else [pos[i] for i in sorted(rng.choice(len(pos), max_per_query, replace=False))]
        for p in chosen:
            negs = [neg[i] for i in rng.choice(len(neg), n_max - 1, replace=False)]
            rows.append((str(qid), qi, passages.setdefault(p, len(passages)), [passages.setdefault(t, len(passages)) for t in negs]))
    if len(rows) < min_examples:
        most = max((n for _, n in short), default=0)
        raise KnowacqError(f'too few negatives for N={n_max}: only {len(rows)} example(s) could be built '
                           f'({len(short)} queries have fewer than {n_max - 1} non-relevant passages; the most any has is {most}); '
                           f'lower N (n_max), or take negatives from a run (negatives: bm25 or run:NAME) or at random')
    assignment = _split_queries([r[0] for r in rows], seed, test_frac, val_frac)
    return ProbeSet(queries=list(queries), passages=list(passages), qids=[r[0] for r in rows],
                    query_index=np.array([r[1] for r in rows], dtype=np.int64),
                    positive=np.array([r[2] for r in rows], dtype=np.int64),
                    negatives=np.array([r[3] for r in rows], dtype=np.int64).reshape(len(rows), n_max - 1),
                    split=np.array([assignment[r[0]] for r in rows]), n_max=int(n_max), seed=int(seed),
                    info={'dropped_queries_few_negatives': len(short), **(info or {})})


def _negative_pool(dataset, split: str, qids: Sequence[str], how: str, depth: int, qrels: pd.DataFrame,
                   topics: pd.DataFrame, seed: int) -> Dict[str, List[str]]:
    """The candidate negative docnos of each query (texts are looked up later, in one batch)."""
    judged = {q: set(g.docno) for q, g in qrels.groupby('qid')}
    if how == 'judged':
        return {}
    if how == 'random':
        # the one source that needs the corpus listed: refused by irds: datasets (too large to list)
        known = dataset.known_docnos()
        if known is None:
            raise KnowacqError(f'negatives: random needs a corpus that can be listed; {dataset.name} is too large — '
                               'use negatives: judged or bm25')
        docnos = list(known)
        rng = np.random.default_rng([seed, 31337])
        return {q: [docnos[i] for i in rng.choice(len(docnos), min(depth, len(docnos)), replace=False)
                    if docnos[i] not in judged.get(q, ())] for q in qids}
    if how == 'bm25':
        from ..models.first_stage import PisaBM25
        run = PisaBM25(dataset, num_results=depth)(topics[topics.qid.isin(qids)][['qid', 'query']])
    elif how.startswith('run:'):
        run = dataset.get_run(how[4:], split)
    else:
        raise KnowacqError(f'unknown negatives source {how!r}; use judged, bm25, run:NAME, random or auto')
    run = run.sort_values(['qid', 'rank'] if 'rank' in run.columns else ['qid', 'score'],
                          ascending=[True, 'rank' in run.columns])
    return {q: [d for d in g.docno.astype(str)[:depth] if d not in judged.get(q, ())]
            for q, g in run.groupby('qid')}


def _texts_of(ds, docnos) -> Dict[str, str]:
    """Texts of just these docnos, in one batched look-up (an ``irds:`` docstore is never listed whole); docnos the
    corpus lacks are left out (a judged passage outside a shipped slice)."""
    docnos = sorted(set(docnos))
    return {d: t for d, t in zip(docnos, ds.find_texts(docnos)) if t is not None}


def probe_set_from_dataset(dataset, split=None, *, n_max: int = 5, negatives: str = 'auto',
                           rel_min: int = 1, depth: int = 30, max_queries: Optional[int] = None, seed: int = 42,
                           **kwargs) -> ProbeSet:
    """Probe examples from a dataset's qrels (see the module docstring for ``negatives``).

    ``split`` may be a list (e.g. ``['dl19', 'dl20']``): the splits' queries are pooled before the query split.
    Only the texts of the judged and candidate passages are read, so an ``irds:`` corpus of millions is fine.
    """
    from ..datasets.core import get_dataset
    ds = get_dataset(dataset)
    splits = list(split) if isinstance(split, (list, tuple)) else [split]
    groups, used = [], set()
    for sp in splits:
        topics = ds.get_topics(sp).astype({'qid': str})
        qrels = ds.get_qrels(sp).astype({'qid': str, 'docno': str})
        known = ds.known_docnos()   # None for irds: (too large to list; every docno is then assumed known)
        qrels = qrels[qrels.qid.isin(set(topics.qid)) & (qrels.docno.isin(set(known)) if known is not None else True)]
        qtext = dict(zip(topics.qid, topics['query']))
        qids = sorted(set(qrels[qrels.label >= rel_min].qid) - used)
        used.update(qids)
        if max_queries:
            rng = np.random.default_rng([seed, 2])
            qids = sorted(rng.choice(qids, min(max_queries, len(qids)), replace=False).tolist())
        how = negatives
        if how == 'auto':
            n_judged = qrels[qrels.label <= 0].groupby('qid').size()
            how = 'judged' if (n_judged >= n_max - 1).sum() >= max(3, len(qids) // 2) else 'bm25'
        extra = _negative_pool(ds, sp, qids, how, depth, qrels, topics, seed)
        qrels = qrels[qrels.qid.isin(set(qids))]
        wanted = qrels[(qrels.label >= rel_min) | ((qrels.label <= 0) & (how == 'judged'))].docno
        texts = _texts_of(ds, list(wanted) + [d for docnos in extra.values() for d in docnos])
        for q in qids:
            g = qrels[qrels.qid == q]
            pos = [texts[d] for d in g[g.label >= rel_min].docno if d in texts]
            if how == 'judged':
                neg = [texts[d] for d in g[g.label <= 0].docno if d in texts]
            else:
                neg = [texts[d] for d in extra.get(q, []) if d in texts]
            groups.append((q, qtext[q], pos, neg))
    info = {'source': f'{getattr(ds, "name", dataset)}:{"+".join(str(s) for s in splits)}', 'negatives': how, 'rel_min': rel_min}
    return build_probe_set(groups, n_max=n_max, seed=seed, info=info, **kwargs)


def probe_set_from_dpr_json(path, *, n_max: int = 5, seed: int = 42, use_hard_negatives: bool = True, **kwargs) -> ProbeSet:
    """Probe examples from a DPR retriever JSON file (``.json`` or ``.json.gz``)."""
    path = Path(path)
    if not path.exists() and Path(str(path) + '.gz').exists():
        path = Path(str(path) + '.gz')
    if not path.exists():
        raise KnowacqError(f'DPR JSON file {path} does not exist; give the path of a biencoder-*.json(.gz) file')
    from ..datasets.readers import read_dpr_json
    records = read_dpr_json(path)  # checked: each problem is one `file:line: ...` error

    def text(ctx):
        title, body = ctx.get('title') or '', ctx.get('text') or ''
        return f'{title} {body}'.strip() if title else body

    groups = []
    for i, r in enumerate(records):
        neg = [text(c) for c in (r.get('hard_negative_ctxs') or [])] if use_hard_negatives else []
        neg += [text(c) for c in (r.get('negative_ctxs') or [])]
        groups.append((str(i), r['question'], [text(c) for c in r['positive_ctxs']], neg))
    return build_probe_set(groups, n_max=n_max, seed=seed, info={'source': str(path), 'negatives': 'dpr-hard+neg'}, **kwargs)


def load_probe_set(spec: Dict, *, seed: int, n_max: int) -> ProbeSet:
    """A probe set from a YAML ``probe_data`` entry: ``{dataset, split, negatives, rel_min, ...}`` or ``{dpr_json: path}``,
    optionally with ``dry_run: {...}``, the entry a ``--dry-run`` reads instead (e.g. the shipped NQ sample in place of
    ``irds:dpr-w100/natural-questions/dev``)."""
    spec = dict(spec)
    spec.pop('dry_run', None)   # the offline stand-in a dry run reads instead (analysis.pipeline)
    kw = {k: spec.pop(k) for k in ('max_per_query', 'test_frac', 'val_frac', 'min_examples') if k in spec}
    if 'dpr_json' in spec:
        p = spec.pop('dpr_json')
        if p == 'nq-dpr-sample':
            from ..datasets.core import DATA_DIR
            p = DATA_DIR / 'nq-dpr-sample' / 'haystack-dpr-sample.json.gz'
        return probe_set_from_dpr_json(p, n_max=n_max, seed=seed, **kw)
    if 'dataset' not in spec:
        raise KnowacqError(f'probe data entry {spec} needs "dataset" (and "split") or "dpr_json"')
    allowed = {'dataset', 'split', 'negatives', 'rel_min', 'depth', 'max_queries', 'name'}
    unknown = set(spec) - allowed
    if unknown:
        raise KnowacqError(f'unknown probe data option(s) {sorted(unknown)}; allowed: {sorted(allowed | set(kw))}')
    spec.pop('name', None)
    return probe_set_from_dataset(spec.pop('dataset'), spec.pop('split', None), n_max=n_max, seed=seed, **spec, **kw)
