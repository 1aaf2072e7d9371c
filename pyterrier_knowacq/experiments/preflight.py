"""Checks before any work: ``knowacq run FILE`` and ``knowacq train FILE`` (with or without ``--dry-run``) read the
whole file first and report every problem at once, in seconds, before a model is trained or an index is built.

What is checked:

- the experiment file itself: keys, folds, systems, stages, measures
  (:func:`~.experiment_config.config_problems`, all of them, not only the first);
- every model spec, by its kind's own validator (:data:`VALIDATORS`: cross-encoder ``validate_spec``, bi-encoder
  ``validate_dense_spec``, ColBERT ``validate_colbert_spec``), the analysis' ``{spec: ...}`` models too;
- every data path: datasets (embedded names, BEIR folders, ``irds:`` ids looked up in ir_datasets' registry, never
  downloaded) and their splits; run and teacher references of specs (a TREC file path, else a run the dataset ships,
  else ``bm25``) and of ``run(name=...)`` stages; the DPR JSON files of the analysis' probe data;
- every model name (``backbone``, ``init``, ``query_backbone``, teacher models, stage ``model=`` / ``query_model=``,
  the analysis' models): a local folder, a packaged alias, ``random:<name>``, the local Hugging Face cache or a hub id.
  While the hub is offline or unreachable a hub id cannot be verified: a dry run warns ("cannot check offline"), a
  real run stops (it would need the model).

A dry run runs the file's ``dry_run:`` variant on this machine, so the variant is checked as a real run would be. The
real experiment is checked as far as it can be from here: its specs, stages and dataset ids are errors as always; a
local file or folder that only the real run reads (a teacher run kept on the GPU machine) and unverifiable hub ids
are warnings. ``knowacq train FILE --dry-run`` has no variant: it checks the file for this machine and trains
nothing.

Example::

    report = check_experiment('experiments/multistage-msmarco.yaml', dry_run=True)  # raises PreflightError
    report.warnings      # ["model 'roberta-base' cannot be checked offline ...", ...]
"""
from __future__ import annotations

import copy
import importlib
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .._util import KnowacqError

__all__ = ['PreflightError', 'Report', 'check_experiment', 'check_train_file', 'VALIDATORS']

#: each model kind's own spec validator ``(module, function)``: called, never copied
VALIDATORS = {'cross-encoder': ('pyterrier_knowacq.training.stages', 'validate_spec'),
              'bi-encoder': ('pyterrier_knowacq.training.dense', 'validate_dense_spec'),
              'colbert': ('pyterrier_knowacq.training.colbert', 'validate_colbert_spec')}
#: pipeline stage parameters that name a model to load (unless it is one of the experiment's ``models:``)
STAGE_MODEL_PARAMS = ('model', 'query_model')
#: model spec fields that name the weights a model starts from
SPEC_MODEL_FIELDS = ('backbone', 'init', 'query_backbone')
#: ``data:`` / ``validation:`` fields of specs that name a run: a TREC file, a run of the dataset, or bm25
RUN_FIELDS = ('run', 'teacher', 'scores')

_HUB_ID = re.compile(r'^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$')
_FILE_SUFFIXES = ('.trec', '.run', '.res', '.gz', '.txt', '.tsv', '.json', '.jsonl', '.bz2', '.xz', '.zst')
_ONLY_REAL = ' (only the real run reads it, so the dry run goes on)'


class PreflightError(KnowacqError):
    """Every problem the checks found: a numbered list, one problem a line (a single problem is its own one-line
    message). ``problems`` holds them one by one."""

    def __init__(self, source, problems: Sequence[str]):
        self.source = str(source)
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = (f'{len(self.problems)} problems in {source}; nothing was run:\n'
                       + '\n'.join(f'  {i}. {p}' for i, p in enumerate(self.problems, 1)))
        super().__init__(message)


