"""The checks of one configuration (:class:`_Pass`): datasets and splits, run and teacher references, model names
(a local folder, a packaged alias, ``random:<name>``, the local Hugging Face cache or a hub id) and model specs, by
each kind's own validator (:data:`VALIDATORS`). Each problem is kept with the file line it names."""
from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..._util import KnowacqError
from ..model_names import is_hub_id, random_base, registry_of
from .report import _Problem


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
_FILE_SUFFIXES = ('.trec', '.run', '.res', '.gz', '.txt', '.tsv', '.json', '.jsonl', '.bz2', '.xz', '.zst')


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
        from ...datasets.readers import yaml_line
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
        from ...datasets.core import get_dataset
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
            hint = registry_of('run', names).suggestion(name)
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
        from ...models.backbones import check_model_name, hub_problem
        if name is None or str(name) in trained:
            return
        name = str(name)
        if name not in self.names:
            self.counts['model names'] += 1
            try:
                check_model_name(name)
                self.names[name] = None
            except KnowacqError as e:
                base = random_base(name)
                hub = is_hub_id(base) and not _looks_like_path(base) and hub_problem() is not None
                self.names[name] = (str(e), hub)
        outcome = self.names[name]
        if outcome is None:
            return
        message, hub = outcome
        warning = None
        if hub:
            from ...models.backbones import ALIASES, hub_problem
            alias = 'a packaged alias' + registry_of('packaged alias', ALIASES).suggestion(name)
            warning = (f'model {name!r} cannot be checked offline ({hub_problem()}): it is not a local folder, {alias} '
                       'or in the local Hugging Face cache, so the real run loads it from the hub')
        self.add(message, local=_looks_like_path(name), warning=warning)

    def spec(self, name: str, spec, kind: str, section: str, keys: tuple, label: str) -> None:
        """A model spec, by its kind's own validator; the line is that of the entry the message names."""
        from ...datasets.readers import locate_error, yaml_line
        module, fn_name = VALIDATORS[kind]
        self.counts['models'] += 1
        checked = copy.deepcopy(spec)
        if kind == 'cross-encoder' and isinstance(checked, dict):
            checked.pop('kind', None)
        try:
            if isinstance(checked, dict):   # `processes: N` belongs to the launcher, not to the family's spec
                from ...training.launch import pop_processes
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
