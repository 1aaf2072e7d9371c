"""Re-ranking a run in which every document appears K times: each distinct document (cross-encoder: each distinct
(query, passage) pair) encoded once (``dedup=True``, the default) against once per row (``dedup=False``, the former
path), for the bi-encoder scorer, ColBERT and the cross-encoder on minilm-l6.

Workload: the BM25 top-D passages of the first DL19 query (real MS MARCO text), retrieved by K queries, so each
docno appears K times. The bi-encoder and ColBERT get K different DL19 queries; the cross-encoder only gains on
identical pairs, so it gets the first query under K qids (the same topics in several folds, or merged runs). The two
paths alternate round by round (pytest-benchmark times the deduplicated path, the per-row path is timed in its
setup), and a counting pass reports how many texts reach the encoder on each path. On the real DL19 BM25 top-100
(43 queries) only 3 of 4300 rows repeat a docno, so there the gain is nil: it comes from runs that share candidates.

Run:  OMP_NUM_THREADS=2 pytest benchmarks/bench_dedup.py -q -p no:cacheprovider -s
"""
import contextlib
import time
import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.benchmark
K = 4          # times each document appears
DOCS = 48      # distinct documents (BM25 top-D of the first DL19 query)
ROUNDS = 3
BATCH = 32


@pytest.fixture(scope='module')
def runs():
    import pandas as pd
    from pyterrier_knowacq.datasets.core import get_dataset
    ds = get_dataset('msmarco-passage')
    topics = ds.get_topics('dl19').sort_values('qid').head(K)
    run = ds.get_run('bm25', 'dl19')
    top = run[run.qid == topics.qid.iloc[0]].sort_values('rank').head(DOCS)
    docs = pd.DataFrame({'docno': top['docno'].tolist(), 'text': ds.get_texts(top['docno'].tolist())})
    shared = topics[['qid', 'query']].merge(docs, how='cross')                       # K queries x the same D docs
    repeated = pd.concat([docs.assign(qid=f'{topics.qid.iloc[0]}-{i}', query=topics['query'].iloc[0])
                          for i in range(K)], ignore_index=True)[['qid', 'query', 'docno', 'text']]  # K x the same pairs
    return shared, repeated


@contextlib.contextmanager
def counting(owner, attr, size):
    """Within the block, every call of ``owner.attr`` adds ``size(*args)`` to the yielded list."""
    counts, original = [], getattr(owner, attr)

    def wrapper(*args, **kwargs):
        counts.append(size(*args))
        return original(*args, **kwargs)
    setattr(owner, attr, wrapper)
    try:
        yield counts
    finally:
        setattr(owner, attr, original)


def _compare(benchmark, label, run, deduped, per_row, counter):
    """Count encodings once per path, check equal output, then time both paths in alternating rounds."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with counter() as n_dedup:
            a = deduped(run)
        with counter() as n_row:
            b = per_row(run)
        np.testing.assert_allclose(a['score'], b['score'], atol=1e-4, rtol=0)
        assert (a[['qid', 'docno']].to_numpy() == run[['qid', 'docno']].to_numpy()).all()
        row_times = []

        def time_per_row():
            t0 = time.perf_counter()
            per_row(run)
            row_times.append(time.perf_counter() - t0)
        benchmark.pedantic(deduped, args=(run,), setup=time_per_row, rounds=ROUNDS, iterations=1)
    dedup_s, row_s = benchmark.stats.stats.min, min(row_times)
    benchmark.extra_info.update(rows=len(run), encoded_dedup=sum(n_dedup), encoded_per_row=sum(n_row),
                                per_row_s=row_s, dedup_s=dedup_s, speedup=row_s / dedup_s)
    print(f'\n{label}: {len(run)} rows (K={K}), encoded {sum(n_row)} -> {sum(n_dedup)} texts, '
          f'best of {ROUNDS}: per-row {row_s:.2f}s, dedup {dedup_s:.2f}s ({row_s / dedup_s:.2f}x)')


def test_biencoder_scorer_dedup(benchmark, runs):
    from pyterrier_knowacq import BiEncoder
    model = BiEncoder.from_pretrained('minilm-l6', batch_size=BATCH, max_length=256)
    per_row = BiEncoder(model.model, model.tokenizer, pooling=model.pooling_name, normalize=model.normalize,
                        batch_size=BATCH, max_length=256, dedup=False)
    _compare(benchmark, 'bi-encoder scorer', runs[0], model.scorer(), per_row.scorer(),
             lambda: counting(BiEncoder, 'encode_docs', lambda self, texts, *_: len(texts)))


def test_colbert_dedup(benchmark, runs):
    from pyterrier_knowacq.models.colbert import ColBERT, ColBERTModel
    model = ColBERTModel.new('minilm-l6', seed=0)
    _compare(benchmark, 'ColBERT', runs[0], ColBERT(model, batch_size=BATCH), ColBERT(model, batch_size=BATCH, dedup=False),
             lambda: counting(model, 'encode_docs', lambda ids, *_: ids.shape[0]))


def test_cross_encoder_dedup(benchmark, runs):
    import pyterrier_knowacq.models.crossencoder as module
    from pyterrier_knowacq import CrossEncoder
    ours = CrossEncoder.new('minilm-l6', pooling='cls', batch_size=BATCH, max_length=256)   # fresh head: same work
    per_row = CrossEncoder(ours.model, ours.tokenizer, batch_size=BATCH, max_length=256, dedup=False)
    _compare(benchmark, 'cross-encoder', runs[1], ours, per_row,
             lambda: counting(module, 'run_sorted', lambda fn, tokenizer, enc, *_: len(enc['input_ids'])))
