"""Training examples from PyTerrier objects: contrastive groups, teacher lists and score targets.

* :func:`contrastive_groups` — (topics, qrels, first-stage run) -> one :class:`Group` per query (or per positive):
  positives are judged ``>= rel_threshold``; negatives come from the run's top ``depth`` and are every candidate not
  judged ``>= neg_max_label`` (unjudged count as negative, as in LCE). :func:`sample_group` draws ``1 + n`` docnos.
  A training query the first stage finds nothing for (``the of and`` against BM25) is skipped and counted.
* :func:`teacher_lists` — one or more TREC runs of an LLM ranker -> per-query :class:`TeacherList` (docnos in teacher
  order) for the training queries the teacher covers, with the coverage reported (``teacher covers 100,000 of
  502,939 training queries (19.9%)``); :func:`sample_list` draws ``list_length`` of them with RankNet labels
  ``list_length + 1 - rank``. Released LLM orderings (RankGPT's ``marco-train-100k``) become such runs with
  :mod:`.rankgpt_convert`.

Groups and lists hold ids only (plus the texts of extra passages that are not in the corpus): the trainer looks
texts up a batch at a time with ``dataset.get_texts(docnos)``, so no text dict of the whole training set (or corpus)
is ever built.
* :func:`score_targets` — a run with teacher scores -> ``{qid: {docno: score}}`` for KL / margin-MSE targets.
* :func:`extra_groups` — groups from the extra in-domain MS MARCO data (620 dev-small positives with BM25 negatives
  from the embedded passage slice; the 110 train queries with their own negatives).

Example::

    ds = get_dataset('msmarco-passage')
    groups = contrastive_groups(ds.get_topics('dl20'), ds.get_qrels('dl20'), ds.get_run('bm25', 'dl20'), depth=100)
    qid, query, docnos = sample_group(groups[0], negatives=7, rng=random.Random(0))
"""
from __future__ import annotations

import itertools
import logging
import random
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

from .._util import KnowacqError, cache_dir

__all__ = ['Group', 'TeacherList', 'contrastive_groups', 'sample_group', 'teacher_lists', 'sample_list',
           'score_targets', 'extra_groups', 'split_validation']

log = logging.getLogger(__name__)


@dataclass
class Group:
    """One training query's docnos (ids only: texts are looked up in batches when a batch is built)."""
    qid: str
    query: str
    positives: List[str]
    negatives: List[str]
    #: texts for docnos outside the dataset's corpus only (e.g. the MS MARCO train triples)
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


def _ranked_lists(run: pd.DataFrame, wanted, depth: Optional[int] = None) -> Dict[str, List[str]]:
    """``{qid: [docno, ...]}`` best first (by ``rank``, else by descending ``score``, else file order) for the queries in
    ``wanted``, cut at ``depth``; one pass over the rows (no per-group frames: fast for 500k queries)."""
    run = run[['qid', 'docno'] + [c for c in ('rank', 'score') if c in run.columns]]
    run = run.assign(qid=run['qid'].astype(str))
    run = run[run['qid'].isin(wanted)]
    if 'rank' in run.columns:
        run = run.sort_values(['qid', 'rank'], kind='stable')
    elif 'score' in run.columns:
        run = run.sort_values(['qid', 'score'], ascending=[True, False], kind='stable')
    else:
        run = run.sort_values('qid', kind='stable')
    out: Dict[str, List[str]] = {}
    for q, rows in itertools.groupby(zip(run['qid'].tolist(), run['docno'].astype(str).tolist()), key=lambda r: r[0]):
        docs = [d for _, d in rows]
        out[q] = docs[:depth] if depth is not None else docs
    return out


