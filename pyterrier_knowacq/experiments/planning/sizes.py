"""Corpus and query counts: a table of well-known ``irds:`` ids (:data:`KNOWN_SIZES`), else ir_datasets' own metadata,
else the dataset itself (counted once, cached); the training queries an epoch covers (teacher runs included,
:data:`KNOWN_TEACHERS` for released ones that cannot be read here).

Example::

    KNOWN_SIZES['msmarco-passage']      # {'docs': 8841823, 'doc_words': 56, 'doc_chars': 335}
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .assumptions import TOKENS_PER_WORD
from .measure import _cached
from .specs import _Ctx


#: queries of released teacher files that cannot be read here (matched on the file name)
KNOWN_TEACHERS = {'marco-train-100k': 100_000}


def _training_queries(st: Dict[str, Any], spec: Dict[str, Any], ctx: _Ctx) -> Tuple[Optional[int], str]:
    data = st.get('data') or {}
    val = int((spec.get('validation') or {}).get('queries', 0) or 0)
    teacher = data.get('teacher') if st.get('loss') == 'ranknet' else None
    if teacher:
        teachers = [teacher] if isinstance(teacher, str) else list(teacher)
        qids = set()
        for t in teachers:
            path = Path(str(t)).expanduser()
            if path.is_file():
                qids |= _run_qids(path)
                continue
            known = next((n for k, n in KNOWN_TEACHERS.items() if k in str(t)), None)
            if known is not None:
                return known - val, f'the released {Path(str(t)).name} covers about {known:,} queries'
            ds, split = ctx.datasets.get('train') or (None, None)
            if ds is not None:
                try:
                    qids |= set(ds.get_run(str(t), split)['qid'].astype(str))
                    continue
                except Exception:  # noqa: BLE001 - not a run of the dataset: counted as the whole split below
                    pass
            break
        else:
            return len(qids) - val, 'teacher run counted'
    count, source = _judged_train_queries(ctx)
    return (None if count is None else count - val), source


def _run_qids(path: Path) -> set:
    import gzip
    opener = gzip.open if path.suffix == '.gz' else open
    qids = set()
    with opener(path, 'rt', encoding='utf-8', errors='replace') as f:
        for line in f:
            qids.add(line.split(None, 1)[0] if line.strip() else '')
    qids.discard('')
    return qids


#: sizes of well-known ir_datasets ids: ``docs`` (corpora, by the id that provides the documents) with their mean
#: words and characters per document; ``queries``: the queries with qrels (what the runner evaluates / trains on)
KNOWN_SIZES: Dict[str, Dict[str, int]] = {
    'msmarco-passage': {'docs': 8_841_823, 'doc_words': 56, 'doc_chars': 335},
    'msmarco-passage/train': {'queries': 502_939},
    'msmarco-passage/train/judged': {'queries': 502_939},
    'msmarco-passage/dev/small': {'queries': 6_980},
    'msmarco-passage/dev/judged': {'queries': 55_578},
    'msmarco-passage/trec-dl-2019': {'queries': 43},
    'msmarco-passage/trec-dl-2019/judged': {'queries': 43},
    'msmarco-passage/trec-dl-2020': {'queries': 54},
    'msmarco-passage/trec-dl-2020/judged': {'queries': 54},
    'msmarco-passage/trec-dl-hard': {'queries': 50},
    'dpr-w100': {'docs': 21_015_324, 'doc_words': 103, 'doc_chars': 600},
    'dpr-w100/natural-questions/train': {'queries': 58_880},
    'dpr-w100/natural-questions/dev': {'queries': 6_515},
}


def _irds_sizes(ds) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    own, parent = KNOWN_SIZES.get(ds.irds_id, {}), KNOWN_SIZES.get(ds.docs_parent, {})
    if 'queries' in own:
        out['queries'], out['queries_source'] = own['queries'], 'known'
    if 'docs' in parent:
        out.update(docs=parent['docs'], doc_words=parent['doc_words'], doc_chars=parent['doc_chars'],
                   docs_source='known')
    try:
        if 'queries' not in out:
            out['queries'], out['queries_source'] = int(ds._ds.queries_count()), 'ir_datasets metadata (all queries)'
    except Exception:  # noqa: BLE001
        pass
    try:
        if 'docs' not in out:
            out.update(docs=int(ds._ds.docs_count()), doc_words=100, doc_chars=600,
                       docs_source='ir_datasets metadata (length assumed 100 words)')
    except Exception:  # noqa: BLE001
        pass
    return out


_CORPORA: Dict[str, Dict[str, Any]] = {}


def _sizes(ds, split) -> Dict[str, Any]:
    """``{'queries', 'docs', 'doc_words', 'doc_chars', ...}`` of a test (or training) collection."""
    from ...datasets.core import IrdsDataset
    if isinstance(ds, IrdsDataset) and getattr(ds, 'irds_id', None):   # never iterate an ir_datasets corpus
        return _irds_sizes(ds)
    out: Dict[str, Any] = {}
    try:
        topics, qrels = ds.get_topics(split), ds.get_qrels(split)
        out['queries'] = int(topics['qid'].astype(str).isin(set(qrels['qid'].astype(str))).sum())
        out['queries_source'] = 'counted'
        out['query_words'] = float(topics['query'].astype(str).str.split().str.len().mean())
    except Exception:  # noqa: BLE001
        pass
    try:
        key = ds.corpus_fingerprint()   # content-keyed (file digests are remembered), so a count is made once
    except Exception:  # noqa: BLE001
        key = ds.corpus_name
    if key not in _CORPORA:
        def count():
            n = words = chars = 0
            try:
                for d in ds.get_corpus_iter():
                    n += 1
                    text = d.get('text') or ''
                    words += len(text.split())
                    chars += len(text)
            except Exception:  # noqa: BLE001 - an unreadable corpus: no sizes, the plan says so
                pass
            return {'docs': n, 'doc_words': words / max(1, n), 'doc_chars': chars / max(1, n),
                    'docs_source': 'counted'} if n else {}
        _CORPORA[key] = _cached({'what': 'corpus', 'corpus': key}, count) if key != ds.corpus_name else count()
    out.update(_CORPORA[key])
    return out


def _judged_train_queries(ctx: _Ctx) -> Tuple[Optional[int], str]:
    ds, split = ctx.datasets.get('train') or (None, None)
    if ds is None:
        return None, 'no training split'
    s = _sizes(ds, split)
    if s.get('queries') is None:
        return None, 'training queries unknown'
    where = f'{ds.name}:{split}' if split else ds.name
    return int(s['queries']), f'{s.get("queries_source", "counted")} judged queries of {where}'


def _doc_tokens(s: Dict[str, Any]) -> float:
    return float(s.get('doc_words') or 100) * TOKENS_PER_WORD + 2
