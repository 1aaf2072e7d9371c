"""One content key for every trained model: the spec, the training data's content, the weights it starts from.

A trained model is cached under a hash of what determines it. Names are not enough: two BEIR folders called ``beir``
hold different collections, a local backbone folder can be retrained in place, a run file can be rewritten. So the
key holds the dataset's id *and* content fingerprint, the content fingerprint of every model the spec names
(``backbone``, ``query_backbone``, ``init``), and the bytes of every file path in the spec (runs, teacher files).

Example::

    key = training_key({'backbone': 'minilm-l6', 'steps': 10}, get_dataset('scifact'), 'train', seed=42, version=1)
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict

__all__ = ['training_key']

MODEL_FIELDS = ('backbone', 'query_backbone', 'init')


def _file_digests(value, out: Dict[str, str]) -> None:
    """Digests of every string in ``value`` (recursively) that names an existing file."""
    from .._util import file_digest
    if isinstance(value, dict):
        for v in value.values():
            _file_digests(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _file_digests(v, out)
    elif isinstance(value, str) and value and len(value) < 4096:
        try:
            path = Path(value).expanduser()
            if path.is_file():
                out[value] = file_digest(path)
        except (OSError, ValueError):   # not a path at all (e.g. a name with a NUL byte)
            pass


def training_key(spec: Dict[str, Any], dataset, split, seed: int, version: int) -> str:
    """A 16-hex-digit hash of everything that decides a trained model (see the module docstring)."""
    from ..models.backbones import model_fingerprint
    from ..datasets.core import get_dataset
    dataset = get_dataset(dataset)
    weights = {f: model_fingerprint(str(spec[f])) for f in MODEL_FIELDS if spec.get(f)}
    files: Dict[str, str] = {}
    _file_digests(spec, files)
    import os
    world = int(os.environ.get('WORLD_SIZE', '1') or 1)   # DDP shards the data: another model than one process
    blob = json.dumps({'v': version, 'spec': spec, 'dataset': dataset.id, 'data': dataset.fingerprint(),
                       'split': split, 'seed': seed, 'weights': weights, 'files': files,
                       **({'world_size': world} if world > 1 else {})},
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]
