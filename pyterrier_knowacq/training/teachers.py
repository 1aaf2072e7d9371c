"""Teachers: score a run with any ranker the project has and cache it as a TREC run file, so a model can be
distilled from another (KL / margin-MSE targets) or a ranker's ordering used as a RankNet teacher.

Example::

    from pyterrier_knowacq.models.biencoder import BiEncoder
    ranker = BiEncoder.from_pretrained('minilm-l6', pooling='mean').scorer()
    run = score_run(ranker, ds, 'bm25', 'dl20', depth=100, name='minilm-bi')   # cached TREC run
    targets = score_targets(run)
"""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Dict, Union

import pandas as pd

from .._util import KnowacqError, atomic_write_bytes, cache_dir
from .examples import score_targets

__all__ = ['score_run', 'teacher_scores', 'teacher_ranker', 'write_trec']


def write_trec(run: pd.DataFrame, path: Path, tag: str = 'knowacq') -> Path:
    """Atomically write ``[qid, docno, score]`` as a gzipped TREC run (ranks by descending score)."""
    run = run.sort_values(['qid', 'score'], ascending=[True, False], kind='stable')
    lines = []
    for q, g in run.groupby('qid', sort=False):
        for r, (d, s) in enumerate(zip(g['docno'], g['score']), 1):
            lines.append(f'{q} Q0 {d} {r} {float(s):.6f} {tag}\n')
    atomic_write_bytes(path, gzip.compress(''.join(lines).encode('utf-8'), mtime=0))
    return Path(path)


def score_run(ranker, dataset, run: Union[str, pd.DataFrame], split: str, *, depth: int = 100, name: str = None,
              queries_per_chunk: int = 1000) -> pd.DataFrame:
    """Re-score the top ``depth`` of ``run`` (a dataset run name or frame) on ``split`` with ``ranker`` (a
    ``pt.Transformer`` taking ``qid, query, docno, text``); cached under ``cache_dir('runs', 'teachers')``.

    Queries are scored ``queries_per_chunk`` at a time, each chunk's texts fetched with one batched
    ``dataset.get_texts`` call, so memory holds one chunk's texts, never the whole run's (or the corpus)."""
    from ..datasets.core import read_run
    name = name or repr(ranker)
    frame = dataset.get_run(run, split) if isinstance(run, str) else run.copy()
    # keyed by content: the teacher (its name holds its weights' fingerprint), the data, and the run's rows
    run_id = hashlib.sha1(pd.util.hash_pandas_object(frame[['qid', 'docno']].astype(str), index=False).values.tobytes()).hexdigest()[:16]
    key = hashlib.sha1(f'{name}|{dataset.id}|{dataset.fingerprint()}|{split}|{run_id}|{depth}'.encode()).hexdigest()[:16]
    path = cache_dir('runs', 'teachers') / f'{key}.trec.gz'
    if path.exists():
        return read_run(path)
    frame = frame.assign(qid=frame['qid'].astype(str), docno=frame['docno'].astype(str))
    frame = frame.sort_values(['qid', 'rank'] if 'rank' in frame.columns else ['qid']).groupby('qid').head(depth)
    topics = dataset.get_topics(split)
    frame = frame[['qid', 'docno']].merge(topics.assign(qid=topics['qid'].astype(str)), on='qid', how='inner')
    if frame.empty:
        raise KnowacqError(f'the run to score shares no query with the topics of {dataset.name}:{split}')
    frame = frame.sort_values('qid', kind='stable').reset_index(drop=True)
    starts = frame.index[frame['qid'].ne(frame['qid'].shift())].tolist() + [len(frame)]   # first row of each query
    step = max(1, int(queries_per_chunk))
    parts = []
    for i in range(0, len(starts) - 1, step):
        chunk = frame.iloc[starts[i]:starts[min(i + step, len(starts) - 1)]].copy()
        chunk['text'] = dataset.get_texts(chunk['docno'].tolist())
        parts.append(ranker(chunk)[['qid', 'docno', 'score']])
    scored = pd.concat(parts, ignore_index=True)
    write_trec(scored, path, tag=str(name)[:40].replace(' ', '_'))
    return read_run(path)


def teacher_ranker(spec: dict):
    """``{biencoder: NAME, pooling: mean}`` or ``{crossencoder: FOLDER}`` -> a re-ranking transformer and a name that
    holds its weights' content fingerprint (the teacher-run cache key)."""
    from ..models.backbones import model_fingerprint
    if 'biencoder' in spec:
        from ..models.biencoder import BiEncoder
        return BiEncoder.from_pretrained(spec['biencoder'], pooling=spec.get('pooling', 'mean')).scorer(), \
            f"bi:{spec['biencoder']}:{spec.get('pooling', 'mean')}:{model_fingerprint(spec['biencoder'])}"
    if 'crossencoder' in spec:
        from ..models.crossencoder import CrossEncoder
        max_length = int(spec.get('max_length', 256))
        return CrossEncoder.from_pretrained(spec['crossencoder'], max_length=max_length), \
            f"ce:{spec['crossencoder']}:{max_length}:{model_fingerprint(spec['crossencoder'])}"
    raise KnowacqError(f'unknown teacher {spec}; use {{biencoder: NAME, pooling: mean}} or {{crossencoder: FOLDER}}')


def teacher_scores(scores, dataset, split: str, run_name: str, depth: int = 100) -> Dict[str, Dict[str, float]]:
    """Score targets from a dataset run name (its scores) or a teacher model spec scoring ``run_name``'s top ``depth``."""
    if isinstance(scores, str):
        return score_targets(dataset.get_run(scores, split))
    if isinstance(scores, dict):
        ranker, name = teacher_ranker(scores)
        return score_targets(score_run(ranker, dataset, run_name, split, depth=depth, name=name))
    raise KnowacqError(f'`scores:` must be a run name or a teacher model mapping, got {scores!r}')
