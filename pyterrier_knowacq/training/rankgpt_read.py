"""Reading RankGPT's released distillation data: text keys, ChatGPT's answers as permutations, the records files.

The format and the variants accepted are described in :mod:`.rankgpt_convert`, which converts the records into a
TREC teacher run; this module holds what reads them: :func:`normalise_text` and the 64-bit text keys that match a
released text to a dataset's query or passage, :func:`parse_permutation` (an answer read as RankGPT's own
``receive_response`` reads it), and the readers of the records and permutation files (JSON lines or one JSON list,
``.gz`` or a ``.zip`` holding one file), each problem one :class:`~pyterrier_knowacq.KnowacqError` naming the file and
line.

Example::

    parse_permutation('[2] > [1] > [2]', 3)     # ([1, 0, 2], True): repeats dropped, the unnamed appended
"""
from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import re
import unicodedata
import zipfile
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from .._util import KnowacqError

__all__ = ['parse_permutation', 'normalise_text']

QUERY_KEYS = ('query', 'question', 'query_text')
QUERY_ID_KEYS = ('query_id', 'qid')
PASSAGES_KEYS = ('retrieved_passages', 'passages', 'hits', 'candidates', 'ctxs')
TEXT_KEYS = ('text', 'content', 'contents', 'passage')
DOCID_KEYS = ('docid', 'doc_id', 'docno', 'pid', 'id', '_id')
PERMUTATION_KEYS = ('permutation', 'response', 'ranking', 'gpt_ranking')
_LOOSE_TABLE = bytes(c if (48 <= c <= 57 or 97 <= c <= 122) else 32 for c in range(256))   # a-z, 0-9; others: space
_TITLE_CONTENT = re.compile(r'^Title: .*? Content: ', re.S)
_MAX_CANDIDATES = 8     # ids kept per duplicated text


# -- text keys -------------------------------------------------------------------------------------------------------

def normalise_text(text: str) -> str:
    """Unicode NFC, runs of whitespace as one space, trimmed: two texts match when these are equal."""
    if not text.isascii():
        text = unicodedata.normalize('NFC', text)
    return ' '.join(text.split())


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), 'little')


def _keys(text: str) -> Tuple[int, Optional[int]]:
    """(exact key, loose key or None) of a text: 64-bit hashes of its normalised text and of its lower-cased ASCII
    letters and digits (other characters dropped, words separated by one space)."""
    exact = _hash(normalise_text(text).encode('utf-8', 'surrogatepass'))
    loose = b' '.join(text.lower().encode('ascii', 'ignore').translate(_LOOSE_TABLE).split())
    return exact, (_hash(b'\0loose\0' + loose) if loose else None)


# -- permutations ----------------------------------------------------------------------------------------------------

def parse_permutation(answer, n: int) -> Tuple[List[int], bool]:
    """``(order, repaired)``: 0-based positions of ``n`` passages, best first, from ChatGPT's answer (``"[2] > [1]"``)
    or a list of positions, read as RankGPT's ``receive_response`` reads it; ``repaired`` is True when the answer did
    not name every position exactly once."""
    if isinstance(answer, str):
        positions = [int(x) - 1 for x in re.findall(r'\d+', answer)]
    elif isinstance(answer, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in answer):
        base = 0 if 0 in answer else 1
        positions = [x - base for x in answer]
    else:
        raise TypeError('not an answer string or a list of integer positions')
    order, seen = [], set()
    for p in positions:
        if 0 <= p < n and p not in seen:
            order.append(p)
            seen.add(p)
    repaired = len(order) != n or len(positions) != n
    order += [p for p in range(n) if p not in seen]
    return order, repaired


# -- reading the release ---------------------------------------------------------------------------------------------

