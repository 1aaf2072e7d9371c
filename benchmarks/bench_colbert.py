"""Re-ranking throughput of our ColBERT stage against pylate's rerank (when importable) and a plain transformers
implementation, on the same MiniLM-based ColBERT checkpoint and real DL19 BM25 candidates.

Run:  OMP_NUM_THREADS=2 pytest benchmarks/bench_colbert.py --benchmark-only -s
(pylate, when installed with its pins, is picked up from the import path, e.g. PYTHONPATH=/path/to/pylate_pkgs after
 pip install --target /path/to/pylate_pkgs --no-deps pylate==1.6.0 sentence-transformers==5.3.0 transformers==5.3.0 \
     ujson fastkmeans voyager==2.1.0 httpx httpcore anyio sniffio h11 tokenizers==0.22.2 "huggingface-hub>=1.3,<2"
 ; our stage then runs on the same transformers 5.3 in the same process.)
"""
import time
import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.benchmark
N_QUERIES = 3          # x 100 BM25 candidates each
BATCH = 32


@pytest.fixture(scope='module')
def workload(tmp_path_factory):
    from pyterrier_knowacq.colbert import ColBERTModel
    from pyterrier_knowacq.datasets import get_dataset
    folder = tmp_path_factory.mktemp('bench') / 'colbert-minilm'
    ColBERTModel.new('minilm-l6', seed=0).save(folder)
    ds = get_dataset('msmarco-passage')
    run = ds.get_run('bm25', 'dl19')
    run = run[run.qid.isin(sorted(run.qid.unique())[:N_QUERIES])].merge(ds.get_topics('dl19'), on='qid')
    run['text'] = ds.get_texts(run['docno'].tolist())
    return folder, run.reset_index(drop=True)


class PlainColBERT:
    """What a user would write with transformers alone: per query, batches in run order padded to the longest."""

    def __init__(self, folder):
        import json
        import string
        import torch
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        self.tok = AutoTokenizer.from_pretrained(str(folder))
        weights = load_file(str(folder / 'model.safetensors'))
        self.bert = AutoModel.from_config(AutoConfig.from_pretrained(str(folder))).eval()
        self.bert.load_state_dict({k[5:]: v for k, v in weights.items() if k.startswith('bert.')}, strict=False)
        self.linear = weights['linear.weight']
        self.meta = json.loads((folder / 'artifact.metadata').read_text())
        self.skip = torch.tensor([self.tok.encode(c, add_special_tokens=False)[0] for c in string.punctuation])

    def encode(self, texts, query):
        import torch
        t = self.tok(['. ' + x for x in texts], padding='max_length' if query else 'longest', truncation=True,
                     max_length=self.meta['query_maxlen' if query else 'doc_maxlen'], return_tensors='pt')
        ids, mask = t['input_ids'], t['attention_mask']
        ids[:, 1] = self.tok.convert_tokens_to_ids('[unused0]' if query else '[unused1]')
        if query:
            ids[ids == self.tok.pad_token_id] = self.tok.mask_token_id
        with torch.no_grad():
            v = torch.nn.functional.normalize(self.bert(input_ids=ids, attention_mask=mask)[0] @ self.linear.T, dim=2)
        keep = torch.ones_like(mask, dtype=torch.bool) if query else mask.bool() & ~torch.isin(ids, self.skip)
        return v, keep

    def rerank(self, run):
        out = []
        for qid, g in run.groupby('qid', sort=False):
            Q, _ = self.encode([g['query'].iloc[0]], True)
            texts = g['text'].tolist()
            for s in range(0, len(texts), BATCH):
                D, keep = self.encode(texts[s:s + BATCH], False)
                sim = (Q @ D.transpose(1, 2)).masked_fill(~keep[:, None, :], -9999)
                out.append(sim.max(2).values.sum(1))
        import torch
        return torch.cat(out).numpy()


def _pylate_rerank(folder):
    from pylate import models, rank
    model = models.ColBERT(model_name_or_path=str(folder), device='cpu')

    def run_it(run):
        groups = list(run.groupby('qid', sort=False))
        q = model.encode([g['query'].iloc[0] for _, g in groups], is_query=True, batch_size=BATCH)
        d = model.encode([g['text'].tolist() for _, g in groups], is_query=False, batch_size=BATCH)
        return rank.rerank(documents_ids=[g['docno'].tolist() for _, g in groups], queries_embeddings=q,
                           documents_embeddings=d)
    return run_it


def _time(fn, repeat=2):
    best = float('inf')
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def test_rerank_throughput(benchmark, workload):
    from pyterrier_knowacq.colbert import ColBERT
    folder, run = workload
    ours = ColBERT(str(folder), batch_size=BATCH)
    warnings.simplefilter('ignore')
    ours(run.head(8))                                                        # warm-up
    plain = PlainColBERT(folder)
    np.testing.assert_allclose(ours(run)['score'].to_numpy(), plain.rerank(run), atol=1e-4)
    peers = {'plain transformers': lambda: plain.rerank(run)}
    try:
        peers['pylate rerank'] = (lambda f: (lambda: f(run)))(_pylate_rerank(folder))
    except ImportError:
        print('pylate not importable: comparing against the plain transformers implementation only')
    benchmark.pedantic(lambda: ours(run), rounds=2, iterations=1)
    t_ours = benchmark.stats.stats.min
    print(f'\nours: {len(run) / t_ours:.1f} pairs/s ({len(run)} pairs)')
    for name, fn in peers.items():
        t_peer = _time(fn)
        print(f'{name}: {len(run) / t_peer:.1f} pairs/s -> ours is {t_peer / t_ours:.2f}x')
