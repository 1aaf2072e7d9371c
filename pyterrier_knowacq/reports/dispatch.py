"""``knowacq report``: each study claim, the paper's figure, ours, the p-value and a verdict, from result folders.

Reads result folders only (never model code). Study-specific claims live in ``report_<study>.py`` modules that
expose ``claims(folder) -> list[dict]`` with keys ``study, id, claim, paper, ours, p_value, verdict, detail`` and the
statistics of :func:`pyterrier_knowacq.analysis.stats.claim_fields`: ``kind`` (equivalence | greater | less),
``diff, ci_low, ci_high`` (mean paired difference a - b and its 95% interval), ``margin`` (of the equivalence test),
``mde`` (minimum detectable effect at 80% power), ``underpowered``, ``test``, ``p_tost``, ``n``, ``paper_diff``,
``interval``. Verdicts use one vocabulary (``stats.verdict``): "equivalent within ±m", "different", "supported
(higher|lower)", "different, opposite direction", "inconclusive", "not measured".
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Dict, List

from .._util import KnowacqError, atomic_write_json, atomic_write_text
from ..analysis import stats

COLUMNS = ['claim', 'paper', 'ours', 'diff [95% CI]', 'margin', 'MDE (80%)', 'p_value', 'verdict']


def read_meta(folder) -> Dict:
    meta_file = Path(folder) / 'meta.json'
    if not meta_file.exists():
        raise KnowacqError(f'{folder} is not a results folder (no meta.json); give a folder written by `knowacq run`')
    return json.loads(meta_file.read_text())


def study_claims(folder) -> List[Dict]:
    meta = read_meta(folder)
    study = meta.get('study', 'spine')
    try:
        module = importlib.import_module(f'pyterrier_knowacq.report_{study}')
    except ImportError:
        return []
    return list(module.claims(folder))


def _fmt(value) -> str:
    if value is None:
        return 'n/a'
    if isinstance(value, float):
        return f'{value:.4g}' if abs(value) < 1e-3 and value != 0 else f'{value:.4f}'
    return str(value).replace('|', '\\|').replace('\n', ' ')


def _cell(c: Dict, column: str) -> str:
    if column == 'diff [95% CI]':
        return stats.fmt_interval(c.get('diff'), c.get('ci_low'), c.get('ci_high'))
    if column == 'margin':
        return 'n/a' if c.get('margin') is None else f'±{c["margin"]:g}'
    if column == 'MDE (80%)':
        if c.get('mde') is None:
            return 'n/a'
        return f'{c["mde"]:.3f}' + (' (underpowered)' if c.get('underpowered') else '')
    return _fmt(c.get(column))


def markdown(claims: List[Dict]) -> str:
    """The claims as a Markdown table (difference with its interval, margin, MDE and underpowered flag, verdict)."""
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    for c in claims:
        lines.append('| ' + ' | '.join(_cell(c, k) for k in COLUMNS) + ' |')
    return '\n'.join(lines) + '\n'


def _seed_section(folder, meta) -> str:
    """The study's seed-variance table (mean ± sd per seed) when the experiment ran several seeds."""
    try:
        module = importlib.import_module(f'pyterrier_knowacq.report_{meta.get("study", "spine")}')
    except ImportError:
        return ''
    fn = getattr(module, 'seed_markdown', None)
    section = fn(folder) if fn is not None and meta.get('seeds') else ''
    return '\n' + section + '\n' if section else ''


def write_report(folders) -> str:
    """Write ``report.md`` / ``report.json`` into each folder that has study claims; return the combined markdown."""
    parts = []
    for folder in folders:
        claims = study_claims(folder)
        meta = read_meta(folder)
        text = f'## {meta.get("experiment")} ({meta.get("study")})\n\n'
        text += markdown(claims) if claims else '_This study declares no claims; see aggregated.csv._\n'
        details = [f'- **{c["claim"]}**: {c["detail"]}' + (f' (test: {c["test"]})' if c.get('test') else '')
                   for c in claims if c.get('detail')]
        if details:
            text += '\n' + '\n'.join(details) + '\n'
        method = stats.method_note(stats.claim_settings(meta)) if claims else ''
        if method:
            text += '\n' + method + '\n'
        text += _seed_section(folder, meta)
        if claims:
            atomic_write_json(Path(folder) / 'report.json', {'claims': claims, 'method': method})
            atomic_write_text(Path(folder) / 'report.md', text)
        parts.append(text)
    return '\n'.join(parts)
