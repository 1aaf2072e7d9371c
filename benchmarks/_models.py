"""The one place the benchmarks import the package's classes from (module paths may move: fix them here only),
plus the shared workload: the DL19 BM25 top-100 with query and passage text.

Example::

    from _models import CrossEncoder, dl19_bm25
    run = dl19_bm25()           # 43 queries x 100 = 4,300 rows: qid, query, docno, text, ...
"""
import os

from pyterrier_knowacq import BiEncoder, CrossEncoder, get_dataset
from pyterrier_knowacq.analysis.attribution import IntegratedGradients
from pyterrier_knowacq.experiments.planning.devices import gemm_gflops
from pyterrier_knowacq.models.backbones import load_encoder, load_tokenizer, resolve_model
from pyterrier_knowacq.models.colbert import ColBERT, ColBERTModel

__all__ = ['BiEncoder', 'CrossEncoder', 'get_dataset', 'IntegratedGradients', 'load_encoder', 'load_tokenizer',
           'resolve_model', 'ColBERT', 'ColBERTModel', 'dl19_bm25', 'describe', 'gemm_gflops']

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


# ---------------------------------------------------------------------------------------------------------------------
# int8 (issue 14): the BM25 top-100 of any TREC DL split, and the cross-encoder C whose int8 cost is measured.
# Used by int8_effectiveness.py and bench_int8.py only.

def dl_bm25(split='dl19', n_queries=N_QUERIES, depth=100):
    """:func:`dl19_bm25` for ``split`` (``dl19`` / ``dl20``), cut at ``depth`` per query."""
    ds = get_dataset('msmarco-passage')
    run = ds.get_run('bm25', split)
    run = run[run['rank'] < depth] if 'rank' in run.columns else run
    if n_queries:
        run = run[run.qid.isin(sorted(run.qid.unique())[:n_queries])]
    run = run.merge(ds.get_topics(split), on='qid')
    run['text'] = ds.get_texts(run['docno'].tolist())
    return run.reset_index(drop=True)


def trained_c():
    """``(folder, how)``: an LCE-trained multistage C cross-encoder from the cache, or ``(None, why)``.

    Completed trainings (``models/trained/<key>/training.json`` naming loss ``lce``) come first; then the best
    checkpoint of an interrupted LCE C training (``models/trained/<key>.work/best``: a cross-encoder whose
    ``checkpoint/state.json`` records validation and an LCE-sized loss history), which is a real trained re-ranker,
    only stopped early."""
    import json
    from pathlib import Path
    from pyterrier_knowacq._util import cache_dir
    root = Path(cache_dir('models')) / 'trained'
    for f in sorted(root.glob('*/training.json')):
        text = f.read_text()
        if '"lce"' in text and (f.parent / 'knowacq.json').exists():
            return str(f.parent), f'completed LCE training ({f.parent.name})'
    for best in sorted(root.glob('*.work/best')):
        meta = best / 'knowacq.json'
        state = best.parent / 'checkpoint' / 'state.json'
        if meta.exists() and json.loads(meta.read_text()).get('kind') == 'cross-encoder' and state.exists():
            s = json.loads(state.read_text())
            vals = [h for h in s.get('history', []) if any(k.startswith('val_') for k in h)]
            best_step = max(vals, key=lambda h: h.get('val_nDCG@10', -1))['step'] if vals else None
            return str(best), (f'interrupted C training ({best.parent.name}): stopped at step {s.get("step")} of '
                               f'{s.get("total")}, best validation checkpoint at step {best_step} '
                               f'(validation nDCG@10 {s.get("best")}); no training.json')
    return None, 'no trained C in the cache'
