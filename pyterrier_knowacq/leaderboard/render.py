"""Rendering the leaderboard: Jinja2 templates with autoescaping, inline SVG charts, CSV and JSON exports.

Every string from a results folder reaches the HTML through autoescaping (``&<>"'`` escaped in text and
attributes); JSON embedded in ``<script>`` has ``<``, ``>``, ``&`` (and U+2028/9) written as ``\\u003c`` etc.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from html import escape
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional

from .data import ALPHA, TAG_KEYS


def assets_dir() -> Path:
    """The folder with ``templates/`` and ``static/`` (``$KNOWACQ_LEADERBOARD_ASSETS``, packaged, or the repo's)."""
    packaged = Path(str(resources.files('pyterrier_knowacq.leaderboard') / 'assets'))
    for cand in (os.environ.get('KNOWACQ_LEADERBOARD_ASSETS'), packaged):
        if cand and (Path(cand) / 'templates' / 'base.html').is_file():
            return Path(cand)
    raise FileNotFoundError('leaderboard templates not found (looked in $KNOWACQ_LEADERBOARD_ASSETS and '
                            f'{packaged}); reinstall pyterrier_knowacq')


def script_json(obj) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>``, ``&``, ``'`` characters."""
    text = json.dumps(json_clean(obj), ensure_ascii=False, sort_keys=True, allow_nan=False)
    for ch, rep in (('<', '\\u003c'), ('>', '\\u003e'), ('&', '\\u0026'), ("'", '\\u0027'), ('\u2028', '\\u2028'),
                    ('\u2029', '\\u2029')):
        text = text.replace(ch, rep)
    return text


def json_clean(obj):
    """Replace NaN / infinity (invalid in strict JSON) by None, recursively; other values unchanged."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if hasattr(obj, 'item'):  # numpy scalars
        return json_clean(obj.item())
    return str(obj)


def fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '–'
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    return str(value)


def fmt_p(p) -> str:
    """A p-value to 2 significant digits: ``0.046``, ``0.2``, ``3.6e-08``."""
    if p is None or isinstance(p, bool) or not isinstance(p, (int, float)) or math.isnan(p):
        return '–'
    return f'{float(p):.2g}'


def fmt_seconds(value) -> str:
    """Wall time for people: ``0.8 s``, ``42 s``, ``12 min``, ``1.5 h``."""
    if value is None or not isinstance(value, (int, float)) or math.isnan(value):
        return '–'
    if value < 10:
        return f'{value:.2g} s' if value < 1 else f'{value:.1f} s'
    if value < 120:
        return f'{value:.0f} s'
    if value < 7200:
        return f'{value / 60:.0f} min'
    return f'{value / 3600:.1f} h'


def fmt_rate(value) -> str:
    """Queries per second, 2-3 significant digits (``1.2k``)."""
    if value is None or not isinstance(value, (int, float)) or math.isnan(value):
        return '–'
    if value >= 1000:
        return f'{value / 1000:.3g}k'
    return f'{value:.3g}' if value >= 1 else f'{value:.2g}'


def fmt_claim_value(value) -> str:
    """A claim's paper / ours value: numbers with 4 decimals, text unchanged, ``–`` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '–'
    if isinstance(value, float):
        return f'{value:.4f}'
    return str(value)


def sort_value(value) -> str:
    return '' if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))


def environment():
    import jinja2
    from markupsafe import Markup
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(assets_dir() / 'templates')),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=fmt, fmt_p=fmt_p, sortv=sort_value, seconds=fmt_seconds, rate=fmt_rate,
                       claim_value=fmt_claim_value, script_json=lambda obj: Markup(script_json(obj)))
    env.globals.update(TAG_KEYS=TAG_KEYS, ALPHA=ALPHA, sig_title=sig_title, sig_mark=sig_mark,
                       rank_title=rank_title, verdict_class=verdict_class, claim_ci=claim_ci,
                       table_sig_title=table_sig_title, number_like=number_like)
    return env


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def claim_ci(claim: Dict) -> str:
    """A claim's mean difference with its 95% interval, ``+0.080 [+0.031, +0.130]`` (``–`` when not computed)."""
    diff, lo, hi = claim.get('diff'), claim.get('ci_low'), claim.get('ci_high')
    if not _finite(diff):
        return '–'
    return f'{diff:+.3f}' + (f' [{lo:+.3f}, {hi:+.3f}]' if _finite(lo) and _finite(hi) else '')


