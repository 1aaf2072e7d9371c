"""Effectiveness cost of ``quantize='int8'``: nDCG@10 on TREC DL19 and DL20 (embedded MS MARCO passage, the shipped
BM25 run's top-100 re-ranked), fp32 against int8, for

* ``bi-encoder``: the quickstart bi-encoder (``experiments/quickstart.yaml``: all-MiniLM-L6-v2 ``minilm-l6``,
  mean pooling from its sentence-transformers config, max_length 256, batch 64);
* ``cross-encoder C``: a trained multistage C (LCE, MiniLM-L6, segment-product pooling) from the cache
  (``_models.trained_c``), scored as ``multistage-seeds.yaml`` scores it (max_length 256, batch 64); with none in the
  cache (or ``INT8_CE=seeded``), the seeded-head MiniLM cross-encoder of ``bench_scoring.py``, which is untrained: its
  nDCG@10 says little, only the fp32-int8 difference does.

Goal: int8 costs <= 0.005 nDCG@10 on each (reported, with the mean and largest per-pair score change; never
asserted). Writes ``benchmarks/results/int8_effectiveness.json`` atomically and prints the table.

Run:  .venv/bin/python benchmarks/int8_effectiveness.py          (about 30 min on a quiet 2-core machine)
One row: INT8_MODELS=ce (or bi) recomputes that model only and keeps the other row of the existing JSON.
Quick run (not a measurement): BENCH_QUERIES=3 BENCH_RESULTS_DIR=.benchmarks/dev .venv/bin/python benchmarks/int8_effectiveness.py
"""
import os
import sys
import time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _models import BiEncoder, CrossEncoder, dl_bm25, load_tokenizer, resolve_model, trained_c  # noqa: E402
from protocol import RESULTS_DIR, machine_info, set_threads, versions, write_json_atomic  # noqa: E402

SPLITS = ('dl19', 'dl20')
GOAL = 0.005     # largest acceptable nDCG@10 loss


def ndcg10(run, scores, qrels):
    import ir_measures
    from ir_measures import nDCG
    frame = run[['qid', 'docno']].rename(columns={'qid': 'query_id', 'docno': 'doc_id'}).assign(
        score=np.asarray(scores, dtype=float))
    q = qrels[qrels.qid.isin(set(run.qid))]     # the run's queries only (all of them in a full run)
    q = q.rename(columns={'qid': 'query_id', 'docno': 'doc_id', 'label': 'relevance'})
    return float(ir_measures.calc_aggregate([nDCG @ 10], q, frame)[nDCG @ 10])


def seeded_cross_encoder(folder: Path) -> str:
    """bench_scoring.py's cross-encoder: MiniLM-L6 with a 1-logit head seeded by torch.manual_seed(0)."""
    import torch
    from transformers import AutoModelForSequenceClassification
    if not (folder / 'config.json').exists():
        torch.manual_seed(0)
        AutoModelForSequenceClassification.from_pretrained(resolve_model('minilm-l6'), num_labels=1).save_pretrained(folder)
        load_tokenizer('minilm-l6').save_pretrained(folder)
    return str(folder)


def cross_encoder_source():
    """``(loader argument, description for the JSON)``: the trained C, or the seeded fallback."""
    folder, how = (None, 'INT8_CE=seeded') if os.environ.get('INT8_CE') == 'seeded' else trained_c()
    if folder is not None:
        cache = Path(os.environ.get('KNOWACQ_CACHE', Path.home() / '.cache' / 'pyterrier_knowacq'))
        try:
            shown = '$KNOWACQ_CACHE/' + str(Path(folder).relative_to(cache))
        except ValueError:
            shown = Path(folder).name
        return folder, {'model': 'multistage C: MiniLM-L6, LCE, segment-product pooling', 'checkpoint': shown,
                        'provenance': how}
    tmp = Path(os.environ.get('INT8_TMP', '.benchmarks')) / 'minilm-seeded-ce'
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return seeded_cross_encoder(tmp), {
        'model': 'MiniLM-L6 + seeded 1-logit head (bench_scoring.py), untrained', 'provenance': how,
        'note': 'no trained C in the cache: an untrained re-ranker; only the fp32-int8 difference is meaningful'}