def _open(path: Path) -> io.TextIOBase:
    if not path.exists():
        raise KnowacqError(f'{path} does not exist; give the path of the RankGPT file (e.g. marco-train-100k.jsonl)')
    if path.suffix == '.zip':
        zf = zipfile.ZipFile(path)
        members = [m for m in zf.namelist() if not m.endswith('/') and not m.split('/')[-1].startswith('.')]
        if len(members) != 1:
            raise KnowacqError(f'{path}: a .zip must hold exactly one file, it holds {len(members)}; unzip it and give '
                               'the .jsonl (or .json) file')
        raw = zf.open(members[0])
    elif path.suffix == '.gz':
        raw = gzip.open(path, 'rb')
    else:
        raw = open(path, 'rb')
    return io.TextIOWrapper(raw, encoding='utf-8-sig', errors='strict')


def _iter_json(path, what: str, example: str) -> Iterator[Tuple[str, Any]]:
    """``(where, value)`` of each record of a JSON list or a JSON-lines file; ``where`` is ``file:line`` (JSON lines)
    or ``file: record N`` (a JSON list)."""
    path = Path(path)
    fix = f'write {what} as JSON lines or one JSON list, e.g. {example}'
    try:
        with _open(path) as f:
            first = ''
            while True:
                ch = f.read(1)
                if not ch or not ch.isspace():
                    first = ch
                    break
            if first == '[':    # one JSON list (memory of the file, as any JSON list needs)
                try:
                    data = json.loads(first + f.read())
                except json.JSONDecodeError as e:
                    raise KnowacqError(f'{path}:{e.lineno}: is not valid JSON (column {e.colno}: {e.msg}); {fix}') from None
                for i, obj in enumerate(data, 1):
                    yield f'{path}: record {i}', obj
                return
            for n, line in enumerate(itertools.chain([first + f.readline()], f), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise KnowacqError(f'{path}:{n}: is not valid JSON (column {e.colno}: {e.msg}); {fix}') from None
                yield f'{path}:{n}', obj
    except UnicodeDecodeError as e:
        raise KnowacqError(f'{path}: is not valid UTF-8 ({e.reason}); re-encode it as UTF-8') from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise KnowacqError(f'{path}: cannot be read ({type(e).__name__}: {e}); re-download the file') from None


def _pick(obj: dict, keys: Sequence[str]):
    for k in keys:
        if k in obj and obj[k] is not None:
            return obj[k]
    return None


_RECORD_FIX = ('give each record {"query": "...", "retrieved_passages": [{"docid": "...", "text": "..."}, ...]} '
               '(RankGPT marco-train-*.jsonl)')


def _passage(where: str, j: int, p) -> Tuple[str, Optional[str]]:
    """(text, docid or None) of one candidate."""
    if isinstance(p, str):
        return p, None
    if not isinstance(p, dict):
        raise KnowacqError(f'{where}: passage {j + 1} is a JSON {type(p).__name__}, not an object or a string; '
                           + _RECORD_FIX)
    text = _pick(p, TEXT_KEYS)
    if not isinstance(text, str):
        raise KnowacqError(f'{where}: passage {j + 1} has no text (keys: {sorted(p)[:6]}); give each passage a "text"')
    if 'text' not in p and isinstance(p.get('content'), str):
        text = _TITLE_CONTENT.sub('', text, count=1)
    docid = _pick(p, DOCID_KEYS)
    return text, (str(docid) if docid is not None and not isinstance(docid, (dict, list)) else None)


def _load_permutations(path) -> List[Any]:
    out = []
    example = '["[2] > [1] > [3]", ...]'
    for where, obj in _iter_json(path, 'the permutations', example):
        if isinstance(obj, dict):
            obj = _pick(obj, PERMUTATION_KEYS)
        if not isinstance(obj, (str, list)):
            raise KnowacqError(f'{where}: a permutation must be ChatGPT\'s answer ("[2] > [1] > ...") or a list of '
                               f'positions, not {type(obj).__name__}; give the gpt3.5 permutation file of RankGPT, e.g. '
                               f'{example}')
        out.append(obj)
    return out
