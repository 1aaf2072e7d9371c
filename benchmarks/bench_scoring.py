"""Inference speed against the peers, same checkpoint and inputs, under the protocol of ``protocol.py``
(warm-up, >= 7 interleaved rounds of >= 3 s per side, median ratio with a bootstrap interval):

* ``cross_encoder``: ours ``CrossEncoder.score_pairs`` vs sentence-transformers ``CrossEncoder.predict``
  (goal >= 1.5x), MiniLM-L6 with a seeded 1-logit head, max length 256, batch 32;
* ``bi_encoder``: ours ``BiEncoder`` vs pyterrier-dr ``SBertBiEncoder``, both re-ranking the run as PyTerrier
  transformers (goal >= 1.2x), all-MiniLM-L6-v2, batch 32.

Workload: the full DL19 BM25 top-100 (43 queries x 100 = 4,300 (query, passage) pairs, real MS MARCO text).
Results: ``benchmarks/results/{cross_encoder,bi_encoder}.json``.

Run:  make bench    (or: .venv/bin/python -m pytest benchmarks/bench_scoring.py -p no:cacheprovider -s)
Quick development run (not a measurement): BENCH_QUERIES=2 BENCH_ROUNDS=2 BENCH_MIN_ROUND_S=0.5 \
      BENCH_RESULTS_DIR=.benchmarks/dev .venv/bin/python -m pytest benchmarks/bench_scoring.py -p no:cacheprovider -s
"""
import numpy as np
import pytest

from _models import BiEncoder, CrossEncoder, describe, dl19_bm25, load_tokenizer, resolve_model
from protocol import run_benchmark

pytestmark = pytest.mark.benchmark
BATCH, MAXLEN = 32, 256
CHECK = 64        # pairs on which both sides must give the same scores before they are timed


@pytest.fixture(scope='module')
def run():
    return dl19_bm25()


@pytest.fixture(scope='module')
def ce_checkpoint(tmp_path_factory):
    import torch
    from transformers import AutoModelForSequenceClassification
    folder = tmp_path_factory.mktemp('ce') / 'minilm-ce'
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(resolve_model('minilm-l6'), num_labels=1).save_pretrained(folder)
    load_tokenizer('minilm-l6').save_pretrained(folder)
    return str(folder)


def test_cross_encoder_vs_sentence_transformers(benchmark, run, ce_checkpoint):
    pytest.importorskip('sentence_transformers')
    import torch
    from sentence_transformers import CrossEncoder as STCrossEncoder
    queries, texts = run['query'].tolist(), run['text'].tolist()
    pairs = list(zip(queries, texts))
    ours = CrossEncoder.from_pretrained(ce_checkpoint, batch_size=BATCH, max_length=MAXLEN)
    peer = STCrossEncoder(ce_checkpoint, max_length=MAXLEN, device='cpu')
    peer_check = peer.predict(pairs[:CHECK], batch_size=BATCH, activation_fn=torch.nn.Identity(),
                              show_progress_bar=False)
    np.testing.assert_allclose(ours.score_pairs(queries[:CHECK], texts[:CHECK]), np.asarray(peer_check).ravel(),
                               atol=1e-3)
    tokens = sum(map(len, ours.tokenizer(queries, texts, truncation='only_second', max_length=MAXLEN)['input_ids']))
    run_benchmark(
        benchmark, 'cross_encoder',
        lambda: ours.score_pairs(queries, texts),
        lambda: peer.predict(pairs, batch_size=BATCH, show_progress_bar=False),
        goal=1.5, ours_label='knowacq CrossEncoder.score_pairs',
        peer_label='sentence-transformers CrossEncoder.predict',
        workload=dict(describe(run), model='all-MiniLM-L6-v2 + seeded 1-logit head', max_length=MAXLEN,
                      batch_size=BATCH, mean_tokens_per_pair=round(tokens / len(pairs), 1)))


def test_bi_encoder_vs_pyterrier_dr(benchmark, run):
    import pyterrier_dr
    frame = run[['qid', 'query', 'docno', 'text']]
    ours = BiEncoder.from_pretrained('minilm-l6', batch_size=BATCH, max_length=MAXLEN)
    peer = pyterrier_dr.SBertBiEncoder(resolve_model('minilm-l6'), batch_size=BATCH)   # max_seq_length 256 too
    a, b = ours(frame.head(CHECK)), peer(frame.head(CHECK))
    merged = a.merge(b, on=['qid', 'docno'], suffixes=('_ours', '_peer'))
    np.testing.assert_allclose(merged['score_ours'], merged['score_peer'], atol=1e-4)
    run_benchmark(
        benchmark, 'bi_encoder', lambda: ours(frame), lambda: peer(frame),
        goal=1.2, ours_label='knowacq BiEncoder (re-ranking transformer)',
        peer_label='pyterrier-dr SBertBiEncoder (re-ranking transformer)',
        workload=dict(describe(run), model='all-MiniLM-L6-v2', max_length=MAXLEN, batch_size=BATCH))