@dataclass
class Report:
    """What the checks found: ``errors`` stop the run (:meth:`raise_errors`), ``warnings`` do not."""
    source: str
    config: Optional[Dict[str, Any]] = None
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    counts: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def raise_errors(self) -> None:
        if self.errors:
            raise PreflightError(self.source, self.errors)

    def summary(self) -> str:
        what = ', '.join(f'{n} {k}' for k, n in self.counts.items() if n)
        verdict = f'{len(self.errors)} problem(s)' if self.errors else 'no problems'
        warned = f', {len(self.warnings)} warning(s)' if self.warnings else ''
        return f'[knowacq] checked {self.source} ({what}) in {self.seconds:.1f} s: {verdict}{warned}'

    def echo(self) -> None:
        for w in self.warnings:
            print(f'[knowacq] warning: {w}', file=sys.stderr, flush=True)


@dataclass
class _Problem:
    text: str
    local: bool = False             # a file or folder of this machine: only a warning when the real run alone reads it
    warning: Optional[str] = None   # a hub id that cannot be verified now: the text when the real run alone loads it


def _looks_like_path(name: str) -> bool:
    return (name.startswith(('/', './', '../', '~')) or name.count('/') > 1 or '\\' in name
            or name.lower().endswith(_FILE_SUFFIXES))


def _node_at(node, *keys):
    """The YAML node at ``keys`` (mapping keys, sequence indexes) under ``node``; ``None`` where it stops."""
    import yaml
    for key in keys:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
            node = node.value[key]
        else:
            return None
    return node


def _is_beir(spec) -> bool:
    return (isinstance(spec, str) and spec.startswith('beir:')) or (isinstance(spec, dict) and bool(spec.get('beir')))


