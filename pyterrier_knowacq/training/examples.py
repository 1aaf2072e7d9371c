"""Training examples from PyTerrier objects: contrastive groups, teacher lists and score targets.

* :func:`contrastive_groups` — (topics, qrels, first-stage run) -> one :class:`Group` per query (or per positive):
  positives are judged ``>= rel_threshold``; negatives come from the run's top ``depth`` and are every candidate not
  judged ``>= neg_max_label`` (unjudged count as negative, as in LCE). :func:`sample_group` draws ``1 + n`` docnos.
* :func:`teacher_lists` — one or more TREC runs of an LLM ranker -> per-query :class:`TeacherList` (docnos in teacher
  order); :func:`sample_list` draws ``list_length`` of them with RankNet labels ``list_length + 1 - rank``.
* :func:`score_targets` — a run with teacher scores -> ``{qid: {docno: score}}`` for KL / margin-MSE targets.
* :func:`extra_groups` — groups from the extra in-domain MS MARCO data (620 dev-small positives with BM25 negatives
  from the embedded passage slice; the 110 train queries with their own negatives).

Example::

    ds = get_dataset('msmarco-passage')
    groups = contrastive_groups(ds.get_topics('dl20'), ds.get_qrels('dl20'), ds.get_run('bm25', 'dl20'), depth=100)
    qid, query, docnos = sample_group(groups[0], negatives=7, rng=random.Random(0))
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

from .._util import KnowacqError, cache_dir

__all__ = ['Group', 'TeacherList', 'contrastive_groups', 'sample_group', 'teacher_lists', 'sample_list',
           'score_targets', 'extra_groups', 'split_validation']


@dataclass
class Group:
    qid: str
    query: str
    positives: List[str]
    negatives: List[str]
    #: texts for docnos outside the dataset's corpus (e.g. the MS MARCO train triples)
    texts: Dict[str, str] = field(default_factory=dict)


@dataclass
class TeacherList:
    qid: str
    query: str
    docnos: List[str]   # best first


def _check_columns(df: pd.DataFrame, cols: Sequence[str], what: str):
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KnowacqError(f'{what} lacks columns {missing} (has {list(df.columns)}); pass a frame with {list(cols)}')


def split_validation(qids: Sequence[str], n: int, seed: int) -> Tuple[List[str], List[str]]:
    """Seeded carve of ``n`` validation query ids from the training queries -> (train, validation), both sorted."""
    qids = sorted(set(map(str, qids)))
    if n <= 0:
        return qids, []
    if n >= len(qids):
        raise KnowacqError(f'cannot hold out {n} validation queries from {len(qids)} training queries; use fewer')
    rng = random.Random(seed)
    shuffled = list(qids)
    rng.shuffle(shuffled)
    return sorted(shuffled[n:]), sorted(shuffled[:n])


def contrastive_groups(topics: pd.DataFrame, qrels: pd.DataFrame, run: pd.DataFrame, *, depth: int = 100,
                       rel_threshold: int = 1, neg_max_label: Optional[int] = None, per_positive: bool = False,
                       qids: Optional[Sequence[str]] = None, known_docnos=None) -> List[Group]:
    """Groups of positives (judged ``>= rel_threshold``) and negatives (run top-``depth`` below ``neg_max_label``).

    Args:
        neg_max_label: candidates judged ``>= neg_max_label`` are never negatives (default ``rel_threshold``; use 1
            to drop partially relevant passages from the negatives of graded collections).
        per_positive: one group per positive (more weight to queries with many judged positives, as LCE does).
        qids: restrict to these queries (e.g. the training part after carving validation queries).
        known_docnos: a set of docnos that have text; others are skipped.
    """
    _check_columns(topics, ['qid', 'query'], 'topics')
    _check_columns(qrels, ['qid', 'docno', 'label'], 'qrels')
    _check_columns(run, ['qid', 'docno'], 'run')
    neg_max_label = rel_threshold if neg_max_label is None else neg_max_label
    topics = topics.assign(qid=topics['qid'].astype(str))
    qrels = qrels.assign(qid=qrels['qid'].astype(str), docno=qrels['docno'].astype(str))
    run = run.assign(qid=run['qid'].astype(str), docno=run['docno'].astype(str))
    if 'rank' in run.columns:
        run = run.sort_values(['qid', 'rank'])
    elif 'score' in run.columns:
        run = run.sort_values(['qid', 'score'], ascending=[True, False])
    wanted = set(topics['qid']) if qids is None else set(map(str, qids))
    if not wanted & set(qrels['qid']):
        raise KnowacqError('the topics and qrels share no query ids; pass the qrels of the same split as the topics')
    labels: Dict[str, Dict[str, int]] = {}
    for q, d, lab in zip(qrels['qid'], qrels['docno'], qrels['label']):
        labels.setdefault(q, {})[d] = int(lab)
    cands = {q: g['docno'].tolist()[:depth] for q, g in run.groupby('qid', sort=False)}
    queries = dict(zip(topics['qid'], topics['query'].astype(str)))
    groups = []
    for q in sorted(wanted):
        if q not in queries or q not in labels:
            continue
        if q not in cands:
            raise KnowacqError(f'the first-stage run has no candidates for training query {q}; use a run of the same split')
        pos = [d for d, lab in labels[q].items() if lab >= rel_threshold and (known_docnos is None or d in known_docnos)]
        neg = [d for d in cands[q] if labels[q].get(d, 0) < neg_max_label and (known_docnos is None or d in known_docnos)]
        if not pos or not neg:
            continue
        if per_positive:
            groups.extend(Group(q, queries[q], [p], neg) for p in sorted(pos))
        else:
            groups.append(Group(q, queries[q], sorted(pos), neg))
    if not groups:
        raise KnowacqError(f'no training group could be built: no query has a positive judged >= {rel_threshold} '
                           f'(with text) and a negative in the run top-{depth}; lower rel_threshold or raise depth')
    return groups


def sample_group(group: Group, negatives: int, rng: random.Random) -> Tuple[str, str, List[str]]:
    """``(qid, query, [positive] + negatives)``: one random positive and ``negatives`` distinct negatives when possible."""
    pos = rng.choice(group.positives)
    if len(group.negatives) >= negatives:
        neg = rng.sample(group.negatives, negatives)
    else:
        neg = [rng.choice(group.negatives) for _ in range(negatives)]
    return group.qid, group.query, [pos] + neg


def sampled_group_batches(groups: Sequence[Group], negatives: int, queries_per_batch: int, seed: int, epoch: int,
                          rank: int = 0, world_size: int = 1) -> List[list]:
    """One epoch of ``sample_group`` items in batches of ``queries_per_batch``, shuffled by (seed, epoch), this rank's share.

    Every rank gets the same number of batches (the tail is dropped), so DDP processes never wait on each other.
    """
    rng = random.Random(seed + epoch)
    order = list(range(len(groups)))
    rng.shuffle(order)
    items = [sample_group(groups[i], negatives, rng) for i in order]
    batches = [items[i:i + queries_per_batch] for i in range(0, len(items) - queries_per_batch + 1, queries_per_batch)] or [items]
    if world_size > 1:
        batches = batches[:max(world_size, len(batches) - len(batches) % world_size)]
        batches = (batches * world_size)[:max(world_size, len(batches))]
    return batches[rank::world_size]


def teacher_lists(topics: pd.DataFrame, runs: Sequence[pd.DataFrame], *, qids: Optional[Sequence[str]] = None,
                  known_docnos=None) -> List[TeacherList]:
    """One teacher ordering per (query, run): docnos sorted by the teacher's rank (or score)."""
    _check_columns(topics, ['qid', 'query'], 'topics')
    queries = dict(zip(topics['qid'].astype(str), topics['query'].astype(str)))
    wanted = set(queries) if qids is None else set(map(str, qids))
    lists = []
    for run in runs:
        _check_columns(run, ['qid', 'docno'], 'teacher run')
        run = run.assign(qid=run['qid'].astype(str), docno=run['docno'].astype(str))
        run = run.sort_values(['qid', 'rank']) if 'rank' in run.columns else \
            run.sort_values(['qid', 'score'], ascending=[True, False])
        by_q = {q: g['docno'].tolist() for q, g in run.groupby('qid', sort=False)}
        missing = sorted(q for q in wanted if q in queries and q not in by_q)
        if missing:
            raise KnowacqError(f'the teacher run misses {len(missing)} training queries (e.g. {missing[:3]}); use a teacher '
                               'run covering the training split, or restrict the topics')
        for q in sorted(wanted):
            if q in queries:
                docs = [d for d in by_q[q] if known_docnos is None or d in known_docnos]
                if len(docs) >= 2:
                    lists.append(TeacherList(q, queries[q], docs))
    if not lists:
        raise KnowacqError('no teacher list with at least 2 passages was built; check the teacher runs and topics')
    return lists


