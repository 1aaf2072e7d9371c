"""int8 cross-encoder inference on CPU (issue 14), under the protocol of ``protocol.py`` (warm-up, >= 7 interleaved
rounds of >= 3 s per side, median ratio with min-max and a bootstrap interval), same checkpoint and inputs:

* ``int8_cross_encoder``: ours ``CrossEncoder(quantize='int8').score_pairs`` (torch dynamic quantisation, packed
  inference) vs sentence-transformers fp32 ``CrossEncoder.predict`` (goal >= 2.5x, reported, never asserted);
* ``int8_torch_vs_onnxruntime``: ours as above vs ONNX Runtime running the same checkpoint exported to ONNX and
  quantised by ``onnxruntime.quantization.quantize_dynamic`` (QInt8 weights, per channel), fed the same tokenisation in
  the same length-sorted batches (padded: an ONNX graph takes rectangular batches). Skipped without onnxruntime
  (``pip install onnxruntime onnx``; not a dependency of the package, see DESIGN.md "int8 inference");
* ``int8_vs_fp32``: ours int8 vs ours fp32 (both packed): what quantisation alone buys.

The checkpoint is ``bench_scoring.py``'s: MiniLM-L6 with a seeded 1-logit head, max length 256, batch 32. Before
timing, the int8 scores of each side are compared with fp32 on the first pairs; the differences go into the JSON.

Workload: the DL19 BM25 top-100 of the first ``INT8_QUERIES`` queries (default 5: 500 (query, passage) pairs; 43 is
the full 4,300), real MS MARCO text. A subset because one fp32 sentence-transformers call on all 4,300 pairs takes
minutes on a shared 2-core machine, and the protocol needs 7 rounds of it per side; the pairs are the same for both
sides, so the ratio does not depend on the subset's size beyond its length mix (reported as mean tokens per pair).
Results: ``benchmarks/results/int8_*.json``.

Run:  .venv/bin/python -m pytest benchmarks/bench_int8.py -p no:cacheprovider -s
Quick development run (not a measurement): INT8_QUERIES=1 BENCH_ROUNDS=2 BENCH_MIN_ROUND_S=0.5 \
      BENCH_RESULTS_DIR=.benchmarks/dev .venv/bin/python -m pytest benchmarks/bench_int8.py -p no:cacheprovider -s
"""
import os

import numpy as np
import pytest

from _models import CrossEncoder, describe, dl_bm25, load_tokenizer, resolve_model
from protocol import run_benchmark

pytestmark = pytest.mark.benchmark
BATCH, MAXLEN = 32, 256
CHECK = 64
N_QUERIES = int(os.environ.get('INT8_QUERIES') or 5)


@pytest.fixture(scope='module')
def run():
    return dl_bm25('dl19', n_queries=N_QUERIES)


@pytest.fixture(scope='module')
def ce_checkpoint(tmp_path_factory):
    import torch
    from transformers import AutoModelForSequenceClassification
    folder = tmp_path_factory.mktemp('ce') / 'minilm-ce'
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(resolve_model('minilm-l6'), num_labels=1).save_pretrained(folder)
    load_tokenizer('minilm-l6').save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope='module')
def models(ce_checkpoint):
    fp32 = CrossEncoder.from_pretrained(ce_checkpoint, batch_size=BATCH, max_length=MAXLEN, device='cpu')
    int8 = CrossEncoder.from_pretrained(ce_checkpoint, batch_size=BATCH, max_length=MAXLEN, quantize='int8')
    return fp32, int8


def exactness(reference, scores):
    d = np.abs(np.asarray(scores, dtype=np.float64) - np.asarray(reference, dtype=np.float64))
    return {'pairs': len(d), 'max_abs_diff_vs_fp32': float(d.max()), 'mean_abs_diff_vs_fp32': float(d.mean()),
            'fp32_score_std': float(np.std(reference))}


def workload(run, ce, **extra):
    q, t = run['query'].tolist(), run['text'].tolist()
    tokens = sum(map(len, ce.tokenizer(q, t, truncation='only_second', max_length=MAXLEN)['input_ids']))
    return dict(describe(run), subset=f'first {run.qid.nunique()} DL19 queries (INT8_QUERIES)',
                model='all-MiniLM-L6-v2 + seeded 1-logit head', max_length=MAXLEN, batch_size=BATCH,
                mean_tokens_per_pair=round(tokens / len(run), 1),
                machine_note='shared 2-core machine: other jobs may load it (see the spread of the ratios)', **extra)