class _Pass:
    """One configuration's checks; ``roots`` maps a top-level section to the YAML path it was read from (a dry run's
    ``models`` may come from ``dry_run: {models: ...}``); ``dry``: the variant a dry run runs (models that the dry
    run swaps for tiny ones are not looked up)."""

    def __init__(self, path, node, roots: Optional[Dict[str, tuple]] = None, dry: bool = False,
                 names: Optional[Dict[str, Optional[Tuple[str, bool]]]] = None, runs: Optional[Dict] = None):
        self.path, self.node, self.roots, self.dry = path, node, roots or {}, dry
        self.problems: List[_Problem] = []
        self.names = {} if names is None else names          # model name -> (message, hub) or None (shared)
        self.runs = {} if runs is None else runs             # (dataset, run, split) -> problem or None (shared)
        self.counts = {'models': 0, 'systems': 0, 'data references': 0, 'model names': 0}
        self._seen_refs = set()

    # -- reporting
    def keys(self, section, *keys) -> tuple:
        return tuple(self.roots.get(section, (section,))) + keys

    def at(self, section, *keys) -> str:
        from ..datasets.readers import yaml_line
        return f'{self.path}:{yaml_line(self.node, *self.keys(section, *keys))}: '

    def add(self, message: str, at: str = '', local: bool = False, warning: Optional[str] = None) -> None:
        self.problems.append(_Problem(f'{at}{message}', local, warning))

    def guard(self, fn, *args, at: str = '', prefix: str = '', local: bool = False):
        try:
            return fn(*args)
        except KnowacqError as e:
            self.add(f'{prefix}{e}', at, local)
        except ImportError as e:
            self.add(f'{prefix}cannot be checked: {e}; install the missing package', at, local=True)
        except Exception as e:  # noqa: BLE001 - a shape no check foresaw: still one problem in the report
            self.add(f'{prefix}cannot be checked ({type(e).__name__}: {" ".join(str(e).split())[:200]})', at)
        return None

    # -- datasets
    def dataset(self, spec, at: str):
        from ..datasets.core import get_dataset
        self.counts['data references'] += 1
        return self.guard(get_dataset, spec, at=at, local=_is_beir(spec))

    def split(self, dataset, split, at: str, prefix: str = '') -> None:
        if dataset is not None and split is not None:
            self.guard(dataset._check_split, str(split), at=at, prefix=prefix)

    def run_ref(self, name, dataset, split, what: str, at: str, *, stage: bool = False, bm25: bool = True) -> None:
        """``name`` as a run: a TREC file (specs only), else a run the dataset ships, else ``bm25`` (specs: PISA BM25
        over the corpus). ``stage``: the ``run(name=...)`` stage, which reads the dataset's runs of every split."""
        key = (what, at, str(name), id(dataset), split, stage)
        if key in self._seen_refs:
            return
        self._seen_refs.add(key)
        self.counts['data references'] += 1
        if not isinstance(name, str) or not name.strip():
            self.add(f'{what} is {name!r}; give the name of a run of the dataset or the path of a TREC run file', at)
            return
        if not stage:
            path = Path(name).expanduser()
            if path.exists():
                if not path.is_file():
                    self.add(f'{what} {name} is a folder, not a TREC run file', at, local=True)
                return
            if _looks_like_path(name):
                shown = f'{name} ({path})' if str(path) != name else name
                self.add(f'{what} file {shown} does not exist; check the path', at, local=True)
                return
            if bm25 and name == 'bm25':
                return
        if dataset is None:
            return
        base = name.split(':')[0]
        splits = tuple(dataset.splits or ()) if stage else (split,)
        found = [s for s in splits if base in [n.split(':')[0] for n in dataset.run_names(s)]]
        if not found:
            names = sorted({n for s in (splits or (None,)) for n in dataset.run_names(s)})
            import difflib
            close = difflib.get_close_matches(name, names, n=1)
            hint = f' (did you mean {close[0]!r}?)' if close else ''
            kind = 'run' if stage else 'run (nor a file)'
            self.add(f'{what}: dataset {dataset.name!r} has no {kind} {name!r}{hint}; its runs: {names or "none"}', at)
            return
        if base in getattr(dataset, 'generated_runs', ()):
            return   # built on first use (a synthetic dataset's teacher): the preflight builds nothing
        for s in found:   # the run files themselves (small: the embedded slice's runs), each read once
            ref = (id(dataset), name, s)
            if ref not in self.runs:
                try:
                    dataset.get_run(name, s)
                    self.runs[ref] = None
                except KnowacqError as e:
                    self.runs[ref] = str(e)
            if self.runs[ref] is not None:
                self.add(f'{what}: {self.runs[ref]}', at)
                return

    # -- models
    def model_name(self, name, trained=()) -> None:
        from ..models.backbones import check_model_name, hub_problem
        if name is None or str(name) in trained:
            return
        name = str(name)
        if name not in self.names:
            self.counts['model names'] += 1
            try:
                check_model_name(name)
                self.names[name] = None
            except KnowacqError as e:
                base = name[len('random:'):].partition('@')[0] if name.startswith('random:') else name
                hub = bool(_HUB_ID.match(base)) and not _looks_like_path(base) and hub_problem() is not None
                self.names[name] = (str(e), hub)
        outcome = self.names[name]
        if outcome is None:
            return
        message, hub = outcome
        warning = None
        if hub:
            import difflib
            from ..models.backbones import ALIASES, hub_problem
            close = difflib.get_close_matches(name, list(ALIASES), n=1, cutoff=0.6)
            hint = f'; did you mean the packaged alias {close[0]!r}?' if close else ''
            warning = (f'model {name!r} cannot be checked offline ({hub_problem()}): it is not a local folder, a packaged '
                       f'alias or in the local Hugging Face cache, so the real run loads it from the hub{hint}')
        self.add(message, local=_looks_like_path(name), warning=warning)

    def spec(self, name: str, spec, kind: str, section: str, keys: tuple, label: str) -> None:
        """A model spec, by its kind's own validator; the line is that of the entry the message names."""
        from ..datasets.readers import locate_error, yaml_line
        module, fn_name = VALIDATORS[kind]
        self.counts['models'] += 1
        checked = copy.deepcopy(spec)
        if kind == 'cross-encoder' and isinstance(checked, dict):
            checked.pop('kind', None)
        try:
            if isinstance(checked, dict):   # `processes: N` belongs to the launcher, not to the family's spec
                from ..training.launch import pop_processes
                checked, _ = pop_processes(checked)
            getattr(importlib.import_module(module), fn_name)(checked)
            return
        except KnowacqError as e:
            message = str(e)
        except Exception as e:  # noqa: BLE001
            message = f'cannot be checked ({type(e).__name__}: {" ".join(str(e).split())[:200]})'
        full = self.keys(section, *keys)
        node = _node_at(self.node, *full)
        scopes = [(r'\bstage (\d+)', lambda m: ('stages', int(m[1]) - 1)), (r'', ())]
        line = locate_error(message, node, scopes) if node is not None else yaml_line(self.node, *full)
        self.add(f'{label}: {message}', f'{self.path}:{line}: ')

    def spec_refs(self, spec, dataset, split, section: str, keys: tuple, label: str) -> None:
        """The runs and teacher models a spec's ``data:`` / ``validation:`` / ``stages[i].data`` name."""
        if not isinstance(spec, dict):
            return
        places = [(spec.get('data'), ('data',), ''), (spec.get('validation'), ('validation',), 'validation ')]
        for i, stage in enumerate(spec.get('stages') or [] if isinstance(spec.get('stages'), list) else []):
            if isinstance(stage, dict):
                places.append((stage.get('data'), ('stages', i, 'data'), f'stage {i + 1} '))
        for mapping, where, what in places:
            if not isinstance(mapping, dict):
                continue
            for fld in RUN_FIELDS:
                value = mapping.get(fld)
                if value is None:
                    continue
                at = self.at(section, *keys, *where, fld)
                if fld == 'scores' and isinstance(value, dict):   # a teacher model (loaded as it is, dry run or not)
                    for k in ('biencoder', 'crossencoder'):
                        self.model_name(value.get(k))
                    continue
                for v in (value if isinstance(value, list) and fld == 'teacher' else [value]):
                    self.run_ref(v, dataset, split, f'{label}: {what}{fld}', at, bm25=fld != 'scores')

    def spec_names(self, spec, kind: str) -> None:
        if not isinstance(spec, dict):
            return
        if self.dry and kind != 'cross-encoder':   # the dry run's bi-encoders and ColBERTs start from tiny models
            return
        for fld in SPEC_MODEL_FIELDS:
            if isinstance(spec.get(fld), (str, Path)):
                self.model_name(spec[fld])