def contrastive_groups(topics: pd.DataFrame, qrels: pd.DataFrame, run: pd.DataFrame, *, depth: int = 100,
                       rel_threshold: int = 1, neg_max_label: Optional[int] = None, per_positive: bool = False,
                       qids: Optional[Sequence[str]] = None, known_docnos=None, stats: Optional[dict] = None) -> List[Group]:
    """Groups of positives (judged ``>= rel_threshold``) and negatives (run top-``depth`` below ``neg_max_label``).

    Args:
        neg_max_label: candidates judged ``>= neg_max_label`` are never negatives (default ``rel_threshold``; use 1
            to drop partially relevant passages from the negatives of graded collections).
        per_positive: one group per positive (more weight to queries with many judged positives, as LCE does).
        qids: restrict to these queries (e.g. the training part after carving validation queries).
        known_docnos: a set of docnos that have text; others are skipped (``None``: all have text).
        stats: a dict to fill with counts: ``queries`` (judged training queries), ``groups``,
            ``no_first_stage_hits`` (queries the run has no candidate for: skipped, not fatal; examples in
            ``no_first_stage_hits_qids``) and ``no_positive_or_negative``.
    """
    _check_columns(topics, ['qid', 'query'], 'topics')
    _check_columns(qrels, ['qid', 'docno', 'label'], 'qrels')
    _check_columns(run, ['qid', 'docno'], 'run')
    neg_max_label = rel_threshold if neg_max_label is None else neg_max_label
    queries = dict(zip(topics['qid'].astype(str), topics['query'].astype(str)))
    wanted = set(queries) if qids is None else set(map(str, qids))
    labels: Dict[str, Dict[str, int]] = {}
    for q, d, lab in zip(qrels['qid'].astype(str), qrels['docno'].astype(str), qrels['label']):
        if q in wanted:
            labels.setdefault(q, {})[d] = int(lab)
    if not labels:
        raise KnowacqError('the topics and qrels share no query ids; pass the qrels of the same split as the topics')
    cands = _ranked_lists(run, wanted, depth)
    groups, no_hits, empty, considered = [], [], 0, 0
    for q in sorted(wanted):
        if q not in queries or q not in labels:
            continue
        considered += 1
        if q not in cands:          # e.g. a query of stopwords only: BM25 returns nothing
            no_hits.append(q)
            continue
        pos = [d for d, lab in labels[q].items() if lab >= rel_threshold and (known_docnos is None or d in known_docnos)]
        neg = [d for d in cands[q] if labels[q].get(d, 0) < neg_max_label and (known_docnos is None or d in known_docnos)]
        if not pos or not neg:
            empty += 1
            continue
        if per_positive:
            groups.extend(Group(q, queries[q], [p], neg) for p in sorted(pos))
        else:
            groups.append(Group(q, queries[q], sorted(pos), neg))
    if stats is not None:
        stats.update({'queries': considered, 'groups': len(groups), 'no_first_stage_hits': len(no_hits),
                      'no_first_stage_hits_qids': no_hits[:10], 'no_positive_or_negative': empty})
    if no_hits:
        log.warning('skipped %d of %d training queries with no first-stage candidates (e.g. qid %s)', len(no_hits),
                    considered, no_hits[0])
    if not groups:
        why = f' ({len(no_hits)} of {considered} queries have no first-stage candidates)' if no_hits else ''
        raise KnowacqError(f'no training group could be built: no query has a positive judged >= {rel_threshold} '
                           f'(with text) and a negative in the run top-{depth}{why}; lower rel_threshold or raise depth, '
                           'or use a run of the same split')
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
                  known_docnos=None, min_coverage: float = 0.0, stats: Optional[dict] = None) -> List[TeacherList]:
    """One teacher ordering per (query, run) for the training queries the teacher covers: docnos sorted by the
    teacher's rank (or score).

    A teacher rarely ranks every training query (RankGPT-3.5's released orderings cover 100k of MS MARCO's 503k), so
    training uses the covered queries (covered by any of ``runs``) and reports the coverage: ``stats`` (when given)
    receives ``covered``, ``total``, ``coverage`` (a fraction), ``lists``, ``too_short`` (covered queries with fewer
    than 2 passages with text) and ``message`` (``teacher covers 100,000 of 502,939 training queries (19.9%)``).
    A coverage below ``min_coverage`` (the stage's ``teacher_min_coverage``) is an error.
    """
    _check_columns(topics, ['qid', 'query'], 'topics')
    queries = dict(zip(topics['qid'].astype(str), topics['query'].astype(str)))
    wanted = set(queries) if qids is None else {q for q in map(str, qids) if q in queries}
    by_run = []
    for run in runs:
        _check_columns(run, ['qid', 'docno'], 'teacher run')
        by_run.append(_ranked_lists(run, wanted))
    covered = set().union(*by_run) if by_run else set()
    total = len(wanted)
    coverage = len(covered) / total if total else 0.0
    message = f'teacher covers {len(covered):,} of {total:,} training queries ({100 * coverage:.1f}%)'
    lists, too_short = [], 0
    for by_q in by_run:
        for q in sorted(by_q):
            docs = [d for d in by_q[q] if known_docnos is None or d in known_docnos]
            if len(docs) >= 2:
                lists.append(TeacherList(q, queries[q], docs))
            else:
                too_short += 1
    if stats is not None:
        stats.update({'covered': len(covered), 'total': total, 'coverage': round(coverage, 6), 'lists': len(lists),
                      'too_short': too_short, 'message': message})
    log.info('%s', message)
    if not covered:
        example = sorted(wanted)[:3]
        raise KnowacqError(f'the teacher run covers none of the {total:,} training queries (e.g. qids {example}); use a '
                           "teacher run over this split's queries, with the dataset's qids (convert released "
                           'orderings with pyterrier_knowacq.training.rankgpt_convert)')
    if coverage < float(min_coverage):
        raise KnowacqError(f'{message}, below teacher_min_coverage {float(min_coverage):g}; use a teacher run covering '
                           'more of the training queries, or lower `teacher_min_coverage:` in the stage data')
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
    """A PISA BM25 index for the negatives of extra training data: the corpus's own cached index
    (:func:`~pyterrier_knowacq.models.first_stage.pisa_index`) when every extra passage is in the corpus already (one batched
    look-up), else an index of the corpus plus the extra passages (keyed by the corpus fingerprint and their content)."""
    import hashlib
    import pyterrier_pisa
    from ..models.first_stage import _quiet_native, index_threads, pisa_index
    found = dataset.find_texts(list(extra_texts))
    extra = {d: t for (d, t), f in zip(extra_texts.items(), found) if f is None}
    if not extra:
        return pisa_index(dataset)
    h = hashlib.sha1(dataset.corpus_fingerprint().encode())
    for d in sorted(extra):   # the added texts' content, not their count, decides the index
        h.update(f'\0{d}\0{extra[d]}'.encode('utf-8', 'surrogateescape'))
    label = re.sub(r'[^A-Za-z0-9._-]+', '_', getattr(dataset, 'corpus_name', dataset.name))[-40:]
    path = cache_dir('indexes') / f'pisa-{label}-plus-{h.hexdigest()[:12]}'
    index = pyterrier_pisa.PisaIndex(str(path), text_field='text')
    if not index.built():
        from .._util import atomic_directory

        def docs():
            for doc in dataset.get_corpus_iter():
                yield {'docno': doc['docno'], 'text': doc['text']}
            for d, t in extra.items():
                yield {'docno': d, 'text': t}
        with atomic_directory(path, overwrite=True) as tmp, _quiet_native():   # concurrent builders never see a half index
            pyterrier_pisa.PisaIndex(str(tmp), text_field='text', threads=index_threads(), overwrite=True).index(docs())
        index = pyterrier_pisa.PisaIndex(str(path), text_field='text')
    return index


