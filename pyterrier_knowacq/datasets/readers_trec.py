"""Readers of TREC files: runs, qrels and topics (``qid<TAB>query`` or classic ``<top>`` blocks).

Example::

    run = read_run('bm25.dl19.trec')                 # qid, docno, score, rank
    qrels = read_trec_qrels('dl19.qrels')            # qid, docno, label
"""
from __future__ import annotations

import math
import re
from typing import Optional

import pandas as pd

from .readers_files import _lines_of, _show, file_error

__all__ = ['read_run', 'read_trec_qrels', 'read_tsv_topics', 'read_trec_topics', 'read_topics']


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
