"""The result folder format (``pyterrier_knowacq.results/1``): its one owner, for writers and readers alike.

``knowacq run`` writes one folder per experiment (DESIGN.md, "Result folder format")::

    <results>/
      meta.json                      the experiment's metadata (``"format": FORMAT``)
      config.yaml                    the experiment file exactly as given
      <collection>/                  one per test collection (e.g. dl19, scifact-test)
        aggregated.csv               pt.Experiment's frame: name, <measure>..., significance columns per measure
        perquery.csv                 name, qid, measure, value[, seed]
        topics.jsonl                 {"qid", "query"} per evaluated topic, texts exactly as run
        runs/<system-slug>.res.gz    TREC run of each system (run tag: the slug)
      report.json / report.md        (studies only) claims
      plots/*.png, plots/*.svg       (analyses only)
      tables/*.csv                   (analyses only)

The experiment runner writes with these functions; the reports, ``knowacq verify`` and the leaderboard read with
them. This module sits at the bottom of the package (it imports only :mod:`._util`), so that every layer may use it.

Example::

    from pyterrier_knowacq import results
    meta = results.read_meta('results/quickstart')
    for name in results.collection_names('results/quickstart'):
        agg = results.read_aggregated('results/quickstart', name)
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Union

from ._util import KnowacqError, atomic_write_json, atomic_write_text, read_jsonl, write_csv, write_jsonl

__all__ = ['FORMAT', 'META', 'CONFIG', 'AGGREGATED', 'PERQUERY', 'TOPICS', 'TOPICS_TSV', 'RUNS', 'RUN_SUFFIX',
           'REPORT_JSON', 'REPORT_MD', 'PLOTS', 'TABLES', 'PERQUERY_COLUMNS', 'SIG_SUFFIXES', 'FILE_PATTERNS', 'slug',
           'meta_path', 'collection_dir', 'aggregated_path', 'perquery_path', 'topics_path', 'runs_dir', 'run_name',
           'run_path', 'write_meta', 'write_config', 'write_aggregated', 'write_perquery', 'write_topics',
           'read_meta', 'is_incomplete', 'read_aggregated', 'read_perquery', 'read_topics', 'collection_names',
           'collection_dirs']

PathLike = Union[str, Path]

FORMAT = 'pyterrier_knowacq.results/1'
META = 'meta.json'
CONFIG = 'config.yaml'
AGGREGATED = 'aggregated.csv'
PERQUERY = 'perquery.csv'
TOPICS = 'topics.jsonl'
TOPICS_TSV = 'topics.tsv'   # folders written before topics.jsonl: CSV-quoted by pandas
RUNS = 'runs'
RUN_SUFFIX = '.res.gz'
REPORT_JSON = 'report.json'
REPORT_MD = 'report.md'
PLOTS = 'plots'
TABLES = 'tables'
#: the columns of perquery.csv (an experiment with ``seeds:`` adds ``seed``)
PERQUERY_COLUMNS = ('name', 'qid', 'measure', 'value')
#: the significance columns pt.Experiment adds to aggregated.csv after each measure ``<m>``: ``<m> +`` ...
SIG_SUFFIXES = (' +', ' -', ' p-value', ' reject', ' p-value corrected')
#: every file of the format, as glob patterns relative to the results folder
FILE_PATTERNS = (META, CONFIG, REPORT_JSON, REPORT_MD, f'{PLOTS}/*.png', f'{PLOTS}/*.svg', f'{TABLES}/*.csv',
                 f'*/{AGGREGATED}', f'*/{PERQUERY}', f'*/{TOPICS}', f'*/{TOPICS_TSV}', f'*/{RUNS}/*{RUN_SUFFIX}')


def slug(text: str) -> str:
    """The file name of a system's run (``runs/<slug>.res.gz``) and of a results folder: ``BM25 >> MiniLM`` ->
    ``bm25-minilm``."""
    return re.sub(r'[^A-Za-z0-9._-]+', '-', str(text)).strip('-').lower() or 'system'


# -- paths ---------------------------------------------------------------------------------------------------------

def meta_path(folder: PathLike) -> Path:
    return Path(folder) / META


def collection_dir(folder: PathLike, collection: str) -> Path:
    return Path(folder) / str(collection)


def aggregated_path(folder: PathLike, collection: str) -> Path:
    return collection_dir(folder, collection) / AGGREGATED


def perquery_path(folder: PathLike, collection: str) -> Path:
    return collection_dir(folder, collection) / PERQUERY


def topics_path(folder: PathLike, collection: str) -> Path:
    return collection_dir(folder, collection) / TOPICS


def runs_dir(folder: PathLike, collection: str) -> Path:
    return collection_dir(folder, collection) / RUNS


def run_name(system_slug: str) -> str:
    """``bm25`` -> ``bm25.res.gz`` (a seeded run's slug is ``<slug>.seed<k>``)."""
    return f'{system_slug}{RUN_SUFFIX}'


def run_path(folder: PathLike, collection: str, system_slug: str) -> Path:
    return runs_dir(folder, collection) / run_name(system_slug)


# -- writing -------------------------------------------------------------------------------------------------------

def write_meta(folder: PathLike, meta: Dict) -> None:
    atomic_write_json(meta_path(folder), meta)


def write_config(folder: PathLike, text: str) -> None:
    """config.yaml: the experiment file exactly as given."""
    atomic_write_text(Path(folder) / CONFIG, text)


def write_aggregated(folder: PathLike, collection: str, frame) -> None:
    write_csv(frame, aggregated_path(folder, collection))


def write_perquery(folder: PathLike, collection: str, frame) -> None:
    write_csv(frame, perquery_path(folder, collection))


def write_topics(folder: PathLike, collection: str, topics) -> None:
    """topics.jsonl of a frame with ``qid`` and ``query``. JSON lines, not TSV: query texts holding tabs, quotes,
    newlines or U+2028 come back exactly as run."""
    write_jsonl(topics_path(folder, collection),
                ({'qid': str(q), 'query': str(t)} for q, t in zip(topics['qid'], topics['query'])))


# -- reading -------------------------------------------------------------------------------------------------------

def read_meta(folder: PathLike, required: bool = True) -> Dict:
    """meta.json of a results folder as a dict; ``required=False``: ``{}`` when the folder has none.

    Raises :class:`KnowacqError` (``... is not a results folder (no meta.json) ...``) when it is missing and required,
    and when it is not a JSON object."""
    path = meta_path(folder)
    if not path.exists():
        if not required:
            return {}
        raise KnowacqError(f'{folder} is not a results folder (no meta.json); give a folder written by `knowacq run`')
    try:
        meta = json.loads(path.read_text(encoding='utf-8'))
    except ValueError as e:
        raise KnowacqError(f'{path} is not valid JSON ({e}); re-run `knowacq run` for it') from e
    if not isinstance(meta, dict):
        raise KnowacqError(f'{path} is not a JSON object; re-run `knowacq run` for it')
    return meta


def is_incomplete(folder: PathLike) -> bool:
    """Whether ``folder`` is a results folder that a failed run left marked ``"incomplete": true``."""
    try:
        meta = json.loads(meta_path(folder).read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get('incomplete') is True


def read_aggregated(folder: PathLike, collection: str, **read_csv):
    """aggregated.csv of one collection (``read_csv``: passed to :func:`pandas.read_csv`)."""
    import pandas as pd
    return pd.read_csv(aggregated_path(folder, collection), **read_csv)


def read_perquery(folder: PathLike, collection: str, **read_csv):
    """perquery.csv of one collection; qids are strings unless ``read_csv`` says otherwise (``dtype=``)."""
    import pandas as pd
    read_csv.setdefault('dtype', {'qid': str})
    return pd.read_csv(perquery_path(folder, collection), **read_csv)


def read_topics(folder: PathLike, collection: str) -> Dict[str, str]:
    """qid -> query text, exactly as run: ``topics.jsonl``, or an older folder's CSV-quoted ``topics.tsv``; ``{}``
    when the collection has neither. A file that cannot be read raises."""
    coll_dir = collection_dir(folder, collection)
    jsonl = coll_dir / TOPICS
    if jsonl.is_file():
        return {str(r['qid']): str(r['query']) for r in read_jsonl(jsonl)}
    tsv = coll_dir / TOPICS_TSV
    if tsv.is_file():   # written by pandas' to_csv: parse it as CSV (quotes undone), never split it into lines
        import pandas as pd
        frame = pd.read_csv(tsv, sep='\t', header=None, names=['qid', 'query'], dtype=str, keep_default_na=False,
                            quoting=0, engine='python')
        return dict(zip(frame['qid'], frame['query']))
    return {}


def collection_names(folder: PathLike, meta: Optional[Dict] = None) -> List[str]:
    """The collections of a results folder: meta.json's ``collections`` (in its order), else the folders holding an
    aggregated.csv (sorted)."""
    meta = read_meta(folder, required=False) if meta is None else meta
    infos = meta.get('collections') if isinstance(meta, dict) else None
    if isinstance(infos, list) and infos:
        return [str(c.get('name')) if isinstance(c, dict) else str(c) for c in infos]
    return [d.name for d in collection_dirs(folder, AGGREGATED)]


def collection_dirs(folder: PathLike, holding: str = AGGREGATED) -> List[Path]:
    """The collection folders of a results folder that hold the file ``holding`` (sorted by name)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / holding).is_file()) if folder.is_dir() else []
