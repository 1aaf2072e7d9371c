"""ColBERT re-ranking: our ``ColBERT`` stage vs pylate (``models.ColBERT.encode`` + ``rank.rerank``), under the
protocol of ``protocol.py`` (goal >= 1.3x), on the same MiniLM-based ColBERT checkpoint (seeded projection) and the
full DL19 BM25 top-100 (4,300 pairs). Result: ``benchmarks/results/colbert.json``.

pylate 1.6.0 pins versions the main environment does not have (sentence-transformers 5.3.0; fast-plaid, which would
pull another torch), so it lives in its own folder, put first on PYTHONPATH for this benchmark's process only (the
other benchmarks keep the main environment's sentence-transformers):

    bash scripts/install-bench-deps.sh            # once: pylate + pins into benchmarks/.deps/pylate
    PYTHONPATH=benchmarks/.deps/pylate .venv/bin/python -m pytest benchmarks/bench_colbert.py -p no:cacheprovider -s

(``make bench`` does both.) Without pylate importable the test is skipped.
"""
import warnings

import numpy as np
import pytest

from _models import ColBERT, ColBERTModel, describe, dl19_bm25
from protocol import run_benchmark

pytestmark = pytest.mark.benchmark
BATCH = 32
CHECK = 64


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp('bench') / 'colbert-minilm'
    ColBERTModel.new('minilm-l6', seed=0).save(folder)
    return folder


def pylate_rerank(folder):
    """What a pylate user writes to re-rank a run: encode queries and each query's candidates, then rank.rerank."""
    from pylate import models, rank
    model = models.ColBERT(model_name_or_path=str(folder), device='cpu')

    def rerank(run):
        groups = list(run.groupby('qid', sort=False))
        q = model.encode([g['query'].iloc[0] for _, g in groups], is_query=True, batch_size=BATCH,
                         show_progress_bar=False)
        d = model.encode([g['text'].tolist() for _, g in groups], is_query=False, batch_size=BATCH,
                         show_progress_bar=False)
        return rank.rerank(documents_ids=[g['docno'].tolist() for _, g in groups], queries_embeddings=q,
                           documents_embeddings=d)
    return rerank


def test_colbert_vs_pylate(benchmark, folder):
    try:
        import pylate  # noqa: F401
    except ImportError:
        pytest.skip('pylate not importable: bash scripts/install-bench-deps.sh, then '
                    'PYTHONPATH=benchmarks/.deps/pylate (or make bench)')
    warnings.simplefilter('ignore')
    run = dl19_bm25()
    ours = ColBERT(str(folder), batch_size=BATCH)
    peer = pylate_rerank(folder)
    # same model, same inputs: pylate's scores equal ours on a slice
    head = run.head(CHECK)
    theirs = {(qid, x['id']): x['score'] for (qid, _), res in zip(head.groupby('qid', sort=False), peer(head))
              for x in res}
    np.testing.assert_allclose(ours(head)['score'].to_numpy(),
                               [theirs[k] for k in zip(head.qid, head.docno)], atol=1e-4)
    run_benchmark(benchmark, 'colbert', lambda: ours(run), lambda: peer(run), goal=1.3,
                  ours_label='knowacq ColBERT (re-ranking transformer)', peer_label='pylate encode + rank.rerank',
                  workload=dict(describe(run), model='all-MiniLM-L6-v2 + seeded 128-d projection (ColBERT)',
                                batch_size=BATCH, query_maxlen=ours.model.config.get('query_maxlen'),
                                doc_maxlen=ours.model.config.get('doc_maxlen')))