def _experiment_pass(p: _Pass, config: Dict[str, Any]) -> None:
    """Specs, data and model names of one experiment configuration (its key-level problems are reported apart)."""
    from .config import MODEL_TRAINERS, _fold_data, folds_of, runs_on
    from .expressions import parse_pipeline
    models = config.get('models') if isinstance(config.get('models'), dict) else {}
    trained = {str(n) for n in models}
    dataset = p.dataset(config['dataset'], p.at('dataset')) if config.get('dataset') is not None else None
    try:
        folds = folds_of(config, str(p.path))
    except Exception:  # noqa: BLE001 - reported with the file's own problems
        folds = []
    tests, trains = [], {}
    for i, fold in enumerate(folds if dataset is not None else []):
        at = p.at('folds', i) if config.get('folds') else p.at('topics')
        test = p.guard(fold.test_data, dataset, at=at, local=_is_beir(fold.test_dataset) or fold.test.startswith('beir:'))
        if test is not None:
            p.split(*test, at=at)
            tests.append((fold, test))
        if fold.train is None:
            continue
        train = p.guard(_fold_data, dataset, fold.train, at=at, local=fold.train.startswith('beir:'))
        if train is not None and fold.train not in trains:
            p.split(*train, at=at)
            trains[fold.train] = train
    if models and any(fold.train is None for fold in folds):
        p.add(f'models {sorted(trained)} must be trained, so the experiment needs folds: [{{train: ..., test: ...}}] '
              '(topics: evaluates only)', p.at('models'))
    for name, spec in models.items():
        kind = spec.get('kind', 'cross-encoder') if isinstance(spec, dict) else None
        if kind not in MODEL_TRAINERS or kind not in VALIDATORS:
            continue   # reported with the file's own problems
        p.spec(name, spec, kind, 'models', (name,), f'model {name!r}')
        p.spec_names(spec, kind)
        for train_ds, train_split in trains.values():
            p.spec_refs(spec, train_ds, train_split, 'models', (name,), f'model {name!r}')
    systems = config.get('systems') if isinstance(config.get('systems'), dict) else {}
    for name, spec in systems.items():
        expr = spec.get('pipeline') if isinstance(spec, dict) else spec
        try:
            stages = parse_pipeline(expr)
        except Exception:  # noqa: BLE001 - reported with the file's own problems
            continue
        p.counts['systems'] += 1
        at = p.at('systems', name)
        for fold, (test_ds, split) in tests:
            if not runs_on(spec, fold.folder):
                continue
            for stage in stages:
                if stage.name == 'run':
                    p.run_ref(str(stage.params.get('name', 'bm25')), test_ds, split,
                              f'system {name!r} on {fold.folder}: run(name=...)', at, stage=True)
        if not p.dry:   # a dry run swaps every model a stage names that is not a packaged alias for a tiny one
            for stage in stages:
                for param in STAGE_MODEL_PARAMS:
                    p.model_name(stage.params.get(param), trained)
    if config.get('analysis') is not None:
        _analysis_pass(p, config['analysis'], trained)


