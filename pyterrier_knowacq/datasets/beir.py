"""Any BEIR-layout folder as a dataset: ``beir:/path/to/folder`` (or ``{beir: path, name: label}``)."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Dict, Optional

import pandas as pd

from .._util import KnowacqError
from .base import Dataset
from .readers_files import _resolve
from .readers_text import iter_beir_corpus, read_beir_qrels, read_beir_queries

__all__ = ['BeirDataset']


class BeirDataset(Dataset):
    """A BEIR-layout folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv`` (optionally gzipped)."""

    def __init__(self, root, name: Optional[str] = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise KnowacqError(f'BEIR folder {self.root} does not exist; give a folder holding corpus.jsonl, queries.jsonl and qrels/')
        for needed in ('corpus.jsonl', 'queries.jsonl'):
            _resolve(self.root / needed)
        if name is not None and (not isinstance(name, str) or not name.strip() or '/' in name or name.startswith(('beir:', 'irds:'))):
            raise KnowacqError(f'BEIR dataset name {name!r} must be a short non-empty label without "/" (e.g. cisi)')
        self._given_name = name
        self.name = name or self.root.name
        qrels = self.root / 'qrels'
        self.splits = tuple(sorted({p.name.split('.')[0] for p in qrels.glob('*.tsv*')})) if qrels.is_dir() else ()
        if not self.splits:
            raise KnowacqError(f'{self.root}/qrels holds no <split>.tsv files; BEIR folders need qrels to evaluate')

    @cached_property
    def id(self) -> str:
        """The given name, else ``<folder name>-<hash of resolved path and content>``: BEIR's own layout names every
        folder after the collection's parent, so two collections in folders called ``beir`` must not share an id."""
        if self._given_name:
            return self._given_name
        import hashlib
        key = hashlib.sha1(f'{self.root.resolve()}|{self.fingerprint()}'.encode('utf-8', 'surrogateescape')).hexdigest()[:8]
        return f'{self.root.resolve().name}-{key}'

    def _check_split(self, split):
        if split is None:
            return 'test' if 'test' in self.splits else self.splits[-1]
        return super()._check_split(split)

    @cached_property
    def _queries(self) -> Dict[str, str]:
        return read_beir_queries(self.root / 'queries.jsonl')

    def get_qrels(self, split=None):
        return read_beir_qrels(self.root / 'qrels' / f'{self._check_split(split)}.tsv')

    def get_topics(self, split=None):
        qids = self.get_qrels(split)['qid'].unique()
        queries = self._queries
        return pd.DataFrame([(q, queries[q]) for q in qids if q in queries], columns=['qid', 'query'])

    def _corpus_files(self):
        return [_resolve(self.root / 'corpus.jsonl')]

    def get_corpus_iter(self, verbose=False):
        yield from iter_beir_corpus(self.root / 'corpus.jsonl')

    def provenance(self):
        p = self.root / 'PROVENANCE.md'
        return p.read_text() if p.exists() else f'BEIR folder {self.root}'