def verdict_class(verdict, kind=None) -> str:
    """A CSS class for a claim's verdict: good (supported / reproduced; "equivalent within ±m" for an "≈" claim),
    bad (different / contradicted / not ...; "equivalent" for a directional claim), or open (inconclusive)."""
    v = str(verdict or '').strip().lower()
    if not v or v.startswith(('not measured', 'n/a', 'inconclusive')):
        return 'v-open'
    if v.startswith('equivalent'):
        return 'v-good' if kind in (None, 'equivalence') else 'v-bad'
    if v.startswith('different'):
        return 'v-bad'
    if v.startswith(('not ', 'contradict', 'refuted', 'opposite', 'failed', 'no ')) or v in ('no', 'fail'):
        return 'v-bad'
    if v.startswith(('supported', 'reproduced', 'confirmed', 'yes', 'pass')):
        return 'v-good'
    return 'v-open'


def number_like(value) -> bool:
    """A claim value that is a number (sorted and aligned as one) rather than a sentence."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def table_sig_title(sig: Optional[Dict], baseline_name: str) -> str:
    """The hover text of an overview cell's marker against the table's baseline."""
    if not sig:
        return ''
    verdict = {1: 'significantly better than', -1: 'significantly worse than'}.get(
        sig['direction'], 'not significantly different from')
    return (f'{verdict} {baseline_name} (paired t-test over {sig["n"]} shared queries, Holm-corrected p = '
            f'{fmt_p(sig["p_holm"])}; better on {sig["better"]}, worse on {sig["worse"]})')


def sig_mark(sig: Optional[Dict]) -> str:
    if not sig:
        return ''
    return {1: '▲', -1: '▼'}.get(sig['direction'], '')


def sig_title(sig: Optional[Dict], baseline: Optional[str]) -> str:
    if not sig or baseline is None:
        return ''
    p = sig['p_corrected'] if sig['p_corrected'] is not None else sig['p']
    verdict = {1: 'significantly better than', -1: 'significantly worse than'}.get(sig['direction'],
                                                                                 'not significantly different from')
    details = ([] if p is None else [f'p = {fmt_p(p)}']) + \
        ([] if sig['better'] is None else [f'better on {sig["better"]} queries, worse on {sig["worse"]}'])
    return f'{verdict} the baseline {baseline}' + (f' ({"; ".join(details)})' if details else '')


def rank_title(cell: Optional[Dict], names: Dict[str, str]) -> str:
    if not cell:
        return 'not measured by this system\'s experiment'
    if cell.get('rank') is None:
        return 'no rank: no per-query values'
    if cell.get('p_vs_leader_holm') is None:
        return f'rank {cell["rank"]}: best of its tie group'
    return (f'rank {cell["rank"]}: not significantly different from {names.get(cell["leader"], "?")} '
            f'(Holm-corrected p = {fmt_p(cell["p_vs_leader_holm"])})')


MAX_BARS = 300


def difference_chart(entries: List[Dict], measure: str, baseline: str, width: int = 760, height: int = 220) -> str:
    """An inline SVG bar chart of per-query differences (system - baseline), sorted; every label escaped."""
    points = [(e['qid'], e['query'], e['values'][measure]['difference']) for e in entries
              if e['values'].get(measure, {}).get('difference') is not None]
    if not points:
        return ''
    points.sort(key=lambda p: -p[2])
    top = max(max(abs(p[2]) for p in points), 1e-9)
    left, right, pad_top, pad_bottom = 48, 10, 12, 22
    plot_w, plot_h = width - left - right, height - pad_top - pad_bottom
    mid = pad_top + plot_h / 2
    bar_w = plot_w / len(points)
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
             f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(f"per-query {measure} difference to {baseline}")}">',
             f'<line x1="{left}" x2="{width - right}" y1="{mid:.1f}" y2="{mid:.1f}" class="axis"/>']
    for frac in (1, 0.5, -0.5, -1):
        y = mid - frac * plot_h / 2
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick">{frac * top:+.2f}</text>')
    parts.append(f'<text x="{left - 6}" y="{mid + 4:.1f}" class="tick">0</text>')
    if len(points) > MAX_BARS:  # many queries: one filled outline instead of a bar (and a <title>) per query
        xs = [left + (i + 0.5) * bar_w for i in range(len(points))]
        ys = [mid - p[2] / top * plot_h / 2 for p in points]
        line = ' '.join(f'{x:.1f},{y:.1f}' for x, y in zip(xs, ys))
        parts.append(f'<polygon points="{xs[0]:.1f},{mid:.1f} {line} {xs[-1]:.1f},{mid:.1f}" class="area"/>')
        points_drawn = []
    else:
        points_drawn = points
    for i, (qid, query, diff) in enumerate(points_drawn):
        h = abs(diff) / top * plot_h / 2
        y = mid - h if diff >= 0 else mid
        cls = 'pos' if diff > 0 else 'neg' if diff < 0 else 'zero'
        label = f'query {qid}' + (f' ({query})' if query else '') + f': {diff:+.4f}'
        parts.append(f'<rect x="{left + i * bar_w + 0.5:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
                     f'height="{max(h, 0.75):.1f}" class="{cls}"><title>{escape(label)}</title></rect>')
    better = sum(1 for p in points if p[2] > 0)
    worse = sum(1 for p in points if p[2] < 0)
    parts.append(f'<text x="{left}" y="{height - 5}" class="caption">{len(points)} queries, sorted by difference: '
                 f'{better} better, {worse} worse, {len(points) - better - worse} equal</text></svg>')
    return ''.join(parts)


def csv_text(header: List[str], rows: List[List]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(header)
    for row in rows:
        writer.writerow(['' if v is None else v for v in row])
    return buf.getvalue()


def overview_csv(tables: List[Dict]) -> str:
    """One row per table x system x measure: value (blank when the system's experiment did not measure it), tie-group
    rank, the table's baseline and the marker against it, and the experiment's own baseline test (pt.Experiment)."""
    header = ['table', 'dataset', 'collection', 'system_id', 'system', 'experiment', *TAG_KEYS, 'rank', 'measure',
              'value', 'best', 'measure_rank', 'p_vs_group_leader_holm', 'table_baseline', 'vs_baseline',
              'p_vs_baseline', 'p_vs_baseline_holm', 'queries_better', 'queries_worse', 'experiment_baseline',
              'vs_experiment_baseline', 'p_value', 'p_value_corrected', 'params', 'trained_on', 'train_wall_s',
              'seconds', 'queries_per_s']
    rows = []
    for t in tables:
        names = {r['system']['id']: r['system']['name'] for r in t['rows']}
        for r in t['rows']:
            s = r['system']
            coll = s['collections'][t['collection']]
            ctx = coll['context']
            for m in t['measures']:
                c = r['cells'][m]
                if c is None:
                    rows.append([t['id'], t['dataset'], t['collection'], s['id'], s['name'], s['experiment'],
                                 *[s['tags'].get(k, '') for k in TAG_KEYS], r['rank'], m] + [None] * 4 +
                                [names.get(t['baseline'], '')] + [None] * 9 +
                                [ctx['params'], ctx['trained_on'], ctx['train_wall_s'], ctx['seconds'], ctx['qps']])
                    continue
                sig = c['vs_baseline'] or {}
                vs = 'baseline' if s['id'] == t['baseline'] else (
                    {1: 'better', -1: 'worse', 0: 'n.s.'}.get(sig.get('direction')) if sig else '')
                own = c['vs_experiment_baseline'] or {}
                own_vs = 'baseline' if s['is_baseline'] else (
                    {1: 'better', -1: 'worse', 0: 'n.s.'}.get(own.get('direction')) if own else '')
                rows.append([t['id'], t['dataset'], t['collection'], s['id'], s['name'], s['experiment'],
                             *[s['tags'].get(k, '') for k in TAG_KEYS], r['rank'], m, c['value'], c['best'],
                             c['rank'], c['p_vs_leader_holm'], names.get(t['baseline'], ''), vs, sig.get('p'),
                             sig.get('p_holm'), sig.get('better'), sig.get('worse'), coll['baseline'], own_vs,
                             own.get('p'), own.get('p_corrected'), ctx['params'], ctx['trained_on'],
                             ctx['train_wall_s'], ctx['seconds'], ctx['qps']])
    return csv_text(header, rows)


def systems_csv(systems: List[Dict]) -> str:
    header = ['id', 'name', 'experiment', 'source', *TAG_KEYS, 'pipeline', 'baseline', 'command', 'seed', 'git_commit',
              'wall_time_s', 'created', 'page']
    rows = [[s['id'], s['name'], s['experiment'], s['source_id'], *[s['tags'].get(k, '') for k in TAG_KEYS],
             s['pipeline'], s['is_baseline'], s['_exp'].meta.get('command'), s['_exp'].meta.get('seed'),
             s['_exp'].meta.get('git_commit'), s['_exp'].meta.get('wall_time_s'), s['_exp'].meta.get('created'),
             s['page']] for s in systems]
    return csv_text(header, rows)


def perquery_rows(system: Dict) -> List[List]:
    rows = []
    for cname, c in system['collections'].items():
        for e in c['perquery']:
            for m, v in e['values'].items():
                rows.append([system['id'], system['name'], system['experiment'], cname, e['qid'], e['query'], m,
                             v['value'], c['baseline'], v['baseline'], v['difference']])
    return rows


PERQUERY_HEADER = ['system_id', 'system', 'experiment', 'collection', 'qid', 'query', 'measure', 'value', 'baseline',
                   'baseline_value', 'difference']


def claims_csv(studies: List[Dict]) -> str:
    keys = ['study', 'claim', 'paper', 'ours', 'p_value', 'verdict', 'detail', 'kind', 'diff', 'ci_low', 'ci_high',
            'margin', 'mde', 'underpowered', 'test']
    rows = [[st['name'], e['experiment'], *[c.get(k) for k in keys]] for st in studies for e in st['experiments']
            for c in e['claims']]
    return csv_text(['study_page', 'experiment', *keys], rows)


def public_system(s: Dict) -> Dict:
    """A system as exported to JSON (no internal references)."""
    meta = s['_exp'].meta
    collections = {c: {k: v for k, v in coll.items() if k != 'perquery'} | {'perquery_csv': f'data/perquery/{s["id"]}.csv'}
                   for c, coll in s['collections'].items()}   # per-query values: in the CSVs, not repeated here
    return {k: v for k, v in s.items() if not k.startswith('_')} | {'collections': collections} | {
        'command': meta.get('command'), 'seed': meta.get('seed'), 'git_commit': meta.get('git_commit'),
        'versions': meta.get('versions'), 'created': meta.get('created'), 'wall_time_s': meta.get('wall_time_s'),
        'config': meta.get('config'), 'platform': meta.get('platform')}


def public_table(t: Dict) -> Dict:
    return {**{k: v for k, v in t.items() if k not in ('rows', 'comparisons')},
            'rows': [{'system_id': r['system']['id'], 'system': r['system']['name'], 'rank': r['rank'],
                      'cells': r['cells']} for r in t['rows']],
            'comparisons': t['comparisons']}


def table_script(t: Dict) -> Dict:
    """What the overview's baseline chooser needs: ``{m: measures, names, b: {baseline: {measure: {system: [direction,
    p_holm, better, worse, n]}}}}`` (compact: the page's JSON)."""
    names = {r['system']['id']: f'{r["system"]["name"]} ({r["system"]["experiment"]})' for r in t['rows']}
    return {'measures': t['measures'], 'names': names, 'default': t['baseline'],
            'b': {base: {m: {sid: [c['direction'], c['p_holm'], c['better'], c['worse'], c['n']]
                             for sid, c in per.items()} for m, per in by_m.items()}
                  for base, by_m in t['comparisons'].items()}}


def scatter_chart(t: Dict, width: int = 760, height: int = 320) -> str:
    """Quality vs cost of one table as a static SVG: x = milliseconds per query from the run's timings (log scale),
    y = the table's primary measure; the Pareto front of the fully timed systems (nothing both cheaper and better) is
    drawn and labelled, as is the best system. Runs read from a precomputed first stage are hollow: their first
    stage's cost is not in the timing, so they are left out of the front."""
    m = t['primary']
    pts = []
    for r in t['rows']:
        s = r['system']
        ctx = s['collections'][t['collection']]['context']
        cell = r['cells'][m]
        if cell is None or cell.get('value') is None or not ctx.get('ms_per_query'):
            continue
        pts.append((ctx['ms_per_query'], cell['value'], s['name'], s['experiment'], bool(ctx['precomputed_runs'])))
    if len(pts) < 2:
        return ''
    left, right, top, bottom = 58, 28, 14, 44
    pw, ph = width - left - right, height - top - bottom
    xs = [math.log10(p[0]) for p in pts]
    x0, x1 = math.floor(min(xs)), math.ceil(max(xs))
    if x1 == x0:
        x1 = x0 + 1
    ys = [p[1] for p in pts]
    y0, y1 = min(ys), max(ys)
    pad = max((y1 - y0) * 0.08, 0.01)
    y0, y1 = max(0.0, y0 - pad), y1 + pad

    def X(v):
        return left + (math.log10(v) - x0) / (x1 - x0) * pw

    def Y(v):
        return top + (1 - (v - y0) / (y1 - y0)) * ph
    label = f'{m} against milliseconds per query, {t["collection"]}'
    parts = [f'<svg class="chart scatter" role="img" viewBox="0 0 {width} {height}" width="100%" '
             f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(label)}">']
    for e in range(x0, x1 + 1):
        x = X(10 ** e)
        ms = 10 ** e
        text = f'{ms / 1000:g} s' if ms >= 1000 else (f'{ms:g} ms' if ms >= 1 else f'{ms * 1000:g} µs')
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" class="grid"/>'
                     f'<text x="{x:.1f}" y="{top + ph + 16}" class="tick mid">{escape(text)}</text>')
    for k in range(5):
        v = y0 + (y1 - y0) * k / 4
        y = Y(v)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick">{v:.3f}</text>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" class="axis"/>'
                 f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="axis"/>'
                 f'<text x="{left + pw / 2:.1f}" y="{height - 6}" class="caption mid">milliseconds per query '
                 f'(log scale; lower is cheaper)</text>'
                 f'<text x="14" y="{top + ph / 2:.1f}" class="caption mid" transform="rotate(-90 14 {top + ph / 2:.1f})">'
                 f'{escape(m)}</text>')
    front, best = [], -1.0   # only over fully timed systems: a precomputed first stage's cost is unknown
    for p in sorted((p for p in pts if not p[4]), key=lambda p: (p[0], -p[1])):
        if p[1] > best:
            front.append(p)
            best = p[1]
    if len(front) > 1:
        line = ' '.join(f'{X(p[0]):.1f},{Y(p[1]):.1f}' for p in front)
        parts.append(f'<polyline points="{line}" class="front"/>')
    on_front = {id(p) for p in front}
    for p in sorted(pts, key=lambda p: id(p) in on_front):
        cls = 'pt' + (' hollow' if p[4] else '') + (' front' if id(p) in on_front else '')
        tip = (f'{p[2]} ({p[3]}): {m} {p[1]:.4f}, {p[0]:.3g} ms per query'
               + ('; first stage read from a precomputed run (not timed)' if p[4] else ''))
        parts.append(f'<circle cx="{X(p[0]):.1f}" cy="{Y(p[1]):.1f}" r="5" class="{cls}"><title>{escape(tip)}</title></circle>')
    labelled = list(front) + [p for p in pts if p[1] == max(ys) and p not in front]
    for p in labelled:
        x, y = X(p[0]), Y(p[1])
        name = p[2] if len(p[2]) <= 30 else p[2][:29] + '…'
        anchor = 'end' if x > left + pw * 0.7 else 'start'
        dx = -8 if anchor == 'end' else 8
        parts.append(f'<text x="{x + dx:.1f}" y="{y - 7:.1f}" class="label" text-anchor="{anchor}">{escape(name)}</text>')
    parts.append('</svg>')
    return ''.join(parts)
