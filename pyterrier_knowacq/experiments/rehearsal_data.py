"""The data of the scale rehearsal that needs the layers above ``datasets``: the PISA BM25 index of a synthetic
collection and its teacher in the released RankGPT format.

A :class:`~pyterrier_knowacq.datasets.synthetic.SyntheticDataset` generates and reads its own corpus, topics and qrels;
this module builds, for it, what needs ``models`` and ``training``: for a ``coverage`` share of the train queries,
their BM25 top-``depth`` candidates (:class:`~pyterrier_knowacq.models.first_stage.PisaBM25` over the corpus) with a
simulated LLM's ordering (relevant first, then by word overlap, with noise; a few answers malformed as ChatGPT's
sometimes are), written as ``marco-train-sim.jsonl`` + ``marco-train-sim-gpt3.5.json`` and converted by
:func:`~pyterrier_knowacq.training.rankgpt_convert.convert_rankgpt` into the dataset's run ``rankgpt-sim`` (train
split), with the conversion report beside it (``conversion.json``). The dataset reads the teacher once built
(:meth:`~pyterrier_knowacq.datasets.synthetic.SyntheticDataset.teacher_folder`).

:func:`prepare_generated` builds everything at once, each build a metered stage (``knowacq run`` calls it after the
preflight, which builds nothing).

Example::

    ds = get_dataset({'synthetic': {'passages': 20000, 'queries': 300, 'teacher': {'coverage': 0.5, 'depth': 20}}})
    prepare_generated(ds)
    ds.get_run('rankgpt-sim', 'train'), ds.teacher_report()
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np

from .._util import atomic_directory, atomic_write_json
from ..datasets.synthetic import TEACHER_RUN, SyntheticDataset, _locked, _stage

__all__ = ['prepare_generated', 'build_teacher']


def prepare_generated(dataset) -> Optional[Path]:
    """Build the docstore, the PISA index of the corpus and the teacher of a synthetic dataset (each a metered stage
    when built); returns the docstore folder. Any other dataset has nothing generated on first use: ``None``."""
    if not isinstance(dataset, SyntheticDataset):
        return None
    from ..models.first_stage import pisa_index
    folder = dataset.folder
    with _stage(f'index: PISA {dataset.name}'):   # (~0 s when cached)
        pisa_index(dataset)
    build_teacher(dataset)
    return folder


def build_teacher(dataset: SyntheticDataset) -> Path:
    """The RankGPT-format teacher files and their conversion (built on first use, once, under a lock)."""
    t = dataset.params['teacher']
    target = dataset.teacher_target()
    if (target / 'conversion.json').exists():
        return target
    with _locked(target.with_name(target.name + '.lock')):
        if (target / 'conversion.json').exists():
            return target
        with atomic_directory(target, overwrite=True) as tmp:
            _build_teacher(dataset, tmp, target, t['coverage'], t['depth'])
    return target


def _build_teacher(dataset: SyntheticDataset, tmp: Path, target: Path, coverage: float, depth: int) -> None:
    from ..models.first_stage import PisaBM25, pisa_index
    from ..training.rankgpt_convert import convert_rankgpt
    train = dataset.get_topics('train')
    rng = np.random.default_rng([dataset.params['seed'], 4])
    n = max(1, int(round(coverage * len(train))))
    covered = train.iloc[np.sort(rng.choice(len(train), n, replace=False))].reset_index(drop=True)
    pisa_index(dataset)   # (prepare_generated builds it first, as its own stage)
    with _stage(f'teacher: BM25 top-{depth} of {n:,} train queries, RankGPT-format records'):
        run = PisaBM25(dataset, num_results=depth)(covered[['qid', 'query']])
        labels = {(q, d): lab for q, d, lab in dataset._all_qrels[['qid', 'docno', 'label']].itertuples(index=False)}
        records, answers = tmp / 'marco-train-sim.jsonl', []
        with open(records, 'w', encoding='utf-8') as f:
            for qid, rows in run.sort_values(['qid', 'rank']).groupby('qid', sort=False):
                query = rows['query'].iloc[0]
                docnos = rows['docno'].astype(str).tolist()
                texts = dataset.get_texts(docnos)
                f.write(json.dumps({
                    'query_id': str(qid), 'query': query,
                    'positive_passages': [{'docid': d, 'title': '', 'text': t} for d, t in zip(docnos, texts)
                                          if labels.get((str(qid), d), 0) >= 2],
                    'retrieved_passages': [{'docid': d, 'title': '', 'text': t, 'rank': r}
                                           for r, (d, t) in enumerate(zip(docnos, texts), 1)]}) + '\n')
                answers.append(_llm_answer(query, docnos, texts, labels, str(qid), np.random.default_rng(
                    [dataset.params['seed'], 5, int(qid)])))
        (tmp / 'marco-train-sim-gpt3.5.json').write_text(json.dumps(answers), encoding='utf-8')
    with _stage('teacher: convert_rankgpt (one streaming pass over the corpus)'):
        report = convert_rankgpt(records, dataset, tmp / f'{TEACHER_RUN}.trec',
                                 permutation=tmp / 'marco-train-sim-gpt3.5.json', split='train', tag=TEACHER_RUN)
    report['out'] = str(target / f'{TEACHER_RUN}.trec')          # where it lies once the folder is in place
    report['message'] = report['message'].replace(str(tmp), str(target))
    report['train_queries'] = int(len(train))
    report['coverage_of_train'] = round(report['queries_written'] / max(1, len(train)), 6)
    atomic_write_json(tmp / 'conversion.json', report)
    print(f'[knowacq] {dataset.name}: teacher {TEACHER_RUN}: {report["message"]}; covers '
          f'{report["queries_written"]:,} of {len(train):,} train queries ({report["coverage_of_train"]:.1%})',
          file=sys.stderr, flush=True)


def _llm_answer(query: str, docnos: List[str], texts: List[str], labels, qid: str, rng) -> str:
    """A simulated ChatGPT answer over the candidates (BM25 order): ``"[3] > [1] > ..."``, relevant first, then by the
    number of query words a passage holds, with noise; one answer in twenty is malformed (a repeat, two positions
    missing), as ChatGPT's sometimes are (the converter repairs them as RankGPT's ``receive_response`` does)."""
    words = set(query.split())
    scores = [2.0 * labels.get((qid, d), 0) + len(words & set(t.split())) + rng.normal(0, 0.75)
              for d, t in zip(docnos, texts)]
    order = [int(i) + 1 for i in np.argsort(-np.asarray(scores), kind='stable')]
    if len(order) > 4 and rng.random() < 0.05:
        order = order[:2] + order[1:2] + order[4:]
    return ' > '.join(f'[{i}]' for i in order)