def sample_list(tl: TeacherList, list_length: int, rng: random.Random, select: str = 'random') -> Tuple[str, str, List[str], List[int]]:
    """``(qid, query, docnos, labels)`` with RankNet labels ``list_length + 1 - rank`` (rank within the sample).

    ``select``: ``'random'`` draws ``list_length`` passages of the teacher list and keeps the teacher's relative order
    (a new draw each epoch); ``'top'`` takes the teacher's top ``list_length``.
    """
    n = min(list_length, len(tl.docnos))
    if select == 'top':
        idx = list(range(n))
    elif select == 'random':
        idx = sorted(rng.sample(range(len(tl.docnos)), n))
    else:
        raise KnowacqError(f"unknown teacher list selection {select!r}; use 'random' or 'top'")
    docnos = [tl.docnos[i] for i in idx]
    labels = [list_length + 1 - (r + 1) for r in range(n)]
    return tl.qid, tl.query, docnos, labels


def score_targets(run: pd.DataFrame) -> Dict[str, Dict[str, float]]:
    """``{qid: {docno: teacher score}}`` from a scored run (KL / margin-MSE targets)."""
    _check_columns(run, ['qid', 'docno', 'score'], 'teacher score run')
    out: Dict[str, Dict[str, float]] = {}
    for q, d, s in zip(run['qid'].astype(str), run['docno'].astype(str), run['score'].astype(float)):
        out.setdefault(q, {})[d] = s
    return out


