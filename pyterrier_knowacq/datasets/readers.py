"""Low-level readers of the files knowacq reads: TREC runs, qrels and topics, BEIR folders, DPR JSON and YAML.

Every problem in a file is one :class:`~pyterrier_knowacq._util.KnowacqError` of one line that names the file, the
line (1-based) it applies to, the problem and the fix::

    queries.jsonl:3: is not valid JSON (Expecting ',' delimiter at column 14); write one JSON object per line, ...

Texts are never altered: files are split on ``'\\n'`` only (MS MARCO text holds ``\\x85`` and ``\\u2028``, which
``str.splitlines`` would break on) and a trailing ``'\\r'`` is the only thing removed from a line.

Example::

    run = read_run('bm25.dl19.trec')                 # qid, docno, score, rank
    queries = read_beir_queries('scifact/queries.jsonl')
"""
from __future__ import annotations

import gzip
import io
import json
import math
import re
import zlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pandas as pd

from .._util import KnowacqError

__all__ = ['open_text', 'read_run', 'read_trec_qrels', 'read_tsv_topics', 'read_trec_topics', 'read_topics',
           'read_beir_queries', 'read_beir_qrels', 'iter_beir_corpus', 'read_jsonl', 'read_dpr_json', 'load_yaml',
           'yaml_line', 'locate_error', 'file_error']


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


# -- TREC ------------------------------------------------------------------------------------------------------------

def _number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def _label(text: str) -> Optional[int]:
    try:
        return int(text)
    except ValueError:
        value = _number(text)
        return int(value) if value is not None and not math.isinf(value) and value == int(value) else None


def read_run(path) -> pd.DataFrame:
    """A TREC run file -> ``[qid, docno, score, rank]`` (ranks re-derived from scores, ties broken by file order)."""
    path, lines = _lines_of(path)
    rows, seen = [], {}
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 6:
            raise file_error(path, n, f'has {len(parts)} field(s), a TREC run line has 6: {_show(line)}',
                             'write each line as "qid Q0 docno rank score tag", separated by spaces')
        score = _number(parts[4])
        if score is None:
            raise file_error(path, n, f'score {parts[4]!r} (the 5th field) is not a number',
                             'write each line as "qid Q0 docno rank score tag" with a numeric score')
        key = (parts[0], parts[2])
        if key in seen:
            raise file_error(path, n, f'docno {parts[2]!r} is ranked twice for query {parts[0]!r} (first at line {seen[key]})',
                             'keep one line per (query, docno); trec_eval rejects duplicates')
        seen[key] = n
        rows.append((parts[0], parts[2], score))
    df = pd.DataFrame(rows, columns=['qid', 'docno', 'score'])
    df = df.sort_values(['qid', 'score'], ascending=[True, False], kind='stable')
    df['rank'] = df.groupby('qid').cumcount()
    return df.reset_index(drop=True)


def read_trec_qrels(path) -> pd.DataFrame:
    """A TREC qrels file (``qid iter docno label``) -> ``[qid, docno, label]``."""
    path, lines = _lines_of(path)
    rows, seen = [], {}
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            hint = ' (this looks like BEIR qrels: query-id, corpus-id, score)' if len(parts) == 3 else ''
            raise file_error(path, n, f'has {len(parts)} field(s), a TREC qrels line has 4{hint}: {_show(line)}',
                             'write each line as "qid 0 docno label", separated by spaces')
        label = _label(parts[3])
        if label is None:
            raise file_error(path, n, f'label {parts[3]!r} (the 4th field) is not an integer',
                             'write relevance labels as integers such as 0, 1, 2')
        key = (parts[0], parts[2])
        if key in seen:
            raise file_error(path, n, f'docno {parts[2]!r} is judged twice for query {parts[0]!r} (first at line {seen[key]})',
                             'keep one judgement per (query, docno)')
        seen[key] = n
        rows.append((parts[0], parts[2], label))
    return pd.DataFrame(rows, columns=['qid', 'docno', 'label'])


