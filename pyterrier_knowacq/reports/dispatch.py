"""``knowacq report``: each study claim, the paper's figure, ours, the p-value and a verdict, from result folders.

Reads result folders only (never model code), through :mod:`pyterrier_knowacq.results`. Study-specific claims live
in ``reports/<study>.py`` modules (:mod:`.multistage`, :mod:`.knowacq`) that expose ``claims(folder) -> list[dict]`` with keys ``study, id, claim, paper, ours, p_value, verdict, detail`` and the
statistics of :func:`pyterrier_knowacq.analysis.stats.claim_fields`: ``kind`` (equivalence | greater | less),
``diff, ci_low, ci_high`` (mean paired difference a - b and its 95% interval), ``margin`` (of the equivalence test),
``mde`` (minimum detectable effect at 80% power), ``underpowered``, ``test``, ``p_tost``, ``n``, ``paper_diff``,
``interval``. Verdicts use one vocabulary (``stats.verdict``): "equivalent within ±m", "different", "supported
(higher|lower)", "different, opposite direction", "inconclusive", "not measured".
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional

from .. import results
from .._util import atomic_write_json, atomic_write_text
from ..analysis import stats

COLUMNS = ['claim', 'paper', 'ours', 'diff [95% CI]', 'margin', 'MDE (80%)', 'p_value', 'verdict']


def read_meta(folder) -> Dict:
    return results.read_meta(folder)


def _study_module(study) -> Optional[ModuleType]:
    """The ``reports/<study>.py`` module of a study's claims, or None (a study without claims, e.g. ``spine``)."""
    study = str(study)
    if not study.isidentifier() or study == 'dispatch':
        return None
    try:
        module = importlib.import_module(f'{__package__}.{study}')
    except ImportError:
        return None
    return module if callable(getattr(module, 'claims', None)) else None


def study_claims(folder) -> List[Dict]:
    meta = read_meta(folder)
    module = _study_module(meta.get('study', 'spine'))
    if module is None:
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
    module = _study_module(meta.get('study', 'spine'))
    fn = getattr(module, 'seed_markdown', None) if module is not None else None
    section = fn(folder) if fn is not None and meta.get('seeds') else ''
    return '\n' + section + '\n' if section else ''


def _seed_rows(folder, meta) -> List[Dict]:
    """The study's seed-variance rows for report.json (the leaderboard's study page shows them); [] without seeds."""
    module = _study_module(meta.get('study', 'spine'))
    fn = getattr(module, 'seed_table', None) if module is not None else None
    return fn(folder) if fn is not None and meta.get('seeds') else []


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
            variance = _seed_rows(folder, meta)
            atomic_write_json(Path(folder) / results.REPORT_JSON, {'claims': claims, 'method': method,
                                                                   **({'seed_variance': variance} if variance else {})})
            atomic_write_text(Path(folder) / results.REPORT_MD, text)
        parts.append(text)
    return '\n'.join(parts)