def _slice_index(dataset, extra_texts: Dict[str, str]):
    """A PISA BM25 index over the dataset's corpus plus ``extra_texts`` (cached by corpus fingerprint)."""
    import hashlib
    import pyterrier_pisa
    h = hashlib.sha1(dataset.corpus_fingerprint().encode())
    for d in sorted(extra_texts):   # the added texts' content, not their count, decides the index
        h.update(f'\0{d}\0{extra_texts[d]}'.encode('utf-8', 'surrogateescape'))
    path = cache_dir('indexes') / f'pisa-{re.sub(r"[^A-Za-z0-9._-]+", "_", dataset.name)[-40:]}-plus-{h.hexdigest()[:12]}'
    index = pyterrier_pisa.PisaIndex(str(path), text_field='text')
    if not index.built():
        from .._util import atomic_directory

        def docs():
            seen = set()
            for doc in dataset.get_corpus_iter():
                seen.add(doc['docno'])
                yield {'docno': doc['docno'], 'text': doc['text']}
            for d, t in extra_texts.items():
                if d not in seen:
                    yield {'docno': d, 'text': t}
        with atomic_directory(path, overwrite=True) as tmp:   # concurrent builders never see a half index
            pyterrier_pisa.PisaIndex(str(tmp), text_field='text', overwrite=True).index(docs())
        index = pyterrier_pisa.PisaIndex(str(path), text_field='text')
    return index


def extra_groups(name: str, dataset, *, depth: int = 30, seed: int = 42) -> List[Group]:
    """Groups from extra in-domain training data.

    ``msmarco-dev-positives``: the 620 dev-small queries with their positive passage; negatives are the BM25 top
    ``depth`` over ``dataset``'s corpus (the embedded 31k-passage slice) minus the positives.
    ``msmarco-train``: the 110 MS MARCO train queries with their own negatives (texts carried in the group).
    """
    from ..datasets import get_dataset
    train = get_dataset('msmarco-passage-train')
    if name == 'msmarco-train':
        groups = []
        for i, rec in enumerate(train.train_records()):
            texts = {f'train-{i}-p{j}': t for j, t in enumerate(rec['pos'])}
            texts.update({f'train-{i}-n{j}': t for j, t in enumerate(rec['neg'])})
            groups.append(Group(f'train-{i}', rec['query'], [k for k in texts if '-p' in k],
                                [k for k in texts if '-n' in k], texts))
        return groups
    if name == 'msmarco-dev-positives':
        topics = train.get_topics('dev-small-positives')
        qrels = train.get_qrels('dev-small-positives')
        texts = {d['docno']: d['text'] for d in train.get_corpus_iter()}
        index = _slice_index(dataset, texts)
        clean = topics.assign(query=topics['query'].map(lambda s: re.sub(r'[^\w ]', ' ', s)))
        res = index.bm25(num_results=depth + 5)(clean)
        pos = qrels.groupby('qid')['docno'].apply(list).to_dict()
        groups = []
        queries = dict(zip(topics['qid'], topics['query']))
        for q, g in res.sort_values(['qid', 'rank']).groupby('qid'):
            negs = [d for d in g['docno'].tolist() if d not in set(pos.get(q, []))][:depth]
            if negs and q in pos:
                groups.append(Group(str(q), queries[q], list(pos[q]), negs,
                                    {d: texts[d] for d in pos[q] if d in texts}))
        return groups
    raise KnowacqError(f"unknown extra training data {name!r}; use 'msmarco-dev-positives' or 'msmarco-train'")
