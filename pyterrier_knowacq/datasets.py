"""Datasets the PyTerrier way: topics, qrels, a corpus iterator, text lookup and precomputed runs.

Embedded collections ship inside the package (compressed, each with its ``PROVENANCE.md``): ``msmarco-passage``
(TREC DL19 + DL20 slice with graded qrels, 31k passage texts, first-stage runs and LLM teacher orderings),
``msmarco-passage-train``, ``scifact``, ``nfcorpus``, ``vaswani``, ``cranfield`` and ``nq-dpr-sample``. Any BEIR-layout
folder works as ``beir:/path/to/folder`` and any ir_datasets id as ``irds:<id>`` (where the network allows).

Example::

    ds = get_dataset('msmarco-passage')
    pipeline = ds.run_transformer('bm25') >> ds.text_loader() >> cross_encoder
    pt.Experiment([pipeline], ds.get_topics('dl19'), ds.get_qrels('dl19'), ['nDCG@10'])
"""
from __future__ import annotations

import gzip
import io
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pandas as pd
import pyterrier as pt

from ._util import KnowacqError

__all__ = ['Dataset', 'BeirDataset', 'MsMarcoPassage', 'MsMarcoTrain', 'IrdsDataset', 'DATASETS', 'get_dataset',
           'TextLoader', 'RunTransformer', 'read_run']

DATA_DIR = Path(__file__).parent / 'data'


def _resolve(path: Path) -> Path:
    """``path`` or ``path.gz``, whichever exists."""
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


def _read_lines(path: Path) -> List[str]:
    try:
        with open_text(path) as f:
            # split on '\n' only: raw MS MARCO text holds characters (\x85, \u2028) that str.splitlines breaks on
            return [line.rstrip('\r') for line in f.read().split('\n')]
    except UnicodeDecodeError as e:
        raise KnowacqError(f'{path} is not valid UTF-8 ({e}); re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8)') from e


