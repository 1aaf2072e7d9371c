"""The collections that ship inside the package (compressed, each with its ``PROVENANCE.md``) under :data:`DATA_DIR`:
the TREC DL passage slice (:class:`MsMarcoPassage`) and MS MARCO training-side texts (:class:`MsMarcoTrain`); the
embedded BEIR-layout ones (``scifact``, ``nfcorpus``, ...) are :class:`~.beir.BeirDataset` folders.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import pandas as pd

from .._util import KnowacqError
from .base import Dataset
from .readers_files import _read_lines, _resolve
from .readers_text import read_jsonl
from .readers_trec import read_run, read_trec_qrels, read_tsv_topics

__all__ = ['DATA_DIR', 'MsMarcoPassage', 'MsMarcoTrain']

DATA_DIR = Path(__file__).resolve().parents[1] / 'data'  # pyterrier_knowacq/data: the embedded collections


class MsMarcoPassage(Dataset):
    """The embedded TREC DL 2019 + 2020 passage slice (splits ``dl19``, ``dl20``, ``dev-small`` topics only)."""
    name = 'msmarco-passage'
    splits = ('dl19', 'dl20')
    FIRST_STAGES = ('bm25', 'bm25-rm3', 'tasb', 'splade-pp-ed', 'openai-ada2', 'repllama')

    def __init__(self, root: Path = DATA_DIR / 'msmarco-passage'):
        self.root = Path(root)

    def _check_split(self, split):
        if split == 'dev-small':
            return split
        return super()._check_split(split)

    def get_topics(self, split=None):
        return read_tsv_topics(self.root / 'queries' / f'{self._check_split(split)}.tsv')

    def get_qrels(self, split=None):
        return read_trec_qrels(self.root / 'qrels' / f'{self._check_split(split)}.qrels')

    def _corpus_files(self):
        return [_resolve(self.root / 'collection' / 'passages.tsv')]

    def get_corpus_iter(self, verbose=False):
        for line in _read_lines(self.root / 'collection' / 'passages.tsv'):
            docno, _, text = line.partition('\t')
            if docno:
                yield {'docno': docno, 'text': text}

    def provenance(self):
        return (self.root / 'PROVENANCE.md').read_text()

    def run_names(self, split=None):
        return list(self.FIRST_STAGES) + ['rankgpt-3.5', 'rankgpt-3.5:run1..run5', 'rankvicuna-7b', 'rankvicuna-7b:<first stage>']

    def _run_path(self, name: str, split: str) -> Path:
        base, _, variant = name.partition(':')
        runs = self.root / 'runs'
        if base in self.FIRST_STAGES and not variant:
            return runs / 'first-stage' / f'{base}.{split}.top100.trec'
        if base == 'rankgpt-3.5':
            return runs / 'llm-rerankers' / f'rankgpt-gpt-3.5-turbo.bm25-top100.{split}.{variant or "run1"}.trec'
        if base == 'rankvicuna-7b':
            return runs / 'llm-rerankers' / f'rankvicuna-7b.{variant or "bm25"}-top100.{split}.trec'
        raise KnowacqError(f'msmarco-passage has no run {name!r}; choose one of {self.run_names()}')

    def get_run(self, name, split=None):
        split = self._check_split(split)
        return read_run(self._run_path(name, split))


class MsMarcoTrain(Dataset):
    """MS MARCO training-side texts: 620 dev-small queries with a positive passage each (split ``dev-small-positives``).

    The raw training triples (110 queries) are available through :meth:`train_records`.
    """
    name = 'msmarco-passage-train'
    splits = ('dev-small-positives',)

    def __init__(self, root: Path = DATA_DIR / 'msmarco-passage-train'):
        self.root = Path(root)

    def _pairs(self):
        path = _resolve(self.root / 'dev-small-positives' / 'dev-small.positives.tsv')
        rows = []
        for n, line in enumerate(_read_lines(path), 1):
            if not line.strip():
                continue
            r = line.split('\t')
            if len(r) < 4:
                raise KnowacqError(f'{path}:{n}: has {len(r)} tab-separated field(s), not 4; write each line as '
                                   'qid<TAB>docno<TAB>query<TAB>passage text')
            rows.append(r[:4])
        return pd.DataFrame(rows, columns=['qid', 'docno', 'query', 'text'])

    def get_topics(self, split=None):
        self._check_split(split)
        return self._pairs()[['qid', 'query']].drop_duplicates('qid').reset_index(drop=True)

    def get_qrels(self, split=None):
        self._check_split(split)
        df = self._pairs()[['qid', 'docno']].copy()
        df['label'] = 1
        return df

    def _corpus_files(self):
        return [_resolve(self.root / 'dev-small-positives' / 'passages.tsv')]

    def get_corpus_iter(self, verbose=False):
        for line in _read_lines(self.root / 'dev-small-positives' / 'passages.tsv'):
            docno, _, text = line.partition('\t')
            if docno:
                yield {'docno': docno, 'text': text}

    def train_records(self) -> List[dict]:
        """``{query, pos: [...], neg: [...], (pos_scores, neg_scores)}`` records of the 110 MS MARCO train queries."""
        return read_jsonl(self.root / 'combined' / 'train.jsonl', '{"query": "...", "pos": ["..."], "neg": ["..."]}')

    def provenance(self):
        return (self.root / 'PROVENANCE.md').read_text()
