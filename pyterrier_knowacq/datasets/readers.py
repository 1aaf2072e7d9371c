"""Low-level readers of the files knowacq reads: TREC runs, qrels and topics, BEIR folders, DPR JSON and YAML.

Every problem in a file is one :class:`~pyterrier_knowacq._util.KnowacqError` of one line that names the file, the
line (1-based) it applies to, the problem and the fix::

    queries.jsonl:3: is not valid JSON (Expecting ',' delimiter at column 14); write one JSON object per line, ...

Texts are never altered: files are split on ``'\\n'`` only (MS MARCO text holds ``\\x85`` and ``\\u2028``, which
``str.splitlines`` would break on) and a trailing ``'\\r'`` is the only thing removed from a line.

Example::

    run = read_run('bm25.dl19.trec')                 # qid, docno, score, rank
    queries = read_beir_queries('scifact/queries.jsonl')

The readers live by concern in :mod:`.readers_files` (opening files, :func:`file_error`), :mod:`.readers_trec` (runs,
qrels, topics), :mod:`.readers_text` (JSON lines, BEIR, DPR JSON) and :mod:`.readers_yaml`; this module re-exports them.
"""
from .readers_files import (_lines_of, _one_line, _read_lines, _read_text, _resolve, _show,  # noqa: F401 - re-exported
                            file_error, open_text)
from .readers_text import (_beir_id, _beir_text, _check_dpr_record, _json_records, _json_type,  # noqa: F401
                           _WS, iter_beir_corpus, read_beir_qrels, read_beir_queries, read_dpr_json, read_jsonl)
from .readers_trec import (_TAG, _label, _number, read_run, read_topics, read_trec_qrels,  # noqa: F401
                           read_trec_topics, read_tsv_topics)
from .readers_yaml import (_QUOTED, _YAML_HINTS, _bad_scalar, _check_duplicate_keys, _child,  # noqa: F401
                           _syntax_error, _tokens, _walk, _yaml_fix, load_yaml, locate_error, yaml_line)

__all__ = ['open_text', 'read_run', 'read_trec_qrels', 'read_tsv_topics', 'read_trec_topics', 'read_topics',
           'read_beir_queries', 'read_beir_qrels', 'iter_beir_corpus', 'read_jsonl', 'read_dpr_json', 'load_yaml',
           'yaml_line', 'locate_error', 'file_error']
