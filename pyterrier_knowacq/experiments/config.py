"""Experiment files: reading and checking the YAML (keys, folds, systems, measures) before anything runs.

Every problem is one :class:`~pyterrier_knowacq._util.KnowacqError` naming the key and, for a misspelt key, the
closest allowed one. A fold is ``{train: split, test: split}`` on the experiment's dataset, or, for an out-of-domain
test collection, ``{train: dl20, test: test, test_dataset: scifact}`` (result folder ``scifact-test``). A system is a
pipeline expression or ``{pipeline, tags, collections}``; ``collections`` restricts it to some test collections.

Example::

    config = load_config('experiments/knowacq.yaml')
    [f.folder for f in folds_of(config)]          # ['dl19', 'scifact-test']
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple


from .._util import KnowacqError
from ..datasets.core import Dataset, get_dataset
from ..results import slug as _results_slug
from .dry_run import apply_dry_run  # noqa: F401  (re-exported: what a dry run substitutes lives in dry_run.py)
from ..training.registry import TRAINERS
from .expressions import parse_pipeline
from .components import check_stage

__all__ = ['load_config', 'read_config', 'check_config', 'config_problems', 'apply_dry_run', 'locate_problem', 'folds_of',
           'Fold', 'KEYS', 'FOLD_KEYS', 'SYSTEM_KEYS', 'MODEL_TRAINERS', 'DEFAULT_MEASURES', 'runs_on']

DEFAULT_MEASURES = ['nDCG@10', 'RR(rel=2)@10', 'AP(rel=2)', 'R(rel=2)@100']
#: the defaults on binary qrels (highest label 1: BEIR, MS MARCO dev/small), where rel=2 would score 0 everywhere
BINARY_DEFAULT_MEASURES = ['nDCG@10', 'RR@10', 'AP', 'R@100']
KEYS = {
    'name': 'experiment name (also the results folder name)', 'study': 'spine | multistage | knowacq | ...',
    'description': 'free text', 'dataset': 'dataset name, beir:/path or irds:<id>', 'topics': 'test split(s)',
    'folds': 'list of {train: split, test: split[, test_dataset: name]}', 'models': 'models to train per fold',
    'systems': 'name -> pipeline, or name -> {pipeline, tags, collections}',
    'measures': 'ir_measures names', 'baseline': 'system name', 'test': 't | wilcoxon', 'correction': 'holm | bonferroni | fdr_bh | none',
    'correction_alpha': 'float', 'seed': 'int', 'rerank_depth': 'cut first stages to this depth', 'analysis': 'analysis section',
    'seeds': 'train and evaluate each trained model once per seed, e.g. [1, 2, 3] (seed-independent systems run once)',
    'dry_run': 'overrides applied with --dry-run', 'tags': 'tags for every system', 'output': 'results folder',
    'knowedit': 'the knowledge-editing study (pyterrier_knowacq.analysis.knowedit: sets, edits, fine-tuning, retrievability)',
    'claims': 'knowacq report: {equivalence_margin: {nDCG@10: 0.02, probe_accuracy: 0.05}, per_claim: {cd_eq_c: 0.01}, interval: t | bootstrap}',
}
FOLD_KEYS = {
    'train': 'split of the dataset the models are trained on',
    'test': 'split the systems are evaluated on (of test_dataset when given)',
    'test_dataset': 'evaluate on another dataset, e.g. scifact (out of domain); models still train on `train`',
    'measures': "this collection's measures (default: the experiment's), e.g. rel=1 measures for binary qrels",
}
SYSTEM_KEYS = {
    'pipeline': 'pipeline expression', 'tags': 'tags shown on the leaderboard',
    'collections': 'evaluate only on these test collections (result folder names, e.g. [dl19, scifact-test])',
}
#: model kind -> its training entry point: the training layer's registry (``training.registry.TRAINERS``)
MODEL_TRAINERS = TRAINERS


def _slug(text: str) -> str:
    """A name as a file name (a system's run, a results folder): the result folder format's rule."""
    return _results_slug(text)


def load_config(path) -> Dict[str, Any]:
    """Read and check an experiment file (``yaml.safe_load``); every problem is one :class:`KnowacqError` of one line
    that names the file and line: ``<file>:<line>: <problem>; <fix>`` (``<file>:<line>:<col>: not valid YAML ...``).
    The first problem is raised; :func:`read_config` gives them all."""
    config, _, problems = read_config(path)
    if problems:
        raise problems[0]
    return config


def read_config(path) -> Tuple[Dict[str, Any], Any, List[KnowacqError]]:
    """``(config, YAML node tree, problems)``: every problem :func:`load_config` knows of, in the order it meets them,
    each one line naming ``<file>:<line>``. A file that cannot be read as a mapping at all (missing, not YAML, empty,
    a list) raises its one problem instead."""
    from ..datasets.readers import file_error, load_yaml, yaml_line
    path = Path(path)
    if not path.exists():
        raise KnowacqError(f'experiment file {path} does not exist; see experiments/ for examples')
    config, node = load_yaml(path, 'experiment file')
    if config is None:
        raise file_error(path, 1, 'is empty', 'write a YAML mapping with name:, dataset: and systems: (see experiments/)')
    if not isinstance(config, dict):
        raise file_error(path, node.start_mark.line + 1, f'must be a YAML mapping with keys such as name, dataset, topics, '
                         f'systems, not a {type(config).__name__}', 'write `key: value` lines such as `name: my-experiment`')
    problems: List[KnowacqError] = []
    bad = set()   # keys whose shape is wrong: left out of the checks below, which rely on the shapes
    # the shapes check_config relies on (None: not given)
    shapes = {'name': ((str, int, float), 'a plain name such as my-experiment'),
              'baseline': (str, 'the name of one of the systems'),
              'models': (dict, 'a mapping of model name -> training spec'),
              'measures': ((list, str), 'a list such as [nDCG@10, RR(rel=2)@10]'),
              'seed': (int, 'an integer such as 42'), 'rerank_depth': (int, 'an integer such as 100'),
              'correction_alpha': ((int, float), 'a number such as 0.05')}
    for key, (types, fix) in shapes.items():
        value = config.get(key)
        if (value is None and key == 'name' and key in config) or \
                (value is not None and (isinstance(value, bool) or not isinstance(value, types))):
            problems.append(file_error(path, yaml_line(node, key), f'{key} is {value!r:.60}', f'write {key}: as {fix}'))
            bad.add(key)
    bad_models = set()
    for name, spec in (config.get('models') or {}).items() if 'models' not in bad else ():
        if spec is not None and not isinstance(spec, dict):
            problems.append(file_error(path, yaml_line(node, 'models', name), f'model {name!r} is {spec!r:.60}, not a mapping',
                                       'write its training spec as a mapping such as {backbone: minilm-l6, stages: [...]}'))
            bad_models.add(name)
        elif spec and spec.get('kind') is not None and not isinstance(spec.get('kind'), str):
            problems.append(file_error(path, yaml_line(node, 'models', name, 'kind'),
                                       f'model {name!r} has kind {spec["kind"]!r:.60}', f'choose one of {list(MODEL_TRAINERS)}'))
            bad_models.add(name)
    checked = {k: v for k, v in config.items() if k not in bad}
    if 'name' in bad:
        checked['name'] = 'experiment'
    if bad_models:
        checked['models'] = {k: v for k, v in config['models'].items() if k not in bad_models}
    source = str(path)
    problems += [locate_problem(path, node, e, source) for e in config_problems(checked, source)]
    return config, node, problems


#: where a check_config message is about: its opening words narrow the search, its quoted names find the line
_SCOPES = [(r'^fold (\d+)', lambda m: ('folds', int(m[1]) - 1)),
           (r"""^system (['"])(.*?)\1""", lambda m: ('systems', m[2])),
           (r"""^model (['"])(.*?)\1""", lambda m: ('models', m[2])),
           (r'^(unknown stage|stage |cannot read stage|unbalanced|a system must)', ('systems',)),
           (r'^(the )?baseline\b', ('baseline',)),
           (r'^seeds\b', ('seeds',))]


def locate_problem(path, node, error, source: Optional[str] = None) -> KnowacqError:
    """A :func:`check_config` problem as one ``<file>:<line>: <problem>`` error; ``node`` is the YAML node the
    message's names are looked up in (the whole file, or its ``dry_run:`` block)."""
    from ..datasets.readers import file_error, locate_error, yaml_line
    source = str(path) if source is None else source
    message = str(error)
    if re.match(re.escape(source) + r':\d+', message):
        return error if isinstance(error, KnowacqError) else KnowacqError(message)   # already names its line
    if message.startswith(source):
        message = message[len(source):].lstrip(':').lstrip()
    missing = re.match(r"missing required key '(\w+)'", message)
    if missing:
        message += f'; add `{missing[1]}:` at the top level'
    line = yaml_line(node) if missing else locate_error(message, node, _SCOPES)
    return file_error(path, line, message)


def check_config(config, source: str = '<config>') -> Dict[str, Any]:
    """Check a parsed experiment mapping (keys, folds, systems, models, stages, measures) and return it.

    Args:
        config: the mapping read from the YAML file.
        source: the file name, for the error messages.

    Raises:
        KnowacqError: naming the first problem (and, for a misspelt key, the closest allowed key);
            :func:`config_problems` lists them all.
    """
    problems = config_problems(config, source)
    if problems:
        raise problems[0]
    return config


def config_problems(config, source: str = '<config>') -> List[KnowacqError]:
    """Every problem :func:`check_config` finds, in the order it meets them (the first is the one it raises)."""
    if not isinstance(config, dict):
        return [KnowacqError(f'{source} must be a YAML mapping with keys such as name, dataset, topics, systems')]
    problems: List[KnowacqError] = [_unknown_key(key, KEYS, source) for key in config if key not in KEYS]
    problems += [KnowacqError(f'{source}: missing required key {key!r} ({KEYS[key]})')
                 for key in ('name', 'dataset', 'systems') if key not in config]
    if 'systems' not in config:
        return problems
    if not isinstance(config['systems'], dict) or not config['systems']:
        return problems + [KnowacqError(f'{source}: systems must be a non-empty mapping of name -> pipeline expression')]

    def attempt(fn, *args):
        try:
            return fn(*args)
        except KnowacqError as e:
            problems.append(e)
        except Exception:  # noqa: BLE001 - a shape an earlier problem already names; without one it is a bug
            if not problems:
                raise
        return None

    def both():
        if 'topics' in config and 'folds' in config:
            raise KnowacqError(f'{source}: give either topics (evaluation only) or folds (train/test), not both')
    attempt(both)

    def baseline():
        if config.get('baseline') is not None and config['baseline'] not in config['systems']:
            raise KnowacqError(f'{source}: baseline {config["baseline"]!r} is not one of the systems: {list(config["systems"])}')
    attempt(baseline)
    folds = attempt(folds_of, config, source)
    found = attempt(_system_problems, config, None if folds is None else [f.folder for f in folds], source)
    problems += found or []
    for name, spec in (config.get('models') or {}).items() if isinstance(config.get('models'), dict) else ():
        kind = (spec or {}).get('kind', 'cross-encoder') if isinstance(spec, dict) else None
        if kind not in MODEL_TRAINERS:
            problems.append(KnowacqError(f'{source}: model {name!r} has kind {kind!r}{MODEL_TRAINERS.suggestion(str(kind))}; '
                                         f'choose one of {list(MODEL_TRAINERS)}'))
    for name, expr in config['systems'].items():
        expr = expr.get('pipeline') if isinstance(expr, dict) else expr
        if not isinstance(expr, str):
            continue   # named above: a system is a pipeline expression or a mapping with `pipeline:`
        for stage in attempt(parse_pipeline, expr) or []:
            attempt(check_stage, stage)
    attempt(_measures, config)
    attempt(_check_seeds, config.get('seeds'), 'seeds' in config)
    return problems


def _check_seeds(seeds, given: bool) -> None:
    """``seeds:`` is a non-empty list of distinct integers (each trained model is trained and evaluated per seed)."""
    if not given:
        return
    fix = 'write seeds: as a non-empty list of distinct integers such as [1, 2, 3]'
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise KnowacqError(f'seeds is {seeds!r:.60}; {fix}')
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise KnowacqError(f'seeds repeats {repeated}; {fix}')


def _unknown_key(key, allowed, where: str) -> KnowacqError:
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    return KnowacqError(f'{where}: unknown key {key!r}{hint}; allowed keys: {", ".join(allowed)}')


def _check_systems(config, collections: List[str], source: str) -> None:
    """System entries: a pipeline string or ``{pipeline, tags, collections}``; the baseline runs everywhere."""
    problems = _system_problems(config, collections, source)
    if problems:
        raise problems[0]


def _system_problems(config, collections: Optional[List[str]], source: str) -> List[KnowacqError]:
    """The problems of the system entries (``collections=None``: the folds are broken, their names unknown)."""
    problems = []
    for name, spec in config['systems'].items():
        where = f'{source}: system {name!r}'
        if not isinstance(spec, (str, dict)):
            problems.append(KnowacqError(f'{where} must be a pipeline expression or a mapping with `pipeline:`'))
            continue
        if not isinstance(spec, dict):
            continue
        unknown = [key for key in spec if key not in SYSTEM_KEYS]
        if unknown:
            problems += [_unknown_key(key, SYSTEM_KEYS, where) for key in unknown]
            continue
        if not isinstance(spec.get('pipeline'), str):
            problems.append(KnowacqError(f'{where} needs `pipeline:` (a pipeline expression such as bm25 >> text >> '
                                         'ce(model=...))'))
            continue
        only = spec.get('collections')
        if only is None or collections is None:
            continue
        if not isinstance(only, list) or not only:
            problems.append(KnowacqError(f'{where}: collections must be a non-empty list of test collections, e.g. '
                                         f'{collections}'))
            continue
        for coll in only:
            if coll not in collections:
                close = difflib.get_close_matches(str(coll), collections, n=1)
                hint = f' (did you mean {close[0]!r}?)' if close else ''
                problems.append(KnowacqError(f'{where}: collections names {coll!r}{hint}, which is not a test collection '
                                             f'of this experiment; its collections are {collections}'))
    baseline = config.get('baseline')
    if isinstance(baseline, str) and baseline in config['systems'] and collections is not None:
        missing = [c for c in collections if not runs_on(config['systems'][baseline], c)]
        if missing:
            problems.append(KnowacqError(f'{source}: the baseline {baseline!r} does not run on {missing}; every system is '
                                         'tested against it, so remove its `collections:` or add those collections'))
    return problems


def runs_on(spec, collection: str) -> bool:
    only = spec.get('collections') if isinstance(spec, dict) else None
    return only is None or collection in only


def measures_for(config, fold, qrels) -> list:
    """A fold's measures: its own ``measures:``, else the experiment's, else the defaults for its qrels (graded:
    :data:`DEFAULT_MEASURES`; binary: :data:`BINARY_DEFAULT_MEASURES`)."""
    if fold.measures:
        return _measures({'measures': fold.measures})
    if config.get('measures'):
        return _measures(config)
    binary = qrels is not None and len(qrels) and int(qrels['label'].max()) <= 1
    return _measures({'measures': BINARY_DEFAULT_MEASURES if binary else DEFAULT_MEASURES})


def check_measures_fit_qrels(measures, qrels, collection: str) -> None:
    """Refuse a measure that no judged passage can satisfy: ``RR(rel=2)@10`` on binary qrels (MS MARCO dev/small,
    highest label 1) is 0 for every query, a silent wrong number, so the fold needs its own ``measures:``."""
    if qrels is None or not len(qrels):
        return
    top = int(qrels['label'].max())
    bad = [str(m) for m in measures if int(m.params.get('rel') or 1) > top]
    if bad:
        raise KnowacqError(f'{collection}: {", ".join(bad)} count(s) only passages judged >= rel, but the highest label '
                           f'in these qrels is {top}, so every query would score 0; give this fold its own measures, '
                           'e.g. {train: ..., test: ..., measures: [RR@10, nDCG@10, R@100]}')


def _measures(config):
    """The ``measures:`` as ir_measures objects; ir_measures names (``nDCG@10``, ``RR(rel=2)@10``) and trec_eval
    names (``ndcg_cut_10``, ``ndcg_cut.10``, ``recip_rank``, ``map``, ``P_10``, ``recall_100``) are both accepted."""
    import ir_measures
    out = []
    for m in config.get('measures') or DEFAULT_MEASURES:
        try:   # str() inside: ir_measures accepts some bad parameters (RR(arel=2)) and fails only when printing them
            parsed = ir_measures.parse_measure(str(m))
            str(parsed)
            out.append(parsed)
            continue
        except Exception:
            pass
        try:  # trec_eval syntax; one name may stand for several measures (ndcg_cut.10,20)
            parsed = list(ir_measures.parse_trec_measure(str(m)))
            [str(x) for x in parsed]
            out.extend(parsed)
        except Exception:
            raise KnowacqError(f'unknown measure {m!r}; write ir_measures names such as nDCG@10, RR(rel=2)@10, AP(rel=2), '
                               'R@100, or trec_eval names such as ndcg_cut_10, recip_rank, map, recall_100, P_10') from None
    unique = {}  # the same measure written twice (nDCG@10 and ndcg_cut_10) is measured once
    for m in out:
        unique.setdefault(str(m), m)
    return list(unique.values())


@dataclass
class Fold:
    """One train/test pair. ``test`` is a split of the experiment's dataset, or of ``test_dataset`` when given (e.g.
    ``{train: dl20, test: test, test_dataset: scifact}``: models trained on DL20, evaluated on SciFact test)."""
    test: str
    train: Optional[str] = None
    test_dataset: Optional[Any] = None   # a dataset name, or a mapping {beir: path, name: label}
    measures: Optional[List[str]] = None

    @property
    def folder(self) -> str:
        """The result folder's collection name: ``dl19``, ``scifact-test``, ..."""
        if self.test_dataset:
            return _slug(f'{_dataset_label(self.test_dataset)}-{self.test}')
        return _slug(_dataset_label(self.test) if ':' in self.test else self.test)

    def test_data(self, dataset: Dataset):
        """``(dataset, split)`` the systems are evaluated on."""
        if self.test_dataset:
            return get_dataset(self.test_dataset), self.test
        return _fold_data(dataset, self.test)


def _dataset_label(name) -> str:
    """``scifact`` -> ``scifact``; ``beir:/data/trec-covid`` -> ``trec-covid``; ``{beir: ..., name: cisi}`` -> ``cisi``;
    ``irds:a/b/c`` -> ``a/b/c`` (the whole id: ``irds:msmarco-passage/trec-dl-2019/judged`` and
    ``.../trec-dl-2020/judged`` must not both be ``judged``). A label names a folder only: results are grouped by
    the dataset's :attr:`~.datasets.Dataset.id`."""
    from ..datasets.core import dataset_spec_label
    return dataset_spec_label(name)


def folds_of(config, source: str = '<config>') -> List[Fold]:
    """The experiment's folds (``folds:``, else one per ``topics:`` entry), checked; collection names are unique."""
    folds = []
    if config.get('folds') is not None:
        if not isinstance(config['folds'], list) or not config['folds']:
            raise KnowacqError(f'{source}: folds must be a non-empty list such as [{{train: dl20, test: dl19}}]')
        for i, f in enumerate(config['folds'], 1):
            if not isinstance(f, dict):
                folds.append(Fold(str(f)))
                continue
            for key in f:
                if key not in FOLD_KEYS:
                    raise _unknown_key(key, FOLD_KEYS, f'{source}: fold {i}')
            if not f.get('test'):
                raise KnowacqError(f'{source}: fold {i} needs `test:` (the split to evaluate on), e.g. {{train: dl20, test: dl19}}')
            measures = f.get('measures')
            if measures is not None:
                if not isinstance(measures, list) or not measures:
                    raise KnowacqError(f'{source}: fold {i} measures must be a non-empty list such as [nDCG@10, RR@10]')
                _measures({'measures': measures})
                measures = [str(m) for m in measures]
            folds.append(Fold(measures=measures, **{k: (v if k == 'test_dataset' and isinstance(v, dict) else str(v))
                                                    for k, v in f.items() if v is not None and k != 'measures'}))
    else:
        topics = config.get('topics')
        folds = [Fold(str(t)) for t in (topics if isinstance(topics, list) else [topics])]
    seen = {}
    for f in folds:
        if f.folder in seen:
            raise KnowacqError(f'{source}: two folds write the same collection folder {f.folder!r} ({seen[f.folder]} and '
                               f'{f}); evaluate each test collection once')
        seen[f.folder] = f
    return folds


def _fold_data(dataset: Dataset, split: Optional[str]):
    """A split of the experiment's dataset, or another dataset named in its place (``irds:...``, ``scifact``)."""
    from ..datasets.core import DATASETS
    if split and (split.startswith(('irds:', 'beir:')) or (split in DATASETS and split not in dataset.splits)):
        return get_dataset(split), None
    return dataset, split
