"""Readers of JSON text files: JSON lines, BEIR folders (``queries.jsonl``, ``corpus.jsonl``, ``qrels/<split>.tsv``)
and DPR retriever JSON.

Example::

    queries = read_beir_queries('scifact/queries.jsonl')
    records = read_dpr_json('nq-train.json.gz')
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pandas as pd

from .readers_files import _lines_of, _read_text, _show, file_error
from .readers_trec import _number

__all__ = ['read_beir_queries', 'read_beir_qrels', 'iter_beir_corpus', 'read_jsonl', 'read_dpr_json']


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