def read_tsv_topics(path) -> pd.DataFrame:
    """MS MARCO-style topics, one ``qid<TAB>query`` a line -> ``[qid, query]`` (the query text is kept as is)."""
    path, lines = _lines_of(path)
    rows, seen = [], {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        qid, tab, query = line.partition('\t')
        if not tab:
            raise file_error(path, n, f'has no tab: {_show(line)}', 'write each topic as qid<TAB>query text')
        if not qid.strip():
            raise file_error(path, n, 'has an empty qid before the tab', 'write each topic as qid<TAB>query text')
        if not query.strip():
            raise file_error(path, n, f'topic {qid!r} has an empty query', 'write the query text after the tab, or remove the line')
        if qid in seen:
            raise file_error(path, n, f'qid {qid!r} appears twice (first at line {seen[qid]})', 'give each topic a unique qid')
        seen[qid] = n
        rows.append((qid, query))
    return pd.DataFrame(rows, columns=['qid', 'query'])


_TAG = re.compile(r'<(/?)([A-Za-z]+)>')


def read_trec_topics(path, field: str = 'title') -> pd.DataFrame:
    """Classic TREC topics (``<top> <num> Number: 301 <title> ... </top>``) -> ``[qid, query]`` from ``field``."""
    path, lines = _lines_of(path)
    rows, seen = [], {}
    topic = None     # {'line': n, tag: [text, line]}
    current = None   # the tag whose text is being read
    for n, line in enumerate(lines, 1):
        pos = 0
        for m in list(_TAG.finditer(line)) + [None]:
            text = line[pos:m.start() if m else len(line)]
            if current is not None and topic is not None:
                topic[current][0] += ' ' + text
            elif text.strip() and topic is None:
                raise file_error(path, n, f'text outside a <top> ... </top> block: {_show(text.strip())}',
                                 'put every topic between <top> and </top>')
            if m is None:
                break
            pos = m.end()
            closing, tag = m.group(1), m.group(2).lower()
            if tag == 'top' and not closing:
                if topic is not None:
                    raise file_error(path, topic['line'], 'this <top> is not closed before the next <top>',
                                     f'add </top> before line {n}')
                topic, current = {'line': n}, None
            elif tag == 'top':
                if topic is None:
                    raise file_error(path, n, '</top> without an opening <top>', 'remove it or add the missing <top>')
                qid = ' '.join(topic.get('num', [''])[0].split())
                qid = re.sub(r'^number:\s*', '', qid, flags=re.I)
                title = re.sub(r'^topic:\s*', '', ' '.join(topic.get(field, [''])[0].split()), flags=re.I)
                if not qid:
                    raise file_error(path, topic['line'], 'topic has no <num>', 'add a line such as <num> Number: 301')
                if not title:
                    raise file_error(path, topic['line'], f'topic {qid!r} has no <{field}> text',
                                     f'add <{field}> with the query text, or read another field')
                if qid in seen:
                    raise file_error(path, topic['line'], f'topic number {qid!r} appears twice (first at line {seen[qid]})',
                                     'give each topic a unique <num>')
                seen[qid] = topic['line']
                rows.append((qid, title))
                topic, current = None, None
            elif closing:
                current = None
            else:
                if topic is None:
                    raise file_error(path, n, f'<{tag}> outside a <top> ... </top> block', 'put every topic between <top> and </top>')
                topic[tag], current = ['', n], tag
    if topic is not None:
        raise file_error(path, topic['line'], 'this <top> is never closed', 'add </top> at the end of the topic')
    return pd.DataFrame(rows, columns=['qid', 'query'])


def read_topics(path) -> pd.DataFrame:
    """Topics from a ``qid<TAB>query`` file or a classic TREC ``<top>`` file (told apart by the first line)."""
    path, lines = _lines_of(path)
    first = next((line for line in lines if line.strip()), '')
    return read_trec_topics(path) if first.lstrip().lower().startswith('<top>') else read_tsv_topics(path)


# -- JSON lines and BEIR -------------------------------------------------------------------------------------------

def _json_records(path, example: str) -> Iterator[Tuple[Path, int, dict]]:
    """``(resolved path, line number, object)`` of each non-blank line of a JSON-lines file; each line must be a JSON object."""
    path, lines = _lines_of(path)
    fix = f'write one JSON object per line, such as {example}'
    for n, line in enumerate(lines, 1):
        if n == 1 and line.startswith('\ufeff'):
            line = line[1:]  # a byte-order mark is not text
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise file_error(path, n, f'is not valid JSON (column {e.colno}: {e.msg})', fix) from None
        except RecursionError:
            raise file_error(path, n, 'nests JSON too deeply to read', fix) from None
        if not isinstance(obj, dict):
            raise file_error(path, n, f'is a JSON {_json_type(obj)}, not an object', fix)
        yield path, n, obj


def _json_type(obj) -> str:
    return {dict: 'object', list: 'list', str: 'string', bool: 'boolean', type(None): 'null'}.get(type(obj), 'number')


def read_jsonl(path, example: str = '{"key": "value"}') -> List[dict]:
    """The JSON objects of a JSON-lines file (one object a line, blank lines skipped)."""
    return [obj for _, _, obj in _json_records(path, example)]


def _beir_id(path, n, obj, what: str, example: str) -> str:
    if '_id' not in obj:
        raise file_error(path, n, f'{what} has no "_id" (keys: {sorted(obj)[:6]})', f'give every line an "_id", e.g. {example}')
    value = obj['_id']
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == '':
        raise file_error(path, n, f'"_id" is {json.dumps(value)[:40]}, not a non-empty string',
                         f'write the id as a string, e.g. {example}')
    return str(value)


def _beir_text(path, n, obj, key: str, example: str, required: bool = True) -> str:
    if key not in obj and not required:
        return ''
    if key not in obj:
        raise file_error(path, n, f'has no "{key}" (keys: {sorted(obj)[:6]})', f'give every line a "{key}", e.g. {example}')
    value = obj[key]
    if value is None and not required:
        return ''
    if not isinstance(value, str):
        raise file_error(path, n, f'"{key}" is a JSON {_json_type(value)}, not a string', f'write it as a string, e.g. {example}')
    return value


def read_beir_queries(path) -> Dict[str, str]:
    """A BEIR ``queries.jsonl`` -> ``{_id: text}``."""
    example = '{"_id": "q1", "text": "what causes scurvy"}'
    out, seen = {}, {}
    for p, n, obj in _json_records(path, example):
        qid = _beir_id(p, n, obj, 'query', example)
        text = _beir_text(p, n, obj, 'text', example)
        if qid in seen:
            raise file_error(p, n, f'query "_id" {qid!r} appears twice (first at line {seen[qid]})', 'give each query a unique "_id"')
        seen[qid] = n
        out[qid] = text
    return out


def iter_beir_corpus(path) -> Iterator[Dict[str, str]]:
    """The documents of a BEIR ``corpus.jsonl`` as ``{docno, text}`` (``text`` is ``title text`` when a title is given)."""
    example = '{"_id": "d1", "title": "Scurvy", "text": "Scurvy is a disease ..."}'
    seen = {}
    for p, n, obj in _json_records(path, example):
        docno = _beir_id(p, n, obj, 'document', example)
        text = _beir_text(p, n, obj, 'text', example)
        title = _beir_text(p, n, obj, 'title', example, required=False)
        if docno in seen:
            raise file_error(p, n, f'document "_id" {docno!r} appears twice (first at line {seen[docno]})',
                             'give each document a unique "_id"')
        seen[docno] = n
        yield {'docno': docno, 'text': f'{title} {text}'.strip() if title else text}


def read_beir_qrels(path) -> pd.DataFrame:
    """A BEIR ``qrels/<split>.tsv`` (header ``query-id<TAB>corpus-id<TAB>score``, then one judgement a line)."""
    path, lines = _lines_of(path)
    fix = 'write each line as query-id<TAB>corpus-id<TAB>score, after a header line query-id<TAB>corpus-id<TAB>score'
    rows, seen, header = [], {}, True
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split('\t')
        if header:  # the first non-blank line is the header, unless it already is a judgement
            header = False
            if len(parts) == 3 and _number(parts[2]) is None:
                continue
            if len(parts) != 3:
                looks = ' (this looks like TREC qrels: qid 0 docno label)' if len(line.split()) == 4 else ''
                raise file_error(path, n, f'has {len(parts)} tab-separated field(s), the header has 3{looks}: {_show(line)}', fix)
        if len(parts) != 3:
            looks = ' (this looks like TREC qrels: qid 0 docno label)' if len(line.split()) == 4 else ''
            raise file_error(path, n, f'has {len(parts)} tab-separated field(s), BEIR qrels have 3{looks}: {_show(line)}', fix)
        qid, docno, score = parts
        if not qid.strip() or not docno.strip():
            raise file_error(path, n, f'has an empty query-id or corpus-id: {_show(line)}', fix)
        value = _number(score)
        if value is None or math.isinf(value):
            raise file_error(path, n, f'score {score!r} (the 3rd field) is not a number',
                             'write relevance scores as integers such as 0, 1, 2')
        key = (qid, docno)
        if key in seen:
            raise file_error(path, n, f'corpus-id {docno!r} is judged twice for query {qid!r} (first at line {seen[key]})',
                             'keep one judgement per (query, document)')
        seen[key] = n
        rows.append((qid, docno, int(value)))
    return pd.DataFrame(rows, columns=['qid', 'docno', 'label'])


# -- DPR JSON --------------------------------------------------------------------------------------------------------

_WS = re.compile(r'[ \t\n\r]*')


def read_dpr_json(path) -> List[dict]:
    """A DPR retriever JSON file (``.json`` or ``.json.gz``): a list of ``{question, positive_ctxs,
    hard_negative_ctxs, negative_ctxs}`` records, each checked (contexts are ``{title, text}``)."""
    path, text = _read_text(path)
    fix = 'DPR retriever JSON is a list of {"question": ..., "positive_ctxs": [{"title": ..., "text": ...}], ...}'
    decoder = json.JSONDecoder()
    line_at, counted = 1, 0

    def line_of(pos: int) -> int:
        nonlocal line_at, counted
        line_at += text.count('\n', counted, pos)
        counted = pos
        return line_at

    i = _WS.match(text, 1 if text.startswith('\ufeff') else 0).end()
    if i >= len(text):
        raise file_error(path, 1, 'is empty', fix)
    if text[i] != '[':
        kind = 'an object' if text[i] == '{' else 'not a JSON list'
        raise file_error(path, line_of(i), f'is {kind}, not a list of records', fix)
    i = _WS.match(text, i + 1).end()
    records = []
    while i < len(text) and text[i] != ']':
        start = i
        try:
            rec, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise file_error(path, e.lineno, f'is not valid JSON (column {e.colno}: {e.msg})', fix) from None
        except RecursionError:
            raise file_error(path, line_of(start), 'nests JSON too deeply to read', fix) from None
        records.append(_check_dpr_record(path, line_of(start), len(records) + 1, rec, fix))
        i = _WS.match(text, i).end()
        if i < len(text) and text[i] == ',':
            i = _WS.match(text, i + 1).end()
            if i < len(text) and text[i] == ']':
                raise file_error(path, line_of(i), 'has a comma before the closing "]"', 'remove the trailing comma')
        elif i < len(text) and text[i] != ']':
            raise file_error(path, line_of(i), f'expected "," or "]" after record {len(records)}, found {text[i]!r}', fix)
    if i >= len(text):
        raise file_error(path, line_of(len(text)), 'ends before the closing "]" of the record list', 'the file is cut short: re-download it')
    end = _WS.match(text, i + 1).end()
    if end < len(text):
        raise file_error(path, line_of(end), 'has data after the closing "]"', 'keep one JSON list in the file')
    if not records:
        raise file_error(path, 1, 'holds no records', fix)
    return records


def _check_dpr_record(path, line: int, k: int, rec, fix: str) -> dict:
    where = f'record {k}'
    if not isinstance(rec, dict):
        raise file_error(path, line, f'{where} is a JSON {_json_type(rec)}, not an object', fix)
    for key in ('question', 'positive_ctxs'):
        if key not in rec:
            raise file_error(path, line, f'{where} lacks "{key}" (keys: {sorted(rec)[:6]})', fix)
    if not isinstance(rec['question'], str) or not rec['question'].strip():
        raise file_error(path, line, f'{where}: "question" must be a non-empty string', fix)
    for key in ('positive_ctxs', 'hard_negative_ctxs', 'negative_ctxs'):
        ctxs = rec.get(key)
        if ctxs is None and key != 'positive_ctxs':
            continue
        if not isinstance(ctxs, list):
            raise file_error(path, line, f'{where}: "{key}" is a JSON {_json_type(ctxs)}, not a list of contexts', fix)
        for j, c in enumerate(ctxs, 1):
            if not isinstance(c, dict) or not isinstance(c.get('text') or '', str) or not isinstance(c.get('title') or '', str):
                raise file_error(path, line, f'{where}: context {j} of "{key}" is not {{"title": str, "text": str}}', fix)
    return rec


# -- YAML ----------------------------------------------------------------------------------------------------------

_YAML_HINTS = [
    ("'\\t'", 'indent with spaces: YAML does not allow tabs'),
    ('mapping values are not allowed', "quote the value if it holds ': ', or fix the indentation of this line"),
    ("could not find expected ':'", "add ': ' after the key, or quote the text"),
    ('did not find expected key', 'line this entry up with the keys above it (check the indentation)'),
    ('expected <block end>', 'line this entry up with the keys above it (check the indentation)'),
    ("expected ',' or", 'close the bracket that is left open, or put a comma between items'),
    ('did not find expected', 'close the bracket or quote that is left open, or put a comma between items'),
    ('unexpected end of stream', 'close the quote or bracket that is left open'),
    ('undefined alias', 'define the &anchor before using *alias, or quote the text starting with *'),
    ('unhashable', 'keys must be plain names: quote the key'),
    ('expected a single document', "keep one document: remove the '---' separator"),
    ('cannot start any token', 'quote the value (characters such as @ ` % cannot start a plain value)'),
]


def _yaml_fix(problem: str) -> str:
    for needle, fix in _YAML_HINTS:
        if needle in problem:
            return f'fix: {fix}'
    return "fix the YAML syntax there (indent with spaces, ': ' after each key, matching quotes and brackets)"


def _syntax_error(path, line: int, col: int, problem: str) -> KnowacqError:
    problem = problem or 'syntax error'
    return file_error(path, line, f'not valid YAML at line {line}, column {col}: {problem}', _yaml_fix(problem), col=col)


def load_yaml(path, what: str = 'file') -> Tuple[Any, Any]:
    """``(data, root node)`` of a YAML file (``yaml.safe_load`` semantics); the node gives the lines of keys.

    Syntax errors are ``<file>:<line>:<col>: not valid YAML ...; fix: ...``; a key given twice in one mapping is an
    error too (YAML would silently keep the last)."""
    import yaml
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KnowacqError(_one_line(f'{what} {path} cannot be read ({e}); check the path')) from None
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError as e:
        line = data.count(b'\n', 0, e.start) + 1
        raise file_error(path, line, f'is not UTF-8 text (byte {data[e.start:e.start + 1]!r})', 'save the file as UTF-8') from None
    loader = None
    try:
        try:
            loader = yaml.SafeLoader(text)  # checks that every character is printable
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            if e.context_mark is not None and any(s in str(e.problem) for s in ('end of stream', 'stream end', "expected ':'")):
                mark = e.context_mark  # an unclosed quote or bracket, a key without ':': where it started
            problem = str(e.problem or e.context or '')
            if e.context and e.problem:
                problem = f'{e.problem} ({e.context}'
                problem += f' started at line {e.context_mark.line + 1})' if e.context_mark else ')'
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            raise _syntax_error(path, line, col, problem) from None
        except yaml.reader.ReaderError as e:
            line = text.count('\n', 0, e.position) + 1
            col = e.position - (text.rfind('\n', 0, e.position) + 1) + 1
            raise _syntax_error(path, line, col, f'the character {e.character!r} is not allowed ({e.reason})') from None
        except yaml.YAMLError as e:
            raise _syntax_error(path, 1, 1, str(e)) from None
        except RecursionError:
            raise _syntax_error(path, 1, 1, 'the structure nests too deeply') from None
        if node is None:
            return None, None
        _check_duplicate_keys(path, node)
        try:
            value = loader.construct_document(node)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            raise _syntax_error(path, mark.line + 1 if mark else 1, mark.column + 1 if mark else 1, str(e.problem or e)) from None
        except (ValueError, TypeError, OverflowError, RecursionError) as e:  # e.g. a date such as 2024-13-45
            bad = _bad_scalar(loader, node)
            line, col = (bad.start_mark.line + 1, bad.start_mark.column + 1) if bad is not None else (1, 1)
            value_text = f' {bad.value!r}' if bad is not None else ''
            raise file_error(path, line, f'the value{value_text} cannot be read ({type(e).__name__}: {e})',
                             'quote it to keep it as text', col=col) from None
        return value, node
    finally:
        if loader is not None:
            loader.dispose()


def _walk(node, seen=None):
    """Every node under ``node`` once (aliases can make the graph cyclic)."""
    seen = set() if seen is None else seen
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        yield n
        if isinstance(n.value, list):
            for item in reversed(n.value):
                if isinstance(item, tuple):
                    stack.extend(reversed(item))
                else:
                    stack.append(item)


def _check_duplicate_keys(path, root) -> None:
    import yaml
    for node in _walk(root):
        if isinstance(node, yaml.MappingNode):
            first = {}
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == 'tag:yaml.org,2002:merge':
                    continue
                ident = (key.tag, key.value)
                if ident in first:
                    raise file_error(path, key.start_mark.line + 1, f'the key {key.value!r} is given twice in one mapping '
                                     f'(first at line {first[ident]})', 'merge the two entries into one', col=key.start_mark.column + 1)
                first[ident] = key.start_mark.line + 1


def _bad_scalar(loader, root):
    import yaml
    for node in _walk(root):
        if isinstance(node, yaml.ScalarNode):
            try:
                loader.construct_object(node, deep=True)
            except Exception:  # noqa: BLE001 - the one that fails is the one to name
                return node
    return None


def _child(node, key):
    """The value node of ``key`` in a mapping node (or item ``key`` of a sequence node); ``None`` if absent."""
    import yaml
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                return v
    elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        return node.value[key]
    return None


def yaml_line(node, *keys) -> int:
    """The 1-based line of the entry at ``keys`` under ``node`` (the key's line for a mapping entry), as deep as it
    exists; 1 without a node."""
    import yaml
    if node is None:
        return 1
    line = node.start_mark.line + 1
    for key in keys:
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(key)), None)
            if hit is None:
                break
            line, node = hit[0].start_mark.line + 1, hit[1]
        else:
            child = _child(node, key)
            if child is None:
                break
            line, node = child.start_mark.line + 1, child
    return line


