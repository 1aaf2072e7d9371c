"""Data fingerprints for results written before meta.json recorded them, where git proves them.

The leaderboard keys each table by (dataset id, collection, data content fingerprint), so results that record no
fingerprint ("data unrecorded") never share a table with results that do, even on the same data: it cannot tell that
they are the same. For an embedded dataset it can be proven from git: when meta.json's ``git_commit`` is a clean commit
of this repository and the dataset's folder at that commit holds the same files, byte for byte (the same blob ids), as
the clean working tree today, the results were computed on today's data, so today's fingerprint is theirs. Nothing
else is filled in: a ``-dirty`` commit, an unknown commit, a dataset outside the repository (BEIR folder, irds:) or
a data folder that changed since stays unrecorded, and the reason is returned.

Example::

    meta, lines = backfill_meta(read_meta('results/old-multistage'))   # used by `knowacq leaderboard --pack`
    # lines: ['dl19: msmarco-passage data identical to git 64a6bfe, fingerprint 6c0118c9b394856b', ...]
"""
from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Tuple

__all__ = ['backfill_meta', 'repository_root']

#: the key that says where a backfilled fingerprint came from (the site shows the data as recorded either way)
SOURCE_KEY = 'dataset_fingerprint_source'


def _git(root: Path, *args: str) -> Optional[str]:
    try:
        out = subprocess.run(['git', '-C', str(root), *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def repository_root() -> Optional[Path]:
    """The git checkout this package runs from (None for an installed wheel or without git)."""
    here = Path(__file__).resolve().parent
    top = _git(here, 'rev-parse', '--show-toplevel')
    return Path(top.strip()) if top else None


def _identical_since(root: Path, commit: str, data_dir: Path) -> Tuple[bool, str]:
    """Whether ``data_dir`` at ``commit`` holds exactly the files the working tree holds today (and why not)."""
    rel = data_dir.resolve().relative_to(root.resolve()).as_posix()
    if _git(root, 'cat-file', '-e', f'{commit}^{{commit}}') is None:
        return False, f'commit {commit[:12]} is not in this repository'
    then = _git(root, 'ls-tree', '-r', commit, '--', rel)
    now = _git(root, 'ls-tree', '-r', 'HEAD', '--', rel)
    if not then:
        return False, f'{rel} is not in git at {commit[:12]}'
    if then != now:
        return False, f'{rel} changed between {commit[:12]} and HEAD'
    # the working tree must be HEAD's files exactly: nothing modified, untracked or ignored under the folder
    status = _git(root, 'status', '--porcelain', '--ignored', '--untracked-files=all', '--', rel)
    if status is None or status.strip():
        return False, f'{rel} differs from HEAD in the working tree'
    return True, ''


def backfill_meta(meta: Dict, root: Optional[Path] = None) -> Tuple[Dict, List[str]]:
    """A copy of ``meta`` where each collection without ``dataset_fingerprint`` gets the one git proves (see the module
    docstring), with ``dataset_fingerprint_source`` saying so; and one line per such collection (filled, or why not)."""
    from ..datasets.registry import DATASETS
    out = copy.deepcopy(meta)
    lines: List[str] = []
    missing = [c for c in out.get('collections') or [] if isinstance(c, dict) and not c.get('dataset_fingerprint')]
    if not missing:
        return out, lines
    commit = str(out.get('git_commit') or '')
    root = root or repository_root()
    for coll in missing:
        name, dataset = coll.get('name'), str(coll.get('dataset') or '')
        why = ''
        if not commit or commit.endswith('-dirty'):
            why = f'git commit {commit or "unrecorded"} is not a clean commit'
        elif root is None:
            why = 'not run from a git checkout'
        elif dataset not in DATASETS:
            why = f'dataset {dataset!r} is not embedded in the repository'
        else:
            data = DATASETS.get(dataset)()
            data_dir = getattr(data, 'root', None)
            ok, why = _identical_since(root, commit, Path(data_dir)) if data_dir else (False, 'no data folder')
            if ok:
                coll['dataset_fingerprint'] = data.fingerprint()
                coll.setdefault('dataset_name', dataset)
                coll[SOURCE_KEY] = (f'backfilled: the data folder at git {commit[:12]} is identical to the one '
                                    'whose fingerprint this is')
                lines.append(f'{name}: {dataset} data identical to git {commit[:7]}, fingerprint '
                             f'{coll["dataset_fingerprint"]}')
                continue
        lines.append(f'{name}: fingerprint left unrecorded ({why})')
    return out, lines
