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


def write_jsonl(path: PathLike, records) -> None:
    """Write dicts as JSON lines, atomically. Texts survive exactly (tabs, quotes, newlines, U+2028, emoji): JSON
    escapes control characters, and :func:`read_jsonl` splits on ``\\n`` only."""
    atomic_write_text(path, ''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in records))


def write_csv(frame, path: PathLike) -> None:
    """Write a frame as CSV, atomically, with every string quoted: pandas leaves a lone ``\\r`` unquoted, and a
    reader then splits a system name such as ``'a\\rb'`` into two rows (found by the round-trip property test)."""
    import csv
    atomic_write_text(path, frame.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC, lineterminator='\n'))


def read_jsonl(path: PathLike) -> list:
    """The records of a JSON lines file written by :func:`write_jsonl` (a bad line raises naming ``file:line``)."""
    out = []
    # split on '\n' only: str.splitlines would also break inside a text at U+2028, U+0085, ...
    for n, line in enumerate(Path(path).read_text(encoding='utf-8').split('\n'), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise KnowacqError(f'{path}:{n} is not a JSON line ({e.__class__.__name__}: {e}); '
                                   're-create the file (it was not written by this version?)') from None
    return out


def offline() -> bool:
    """True when the Hugging Face hub must not be contacted."""
    return any(os.environ.get(v, '').lower() in ('1', 'true', 'yes') for v in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'))


def file_digest(path: PathLike) -> str:
    """SHA-1 of a file's bytes (what caches built from data are keyed by: content, never a name).

    Hashing a multi-GB corpus takes seconds, so the digest is remembered under ``cache_dir('digests')`` against the
    file's identity and stat (device, inode, size, mtime in ns, ctime in ns): any rewrite of the file changes the stat
    and forces a re-hash."""
    import hashlib
    path = Path(path).resolve()
    st = path.stat()
    ident = f'{path}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}'
    memo = cache_dir('digests') / hashlib.sha1(ident.encode('utf-8', 'surrogateescape')).hexdigest()
    if memo.is_file():
        digest = memo.read_text().strip()
        if len(digest) == 40:
            return digest
    h = hashlib.sha1()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    atomic_write_text(memo, h.hexdigest())
    return h.hexdigest()


def content_fingerprint(files, *extra: str, digest=None) -> str:
    """A short hash of the bytes of ``files`` plus ``extra`` strings.

    ``files`` is a list of paths or a mapping ``{role: path}`` (e.g. ``{'qrels/test.tsv': ...}``); a file counts by its
    role (its base name for a list) and its bytes, never by where it lives, so a copied folder keeps its fingerprint.
    ``digest(role, path)``, when given, replaces :func:`file_digest` (a caller that knows some bytes do not matter)."""
    import hashlib
    items = files.items() if isinstance(files, dict) else [(Path(f).name, f) for f in files]
    digest = digest or (lambda _, path: file_digest(path))
    h = hashlib.sha1()
    for role, f in sorted((str(r), f) for r, f in items):
        h.update(f'{role}\0{digest(role, f)}\0'.encode('utf-8', 'surrogateescape'))
    for e in extra:
        h.update(b'\1' + str(e).encode('utf-8', 'surrogateescape'))
    return h.hexdigest()[:16]
