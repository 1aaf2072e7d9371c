"""Small shared helpers: cache location, atomic writes, clear user-facing errors."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


class KnowacqError(ValueError):
    """An error in user input (config, data, model name) with a message that names the problem and the fix."""


def check_keys(mapping, allowed, label: str) -> None:
    """Raise ``KnowacqError('<label> [bad keys] (did you mean ...); allowed: [...]')`` for keys outside ``allowed``."""
    import difflib
    bad = sorted(set(mapping) - set(allowed), key=str)
    if bad:
        close = difflib.get_close_matches(str(bad[0]), [str(a) for a in allowed], n=1)
        hint = f' (did you mean {close[0]!r}?)' if close else ''
        raise KnowacqError(f'{label} {bad}{hint}; allowed: {sorted(allowed)}')


def cache_dir(*parts: str) -> Path:
    """Where converted models, indexes and cached runs live (``$KNOWACQ_CACHE`` or ``~/.cache/pyterrier_knowacq``)."""
    root = Path(os.environ.get('KNOWACQ_CACHE', Path.home() / '.cache' / 'pyterrier_knowacq'))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode('utf-8'))


def atomic_write_json(path: PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + '\n')


@contextlib.contextmanager
def atomic_directory(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place only if the block succeeds.

    On any exception the temporary directory is removed, so no half-written folder is left behind.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise KnowacqError(f'{path} already exists; remove it or pass overwrite=True')
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f'.{path.name}.*.partial'):
        if _owner_gone(stale):  # left by a run that was killed hard (SIGKILL, power loss)
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f'.{path.name}.{os.getpid()}.', suffix='.partial'))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f'.{path.name}.old')
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _owner_gone(partial: Path) -> bool:
    parts = partial.name.split('.')
    pid = next((int(p) for p in parts if p.isdigit()), None)
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return pid == os.getpid()


def offline() -> bool:
    """True when the Hugging Face hub must not be contacted."""
    return any(os.environ.get(v, '').lower() in ('1', 'true', 'yes') for v in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'))
