"""Archives of results folders (``knowacq leaderboard --pack``): the files the site shows, compressed, text scrubbed of
absolute paths and host names, byte-for-byte the same for the same folder. The repository's own site is built from
such archives (``leaderboard/results/*.tar.gz``).

Example::

    pack_results('results/multistage', 'leaderboard/results')   # -> leaderboard/results/multistage.tar.gz
"""
from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path
from typing import List, Optional, Union

from .. import results
from .._util import KnowacqError
from .data import FolderProblem, public_text, read_meta, slugify
from .sources import TEXT_SUFFIXES

__all__ = ['PACK_PATTERNS', 'pack_results']

# what an archive of the shipped site keeps: the files the pages show (no run files: they are not shown)
PACK_PATTERNS = tuple(p for p in results.FILE_PATTERNS if not p.endswith(results.RUN_SUFFIX))


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ''
    return info


def pack_results(folder: Union[str, Path], dest: Union[str, Path], name: Optional[str] = None,
                 notes: Optional[List[str]] = None) -> Path:
    """Write ``dest/<name>.tar.gz`` (default name: the experiment's slug) holding the files of ``folder`` that the site
    shows (:data:`PACK_PATTERNS`: one format per plot, SVG first; no run files), text files scrubbed of absolute paths
    and host names; byte-for-byte the same for the same folder. A collection whose meta.json records no data
    fingerprint gets the one git proves (:mod:`.backfill`); what was filled, or why not, is appended to ``notes``.
    Returns the archive's path."""
    folder = Path(folder)
    try:
        meta = read_meta(folder)
    except FolderProblem as e:
        raise KnowacqError(str(e)) from e
    name = name or slugify(meta['experiment'])
    files = set()
    for pattern in PACK_PATTERNS:
        files.update(p.relative_to(folder) for p in folder.glob(pattern) if p.is_file())
    svg_stems = {p.stem for p in files if p.parent.as_posix() == 'plots' and p.suffix == '.svg'}
    files = sorted((p for p in files if not (p.parent.as_posix() == 'plots' and p.suffix == '.png'
                                             and p.stem in svg_stems)), key=lambda p: p.as_posix())
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f'{name}.tar.gz'
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode='w', format=tarfile.PAX_FORMAT) as tar:
        for rel in files:
            data = (folder / rel).read_bytes()
            if rel.as_posix() == results.META:
                data = _backfilled_meta(data, notes)
            if rel.suffix.lower() in TEXT_SUFFIXES:
                data = public_text(data.decode('utf-8', errors='surrogateescape')).encode('utf-8', errors='surrogateescape')
            tar.addfile(_tar_info(f'{name}/{rel.as_posix()}', len(data)), io.BytesIO(data))
    tmp = target.with_name(target.name + '.partial')
    with open(tmp, 'wb') as f, gzip.GzipFile(filename='', mode='wb', fileobj=f, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    os.replace(tmp, target)
    return target


def _backfilled_meta(data: bytes, notes: Optional[List[str]]) -> bytes:
    """meta.json with the data fingerprints git proves filled in (unchanged bytes when there is nothing to fill)."""
    from .backfill import backfill_meta
    meta = json.loads(data.decode('utf-8'))
    filled, lines = backfill_meta(meta)
    if notes is not None:
        notes.extend(lines)
    if filled == meta:
        return data
    return (json.dumps(filled, indent=2, ensure_ascii=False) + '\n').encode('utf-8')