def read_run(path) -> pd.DataFrame:
    """A TREC run file -> ``[qid, docno, score, rank]`` (ranks re-derived from scores, ties broken by file order)."""
    rows = []
    for n, line in enumerate(_read_lines(Path(path)), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 6:
            raise KnowacqError(f'{path}:{n} is not a TREC run line (qid Q0 docno rank score tag): {line[:80]!r}')
        rows.append((parts[0], parts[2], float(parts[4])))
    df = pd.DataFrame(rows, columns=['qid', 'docno', 'score'])
    df = df.sort_values(['qid', 'score'], ascending=[True, False], kind='stable')
    df['rank'] = df.groupby('qid').cumcount()
    return df.reset_index(drop=True)


def read_trec_qrels(path) -> pd.DataFrame:
    rows = []
    for n, line in enumerate(_read_lines(Path(path)), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            raise KnowacqError(f'{path}:{n} is not a TREC qrels line (qid iter docno label): {line[:80]!r}')
        rows.append((parts[0], parts[2], int(parts[3])))
    return pd.DataFrame(rows, columns=['qid', 'docno', 'label'])


class Dataset:
    """Base class of every collection. Subclasses fill in the readers."""
    name: str = ''
    splits: tuple = ()

    def __repr__(self):
        return f'{type(self).__name__}({self.name!r})'

    def _check_split(self, split: Optional[str]) -> str:
        split = split or (self.splits[-1] if self.splits else 'test')
        if self.splits and split not in self.splits:
            raise KnowacqError(f'dataset {self.name!r} has no split {split!r}; choose one of {list(self.splits)}')
        return split

    # -- to implement
    def get_topics(self, split: Optional[str] = None) -> pd.DataFrame:
        raise NotImplementedError

    def get_qrels(self, split: Optional[str] = None) -> pd.DataFrame:
        raise NotImplementedError

    def get_corpus_iter(self, verbose: bool = False) -> Iterator[Dict[str, str]]:
        raise NotImplementedError

    def provenance(self) -> str:
        return ''

    # -- shared behaviour
    @cached_property
    def _texts(self) -> Dict[str, str]:
        return {d['docno']: d['text'] for d in self.get_corpus_iter()}

    def get_texts(self, docnos) -> List[str]:
        texts = self._texts
        missing = [d for d in docnos if d not in texts]
        if missing:
            raise KnowacqError(f'{len(missing)} docno(s) have no text in dataset {self.name!r} (first: {missing[0]!r}); '
                               'the run and the corpus do not match — use a run over this corpus')
        return [texts[d] for d in docnos]

    def text_loader(self, field: str = 'text') -> 'TextLoader':
        return TextLoader(self, field)

    def run_names(self, split: Optional[str] = None) -> List[str]:
        return []

    def get_run(self, name: str, split: Optional[str] = None) -> pd.DataFrame:
        raise KnowacqError(f'dataset {self.name!r} ships no precomputed runs; available: {self.run_names(split) or "none"}')

    def run_transformer(self, name: str, k: Optional[int] = None) -> 'RunTransformer':
        return RunTransformer(self, name, k)

    def corpus_fingerprint(self) -> str:
        """Changes whenever the corpus files change (used to rebuild cached indexes)."""
        import hashlib
        h = hashlib.sha1(self.name.encode())
        for p in sorted(self._corpus_files()):
            st = Path(p).stat()
            h.update(f'{p}:{st.st_size}:{int(st.st_mtime)}'.encode())
        return h.hexdigest()[:16]

    def _corpus_files(self) -> List[Path]:
        return []


class TextLoader(pt.Transformer):
    """Adds the ``text`` of each ``docno`` from a dataset's corpus, for ``>>`` before a neural re-ranker.

    Example::

        bm25 >> dataset.text_loader() >> CrossEncoder.from_pretrained('my-model')
    """

    def __init__(self, dataset: Dataset, field: str = 'text'):
        self.dataset = dataset
        self.field = field

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        import pyterrier_alpha as pta
        pta.validate.columns(inp, includes=['docno'])
        out = inp.copy()
        out[self.field] = self.dataset.get_texts(out['docno'].tolist()) if len(out) else pd.Series([], dtype=object)
        return out

    def __repr__(self):
        return f'{self.dataset.name}.text_loader()'

    def __eq__(self, other):
        return isinstance(other, TextLoader) and other.dataset.name == self.dataset.name and other.field == self.field

    def __hash__(self):
        return hash(('TextLoader', self.dataset.name, self.field))


class RunTransformer(pt.Transformer):
    """A precomputed run as a first stage: returns, for each input query, that query's ranked list.

    Example::

        ds.run_transformer('bm25') >> ds.text_loader() >> reranker
    """

    def __init__(self, dataset: Dataset, name: str, k: Optional[int] = None):
        self.dataset = dataset
        self.name = name
        self.k = k

    @cached_property
    def _run(self) -> pd.DataFrame:
        runs = [self.dataset.get_run(self.name, split) for split in self.dataset.splits
                if self.name.split(':')[0] in [n.split(':')[0] for n in self.dataset.run_names(split)]]
        if not runs:
            raise KnowacqError(f'dataset {self.dataset.name!r} has no run {self.name!r}; available: {self.dataset.run_names()}')
        return pd.concat(runs, ignore_index=True)

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        import pyterrier_alpha as pta
        pta.validate.query_frame(inp, extra_columns=['query'])
        run = self._run
        if self.k is not None:
            run = run[run['rank'] < self.k]
        missing = set(inp['qid']) - set(run['qid'])
        if missing:
            raise KnowacqError(f'run {self.name!r} of {self.dataset.name!r} has no results for {len(missing)} of the topics '
                               f'(e.g. qid {sorted(missing)[0]!r}); use topics the run covers')
        out = inp[['qid', 'query']].merge(run, on='qid')
        if out.empty:
            return pd.DataFrame(columns=['qid', 'query', 'docno', 'score', 'rank'])
        return out.sort_values(['qid', 'rank']).reset_index(drop=True)

    def __repr__(self):
        return f'run({self.name!r}' + (f', k={self.k}' if self.k else '') + ')'

    def __eq__(self, other):
        return isinstance(other, RunTransformer) and (other.dataset.name, other.name, other.k) == (self.dataset.name, self.name, self.k)

    def __hash__(self):
        return hash(('RunTransformer', self.dataset.name, self.name, self.k))


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
        split = self._check_split(split)
        rows = [line.split('\t', 1) for line in _read_lines(self.root / 'queries' / f'{split}.tsv') if line.strip()]
        return pd.DataFrame(rows, columns=['qid', 'query'])

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
        rows = [line.split('\t') for line in _read_lines(self.root / 'dev-small-positives' / 'dev-small.positives.tsv')]
        return pd.DataFrame([r[:4] for r in rows if len(r) >= 4], columns=['qid', 'docno', 'query', 'text'])

    def get_topics(self, split=None):
        self._check_split(split)
        return self._pairs()[['qid', 'query']].drop_duplicates('qid').reset_index(drop=True)

    def get_qrels(self, split=None):
        self._check_split(split)
        df = self._pairs()[['qid', 'docno']].copy()
        df['label'] = 1
        return df

    def get_corpus_iter(self, verbose=False):
        for line in _read_lines(self.root / 'dev-small-positives' / 'passages.tsv'):
            docno, _, text = line.partition('\t')
            if docno:
                yield {'docno': docno, 'text': text}

    def train_records(self) -> List[dict]:
        """``{query, pos: [...], neg: [...], (pos_scores, neg_scores)}`` records of the 110 MS MARCO train queries."""
        return [json.loads(line) for line in _read_lines(self.root / 'combined' / 'train.jsonl') if line.strip()]

    def provenance(self):
        return (self.root / 'PROVENANCE.md').read_text()


class BeirDataset(Dataset):
    """A BEIR-layout folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv`` (optionally gzipped)."""

    def __init__(self, root, name: Optional[str] = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise KnowacqError(f'BEIR folder {self.root} does not exist; give a folder holding corpus.jsonl, queries.jsonl and qrels/')
        for needed in ('corpus.jsonl', 'queries.jsonl'):
            _resolve(self.root / needed)
        self.name = name or self.root.name
        qrels = self.root / 'qrels'
        self.splits = tuple(sorted({p.name.split('.')[0] for p in qrels.glob('*.tsv*')})) if qrels.is_dir() else ()
        if not self.splits:
            raise KnowacqError(f'{self.root}/qrels holds no <split>.tsv files; BEIR folders need qrels to evaluate')

    def _check_split(self, split):
        if split is None:
            return 'test' if 'test' in self.splits else self.splits[-1]
        return super()._check_split(split)

    @cached_property
    def _queries(self) -> Dict[str, str]:
        return {q['_id']: q['text'] for q in map(json.loads, filter(str.strip, _read_lines(self.root / 'queries.jsonl')))}

    def get_qrels(self, split=None):
        split = self._check_split(split)
        lines = _read_lines(self.root / 'qrels' / f'{split}.tsv')
        rows = [line.split('\t') for line in lines[1:] if line.strip()]
        return pd.DataFrame([(r[0], r[1], int(float(r[2]))) for r in rows], columns=['qid', 'docno', 'label'])

    def get_topics(self, split=None):
        qids = self.get_qrels(split)['qid'].unique()
        queries = self._queries
        return pd.DataFrame([(q, queries[q]) for q in qids if q in queries], columns=['qid', 'query'])

    def _corpus_files(self):
        return [_resolve(self.root / 'corpus.jsonl')]

    def get_corpus_iter(self, verbose=False):
        for line in _read_lines(self.root / 'corpus.jsonl'):
            if line.strip():
                d = json.loads(line)
                title, text = d.get('title') or '', d.get('text') or ''
                yield {'docno': str(d['_id']), 'text': f'{title} {text}'.strip() if title else text}

    def provenance(self):
        p = self.root / 'PROVENANCE.md'
        return p.read_text() if p.exists() else f'BEIR folder {self.root}'


class IrdsDataset(Dataset):
    """Any ir_datasets id (``irds:msmarco-passage/trec-dl-2019/judged``); needs the network to download."""

    def __init__(self, irds_id: str):
        import ir_datasets
        self.name = f'irds:{irds_id}'
        try:
            self._ds = ir_datasets.load(irds_id)
        except KeyError as e:
            raise KnowacqError(f'unknown ir_datasets id {irds_id!r}; see https://ir-datasets.com for the list') from e
        self.splits = ()

    def _check_split(self, split):
        return split

    def _guard(self, fn):
        try:
            return fn()
        except Exception as e:  # ir_datasets raises many kinds of download errors
            raise KnowacqError(f'{self.name}: could not read the data ({type(e).__name__}: {e}); ir_datasets downloads need '
                               'the network — offline, use an embedded dataset or a beir:/path folder') from e

    def get_topics(self, split=None):
        return self._guard(lambda: pd.DataFrame([(q.query_id, getattr(q, 'text', None) or q[1]) for q in self._ds.queries_iter()],
                                                columns=['qid', 'query']))

    def get_qrels(self, split=None):
        return self._guard(lambda: pd.DataFrame([(q.query_id, q.doc_id, int(q.relevance)) for q in self._ds.qrels_iter()],
                                                columns=['qid', 'docno', 'label']))

    def get_corpus_iter(self, verbose=False):
        for d in self._guard(self._ds.docs_iter):
            yield {'docno': d.doc_id, 'text': getattr(d, 'text', '') or ''}

    def get_texts(self, docnos):
        store = self._guard(self._ds.docs_store)
        docs = store.get_many(list(docnos))
        return [docs[d].text for d in docnos]

    def provenance(self):
        return f'ir_datasets {self.name[5:]} (documentation: https://ir-datasets.com)'


DATASETS = {
    'msmarco-passage': MsMarcoPassage,
    'msmarco-passage-train': MsMarcoTrain,
    **{name: (lambda n=name: BeirDataset(DATA_DIR / n, n)) for name in ('scifact', 'nfcorpus', 'vaswani', 'cranfield', 'nq-dpr-sample')},
}

_CACHE: Dict[str, Dataset] = {}


def get_dataset(name) -> Dataset:
    """Look up a dataset: an embedded name, ``beir:/path`` or ``irds:<id>`` (a :class:`Dataset` passes through)."""
    if isinstance(name, Dataset):
        return name
    if not isinstance(name, str) or not name:
        raise KnowacqError(f'dataset must be a name, got {name!r}; choose one of {sorted(DATASETS)}, beir:/path or irds:<id>')
    if name not in _CACHE:
        if name.startswith('beir:'):
            _CACHE[name] = BeirDataset(os.path.expanduser(name[5:]))
        elif name.startswith('irds:'):
            _CACHE[name] = IrdsDataset(name[5:])
        elif name in DATASETS:
            _CACHE[name] = DATASETS[name]()
        else:
            raise KnowacqError(f'unknown dataset {name!r}; choose one of {sorted(DATASETS)}, beir:/path/to/folder or irds:<id>')
    return _CACHE[name]
