"""Convert the released RankGPT distillation data into a TREC teacher run over a dataset's own qids and docnos.

Sun et al. 2023 ("Is ChatGPT Good at Search? Investigating Large Language Models as Re-Ranking Agents", repository
``sunnweiwei/RankGPT``) release MS MARCO training queries with their BM25 candidates and ChatGPT's orderings of them.
The format assumed here (that of the release and of the repository's ``specialization.py``):

* ``marco-train-10k.jsonl`` / ``marco-train-100k.jsonl`` — one JSON object a line::

      {"query_id": "1000094", "query": "...",
       "positive_passages": [{"docid": "...", "title": "...", "text": "..."}],
       "retrieved_passages": [{"docid": "...", "title": "...", "text": "...", "rank": 1}, ...]}

  (20 BM25 candidates, in BM25 order; ``query_id``, ``docid``, ``title`` and ``rank`` may be absent);
* ``marco-train-10k-gpt3.5.json`` / ``marco-train-100k-gpt3.5.json`` — one JSON list holding ChatGPT's answer for
  each line of the ``.jsonl``, in the same order, as text: ``"[5] > [18] > [14] > ... > [17]"`` (1-based positions
  in ``retrieved_passages``).

An answer is read as RankGPT's own ``receive_response`` reads it: every number in it minus one, repeats dropped,
positions outside the list dropped, and the passages it did not name appended in their BM25 order (an answer naming
no passage keeps the BM25 order; both are counted).

Variants also accepted:

* records as JSON lines or as one JSON list, optionally ``.gz``, or a ``.zip`` holding one such file;
* the query under ``query`` (or ``question``, ``query_text``); the candidates under ``retrieved_passages`` (or
  ``passages``, ``hits``, ``candidates``, ``ctxs``), each an object with ``text`` (or ``content``, ``contents``,
  ``passage``; a ``content`` of the form ``Title: ... Content: ...``, as RankGPT's ``rank_gpt.py`` builds it, is read
  as its content part) or a plain string;
* the ordering inside each record (``permutation``, ``response``, ``ranking`` or ``gpt_ranking``) instead of a
  separate file: an answer string, or a list of positions (1-based; 0-based when the list holds a 0);
* a permutation file as JSON lines, or with objects holding one of those keys;
* records whose passages are already in ChatGPT's order (the output of ``receive_response``): ``ranked=True``.

Mapping to the dataset (the released ids are not trusted blindly: a text that matches decides):

* a query maps to the qid of the topic with the same text after normalisation (Unicode NFC, runs of whitespace as one
  space, trimmed), over the topics of ``split`` (default: every split, or all topics);
* a passage maps to the docno of the corpus document with the same normalised ``text`` (its title is not used),
  found by a 64-bit hash of the text in one streaming pass over the corpus: memory grows with the teacher file, never
  with the corpus;
* where no exact match exists, a loose key (lower-cased ASCII letters and digits only; absorbs the mojibake of the
  raw MS MARCO text) is tried, and counted;
* a text shared by several queries or documents (MS MARCO holds duplicate passages) maps to the id the record gives
  (``query_id`` / ``docid``) when it is one of them, else to the first; counted as ambiguous.

Unmapped queries are dropped, unmapped passages are dropped from their list (the rest keep the teacher's order), a
query seen twice keeps its first list; all are counted in the returned report. The output is a TREC run
(``qid Q0 docno rank score tag``, ranks 1.., scores descending, gzipped when the name ends in ``.gz``) that the
training code takes as a teacher run (``data: {teacher: path/to/run}`` in a ranknet stage).

Example::

    from pyterrier_knowacq.training.rankgpt_convert import convert_rankgpt
    report = convert_rankgpt('marco-train-100k.jsonl', 'irds:msmarco-passage/train', 'rankgpt-100k.trec.gz',
                             permutation='marco-train-100k-gpt3.5.json')
    print(report['message'])

Command line::

    python -m pyterrier_knowacq.training.rankgpt_convert marco-train-100k.jsonl rankgpt-100k.trec.gz \\
        --dataset irds:msmarco-passage/train --permutation marco-train-100k-gpt3.5.json
"""
from __future__ import annotations

