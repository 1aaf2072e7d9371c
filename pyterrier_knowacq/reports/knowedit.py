"""The knowledge-editing study's claims (``study: knowedit``): written by :func:`~pyterrier_knowacq.analysis.knowedit.
run_knowedit` into ``tables/knowedit_claims.json`` in the report format (study, id, claim, paper, ours, p_value,
verdict, detail and :func:`~pyterrier_knowacq.analysis.stats.claim_fields`), read here like every study's claims.

Example::

    from pyterrier_knowacq.reports.knowedit import claims
    for c in claims('results/knowedit'):
        print(c['claim'], c['verdict'])
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

__all__ = ['claims']


def claims(folder) -> List[Dict]:
    """The study's claims; a folder without the table (the knowedit section failed or was not run) has none."""
    path = Path(folder) / 'tables' / 'knowedit_claims.json'
    if not path.exists():
        return []
    found = json.loads(path.read_text(encoding='utf-8'))
    return [dict(c, study=c.get('study', 'knowedit')) for c in found]
