"""Print the README's speed table (markdown) from the protocol results in benchmarks/results/*.json.

Example::

    .venv/bin/python benchmarks/summary.py                  # or: BENCH_RESULTS_DIR=.benchmarks/dev ... summary.py
    | comparison | workload | ratio: median (min–max) | 95% CI of the median | goal | ...
    .venv/bin/python benchmarks/summary.py benchmarks/results/runs/1 benchmarks/results/runs/2 benchmarks/results/runs/3
    | comparison | run 1 | run 2 | run 3 | median of the runs | goal | goal met |   (one column per complete run)
"""
import json
import os
import statistics
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


def _load(folder):
    results = {p.stem: json.loads(p.read_text()) for p in sorted(Path(folder).glob('*.json'))}
    # only the protocol results (ratio + rounds); other JSON files in the folder (int8 effectiveness, RSS) are not rows
    results = {k: v for k, v in results.items() if isinstance(v, dict) and 'ratio' in v and 'rounds' in v}
    if not results:
        sys.exit(f'no protocol results in {folder}: run make bench')
    return results


def _names(results):
    return [n for n in ORDER if n in results] + [n for n in results if n not in ORDER]


def runs_table(folders):
    """One column per run (median and min–max, "unstable" marked), then the median of the run medians."""
    runs = [_load(f) for f in folders]
    names = [n for n in _names(runs[0]) if all(n in r for r in runs)]
    print('| comparison (ours vs peer) | ' + ' | '.join(f'run {i + 1}' for i in range(len(runs)))
          + ' | median of the runs | goal | goal met |')
    print('|---|' + '---|' * (len(runs) + 3))
    for name in names:
        cells, medians, met = [], [], 0
        for r in runs:
            s = r[name]['ratio']
            medians.append(s['median'])
            met += bool((r[name]['goal'] or {}).get('met'))
            cells.append(f'{s["median"]:.2f}x ({s["min"]:.2f}–{s["max"]:.2f}){" unstable" if s["unstable"] else ""}')
        first = runs[0][name]
        mid = statistics.median(medians)
        print(f'| {first["ours"]} vs {first["peer"]} | ' + ' | '.join(cells) + f' | **{mid:.2f}x** | '
              f'{(first["goal"] or {}).get("text", "–")} | {met} of {len(runs)} runs |')
    dates = ', '.join(sorted({r[names[0]]['date'][:16] for r in runs}))
    m = runs[0][names[0]]['machine']
    print(f'\nMachine: {m["cpu"]}, {m["logical_cores"]} logical cores, {m["torch_threads"]} torch threads; '
          f'first result of each run written {dates} (UTC).')


def main(*folders):
    if len(folders) > 1:
        return runs_table(folders)
    folder = Path(folders[0] if folders else os.environ.get('BENCH_RESULTS_DIR') or
                  Path(__file__).resolve().parent / 'results')
    results = _load(folder)
    names = _names(results)
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