def _analysis_pass(p: _Pass, section, trained) -> None:
    from ..datasets.core import DATA_DIR
    from ..datasets.readers import _resolve
    try:
        from ..analysis.pipeline import _check
    except ImportError as e:
        p.add(f'analysis: cannot be checked: {e}; install the missing package', p.at('analysis'), local=True)
        return
    p.guard(_check, section, at=p.at('analysis'))
    if not isinstance(section, dict):
        return
    for pname, entry in (section.get('probe_data') or {}).items() if isinstance(section.get('probe_data'), dict) else ():
        if not isinstance(entry, dict):
            continue
        if 'dpr_json' in entry:
            p.counts['data references'] += 1
            at = p.at('analysis', 'probe_data', pname, 'dpr_json')
            given = entry['dpr_json']
            path = DATA_DIR / 'nq-dpr-sample' / 'haystack-dpr-sample.json.gz' if given == 'nq-dpr-sample' else Path(str(given))
            try:
                _resolve(path)
            except KnowacqError:
                p.add(f'analysis probe data {pname!r}: DPR JSON file {given} does not exist (nor {path.name}.gz); '
                      'check the path', at, local=True)
        elif entry.get('dataset') is not None:
            at = p.at('analysis', 'probe_data', pname)
            ds = p.dataset(entry['dataset'], at)
            splits = entry.get('split')
            for split in splits if isinstance(splits, list) else [splits]:
                p.split(ds, split, at, prefix=f'analysis probe data {pname!r}: ')
    train = section.get('train') if isinstance(section.get('train'), dict) else {}
    target = None
    if train.get('dataset') is not None:
        ds = p.dataset(train['dataset'], p.at('analysis', 'train'))
        p.split(ds, train.get('split'), p.at('analysis', 'train'), prefix='analysis train: ')
        target = (ds, train.get('split'))
    for gname, group in (section.get('groups') or {}).items() if isinstance(section.get('groups'), dict) else ():
        if not isinstance(group, dict):
            continue
        if not p.dry:   # a dry run swaps the analysis' models for tiny ones
            p.model_name(group.get('backbone'), trained)
        for cname, entry in (group.get('compare') or {}).items() if isinstance(group.get('compare'), dict) else ():
            label = f'analysis group {gname!r} compare {cname!r}'
            if isinstance(entry, dict) and 'spec' in entry:
                spec = entry['spec']
                if isinstance(spec, dict):
                    spec = {**spec, 'pooling': spec.get('pooling', group.get('pooling'))}
                p.spec(cname, spec, 'bi-encoder', 'analysis', ('groups', gname, 'compare', cname, 'spec'), label)
                p.spec_names(spec, 'bi-encoder')
                ds = p.dataset(entry['dataset'], p.at('analysis', 'groups', gname, 'compare', cname)) \
                    if entry.get('dataset') is not None else (target or (None,))[0]
                split = entry.get('split', (target or (None, None))[1])
                if ds is not None:
                    p.spec_refs(spec, ds, split, 'analysis', ('groups', gname, 'compare', cname, 'spec'), label)
            elif not p.dry:
                names = ([entry] if not isinstance(entry, dict) else
                         [entry.get('base'), entry.get('adapter')] if 'adapter' in entry else
                         [entry.get('query'), entry.get('doc')])
                for name in names:
                    p.model_name(name, trained)


