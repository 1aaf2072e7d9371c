"""The copies a leaderboard site keeps of its results folders (``SITE/sources/<id>/``): which folders are new or
changed, where each one came from (a hash of its path, never the path), ``.tar.gz`` archives of results folders
unpacked safely, and text files scrubbed of absolute paths and host names on the way.

Example::

    _add_sources([Path('results/quickstart')], sources, tmp, problems, out, include_smoke=False, scratch=scratch)
"""
from __future__ import annotations

import hashlib
import shutil
import tarfile
from pathlib import Path
from typing import Dict, Iterable, List

from ..results import meta_path
from .data import (REPO_ROOT, FolderProblem, fingerprint, kept_files, public_text, read_meta, short_hash, slugify,
                   smoke_reason)

__all__ = ['ARCHIVE_SUFFIXES', 'TEXT_SUFFIXES']

ARCHIVE_SUFFIXES = ('.tar.gz', '.tgz')
# the text files of a kept copy that are scrubbed of absolute paths and host names before they are published
TEXT_SUFFIXES = ('.json', '.yaml', '.yml', '.md', '.csv', '.tsv', '.jsonl', '.txt')   # not .svg: base64 images hold '/'


def _key(path: str) -> str:
    """What identifies a results folder's location across builds without publishing it: a hash of its path."""
    return hashlib.sha256(str(path).encode('utf-8')).hexdigest()[:16]


def _label(path: Path) -> str:
    """How pages name a results folder: its path relative to the repository or the working directory when inside
    one of them, else its name (never an absolute path)."""
    for root in (REPO_ROOT, Path.cwd()):
        try:
            rel = path.resolve().relative_to(root.resolve())
            if str(rel) != '.':
                return rel.as_posix()
        except (ValueError, OSError):
            pass
    return path.name or 'results'


def _origin_key(path: Path) -> str:
    """The key of a folder's location: its path inside the repository (the same on every checkout, so that the
    published site is the same everywhere), else its absolute path; only a hash of it is kept."""
    try:
        return _key('repo:' + path.resolve().relative_to(REPO_ROOT.resolve()).as_posix())
    except ValueError:
        return _key(str(path.resolve()))


def _copy_public(src: Path, dst: Path, rel: Path) -> None:
    """Copy one kept file; text files lose absolute paths and host names on the way (:func:`public_text`)."""
    (dst / rel).parent.mkdir(parents=True, exist_ok=True)
    if rel.suffix.lower() in TEXT_SUFFIXES:
        text = (src / rel).read_text(encoding='utf-8', errors='surrogateescape')
        (dst / rel).write_text(public_text(text), encoding='utf-8', errors='surrogateescape')
    else:
        shutil.copyfile(src / rel, dst / rel)


def _copy_kept(src: Path, dst: Path) -> None:
    for rel in kept_files(src):
        _copy_public(src, dst, rel)


def _copy_tree(src: Path, dst: Path) -> None:
    for path in sorted(src.rglob('*')):
        if path.is_file():
            _copy_public(src, dst, path.relative_to(src))


def _results_folder(root: Path) -> Path:
    """The results folder inside an extracted archive: the folder holding meta.json (the top or its only child)."""
    if meta_path(root).is_file():
        return root
    children = [p for p in root.iterdir() if p.is_dir()]
    if len(children) == 1 and meta_path(children[0]).is_file():
        return children[0]
    return children[0] if len(children) == 1 else root


def _extract(archive: Path, into: Path) -> Path:
    """Extract a ``.tar.gz`` of a results folder (plain files and folders only, nothing outside ``into``)."""
    into.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, 'r:gz') as tar:
            members = []
            for m in tar.getmembers():
                name = Path(m.name)
                if name.is_absolute() or '..' in name.parts or not (m.isfile() or m.isdir()):
                    raise FolderProblem(f'archive {archive} holds {m.name!r}, which is not a plain file inside it; '
                                        'it is left out (pack results folders with `knowacq leaderboard --pack`)')
                members.append(m)
            for m in members:
                target = into / m.name
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as f, open(target, 'wb') as g:
                    shutil.copyfileobj(f, g)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FolderProblem(f'archive {archive} cannot be read ({e}); it is left out') from e
    return _results_folder(into)


def _add_sources(results: Iterable[Path], sources: List[Dict], tmp: Path, problems: List[str], out: Path,
                 include_smoke: bool, scratch: Path) -> None:
    """Copy each new or changed results folder into ``tmp/sources``; update ``sources`` in place."""
    for k, given in enumerate(results):
        origin_key, label = _origin_key(given), _label(given)
        folder = given
        if given.resolve() == out.resolve():
            problems.append(f'{given} is the site folder itself, not a results folder; it is left out')
            continue
        try:
            if given.is_file() and given.name.endswith(ARCHIVE_SUFFIXES):
                folder = _extract(given, scratch / f'a{k}')
            meta = read_meta(folder)
            fp = fingerprint(folder)
        except FolderProblem as e:
            kept = [s for s in sources if s.get('origin_key') == origin_key]
            problems.append(str(e).replace(str(folder), str(given)) + ('; the site keeps its earlier copy' if kept else ''))
            continue
        except OSError as e:
            problems.append(f'results folder {given} cannot be read ({e}); it is left out')
            continue
        reason = smoke_reason(meta)
        if reason and not include_smoke:
            problems.append(f'results folder {given} is a smoke test ({reason}), not a result: it is left out '
                            '(pass --include-smoke to show it)')
            continue
        same_origin = next((s for s in sources if s.get('origin_key') == origin_key), None)
        if same_origin and same_origin['fingerprint'] == fp:
            same_origin['_origin'] = str(given.resolve())
            continue
        twin = next((s for s in sources if s['fingerprint'] == fp), None)
        if twin and not same_origin:
            problems.append(f'results folder {given} is identical to {twin.get("label")}, already in the site as '
                            f'{twin["id"]!r}; it is not added twice')
            continue
        if same_origin:
            sid = same_origin['id']
            shutil.rmtree(tmp / 'sources' / sid, ignore_errors=True)
            same_origin.update(fingerprint=fp, experiment=meta['experiment'], created=meta.get('created'), label=label,
                               _origin=str(given.resolve()))
        else:
            sid = f'{slugify(meta["experiment"])}-{fp[:6]}'
            while any(s['id'] == sid for s in sources):
                sid = f'{sid}-{short_hash(sid + origin_key)}'
            sources.append({'id': sid, 'label': label, 'origin_key': origin_key, 'experiment': meta['experiment'],
                            'fingerprint': fp, 'created': meta.get('created'), '_origin': str(given.resolve())})
        _copy_kept(folder, tmp / 'sources' / sid)
