"""The one place the benchmarks import the package's classes from (module paths may move: fix them here only),
plus the shared workload: the DL19 BM25 top-100 with query and passage text.

Example::

    from _models import CrossEncoder, dl19_bm25
    run = dl19_bm25()           # 43 queries x 100 = 4,300 rows: qid, query, docno, text, ...
"""
import os

from pyterrier_knowacq import BiEncoder, CrossEncoder, get_dataset
from pyterrier_knowacq.analysis.attribution import IntegratedGradients
from pyterrier_knowacq.models.backbones import load_encoder, load_tokenizer, resolve_model
from pyterrier_knowacq.models.colbert import ColBERT, ColBERTModel

__all__ = ['BiEncoder', 'CrossEncoder', 'get_dataset', 'IntegratedGradients', 'load_encoder', 'load_tokenizer',
           'resolve_model', 'ColBERT', 'ColBERTModel', 'dl19_bm25', 'describe']

#: DL19 queries in the workload: all 43 by default; BENCH_QUERIES=3 for a quick development run
N_QUERIES = int(os.environ.get('BENCH_QUERIES') or 0) or None


def dl19_bm25(n_queries=N_QUERIES):
    """The official DL19 BM25 run (top-100 per query) joined with query and passage text, in run order."""
    ds = get_dataset('msmarco-passage')
    run = ds.get_run('bm25', 'dl19')
    if n_queries:
        run = run[run.qid.isin(sorted(run.qid.unique())[:n_queries])]
    run = run.merge(ds.get_topics('dl19'), on='qid')
    run['text'] = ds.get_texts(run['docno'].tolist())
    return run.reset_index(drop=True)


def describe(run):
    """Workload sizes for the result JSON."""
    return {'data': 'MS MARCO passage, DL19 official BM25 run, top-100 per query', 'queries': int(run.qid.nunique()),
            'pairs': len(run), 'distinct_passages': int(run.docno.nunique())}
