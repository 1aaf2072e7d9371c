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
from pathlib import Path
from typing import Dict, List, Optional

from .leaderboard_data import ALPHA, TAG_KEYS


def assets_dir() -> Path:
    """The folder with ``templates/`` and ``static/`` (``$KNOWACQ_LEADERBOARD_ASSETS``, packaged, or the repo's)."""
    here = Path(__file__).resolve().parent
    for cand in (os.environ.get('KNOWACQ_LEADERBOARD_ASSETS'), here / 'leaderboard_assets', here.parent / 'leaderboard'):
        if cand and (Path(cand) / 'templates' / 'base.html').is_file():
            return Path(cand)
    raise FileNotFoundError('leaderboard templates not found (looked in $KNOWACQ_LEADERBOARD_ASSETS, '
                            f'{here / "leaderboard_assets"}, {here.parent / "leaderboard"}); reinstall pyterrier_knowacq')


def script_json(obj) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>``, ``&`` characters."""
    text = json.dumps(json_clean(obj), ensure_ascii=False, sort_keys=True, allow_nan=False)
    for ch, rep in (('<', '\\u003c'), ('>', '\\u003e'), ('&', '\\u0026'), ('\u2028', '\\u2028'), ('\u2029', '\\u2029')):
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
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return '–'
    return f'{p:.2e}' if p < 1e-3 else f'{p:.3f}'


def sort_value(value) -> str:
    return '' if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))


def environment():
    import jinja2
    from markupsafe import Markup
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(assets_dir() / 'templates')),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=fmt, fmt_p=fmt_p, sortv=sort_value,
                       script_json=lambda obj: Markup(script_json(obj)))
    env.globals.update(TAG_KEYS=TAG_KEYS, ALPHA=ALPHA, sig_title=sig_title, sig_mark=sig_mark,
                       rank_title=rank_title, verdict_class=verdict_class, claim_ci=claim_ci)
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
    if v.startswith('equivalent'):
        return 'v-good' if kind in (None, 'equivalence') else 'v-bad'
    if v.startswith('different'):
        return 'v-bad'
    if v.startswith(('not ', 'contradict', 'refuted', 'opposite', 'failed', 'no ')) or v in ('no', 'fail'):
        return 'v-bad'
    if v.startswith(('supported', 'reproduced', 'confirmed', 'yes', 'pass')):
        return 'v-good'
    return 'v-open'


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


def rank_title(cell: Dict, names: Dict[str, str]) -> str:
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
    header = ['table', 'dataset', 'collection', 'system_id', 'system', 'experiment', *TAG_KEYS, 'rank', 'measure',
              'value', 'best', 'measure_rank', 'p_vs_group_leader_holm', 'baseline', 'vs_baseline', 'p_value',
              'p_value_corrected', 'queries_better', 'queries_worse']
    rows = []
    for t in tables:
        for r in t['rows']:
            s = r['system']
            baseline = s['collections'][t['collection']]['baseline']
            for m in t['measures']:
                c, sig = r['cells'][m], r['cells'][m]['vs_baseline'] or {}
                vs = 'baseline' if s['is_baseline'] else ({1: 'better', -1: 'worse', 0: 'n.s.'}.get(sig.get('direction'))
                                                          if sig else '')
                rows.append([t['id'], t['dataset'], t['collection'], s['id'], s['name'], s['experiment'],
                             *[s['tags'].get(k, '') for k in TAG_KEYS], r['rank'], m, c['value'], c['best'],
                             c['rank'], c['p_vs_leader_holm'], baseline, vs, sig.get('p'), sig.get('p_corrected'),
                             sig.get('better'), sig.get('worse')])
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
    return {k: v for k, v in s.items() if not k.startswith('_')} | {
        'command': meta.get('command'), 'seed': meta.get('seed'), 'git_commit': meta.get('git_commit'),
        'versions': meta.get('versions'), 'created': meta.get('created'), 'wall_time_s': meta.get('wall_time_s'),
        'config': meta.get('config')}


def public_table(t: Dict) -> Dict:
    return {**{k: v for k, v in t.items() if k != 'rows'},
            'rows': [{'system_id': r['system']['id'], 'system': r['system']['name'], 'rank': r['rank'],
                      'cells': r['cells']} for r in t['rows']]}