def extra_groups(name: str, dataset, *, depth: int = 30, seed: int = 42) -> List[Group]:
    """Groups from extra in-domain training data.

    ``msmarco-dev-positives``: the 620 dev-small queries with their positive passage; negatives are the BM25 top
    ``depth`` over ``dataset``'s corpus (the embedded 31k-passage slice) minus the positives.
    ``msmarco-train``: the 110 MS MARCO train queries with their own negatives (texts carried in the group).
    """
    from ..datasets.core import get_dataset
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
        texts = {d['docno']: d['text'] for d in train.get_corpus_iter()}   # 620 passages
        index = _slice_index(dataset, texts)
        # groups carry the texts of passages outside the corpus only; the rest are looked up in the corpus
        extra = {d: t for (d, t), f in zip(texts.items(), dataset.find_texts(list(texts))) if f is None}
        clean = topics.assign(query=topics['query'].map(lambda s: re.sub(r'[^\w ]', ' ', s)))
        from ..models.first_stage import _quiet_native
        with _quiet_native():
            res = index.bm25(num_results=depth + 5)(clean)
        pos = qrels.groupby('qid')['docno'].apply(list).to_dict()
        groups = []
        queries = dict(zip(topics['qid'], topics['query']))
        for q, docs in _ranked_lists(res, set(res['qid'].astype(str))).items():
            negs = [d for d in docs if d not in set(pos.get(q, []))][:depth]
            if negs and q in pos:
                groups.append(Group(str(q), queries[q], list(pos[q]), negs,
                                    {d: extra[d] for d in list(pos[q]) + negs if d in extra}))
        return groups
    raise KnowacqError(f"unknown extra training data {name!r}; use 'msmarco-dev-positives' or 'msmarco-train'")
