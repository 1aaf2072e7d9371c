"""Knowledge editing, part 1: the edited set H, its matched control C, and dataset views for training and retrieval.

Design (ours; the original method was never released):

* H are judged-relevant passages (``label >= rel_min``) of a set of queries Q_H of one split (TREC DL 2019 by
  default: never trained on); C are relevant passages of the other queries Q_C of that split. The split's queries
  are shuffled with the seed and dealt greedily to the side with the smaller pool, so both pools are of a size.
  C matches H in distribution: both are drawn with identical counts per stratum, a stratum being a token-length bin
  (quantiles of the pooled lengths, counted with the backbone's tokenizer) times the relevance grade. No query is in
  both, no passage is in both, and a passage judged relevant for several queries is left out.
* Passages that are training positives anywhere (``exclude``: the fine-tuning split's positives, extra training
  data) are never in H or C.
* :class:`CorpusView` is a dataset whose corpus keeps (``keep``) or drops (``drop``) some passages, with its own id
  and content fingerprints (so its indexes and trained models are cached apart from the full dataset's). Fine-tuning
  reads a view without H and C: their texts are unknown to it, so the trainer can use neither as a positive nor as
  a negative (``Dataset.get_texts`` raises for them), and :func:`training_positives` checks the groups it builds.

Example::

    sets = build_sets('msmarco-passage', 'dl19', size=200, tokenizer=tok, seed=42, exclude=positives)
    sets.table()                     # set, docno, qid, label, length, bin
    view = CorpusView(get_dataset('msmarco-passage'), drop=sets.docnos())
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd

# --- package imports (re-path here when modules move) -------------------------------------------------------------
from .._util import KnowacqError
from ..datasets.core import Dataset, get_dataset
# ------------------------------------------------------------------------------------------------------------------

__all__ = ['EditSets', 'build_sets', 'token_lengths', 'CorpusView', 'training_positives', 'assert_not_trained_on',
           'excluded_positives']


def token_lengths(tokenizer, texts: Sequence[str], max_length: int = 512) -> np.ndarray:
    """Tokens per text (special tokens included), counted with ``tokenizer`` and capped at ``max_length``."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    return np.array([len(ids) for ids in enc['input_ids']], dtype=np.int64)


@dataclass
class EditSets:
    """H and C as frames of ``docno, qid, label, text, length, bin``, with the query sets and the bin edges."""
    H: pd.DataFrame
    C: pd.DataFrame
    edges: np.ndarray
    seed: int
    info: Dict = field(default_factory=dict)

    @property
    def q_h(self) -> List[str]:
        return sorted(set(self.H['qid']))

    @property
    def q_c(self) -> List[str]:
        return sorted(set(self.C['qid']))

    def docnos(self, which: str = 'HC') -> List[str]:
        return [d for s in which for d in getattr(self, s)['docno']]

    def texts(self, which: str) -> List[str]:
        return list(getattr(self, which)['text'])

    def table(self) -> pd.DataFrame:
        cols = ['set', 'docno', 'qid', 'label', 'length', 'bin']
        return pd.concat([self.H.assign(set='H'), self.C.assign(set='C')], ignore_index=True)[cols]

    def summary(self) -> Dict:
        from scipy.stats import mannwhitneyu
        p = float(mannwhitneyu(self.H['length'], self.C['length']).pvalue) if len(self.H) and len(self.C) else float('nan')
        return {'size': len(self.H), 'queries_H': len(self.q_h), 'queries_C': len(self.q_c),
                'median_length_H': float(self.H['length'].median()), 'median_length_C': float(self.C['length'].median()),
                'length_mannwhitney_p': p, 'bin_edges': [int(e) for e in self.edges], 'seed': self.seed, **self.info}


def _bin_edges(lengths: np.ndarray, bins: int) -> np.ndarray:
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, bins + 1)).round().astype(np.int64))
    return edges if len(edges) >= 2 else np.array([int(lengths.min()), int(lengths.max()) + 1])


