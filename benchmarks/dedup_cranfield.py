"""Cranfield, PISA BM25 top-100 re-ranked by the MiniLM bi-encoder: texts encoded and wall time, dedup on vs off (alternating rounds).

Run:  OMP_NUM_THREADS=2 python benchmarks/dedup_cranfield.py [QUERIES]   (default 76 queries = 7,600 rows, as in issue 11)
"""
import statistics, sys, time
from pyterrier_knowacq import BiEncoder, PisaBM25, get_dataset
ds = get_dataset('cranfield')
topics = ds.get_topics().head(int(sys.argv[1]) if len(sys.argv) > 1 else 76)
run = (PisaBM25(ds, num_results=100) >> ds.text_loader())(topics)
print('rows', len(run), 'distinct docs', run.docno.nunique(), 'queries', run.qid.nunique())
res = {}
for rnd in range(3):
    for dedup in (False, True):
        m = BiEncoder.from_pretrained('minilm-l6', batch_size=32, dedup=dedup)
        n = []
        orig = m._encode
        m._encode = lambda texts, role, batch_size=None: (n.append((role, len(texts))), orig(texts, role, batch_size))[1]
        t = time.time(); out = m.scorer()(run); dt = time.time() - t
        res.setdefault(dedup, []).append(dt)
        print(f'round {rnd} dedup={dedup}: {dt:.1f}s, encoded', {r: sum(k for rr, k in n if rr == r) for r in ('query', 'doc')}, flush=True)
ratios = [a / b for a, b in zip(res[False], res[True])]
print('median speed-up', statistics.median(ratios), 'range', min(ratios), max(ratios))