def test_int8_vs_sentence_transformers(benchmark, run, ce_checkpoint, models):
    pytest.importorskip('sentence_transformers')
    import torch
    from sentence_transformers import CrossEncoder as STCrossEncoder
    fp32, int8 = models
    queries, texts = run['query'].tolist(), run['text'].tolist()
    pairs = list(zip(queries, texts))
    peer = STCrossEncoder(ce_checkpoint, max_length=MAXLEN, device='cpu')
    ref = np.asarray(peer.predict(pairs[:CHECK], batch_size=BATCH, activation_fn=torch.nn.Identity(),
                                  show_progress_bar=False)).ravel()
    np.testing.assert_allclose(fp32.score_pairs(queries[:CHECK], texts[:CHECK]), ref, atol=1e-3)
    check = exactness(ref, int8.score_pairs(queries[:CHECK], texts[:CHECK]))
    run_benchmark(
        benchmark, 'int8_cross_encoder',
        lambda: int8.score_pairs(queries, texts),
        lambda: peer.predict(pairs, batch_size=BATCH, show_progress_bar=False),
        goal=2.5, ours_label="knowacq CrossEncoder(quantize='int8').score_pairs (torch dynamic int8, packed)",
        peer_label='sentence-transformers CrossEncoder.predict (fp32)', workload=workload(run, int8, int8_check=check))


class OrtCrossEncoder:
    """ONNX Runtime scoring of the exported checkpoint, fed exactly our tokenisation and length-sorted batches."""

    def __init__(self, onnx_path, tokenizer, threads):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=['CPUExecutionProvider'])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = tokenizer

    def score_pairs(self, queries, texts):
        from pyterrier_knowacq.models._batching import length_sorted_batches, tokenize
        enc = tokenize(self.tokenizer, queries, texts, max_length=MAXLEN)
        out = np.empty(len(queries), dtype=np.float32)
        for idx in length_sorted_batches([len(ids) for ids in enc['input_ids']], BATCH):
            batch = self.tokenizer.pad([{k: enc[k][i] for k in enc.keys()} for i in idx], return_tensors='np')
            feed = {k: v.astype(np.int64) for k, v in batch.items() if k in self.inputs}
            out[idx] = self.session.run(None, feed)[0][:, 0]
        return out


def export_onnx_int8(checkpoint, folder):
    """``checkpoint`` -> ``folder/fp32.onnx`` (torch.onnx.export, opset 17, dynamic batch and length) ->
    ``folder/int8.onnx`` (onnxruntime.quantization.quantize_dynamic, QInt8 per-channel weights)."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    tok = AutoTokenizer.from_pretrained(checkpoint)
    enc = tok(['a query', 'a longer query here'], ['a passage', 'a longer passage text'], padding=True,
              return_tensors='pt')
    names = ['input_ids', 'attention_mask', 'token_type_ids']
    with torch.no_grad():
        torch.onnx.export(model, tuple(enc[k] for k in names), str(folder / 'fp32.onnx'), input_names=names,
                          output_names=['logits'], dynamic_axes={k: {0: 'batch', 1: 'length'} for k in names},
                          opset_version=17, dynamo=False)
    quantize_dynamic(str(folder / 'fp32.onnx'), str(folder / 'int8.onnx'), weight_type=QuantType.QInt8,
                     per_channel=True)
    return folder / 'int8.onnx'


def test_int8_torch_vs_onnxruntime(benchmark, run, ce_checkpoint, models, tmp_path_factory):
    pytest.importorskip('onnxruntime')
    pytest.importorskip('onnx')
    from protocol import set_threads
    fp32, int8 = models
    queries, texts = run['query'].tolist(), run['text'].tolist()
    path = export_onnx_int8(ce_checkpoint, tmp_path_factory.mktemp('onnx'))
    peer = OrtCrossEncoder(path, int8.tokenizer, set_threads())
    ref = fp32.score_pairs(queries[:CHECK], texts[:CHECK])
    checks = {'torch_int8': exactness(ref, int8.score_pairs(queries[:CHECK], texts[:CHECK])),
              'onnxruntime_int8': exactness(ref, peer.score_pairs(queries[:CHECK], texts[:CHECK]))}
    import onnxruntime
    run_benchmark(
        benchmark, 'int8_torch_vs_onnxruntime',
        lambda: int8.score_pairs(queries, texts), lambda: peer.score_pairs(queries, texts),
        goal=None, ours_label="knowacq CrossEncoder(quantize='int8') (torch dynamic int8, packed)",
        peer_label=f'onnxruntime {onnxruntime.__version__} dynamic int8 (QInt8 per channel, padded batches)',
        workload=workload(run, int8, int8_check=checks, onnx_int8_mb=round(path.stat().st_size / 2**20, 1)))


def test_int8_vs_fp32(benchmark, run, models):
    fp32, int8 = models
    queries, texts = run['query'].tolist(), run['text'].tolist()
    check = exactness(fp32.score_pairs(queries[:CHECK], texts[:CHECK]), int8.score_pairs(queries[:CHECK], texts[:CHECK]))
    run_benchmark(
        benchmark, 'int8_vs_fp32',
        lambda: int8.score_pairs(queries, texts), lambda: fp32.score_pairs(queries, texts),
        goal=None, ours_label="knowacq CrossEncoder(quantize='int8') (packed)",
        peer_label='knowacq CrossEncoder fp32 (packed)', workload=workload(run, int8, int8_check=check))