import gzip
import itertools
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .._util import KnowacqError, atomic_write_bytes
# the reading half (text keys, permutations, the records and permutation files) lives in rankgpt_read; every name
# stays importable from here
from .rankgpt_read import (DOCID_KEYS, PASSAGES_KEYS, PERMUTATION_KEYS, QUERY_ID_KEYS, QUERY_KEYS,  # noqa: F401
                           TEXT_KEYS, _LOOSE_TABLE, _MAX_CANDIDATES, _RECORD_FIX, _TITLE_CONTENT, _hash, _iter_json,
                           _keys, _load_permutations, _open, _passage, _pick, normalise_text, parse_permutation)

__all__ = ['convert_rankgpt', 'parse_permutation', 'normalise_text']


# -- the conversion --------------------------------------------------------------------------------------------------

def _topics(dataset, split) -> Tuple[Sequence[str], Sequence[str]]:
    import pandas as pd
    if split is not None:
        splits = [split] if isinstance(split, str) else list(split)
    else:
        splits = list(getattr(dataset, 'splits', ()) or ()) or [None]
    frames = [dataset.get_topics(s) for s in splits]
    topics = pd.concat(frames, ignore_index=True).drop_duplicates('qid')
    return topics['qid'].astype(str).tolist(), topics['query'].astype(str).tolist()


def _lookup(exact_index, loose_index, exact, loose, given, counts, kind: str):
    """The id of a query or passage: by its exact key, else by its loose key (counted in ``<kind>_loose``); a key
    several ids share counts in ``<kind>_ambiguous`` (:func:`_resolve` picks the record's own id when it is one)."""
    found, ambiguous = _resolve(exact_index.get(exact), given)
    if found is None and loose is not None:
        found, ambiguous = _resolve(loose_index.get(loose), given)
        counts[f'{kind}_loose'] += found is not None
    counts[f'{kind}_ambiguous'] += ambiguous
    return found


def _resolve(candidates, given: Optional[str]) -> Tuple[Optional[str], bool]:
    """(id, ambiguous) from the ids sharing a text; the record's own id wins when it is one of them."""
    if not candidates:
        return None, False
    if len(candidates) == 1:
        return candidates[0], False
    return (given if given in candidates else candidates[0]), True


