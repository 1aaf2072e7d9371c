"""The leaderboard's study pages: experiments grouped by meta.json's study, with their claims, plots (each once, SVG
first) and the analysis tables (numbers formatted as the page shows them).

Example::

    pages = studies(experiments, systems)   # [{'name': 'multistage', 'page': 'studies/multistage-1a2b.html', ...}]
"""
from __future__ import annotations

import math
import re
import struct
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pandas as pd

from .. import results
from .data import ALPHA, ExperimentData, short_hash, slugify

__all__ = ['studies', 'seed_entries', 'plot_entries', 'image_size', 'format_number', 'TABLE_ROWS', 'ALPHA_TEXT']


# --- studies ----------------------------------------------------------------------------------------------------

def studies(experiments: List[ExperimentData], systems: List[Dict]) -> List[Dict]:
    """Study pages: experiments grouped by meta.json's study, with their claims, plots (each once) and tables."""
    by_study: Dict[str, Dict] = {}
    for exp in experiments:
        name = str(exp.meta.get('study') or 'unspecified')
        st = by_study.setdefault(name, {'name': name, 'id': slugify(name) + '-' + short_hash(name, 4),
                                        'experiments': []})
        st['experiments'].append({
            'experiment': exp.meta['experiment'], 'source_id': exp.source_id, 'origin': exp.label,
            'description': str(exp.meta.get('description') or ''), 'claims': exp.claims,
            'plots': plot_entries(exp),
            'tables': [{'name': t, 'file': f'sources/{exp.source_id}/{results.TABLES}/{t}',
                        'frame': _small_table(exp.folder / results.TABLES / t)} for t in exp.tables],
            'report_md': exp.report_md,
            'seeds': seed_entries(exp.seed_variance),
            'systems': [s for s in systems if s['source_id'] == exp.source_id]})
    for st in by_study.values():
        st['page'] = f'studies/{st["id"]}.html'
    return sorted(by_study.values(), key=lambda s: s['name'])


def seed_entries(rows: List[Dict]) -> Optional[Dict]:
    """The seed-variance table of a study page: the seeds as columns, one row per system and query set, each cell
    formatted to 4 decimals (None when the experiment ran one seed)."""
    if not rows:
        return None
    seeds = sorted({str(s) for r in rows for s in r['values']}, key=lambda s: (len(s), s))
    out = []
    for r in rows:
        values = {str(k): v for k, v in r['values'].items()}
        sd = r.get('sd')
        out.append({'system': str(r.get('system', '')), 'collection': str(r.get('collection', '')),
                    'queries': r.get('queries'), 'mean': float(r['mean']),
                    'sd': float(sd) if isinstance(sd, (int, float)) else None,
                    'cells': [float(values[s]) if isinstance(values.get(s), (int, float)) else None for s in seeds]})
    return {'seeds': seeds, 'rows': out}


PLOT_PREFERENCE = ('.svg', '.png')


def plot_entries(exp: ExperimentData) -> List[Dict]:
    """Each plot once (the SVG when there is one: it stays sharp when enlarged), the other formats as downloads, and
    its aspect ratio (a wide plot gets the full width of the page)."""
    stems: Dict[str, List[str]] = {}
    for p in exp.plots:
        stems.setdefault(Path(p).stem, []).append(p)
    out = []
    for stem in sorted(stems):
        files = sorted(stems[stem], key=lambda f: PLOT_PREFERENCE.index(Path(f).suffix) if Path(f).suffix in PLOT_PREFERENCE else 9)
        shown = files[0]
        size = image_size(exp.folder / results.PLOTS / shown)
        out.append({'name': stem, 'src': f'sources/{exp.source_id}/{results.PLOTS}/{shown}', 'file': shown,
                    'others': [{'name': f, 'src': f'sources/{exp.source_id}/{results.PLOTS}/{f}'} for f in files[1:]],
                    'width': size[0] if size else None, 'height': size[1] if size else None,
                    'wide': bool(size and size[1] and size[0] / size[1] >= 1.6)})
    return out


def image_size(path: Path) -> Optional[Tuple[float, float]]:
    """Width and height of a PNG (pixels) or an SVG (its width/height or viewBox), or None."""
    try:
        with open(path, 'rb') as f:
            head = f.read(4096)
    except OSError:
        return None
    if head[:8] == b'\x89PNG\r\n\x1a\n' and len(head) >= 24:
        w, h = struct.unpack('>II', head[16:24])
        return float(w), float(h)
    text = head.decode('utf-8', errors='replace')
    tag = re.search(r'<svg\b[^>]*>', text, re.S)
    if not tag:
        return None
    attrs = tag.group(0)
    w = re.search(r'\bwidth="([\d.]+)', attrs)
    h = re.search(r'\bheight="([\d.]+)', attrs)
    if w and h:
        return float(w.group(1)), float(h.group(1))
    vb = re.search(r'viewBox="[\d.\s-]*?([\d.]+)\s+([\d.]+)"', attrs)
    return (float(vb.group(1)), float(vb.group(2))) if vb else None


_P_COLUMN = re.compile(r'(?:^|[_\s-])p(?:$|[_\s-])|p[-_\s]?val|^p_|_p$|pvalue', re.I)
TABLE_ROWS = 200


def format_number(column: str, text: str) -> str:
    """A CSV value as the study page shows it: 2 significant digits for p-values, 4 decimals for other non-integers
    (tiny values in 2-digit scientific notation), integers and text unchanged."""
    if text == '' or not re.fullmatch(r'[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?', text.strip()):
        return text
    value = float(text)
    if not math.isfinite(value):
        return text
    if _P_COLUMN.search(column):
        return f'{value:.2g}'
    if re.fullmatch(r'[-+]?\d+', text.strip()):
        return text
    if value != 0 and abs(value) < 1e-4:
        return f'{value:.2e}'
    return f'{value:.4f}'


def _small_table(path, limit: int = TABLE_ROWS) -> Dict:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001 - shown on the page instead of the table
        return {'columns': [], 'rows': [], 'error': f'{path.name} cannot be read as CSV: {e}', 'total': 0}
    columns = [str(c) for c in df.columns]
    head = df.head(limit).values.tolist()
    numeric = []
    for k, col in enumerate(columns):
        vals = [r[k] for r in head if r[k] != '']
        numeric.append(bool(vals) and all(re.fullmatch(r'[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|-inf',
                                                       v.strip(), re.I) for v in vals))
    rows = [[{'v': v, 'text': format_number(col, v) if numeric[k] else v} for k, (col, v) in enumerate(zip(columns, r))]
            for r in head]
    return {'columns': columns, 'numeric': numeric, 'rows': rows, 'error': None, 'total': len(df),
            'wide': len(columns) > 8}


ALPHA_TEXT = f'{ALPHA:g}'