def _safely(p: _Pass, fn, *args, known: bool = False) -> None:
    """Run a pass's checks; a shape that breaks them is a problem of the report when nothing names one yet
    (``known``: another pass did)."""
    try:
        fn(p, *args)
    except Exception as e:  # noqa: BLE001
        if not p.problems and not known:
            p.add(f'the file cannot be checked ({type(e).__name__}: {" ".join(str(e).split())[:200]})')


def _merge(real: _Pass, dry: Optional[_Pass], dry_run: bool) -> Tuple[List[str], List[str]]:
    """Errors and warnings, each once, in the order found. A dry run: the real experiment's unverifiable hub ids and
    the files only the real run reads are warnings; everything the dry run itself reads or loads is an error (it
    checks only the models a dry run does not swap for tiny ones: cross-encoder backbones, teacher models)."""
    errors: Dict[str, None] = {}
    warnings: Dict[str, str] = {}   # text -> the problem it softens (dropped when that problem is an error)
    for prob in real.problems:
        if not dry_run:
            errors[prob.text] = None
        elif prob.warning:
            warnings[prob.warning] = prob.text
        elif prob.local:
            warnings[prob.text + _ONLY_REAL] = prob.text
        else:
            errors[prob.text] = None
    for prob in (dry.problems if dry is not None else []):   # the dry run reads or loads each of these itself
        errors[prob.text] = None
    return list(errors), [w for w, hard in warnings.items() if hard not in errors]


def check_experiment(path, *, dry_run: bool = False, echo: bool = True) -> Report:
    """Check an experiment file (and, for ``dry_run``, its dry-run variant) before any work; print the warnings.

    Returns the :class:`Report` (``report.config`` is the file's mapping) when nothing stops the run.

    Raises:
        PreflightError: listing every problem, one a line (one problem: its own one-line message).
        KnowacqError: when the file cannot be read as a mapping at all (missing, not YAML, empty).
    """
    from .config import KEYS, apply_dry_run, config_problems, locate_problem, read_config
    started = time.perf_counter()
    path = Path(path)
    config, node, problems = read_config(path)
    real = _Pass(path, node)
    real.problems += [_Problem(str(e)) for e in problems]
    overrides = config.get('dry_run')
    if overrides is not None:
        if not isinstance(overrides, dict):
            real.add(f'dry_run is {overrides!r:.60}; write it as a mapping of the keys a --dry-run replaces, e.g. '
                     '{dataset: msmarco-passage, folds: [{train: dl20, test: dl19}]}', real.at('dry_run'))
        else:
            from .._util import check_keys
            real.guard(check_keys, overrides, [k for k in KEYS if k != 'dry_run'], 'dry_run: unknown keys',
                       at=real.at('dry_run'))
    real_ok = not real.problems
    if config.get('dataset') is not None and isinstance(config.get('systems'), dict):
        _safely(real, _experiment_pass, config)
    dry = None
    if dry_run and isinstance(overrides, dict) and isinstance(config.get('systems'), dict):
        variant = apply_dry_run(config)
        roots = {k: ('dry_run', k) for k in overrides if k in KEYS}
        dry = _Pass(path, node, roots, dry=True, names=real.names, runs=real.runs)
        if real_ok:   # else the file's own problems are reported already, and the variant mostly repeats them
            dry_node = _node_at(node, 'dry_run')
            dry.problems += [_Problem(str(locate_problem(path, dry_node, e))) for e in config_problems(variant, str(path))]
        if variant.get('dataset') is not None and isinstance(variant.get('systems'), dict):
            _safely(dry, _experiment_pass, variant, known=bool(real.problems))
    elif dry_run and isinstance(config.get('systems'), dict):
        dry = _Pass(path, node, dry=True, names=real.names, runs=real.runs)   # no variant: the dry run reads the file's own data
        if config.get('dataset') is not None:
            _safely(dry, _experiment_pass, config, known=bool(real.problems))
    errors, warnings = _merge(real, dry, dry_run)
    counts = {k: max(real.counts[k], dry.counts[k] if dry else 0) for k in real.counts}
    report = Report(str(path), config, errors, warnings, counts, time.perf_counter() - started)
    if echo:
        report.echo()
    report.raise_errors()
    return report