def evaluate(label, make, score, runs, qrels, info):
    """fp32 and int8 nDCG@10 of one model on every split; ``make(quantize)`` builds it, ``score(model, run)``."""
    row = {'label': label, **info, 'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), 'splits': {}}
    for quantize in (None, 'int8'):
        model = make(quantize)
        for split in SPLITS:
            start = time.perf_counter()
            scores = np.asarray(score(model, runs[split]), dtype=np.float64)
            key = 'int8' if quantize else 'fp32'
            cell = row['splits'].setdefault(split, {})
            cell[key] = ndcg10(runs[split], scores, qrels[split])
            cell[f'{key}_seconds'] = round(time.perf_counter() - start, 1)
            cell.setdefault('_scores', {})[key] = scores
            print(f'  {label} {split} {key}: nDCG@10 {cell[key]:.4f} ({cell[f"{key}_seconds"]} s)', flush=True)
        del model
    for split, cell in row['splits'].items():
        a, b = cell['_scores'].pop('fp32'), cell['_scores'].pop('int8')
        del cell['_scores']
        cell['delta'] = cell['int8'] - cell['fp32']
        cell['goal_met'] = cell['delta'] >= -GOAL
        cell['score_abs_diff'] = {'mean': float(np.mean(np.abs(a - b))), 'max': float(np.max(np.abs(a - b))),
                                  'fp32_score_std': float(np.std(a))}
        cell['queries'] = int(runs[split].qid.nunique())
        cell['pairs'] = len(runs[split])
    return row


def main():
    from pyterrier_knowacq import get_dataset
    threads = set_threads()
    ds = get_dataset('msmarco-passage')
    runs = {s: dl_bm25(s) for s in SPLITS}
    qrels = {s: ds.get_qrels(s) for s in SPLITS}
    only = set(filter(None, os.environ.get('INT8_MODELS', 'bi,ce').split(',')))
    out_dir = Path(os.environ.get('BENCH_RESULTS_DIR') or RESULTS_DIR)
    rows = []
    print(f'int8 effectiveness: torch threads {threads}; '
          + ', '.join(f'{s} {runs[s].qid.nunique()} queries x top-100' for s in SPLITS), flush=True)

    if 'bi' in only:
        rows.append(evaluate(
            'bi-encoder (quickstart, minilm-l6)',
            lambda q: BiEncoder.from_pretrained('minilm-l6', batch_size=64, max_length=256, quantize=q, device='cpu'),
            lambda m, run: m.scorer()(run[['qid', 'query', 'docno', 'text']])['score'].to_numpy(),
            runs, qrels, {'key': 'bi', 'settings': 'mean pooling (sentence-transformers config), max_length 256, batch 64'}))
    if 'ce' in only:
        source, info = cross_encoder_source()
        rows.append(evaluate(
            'cross-encoder C' if 'checkpoint' in info else 'cross-encoder (seeded MiniLM)',
            lambda q: CrossEncoder.from_pretrained(source, batch_size=64, max_length=256, quantize=q, device='cpu'),
            lambda m, run: m.score_pairs(run['query'].tolist(), run['text'].tolist()),
            runs, qrels, {'key': 'ce', **info, 'settings': 'max_length 256, batch 64 (multistage-seeds.yaml)'}))
    if only != {'bi', 'ce'} and (out_dir / 'int8_effectiveness.json').exists():
        # the other row as the file holds it now (read at the end: two one-row runs may overlap)
        import json
        kept = [r for r in json.loads((out_dir / 'int8_effectiveness.json').read_text())['rows']
                if r.get('key') not in only and 'key' in r]
        rows = sorted(kept + rows, key=lambda r: r['key'])

    result = {
        'name': 'int8_effectiveness',
        'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'data': 'MS MARCO passage (embedded), official BM25 run top-100 per query, re-ranked; nDCG@10',
        'quantize': "quantize='int8': torch dynamic quantisation (qint8, per-channel weights) of the transformer "
                    'layers, SmoothQuant on the LayerNorm-fed ones, packed inference '
                    '(pyterrier_knowacq.models.quantize)',
        'goal': f'int8 - fp32 >= -{GOAL} nDCG@10 on each split',
        'full_run': not os.environ.get('BENCH_QUERIES'),
        'rows': rows, 'machine': machine_info(threads), 'versions': versions(),
    }
    path = write_json_atomic(out_dir / 'int8_effectiveness.json', result)
    print(format_table(result) + f'\n-> {path}')
    return result


def format_table(result) -> str:
    lines = [f'{"model":<36} {"split":<5} {"fp32":>7} {"int8":>7} {"delta":>8}  goal   mean|d score|',
             '-' * 86]
    for row in result['rows']:
        for split, c in row['splits'].items():
            lines.append(f'{row["label"]:<36} {split:<5} {c["fp32"]:7.4f} {c["int8"]:7.4f} {c["delta"]:+8.4f}  '
                         f'{"met " if c["goal_met"] else "MISS"}   {c["score_abs_diff"]["mean"]:.4f}')
    if not result['full_run']:
        lines.append('[reduced run (BENCH_QUERIES): not a measurement]')
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
