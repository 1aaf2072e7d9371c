"""The work folder of a run that is not complete yet: each finished system's run, kept beside the results folder
under a key of what determines it (:func:`_system_key`), so that a failed or killed run resumes without running the
finished systems again.

Example::

    work = _Work(Path('results/quickstart'))          # results/.knowacq-work/quickstart/
    key = _system_key(pipeline, 'dl19', dataset, 'dl19', fingerprint, topics, models, None, 42, False)
    work.get('dl19', key) or work.put('dl19', key, 'BM25', 'bm25', res, seconds=1.2)
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd

from .._util import atomic_write_json
from ..results import RUN_SUFFIX, RUNS
from .components import StageContext

__all__: List[str] = []


#: the finished systems of unfinished runs, beside the results folders: <parent>/.knowacq-work/<results folder name>/
WORK_FOLDER = '.knowacq-work'


class _Work:
    """The finished systems of a run that is not complete yet, so that a failure or a kill loses none of them.

    ``<parent of the results>/.knowacq-work/<results folder name>/<collection>/runs/<slug>.<key>.res.gz`` and
    ``<collection>/manifest.json`` (``{key: {system, slug, seconds, run, finished}}``). The key is a hash of what
    determines the system's run (:func:`_system_key`); a later run with the same key reuses the file instead of
    running the system again. The folder is removed when the results folder is complete.
    """

    def __init__(self, out: Path):
        self.root = out.parent / WORK_FOLDER / out.name

    def _manifest_file(self, coll: str) -> Path:
        return self.root / coll / 'manifest.json'

    def manifest(self, coll: str) -> Dict[str, dict]:
        import json
        try:
            data = json.loads(self._manifest_file(coll).read_text(encoding='utf-8'))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, coll: str, key: str) -> Optional[dict]:
        entry = self.manifest(coll).get(key)
        if isinstance(entry, dict) and isinstance(entry.get('run'), str) and (self.root / coll / entry['run']).is_file():
            return entry
        return None

    def run_file(self, coll: str, entry: dict) -> Path:
        return self.root / coll / entry['run']

    def put(self, coll: str, key: str, name: str, slug: str, res: pd.DataFrame, seconds: float) -> dict:
        """Keep a finished system's run (written under a temporary name, then renamed) and record it."""
        import os
        import pyterrier as pt
        runs = self.root / coll / RUNS
        runs.mkdir(parents=True, exist_ok=True)
        rel = f'{RUNS}/{slug}.{key[:16]}{RUN_SUFFIX}'
        tmp = runs / f'.{slug}.{key[:16]}.{os.getpid()}.tmp{RUN_SUFFIX}'
        pt.io.write_results(res, str(tmp), run_name=slug)
        os.replace(tmp, self.root / coll / rel)
        manifest = self.manifest(coll)
        for old_key, old in list(manifest.items()):   # an earlier version of this system (another pipeline or data)
            if isinstance(old, dict) and old.get('slug') == slug and old_key != key:
                del manifest[old_key]
                if isinstance(old.get('run'), str) and old['run'] != rel:
                    (self.root / coll / old['run']).unlink(missing_ok=True)
        manifest[key] = {'system': name, 'slug': slug, 'seconds': seconds, 'run': rel,
                         'finished': datetime.now(timezone.utc).isoformat(timespec='seconds')}
        atomic_write_json(self._manifest_file(coll), manifest)
        return manifest[key]

    def remove(self) -> None:
        import shutil
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            self.root.parent.rmdir()   # .knowacq-work itself, once no other run keeps work there
        except OSError:
            pass


def _system_key(pipeline: str, collection: str, dataset, split, fingerprint: str, topics: pd.DataFrame,
                models: Dict[str, str], rerank_depth, seed: int, dry_run: bool) -> str:
    """What determines a system's run: its pipeline, the collection (dataset id, content fingerprint, split, the
    topics exactly as run) and the models its stages load (trained models by their content-keyed folders)."""
    import hashlib
    import json
    h = hashlib.sha1()
    for qid, query in zip(topics['qid'], topics['query']):
        h.update(str(qid).encode('utf-8', 'surrogateescape') + b'\0' + str(query).encode('utf-8', 'surrogateescape') + b'\1')
    payload = {'format': 1, 'pipeline': pipeline, 'collection': collection, 'dataset': dataset.id, 'split': split,
               'fingerprint': fingerprint, 'topics': h.hexdigest(), 'models': models, 'rerank_depth': rerank_depth,
               'seed': seed, 'dry_run': bool(dry_run)}
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _models_used(stages, ctx: StageContext) -> Dict[str, str]:
    """``{'0:ce.model=ELECTRA-C': '<folder>|<content fingerprint>', ...}``: every stage parameter that names a model,
    with the content of its weights (an alias or local folder retrained in place is not reused as it was)."""
    from ..models.backbones import model_fingerprint
    from .preflight import STAGE_MODEL_PARAMS
    out = {}
    for i, stage in enumerate(stages):
        for key, value in stage.params.items():
            if key in STAGE_MODEL_PARAMS or (isinstance(value, str) and value in ctx.models):
                folder = str(ctx.model(value))
                try:
                    weights = model_fingerprint(folder)
                except Exception:  # noqa: BLE001 - a name that cannot be resolved fails when the stage builds it
                    weights = None
                out[f'{i}:{stage.name}.{key}={value}'] = f'{folder}|{weights}'
    return out