_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")


def _tokens(message: str) -> List[str]:
    out = []
    for m in _QUOTED.finditer(message):
        raw = m.group(0)
        try:
            import ast
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw[1:-1]
        if isinstance(value, str) and value:
            out.append(value)
    return out


def locate_error(message: str, node, scopes: Sequence[Tuple[str, Any]] = ()) -> int:
    """The line a check's error ``message`` is about, found in the YAML node tree: the entry named in the message.

    ``scopes`` are ``(regex, path)`` pairs: when ``regex`` matches the message, the search is narrowed to the entry
    at ``path`` (a tuple, or a function of the match giving one), e.g. ``(r"fold (\\d+)", lambda m: ('folds',
    int(m[1]) - 1))``. Within it, the first quoted name that is a key or value there gives the line (a name found
    once wins over one found several times); else the first top-level key named as a word; else the scope's line."""
    import yaml
    if node is None:
        return 1
    scope, found = node, []
    for pattern, path in scopes:
        m = re.search(pattern, message)
        if m:
            for k in (path(m) if callable(path) else path):
                child = _child(scope, k)
                if child is None:
                    break
                scope = child
                found.append(k)
            break
    scope_line = yaml_line(node, *found)
    entries = []   # (kind, text, line): kind 0 = key, 1 = scalar value
    for n in _walk(scope):
        if isinstance(n, yaml.MappingNode):
            for k, _ in n.value:
                if isinstance(k, yaml.ScalarNode):
                    entries.append((0, k.value, k.start_mark.line + 1))
        elif isinstance(n, yaml.ScalarNode):
            entries.append((1, n.value, n.start_mark.line + 1))
    first_any = None
    for token in _tokens(message):
        hits = sorted({(kind, line) for kind, text, line in entries if text == token})
        if not hits and len(token) > 1:
            hits = sorted({(2, line) for kind, text, line in entries if kind == 1 and token in text})
        lines = sorted({line for _, line in hits})
        if len(lines) == 1:
            return lines[0]
        if lines and first_any is None:
            first_any = hits[0][1]
    if first_any is not None:
        return first_any
    if isinstance(scope, yaml.MappingNode):
        keys = {k.value: k.start_mark.line + 1 for k, _ in scope.value if isinstance(k, yaml.ScalarNode)}
        for word in re.findall(r'[A-Za-z_][\w-]*', message):
            if word in keys:
                return keys[word]
    return scope_line
