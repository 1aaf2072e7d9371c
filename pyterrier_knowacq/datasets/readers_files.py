"""Opening the files knowacq reads, and the one-line errors every reader raises (see :mod:`.readers`).

Every problem in a file is one :class:`~pyterrier_knowacq._util.KnowacqError` of one line that names the file, the
line (1-based) it applies to, the problem and the fix (:func:`file_error`). Texts are never altered: files are split on
``'\\n'`` only (MS MARCO text holds ``\\x85`` and ``\\u2028``, which ``str.splitlines`` would break on) and a trailing
``'\\r'`` is the only thing removed from a line.
"""
from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path
from typing import List, Optional, Tuple

from .._util import KnowacqError

__all__ = ['open_text', 'file_error']


# -- errors ----------------------------------------------------------------------------------------------------------

def _one_line(text: str) -> str:
    return ' '.join(str(text).splitlines()) if ('\n' in str(text) or '\r' in str(text)) else str(text)


def file_error(path, line: Optional[int], problem: str, fix: str = '', col: Optional[int] = None) -> KnowacqError:
    """``KnowacqError('<path>:<line>[:<col>]: <problem>; <fix>')``, always one line."""
    where = f'{path}:{line}' if line else f'{path}'
    if line and col:
        where += f':{col}'
    return KnowacqError(_one_line(f'{where}: {problem}' + (f'; {fix}' if fix else '')))


def _show(text: str, n: int = 60) -> str:
    """A short, one-line ``repr`` of a line for a message."""
    return repr(text[:n] + ('...' if len(text) > n else ''))


# -- opening files ---------------------------------------------------------------------------------------------------

def _resolve(path: Path) -> Path:
    """``path`` or ``path.gz``, whichever exists."""
    path = Path(path)
    if path.exists():
        return path
    gz = path.with_name(path.name + '.gz')
    if gz.exists():
        return gz
    raise KnowacqError(f'data file {path} (or {gz.name}) is missing; reinstall pyterrier-knowacq or check the folder')


def open_text(path: Path) -> io.TextIOBase:
    """Open a UTF-8 text file, transparently gunzipping; undecodable bytes raise a clear error when read."""
    path = _resolve(Path(path))
    raw = gzip.open(path, 'rb') if path.suffix == '.gz' else open(path, 'rb')
    return io.TextIOWrapper(raw, encoding='utf-8', errors='strict')


def _read_text(path) -> Tuple[Path, str]:
    """``(resolved path, text)``; bytes that are not UTF-8 give ``<file>:<line>: is not valid UTF-8 ...``."""
    path = _resolve(Path(path))
    try:
        with (gzip.open(path, 'rb') if path.suffix == '.gz' else open(path, 'rb')) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # a truncated or corrupt .gz
        raise KnowacqError(_one_line(f'{path}: cannot be read ({e}); re-download or re-compress the file')) from e
    try:
        return path, data.decode('utf-8')
    except UnicodeDecodeError as e:
        line = data.count(b'\n', 0, e.start) + 1
        raise file_error(path, line, f'is not valid UTF-8 (byte {data[e.start:e.start + 1]!r} at offset {e.start})',
                         're-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)') from None


def _lines_of(path) -> Tuple[Path, List[str]]:
    # split on '\n' only: raw MS MARCO text holds characters (\x85, \u2028) that str.splitlines breaks on
    path, text = _read_text(path)
    return path, [line.rstrip('\r') for line in text.split('\n')]


def _read_lines(path: Path) -> List[str]:
    """The lines of a (possibly gzipped) UTF-8 file, split on ``'\\n'`` only, a trailing ``'\\r'`` removed."""
    return _lines_of(path)[1]
