"""Print the README's speed table (markdown) from the protocol results in benchmarks/results/*.json.

Example::

    .venv/bin/python benchmarks/summary.py                  # or: BENCH_RESULTS_DIR=.benchmarks/dev ... summary.py
    | comparison | workload | ratio: median (min–max) | 95% CI of the median | goal | ...
"""
import json
import os
import sys
from pathlib import Path

ORDER = ['cross_encoder', 'bi_encoder', 'colbert', 'ig_batched']   # the README's row order; others follow


def row(r):
    s, g, w, m = r['ratio'], r['goal'] or {}, r['workload'], r['machine']
    size = f'{w["pairs"]:,} pairs ({w["queries"]} DL19 queries)' if 'pairs' in w else \
        f'{w.get("texts", "?")} text, {w.get("dense_layers", "?")} dense layers, {w.get("alphas", "?")} alphas'
    notes = [] if r['full_protocol'] else ['reduced run, not a measurement']
    if s['unstable']:
        notes.append(f'unstable (spread {s["spread"]:.0%})')
    return (f'| {r["ours"]} vs {r["peer"]} | {size} | **{s["median"]:.2f}x** ({s["min"]:.2f}–{s["max"]:.2f}) | '
            f'{s["ci95"][0]:.2f}–{s["ci95"][1]:.2f} | {g.get("text", "–")} | '
            f'{"met" if g.get("met") else "not met" if g else "–"} | '
            f'{len(r["rounds"])} rounds, {m["torch_threads"]} threads, {r["date"][:10]}'
            f'{"; " + "; ".join(notes) if notes else ""} |')


def main(folder=None):
    folder = Path(folder or os.environ.get('BENCH_RESULTS_DIR') or Path(__file__).resolve().parent / 'results')
    results = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob('*.json'))}
    if not results:
        sys.exit(f'no results in {folder}: run make bench')
    names = [n for n in ORDER if n in results] + [n for n in results if n not in ORDER]
    print('| comparison (ours vs peer) | workload | ratio: median (min–max) | 95% CI of the median | goal | goal met | '
          'run |')
    print('|---|---|---|---|---|---|---|')
    for name in names:
        print(row(results[name]))
    first = results[names[0]]
    print(f'\nMachine: {first["machine"]["cpu"]}, {first["machine"]["logical_cores"]} logical cores; torch '
          f'{first["versions"]["torch"]}.')


if __name__ == '__main__':
    main(*sys.argv[1:])
