"""Inference speed against the peers on the same checkpoint and inputs, in one run, reported as ratios.

* cross-encoder: ours vs sentence-transformers ``CrossEncoder.predict`` (goal >= 1.5x);
* bi-encoder: ours vs pyterrier-dr ``SBertBiEncoder.doc_encoder()`` (goal >= 1.2x) and ``SentenceTransformer.encode``.

Inputs: the DL19 BM25 top-100 (query, passage) pairs of the first queries (real MS MARCO text). Also printed: the
share of the fp32 matrix-multiply ceiling measured on this machine in the same run.
Run: ``make bench`` (or ``pytest benchmarks -s``).
"""
import time

import numpy as np
import pytest
import torch

N_QUERIES = 3


def _best_of(fn, rounds=2):
    best = float('inf')
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.fixture(scope='module')
def pairs():
    from pyterrier_knowacq import get_dataset
    ds = get_dataset('msmarco-passage')
    frame = (ds.run_transformer('bm25') >> ds.text_loader())(ds.get_topics('dl19').head(N_QUERIES))
    return frame['query'].tolist(), frame['text'].tolist()


@pytest.fixture(scope='module')
def ceiling():
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    secs = _best_of(lambda: [a @ b for _ in range(20)], rounds=3)
    return 20 * 2 * 1024 ** 3 / secs


def _model_flops(config, tokens: int) -> float:
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return 2.0 * tokens * n * (4 * h * h + 2 * h * i)


@pytest.fixture(scope='module')
def ce_checkpoint(tmp_path_factory):
    from transformers import AutoModelForSequenceClassification
    from pyterrier_knowacq.backbones import load_tokenizer, resolve_model
    folder = tmp_path_factory.mktemp('ce') / 'minilm-ce'
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(resolve_model('minilm-l6'), num_labels=1).save_pretrained(folder)
    load_tokenizer('minilm-l6').save_pretrained(folder)
    return str(folder)


def test_cross_encoder_vs_sentence_transformers(benchmark, pairs, ce_checkpoint, ceiling):
    from sentence_transformers import CrossEncoder as STCrossEncoder
    from pyterrier_knowacq import CrossEncoder
    queries, texts = pairs
    ours = CrossEncoder.from_pretrained(ce_checkpoint, batch_size=32, max_length=256)
    peer = STCrossEncoder(ce_checkpoint, max_length=256, device='cpu')
    ours_scores = ours.score_pairs(queries, texts)
    peer_scores = peer.predict(list(zip(queries, texts)), batch_size=32, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(ours_scores, np.asarray(peer_scores).ravel(), atol=1e-3)  # same model, same inputs
    peer_s = _best_of(lambda: peer.predict(list(zip(queries, texts)), batch_size=32))
    benchmark.pedantic(ours.score_pairs, args=(queries, texts), rounds=2, iterations=1)
    ours_s = benchmark.stats.stats.min
    tokens = sum(len(x) for x in ours.tokenizer(queries, texts, truncation='only_second', max_length=256)['input_ids'])
    share = _model_flops(ours.model.config, tokens) / ours_s / ceiling
    ratio = peer_s / ours_s
    benchmark.extra_info.update(pairs_per_s=len(texts) / ours_s, peer_pairs_per_s=len(texts) / peer_s, ratio=ratio, ceiling_share=share)
    print(f'\ncross-encoder: ours {len(texts) / ours_s:.1f} pairs/s, sentence-transformers {len(texts) / peer_s:.1f} pairs/s, '
          f'ratio {ratio:.2f}x (goal 1.5x), {share:.0%} of the fp32 ceiling ({ceiling / 1e9:.0f} GFLOP/s)')


def test_bi_encoder_vs_pyterrier_dr(benchmark, pairs, ceiling):
    import pandas as pd
    import pyterrier_dr
    from sentence_transformers import SentenceTransformer
    from pyterrier_knowacq import BiEncoder
    from pyterrier_knowacq.backbones import resolve_model
    _, texts = pairs
    path = resolve_model('minilm-l6')
    ours = BiEncoder.from_pretrained('minilm-l6', batch_size=32, max_length=256)
    dr = pyterrier_dr.SBertBiEncoder(path, batch_size=32)
    st = SentenceTransformer(path, device='cpu')
    frame = pd.DataFrame({'docno': [str(i) for i in range(len(texts))], 'text': texts})
    ref = np.stack(dr.doc_encoder()(frame)['doc_vec'].values)
    np.testing.assert_allclose(ours.encode_docs(texts), ref, atol=1e-4)
    dr_s = _best_of(lambda: dr.doc_encoder()(frame))
    st_s = _best_of(lambda: st.encode(texts, batch_size=32))
    benchmark.pedantic(ours.encode_docs, args=(texts,), rounds=2, iterations=1)
    ours_s = benchmark.stats.stats.min
    tokens = sum(len(x) for x in ours.tokenizer(texts, truncation=True, max_length=256)['input_ids'])
    share = _model_flops(ours.model.config, tokens) / ours_s / ceiling
    benchmark.extra_info.update(docs_per_s=len(texts) / ours_s, ratio_pyterrier_dr=dr_s / ours_s, ratio_st=st_s / ours_s,
                                ceiling_share=share)
    print(f'\nbi-encoder: ours {len(texts) / ours_s:.1f} docs/s, pyterrier-dr {len(texts) / dr_s:.1f} docs/s '
          f'({dr_s / ours_s:.2f}x, goal 1.2x), sentence-transformers {len(texts) / st_s:.1f} docs/s ({st_s / ours_s:.2f}x), '
          f'{share:.0%} of the fp32 ceiling')