def convert_rankgpt(path, dataset, out_run, *, permutation=None, ranked: bool = False, split=None,
                    tag: str = 'rankgpt-3.5', batch_size: int = 100_000, verbose: bool = False) -> Dict[str, Any]:
    """Convert RankGPT's released orderings (``path``: ``marco-train-*.jsonl``; ``permutation``: the matching
    ``marco-train-*-gpt3.5.json``) into a TREC run over ``dataset``'s qids and docnos, written to ``out_run``.

    Args:
        dataset: a dataset name or object (``irds:msmarco-passage/train`` for the release).
        permutation: the permutation file; without it each record must hold its ordering (``permutation`` /
            ``response``), or ``ranked=True`` must say its passages are already in ChatGPT's order.
        split: the topics to map query texts to (default every split of the dataset, or all its topics).
        batch_size: corpus documents hashed per batch (progress is printed per batch with ``verbose``).

    Returns a report: ``records``, ``queries_mapped``, ``queries_unmapped``, ``queries_loose``,
    ``queries_ambiguous``, ``duplicate_queries``, ``passages``, ``passages_mapped``, ``passages_unmapped``,
    ``passages_loose``, ``passages_ambiguous``, ``permutations_repaired``, ``permutations_empty``,
    ``queries_written``, ``lines_written``, ``out`` and a one-line ``message``.
    """
    from ..datasets.core import get_dataset
    dataset = get_dataset(dataset)
    path = Path(path)
    perms = _load_permutations(permutation) if permutation is not None else None

    # 1. the teacher file: per record, the query's keys and the passages' keys in teacher order (ids, not texts)
    records = []   # (where, query keys, query id, [(exact, loose, docid), ...])
    wanted_exact: Dict[int, Any] = {}
    wanted_loose: Dict[int, Any] = {}
    stats = dict.fromkeys(('records', 'passages', 'permutations_repaired', 'permutations_empty'), 0)
    for i, (where, rec) in enumerate(_iter_json(path, 'the RankGPT records', '{"query": "...", "retrieved_passages": [...]}')):
        if not isinstance(rec, dict):
            raise KnowacqError(f'{where}: is a JSON {type(rec).__name__}, not an object; {_RECORD_FIX}')
        query = _pick(rec, QUERY_KEYS)
        if not isinstance(query, str):
            raise KnowacqError(f'{where}: has no "query" text (keys: {sorted(rec)[:6]}); {_RECORD_FIX}')
        passages = _pick(rec, PASSAGES_KEYS)
        if not isinstance(passages, list):
            raise KnowacqError(f'{where}: has no "retrieved_passages" list (keys: {sorted(rec)[:6]}); {_RECORD_FIX}')
        cands = [_passage(where, j, p) for j, p in enumerate(passages)]
        if perms is not None:
            if i >= len(perms):
                raise KnowacqError(f'{permutation}: has {len(perms)} permutations but {where} is record {i + 1}; give '
                                   'the permutation file made for this records file (marco-train-100k-gpt3.5.json '
                                   'goes with marco-train-100k.jsonl)')
            answer = perms[i]
        elif ranked:
            answer = list(range(len(cands)))
        else:
            answer = _pick(rec, PERMUTATION_KEYS)
            if answer is None:
                raise KnowacqError(f'{where}: has no ChatGPT ordering; pass the permutation file '
                                   '(--permutation marco-train-100k-gpt3.5.json), or --ranked if the passages are '
                                   'already in ChatGPT\'s order')
        try:
            order, repaired = parse_permutation(answer, len(cands))
        except TypeError:
            raise KnowacqError(f'{where}: its ordering {str(answer)[:40]!r} is not ChatGPT\'s answer ("[2] > [1] > ...") '
                               'or a list of positions; give the gpt3.5 permutation file of RankGPT') from None
        stats['permutations_repaired'] += repaired
        stats['permutations_empty'] += bool(cands) and not (re.search(r'\d', answer) if isinstance(answer, str) else answer)
        ordered = []
        for k in order:
            text, docid = cands[k]
            exact, loose = _keys(text)
            wanted_exact[exact] = None
            if loose is not None:
                wanted_loose[loose] = None
            ordered.append((exact, loose, docid))
        qid_given = _pick(rec, QUERY_ID_KEYS)
        records.append((where, _keys(query), None if qid_given is None else str(qid_given), ordered))
        stats['records'] += 1
        stats['passages'] += len(ordered)
    if perms is not None and len(perms) != stats['records']:
        raise KnowacqError(f'{permutation}: has {len(perms)} permutations but {path} has {stats["records"]} records; give '
                           'the permutation file made for this records file (marco-train-100k-gpt3.5.json goes with '
                           'marco-train-100k.jsonl)')
    if not records:
        raise KnowacqError(f'{path}: holds no records; {_RECORD_FIX}')

    # 2. queries: normalised topic text -> qids
    q_exact: Dict[int, List[str]] = {}
    q_loose: Dict[int, List[str]] = {}
    want_q = {r[1][0] for r in records}
    want_ql = {r[1][1] for r in records} - {None}
    for qid, text in zip(*_topics(dataset, split)):
        exact, loose = _keys(text)
        if exact in want_q:
            q_exact.setdefault(exact, []).append(qid)
        if loose in want_ql:
            q_loose.setdefault(loose, []).append(qid)

    # 3. passages: one streaming pass over the corpus, in batches, keeping only the texts the teacher file holds
    docs = dataset.get_corpus_iter()
    seen = 0
    while True:
        batch = list(itertools.islice(docs, batch_size))
        if not batch:
            break
        for d in batch:
            exact, loose = _keys(d['text'])
            if exact in wanted_exact:
                found = wanted_exact[exact] or []
                if len(found) < _MAX_CANDIDATES:
                    wanted_exact[exact] = found + [str(d['docno'])]
            if loose is not None and loose in wanted_loose:
                found = wanted_loose[loose] or []
                if len(found) < _MAX_CANDIDATES:
                    wanted_loose[loose] = found + [str(d['docno'])]
        seen += len(batch)
        if verbose:
            print(f'rankgpt_convert: {seen:,} corpus documents read', file=sys.stderr, flush=True)

    # 4. the run, in teacher order
    counts = dict.fromkeys(('queries_mapped', 'queries_unmapped', 'queries_loose', 'queries_ambiguous',
                            'duplicate_queries', 'passages_mapped', 'passages_unmapped', 'passages_loose',
                            'passages_ambiguous', 'queries_written', 'lines_written'), 0)
    lines, written, unmapped_examples = [], set(), []
    for where, (qe, ql), qid_given, ordered in records:
        docnos = []
        for exact, loose, docid in ordered:
            docno = _lookup(wanted_exact, wanted_loose, exact, loose, docid, counts, 'passages')
            if docno is None:
                counts['passages_unmapped'] += 1
            else:
                counts['passages_mapped'] += 1
                if docno not in docnos:
                    docnos.append(docno)
        qid = _lookup(q_exact, q_loose, qe, ql, qid_given, counts, 'queries')
        if qid is None:
            counts['queries_unmapped'] += 1
            if len(unmapped_examples) < 3:
                unmapped_examples.append(where)
            continue
        counts['queries_mapped'] += 1
        if qid in written:
            counts['duplicate_queries'] += 1
            continue
        if not docnos:
            continue
        written.add(qid)
        counts['queries_written'] += 1
        n = len(docnos)
        lines.extend(f'{qid} Q0 {d} {r} {n - r + 1} {tag}\n' for r, d in enumerate(docnos, 1))
    counts['lines_written'] = len(lines)
    out_run = Path(out_run)
    data = ''.join(lines).encode('utf-8')
    atomic_write_bytes(out_run, gzip.compress(data, mtime=0) if out_run.suffix == '.gz' else data)
    report = {**stats, **counts, 'out': str(out_run), 'unmapped_query_examples': unmapped_examples}
    report['message'] = (
        f"{report['records']:,} RankGPT records -> {report['queries_written']:,} teacher lists in {out_run}: "
        f"{report['queries_unmapped']:,} queries unmapped, {report['duplicate_queries']:,} duplicate; "
        f"{report['passages_mapped']:,} of {report['passages']:,} passages mapped ({report['passages_unmapped']:,} "
        f"unmapped, {report['passages_loose']:,} by loose text, {report['passages_ambiguous']:,} ambiguous); "
        f"{report['permutations_repaired']:,} answers repaired")
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(
        prog='python -m pyterrier_knowacq.training.rankgpt_convert',
        description="Convert RankGPT's released ChatGPT orderings (marco-train-*.jsonl + marco-train-*-gpt3.5.json) into "
                    "a TREC teacher run over a dataset's qids and docnos (matched by text).")
    parser.add_argument('records', help='the RankGPT records file: marco-train-10k.jsonl or marco-train-100k.jsonl '
                                        '(JSON lines or a JSON list; .gz or .zip accepted)')
    parser.add_argument('out', help='the TREC run to write (gzipped when it ends in .gz)')
    parser.add_argument('--dataset', required=True, help='the dataset whose topics and corpus the texts are matched '
                                                         'against, e.g. irds:msmarco-passage/train')
    parser.add_argument('--permutation', help="ChatGPT's answers, one per record: marco-train-*-gpt3.5.json")
    parser.add_argument('--ranked', action='store_true', help="the records' passages are already in ChatGPT's order")
    parser.add_argument('--split', help='the topics to match query texts against (default: every split)')
    parser.add_argument('--tag', default='rankgpt-3.5', help='the run tag (6th column; default %(default)s)')
    parser.add_argument('--quiet', action='store_true', help='no progress lines')
    args = parser.parse_args(argv)
    try:
        report = convert_rankgpt(args.records, args.dataset, args.out, permutation=args.permutation, ranked=args.ranked,
                                 split=args.split, tag=args.tag, verbose=not args.quiet)
    except KnowacqError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(report['message'])
    return 0


if __name__ == '__main__':
    sys.exit(main())
