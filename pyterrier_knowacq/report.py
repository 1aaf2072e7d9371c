"""``knowacq report``: each study claim, the paper's figure, ours, the p-value and a verdict, from result folders.

Reads result folders only (never model code). Study-specific claims live in ``report_<study>.py`` modules that
expose ``claims(folder) -> list[dict]`` with keys ``study, claim, paper, ours, p_value, verdict, detail``.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Dict, List

from ._util import KnowacqError, atomic_write_json, atomic_write_text

COLUMNS = ['study', 'claim', 'paper', 'ours', 'p_value', 'verdict']


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


def markdown(claims: List[Dict]) -> str:
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    for c in claims:
        lines.append('| ' + ' | '.join(_fmt(c.get(k)) for k in COLUMNS) + ' |')
    return '\n'.join(lines) + '\n'


def write_report(folders) -> str:
    """Write ``report.md`` / ``report.json`` into each folder that has study claims; return the combined markdown."""
    parts = []
    for folder in folders:
        claims = study_claims(folder)
        meta = read_meta(folder)
        text = f'## {meta.get("experiment")} ({meta.get("study")})\n\n'
        text += markdown(claims) if claims else '_This study declares no claims; see aggregated.csv._\n'
        details = [f'- **{c["claim"]}**: {c["detail"]}' for c in claims if c.get('detail')]
        if details:
            text += '\n' + '\n'.join(details) + '\n'
        if claims:
            atomic_write_json(Path(folder) / 'report.json', {'claims': claims})
            atomic_write_text(Path(folder) / 'report.md', text)
        parts.append(text)
    return '\n'.join(parts)