def _assign_bins(lengths: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.searchsorted(edges[1:-1], lengths, side='right').astype(np.int64)


def _allocate(size: int, capacity: Dict, order: Sequence) -> Dict:
    """Split ``size`` over strata in proportion to their ``capacity`` (largest remainder, ties by ``order``)."""
    total = sum(capacity.values())
    if total <= size:
        return dict(capacity)
    raw = {s: size * capacity[s] / total for s in order}
    out = {s: min(capacity[s], int(np.floor(raw[s]))) for s in order}
    left = size - sum(out.values())
    for s in sorted(order, key=lambda s: (-(raw[s] - np.floor(raw[s])), order.index(s))):
        if left <= 0:
            break
        if out[s] < capacity[s]:
            out[s] += 1
            left -= 1
    return out


def build_sets(dataset, split: str, *, size: int, tokenizer, seed: int = 42, rel_min: int = 2, bins: int = 5,
               match_label: bool = True, exclude: Iterable[str] = (), max_length: int = 512,
               queries: Optional[int] = None) -> EditSets:
    """H and its matched control C (see the module docstring); deterministic given ``seed``.

    Args:
        size: passages in each of H and C (fewer when the strata cannot fill it: ``info['size_requested']`` says).
        tokenizer: counts the tokens for the length bins (the backbone's).
        rel_min: the smallest relevance grade of a passage of H or C.
        bins: number of token-length bins (quantiles of the pooled lengths).
        match_label: also match the relevance grades (strata = bin x grade).
        exclude: docnos never used (e.g. every training positive).
        queries: use at most this many of the split's queries (seeded choice), before dealing them to Q_H / Q_C.
    """
    ds = get_dataset(dataset)
    exclude = set(map(str, exclude))
    qrels = ds.get_qrels(split).astype({'qid': str, 'docno': str})
    rel = qrels[qrels['label'] >= rel_min]
    per_doc = rel.groupby('docno')['qid'].nunique()
    shared = set(per_doc[per_doc > 1].index)
    found = ds.find_texts(list(rel['docno']))
    rel = rel.assign(text=found)
    rel = rel[rel['text'].notna() & ~rel['docno'].isin(exclude | shared)].drop_duplicates('docno')
    rel = rel.sort_values(['qid', 'docno']).reset_index(drop=True)
    if rel.empty:
        raise KnowacqError(f'{ds.name}:{split} has no passage judged >= {rel_min} with text (outside the excluded '
                           f'{len(exclude)}); lower rel_min or use another split')
    rng = np.random.default_rng([seed, 1509])
    qids = sorted(set(rel['qid']))
    if queries is not None and queries < len(qids):
        qids = sorted(rng.choice(qids, int(queries), replace=False).tolist())
        rel = rel[rel['qid'].isin(qids)]
    if len(qids) < 2:
        raise KnowacqError(f'H and C need queries of their own: {ds.name}:{split} leaves {len(qids)} query with relevant '
                           'passages; use a split with more queries')
    counts = rel.groupby('qid').size()
    side, pool = {}, {'H': 0, 'C': 0}
    for q in [qids[i] for i in rng.permutation(len(qids))]:
        s = 'H' if pool['H'] <= pool['C'] else 'C'
        side[q] = s
        pool[s] += int(counts[q])
    rel = rel.assign(side=rel['qid'].map(side),
                     length=token_lengths(tokenizer, rel['text'].tolist(), max_length=max_length))
    edges = _bin_edges(rel['length'].to_numpy(), bins)
    rel = rel.assign(bin=_assign_bins(rel['length'].to_numpy(), edges))
    keys = ['bin', 'label'] if match_label else ['bin']
    strata = sorted(k for k, _ in rel.groupby(keys))   # tuples, as the groups below are keyed
    by = {s: {k: g.sort_values('docno') for k, g in rel[rel['side'] == s].groupby(keys)} for s in ('H', 'C')}
    capacity = {k: min(len(by['H'].get(k, ())), len(by['C'].get(k, ()))) for k in strata}
    take = _allocate(int(size), capacity, list(strata))
    chosen = {'H': [], 'C': []}
    for k in strata:
        for s in ('H', 'C'):
            if take[k]:
                g = by[s][k]
                chosen[s].append(g.iloc[np.sort(rng.choice(len(g), take[k], replace=False))])
    cols = ['docno', 'qid', 'label', 'text', 'length', 'bin']
    H, C = (pd.concat(chosen[s], ignore_index=True)[cols] if chosen[s] else pd.DataFrame(columns=cols) for s in ('H', 'C'))
    if len(H) == 0:
        raise KnowacqError(f'no length/grade stratum of {ds.name}:{split} has passages on both sides; use fewer bins '
                           'or match_label: false')
    if set(H['qid']) & set(C['qid']) or set(H['docno']) & set(C['docno']):
        raise KnowacqError('internal error: H and C share a query or a passage')
    info = {'dataset': ds.name, 'split': split, 'rel_min': rel_min, 'bins': int(len(edges) - 1), 'match_label': match_label,
            'size_requested': int(size), 'candidates_H': pool['H'], 'candidates_C': pool['C'], 'excluded': len(exclude),
            'shared_between_queries': len(shared)}
    return EditSets(H, C, edges, int(seed), info)


class CorpusView(Dataset):
    """``base`` with a corpus restricted to ``keep`` and/or without ``drop``; topics, qrels and runs are the base's.

    It has its own ``id``, ``corpus_fingerprint()`` and ``fingerprint()`` (the base's plus the docnos kept/dropped),
    so indexes and trained models built from it are cached apart. A dropped passage has no text here: ``get_texts``
    raises for it, ``find_texts`` gives ``None``, ``known_docnos()`` leaves it out.
    """

    def __init__(self, base, *, keep: Optional[Iterable[str]] = None, drop: Iterable[str] = (), label: str = 'view'):
        self.base = get_dataset(base)
        self.keep = None if keep is None else frozenset(map(str, keep))
        self.drop = frozenset(map(str, drop))
        h = hashlib.sha1()
        for tag, docs in (('keep', self.keep), ('drop', self.drop)):
            h.update(f'{tag}:{"*" if docs is None else len(docs)}\0'.encode())
            for d in sorted(docs or ()):
                h.update(d.encode('utf-8', 'surrogateescape') + b'\0')
        self.digest = h.hexdigest()[:12]
        self.name = f'{self.base.name}-{label}-{self.digest}'
        self.splits = self.base.splits

    def _ok(self, docno) -> bool:
        return docno not in self.drop and (self.keep is None or docno in self.keep)

    @property
    def id(self) -> str:
        return f'{self.base.id}-{self.digest}'

    @property
    def corpus_name(self) -> str:
        return self.name

    def _check_split(self, split):
        return self.base._check_split(split)

    def get_topics(self, split=None):
        return self.base.get_topics(split)

    def get_qrels(self, split=None):
        return self.base.get_qrels(split)

    def run_names(self, split=None):
        return self.base.run_names(split)

    def get_run(self, name, split=None):
        return self.base.get_run(name, split)

    def provenance(self) -> str:
        return self.base.provenance()

    def get_corpus_iter(self, verbose: bool = False):
        if self.keep is not None and len(self.keep) < 100_000:   # a small view: look its texts up, no corpus pass
            docnos = sorted(d for d in self.keep if d not in self.drop)
            for d, t in zip(docnos, self.base.find_texts(docnos)):
                if t is not None:
                    yield {'docno': d, 'text': t}
            return
        for doc in self.base.get_corpus_iter(verbose=verbose):
            if self._ok(doc['docno']):
                yield doc

    def find_texts(self, docnos) -> List[Optional[str]]:
        docnos = [str(d) for d in docnos]
        return [t if self._ok(d) else None for d, t in zip(docnos, self.base.find_texts(docnos))]

    def known_docnos(self):
        base = self.base.known_docnos()
        if base is None:
            return None if self.keep is None else frozenset(d for d in self.keep if d not in self.drop)
        return frozenset(d for d in base if self._ok(d))

    def corpus_fingerprint(self) -> str:
        return hashlib.sha1(f'{self.base.corpus_fingerprint()}|{self.digest}'.encode()).hexdigest()[:16]

    def fingerprint(self) -> str:
        return hashlib.sha1(f'{self.base.fingerprint()}|{self.digest}'.encode()).hexdigest()[:16]


def excluded_positives(spec: Dict, dataset, train_split: str) -> set:
    """Docnos that a fine-tuning ``spec`` on ``dataset``'s ``train_split`` may use as positives (its qrels at or above
    ``data.rel_threshold``, and the positives of ``msmarco-dev-positives`` extra data): never put in H or C."""
    ds = get_dataset(dataset)
    data = spec.get('data') or {}
    qrels = ds.get_qrels(train_split).astype({'docno': str})
    out = set(qrels[qrels['label'] >= int(data.get('rel_threshold', 1))]['docno'])
    if 'msmarco-dev-positives' in (data.get('extra') or []):
        train = get_dataset('msmarco-passage-train')
        out |= set(train.get_qrels('dev-small-positives')['docno'].astype(str))
    return out


def training_positives(spec: Dict, dataset, train_split: str, seed: int) -> Dict[str, str]:
    """``{docno: text}`` of every positive of the groups the trainer builds for ``spec`` (the trainer's own group
    builder, :func:`pyterrier_knowacq.training.dense._groups`, with the validation carve), texts carried by extra
    groups included."""
    from ..training import dense as _dense   # the trainer's own group construction (private helpers)
    ds = get_dataset(dataset)
    spec = dict(spec)
    train_qids, _, _ = _dense._validation(spec, ds, train_split, seed)
    groups = _dense._groups(spec, ds, train_split, seed, qids=train_qids)
    pos = sorted({d for g in groups for d in g.positives})
    own = {}
    for g in groups:
        own.update(getattr(g, 'texts', None) or {})
    looked = dict(zip([d for d in pos if d not in own], ds.find_texts([d for d in pos if d not in own])))
    return {d: own.get(d, looked.get(d)) for d in pos}


def assert_not_trained_on(sets_docnos: Iterable[str], sets_texts: Iterable[str], positives: Dict[str, str]) -> int:
    """Raise :class:`KnowacqError` when a training positive is a passage of H/C, by docno or by exact text; returns
    the number of training positives checked."""
    docnos = set(map(str, sets_docnos))
    texts = {str(t).strip() for t in sets_texts}
    clash = sorted(d for d, t in positives.items() if d in docnos or (t is not None and str(t).strip() in texts))
    if clash:
        raise KnowacqError(f'{len(clash)} training positive(s) are passages of the edited/control sets (first: '
                           f'{clash[0]!r}); fine-tune on a view without them (CorpusView(drop=...)) and build the sets '
                           'with exclude=excluded_positives(...)')
    return len(positives)