def check_train_file(path, *, dry_run: bool = False, echo: bool = True) -> Report:
    """Check a ``knowacq train`` file (dataset, splits, every cross-encoder spec, its runs, teachers and model names)
    before any training; print the warnings. Raises :class:`PreflightError` listing every problem."""
    from ..datasets.readers import file_error, load_yaml, yaml_line
    started = time.perf_counter()
    path = Path(path)
    if not path.exists():
        raise KnowacqError(f'{path} does not exist; give the path of a training YAML file')
    cfg, node = load_yaml(path, 'training file')
    layout = 'write `dataset:`, `models:` (name -> spec) and `train_split:` or `folds: [{train: ..., test: ...}]`'
    if not isinstance(cfg, dict):
        raise file_error(path, yaml_line(node), 'is empty' if cfg is None else f'is a {type(cfg).__name__}, not a mapping',
                         layout)
    p = _Pass(path, node)
    for key in ('dataset', 'models'):
        if not cfg.get(key):
            p.add(f'needs `{key}:`' + (' (name -> spec)' if key == 'models' else '') + f'; {layout}', p.at(key))
    models = cfg.get('models') or {}
    if not isinstance(models, dict):
        p.add(f'models is {models!r:.60}, not a mapping; {layout}', p.at('models'))
        models = {}
    seed = cfg.get('seed')
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        p.add(f'seed is {seed!r:.40}; write an integer such as 42', p.at('seed'))
    splits = []
    if cfg.get('train_split'):
        splits = [(str(cfg['train_split']), p.at('train_split'))]
    elif not isinstance(cfg.get('folds') or [], list):
        p.add(f'folds is not a list; {layout}', p.at('folds'))
    else:
        for i, f in enumerate(cfg.get('folds') or []):
            if not isinstance(f, dict) or not f.get('train'):
                p.add(f'fold {i + 1} has no `train:` split; write each fold as {{train: dl20, test: dl19}}', p.at('folds', i))
            else:
                splits.append((str(f['train']), p.at('folds', i)))
        if not cfg.get('folds'):
            p.add(f'needs `train_split:` or `folds:`; {layout}', f'{path}:{yaml_line(node)}: ')
    dataset = p.dataset(cfg['dataset'], p.at('dataset')) if cfg.get('dataset') else None
    for split, at in splits:
        p.split(dataset, split, at)
    for name, spec in models.items():
        if not isinstance(spec, dict):
            p.add(f'model {name!r} is {spec!r:.40}, not a mapping; write its spec as a mapping such as '
                  '{backbone: minilm-l6, stages: [...]}', p.at('models', name))
            continue
        kind = spec.get('kind', 'cross-encoder')
        if kind != 'cross-encoder':
            p.add(f'model {name!r} has kind {kind!r:.40}; `knowacq train` trains cross-encoders; train it with '
                  '`knowacq run` on the experiment, or remove it', p.at('models', name, 'kind'))
            continue
        p.spec(name, spec, 'cross-encoder', 'models', (name,), f'model {name!r}')
        p.spec_names(spec, 'cross-encoder')
        for split, _ in splits:
            if dataset is not None:
                p.spec_refs(spec, dataset, split, 'models', (name,), f'model {name!r}')
    errors = list(dict.fromkeys(prob.text for prob in p.problems if not (dry_run and prob.warning)))
    warnings = list(dict.fromkeys(prob.warning for prob in p.problems if dry_run and prob.warning))
    report = Report(str(path), cfg, errors, warnings, dict(p.counts), time.perf_counter() - started)
    if echo:
        report.echo()
    report.raise_errors()
    return report
