"""The contract every model family follows, and what makes a saved model a PyTerrier artifact.

Every family (:class:`~pyterrier_knowacq.models.biencoder.BiEncoder`, :class:`~pyterrier_knowacq.models.crossencoder.CrossEncoder`,
:class:`~pyterrier_knowacq.models.colbert.ColBERTModel`) offers::

    X.new(backbone, ...)            a fresh model from a backbone name (the starting point of fine-tuning)
    X.from_pretrained(path_or_id)   a saved folder, a hub id or a packaged alias (strict: every weight from the files)
    X(path)                         the same as from_pretrained(path): what pt.Artifact.load(path) calls
    x.save(path)                    safetensors + config + tokenizer + knowacq.json + pt_meta.json + README.md
    x.scorer()                      the re-ranker (qid, query, docno, text -> score, rank)

and dual encoders (bi-encoder, ColBERT) add ``x.query_encoder()`` and ``x.doc_encoder()``; indexes only store what a
doc encoder emits (``model.doc_encoder() >> index.indexer()``).

A saved folder is a ``pt.Artifact``: ``pt_meta.json`` names its ``type`` and ``format`` (``bi_encoder.knowacq``,
``cross_encoder.knowacq``, ``colbert_model.knowacq``; indexes ``colbert_index.knowacq``), which the
``pyterrier.artifact`` entry points map to the class, so ``pt.Artifact.load(path)`` returns the right object and
``build_package`` / ``from_url`` / ``to_hf`` / ``from_hf`` work as for any PyTerrier artifact. Folders saved before
``pt_meta.json`` existed (and official ColBERTv2 checkpoints) are recognised by :func:`metadata_adapter`.

The model card (``README.md``) is written on every save and refreshed from ``training.json`` (written by the trainer
after the save) whenever the folder is packaged (``build_package``, ``to_hf``); :func:`write_model_card` refreshes it
on disk.
"""
from __future__ import annotations

import io
import json
import re
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Protocol, Tuple, Union, runtime_checkable

import pyterrier as pt

__all__ = ['ModelFamily', 'DualEncoderFamily', 'ModelArtifact', 'FORMAT', 'PACKAGE_HINT', 'write_model_card',
           'describe_config', 'render_model_card', 'metadata_adapter', 'is_path']

FORMAT = 'knowacq'
PACKAGE_HINT = 'pyterrier-knowacq'
CARD = 'README.md'
_CARD_TAG = re.compile(r'<!-- knowacq-card (\{.*?\}) -->', re.S)
#: knowacq.json ``kind`` -> artifact type
TYPES = {'bi-encoder': 'bi_encoder', 'cross-encoder': 'cross_encoder', 'colbert': 'colbert_model'}


@runtime_checkable
class ModelFamily(Protocol):
    """What every model family offers (``new`` and ``from_pretrained`` are classmethods)."""

    def new(self, backbone: str, **options) -> 'ModelFamily': ...

    def from_pretrained(self, path_or_id, **options) -> 'ModelFamily': ...

    def save(self, path) -> Path: ...

    def scorer(self, **options) -> pt.Transformer: ...


@runtime_checkable
class DualEncoderFamily(ModelFamily, Protocol):
    """A family that encodes queries and documents apart (bi-encoders, ColBERT): indexes store what ``doc_encoder``
    emits and retrievers read what ``query_encoder`` adds."""

    def query_encoder(self, **options) -> pt.Transformer: ...

    def doc_encoder(self, **options) -> pt.Transformer: ...


def is_path(value) -> bool:
    """Whether a constructor's first argument names a folder or model (``X(path)`` = ``X.from_pretrained(path)``)."""
    import os
    return isinstance(value, (str, os.PathLike))


def describe_config(config) -> str:
    """``bert, 2 layers, 32 dims`` of a transformers config, for the model card."""
    parts = [str(getattr(config, 'model_type', '') or type(config).__name__)]
    for attr, unit in (('num_hidden_layers', 'layers'), ('hidden_size', 'dims')):
        if getattr(config, attr, None) is not None:
            parts.append(f'{getattr(config, attr)} {unit}')
    archs = getattr(config, 'architectures', None)
    if archs:
        parts.append(f'architectures {", ".join(archs)}')
    return ', '.join(parts)


class ModelArtifact(pt.Artifact):
    """Mixin of the model families: artifact type/format, ``pt_meta.json`` and the model card.

    ``path`` is the folder the model was loaded from (``pt.Artifact.NO_PATH`` for a model built in memory: ``new()``,
    or a DPR pair whose question encoder lives elsewhere); :meth:`save` does not move it, so an artifact never points
    at a checkpoint that training has since left behind: package what you saved with
    ``pt.Artifact.load(model.save(path)).build_package()`` (or ``.to_hf(repo)``).
    """
    ARTIFACT_TYPE = ''
    ARTIFACT_FORMAT = FORMAT
    ARTIFACT_PACKAGE_HINT = PACKAGE_HINT

    def _set_artifact_path(self, folder=None) -> None:
        """``self.path``: ``folder`` where it is a local folder, else ``pt.Artifact.NO_PATH``."""
        pt.Artifact.__init__(self, Path(folder) if folder is not None and Path(folder).is_dir() else pt.Artifact.NO_PATH)

    def _adopt(self, other) -> None:
        """Become ``other`` (a model just loaded by ``from_pretrained``): how ``X(path)`` equals
        ``X.from_pretrained(path)``, the constructor ``pt.Artifact.load`` calls."""
        self.__dict__.update(other.__dict__)

    def _write_artifact_files(self, folder: Path, card: Dict[str, Any]) -> None:
        """``pt_meta.json`` and the model card, into a folder being written."""
        from .._util import atomic_write_json, atomic_write_text
        atomic_write_json(folder / 'pt_meta.json', {'type': self.ARTIFACT_TYPE, 'format': self.ARTIFACT_FORMAT,
                                                    'package_hint': self.ARTIFACT_PACKAGE_HINT})
        info = {'type': self.ARTIFACT_TYPE, 'command': _command(), 'created': _now(), 'versions': _versions(), **card}
        atomic_write_text(folder / CARD, render_model_card(folder, info))

    # -- packaging: the card is refreshed from training.json (the trainer writes it after save())
    def _package_files(self) -> Iterator[Tuple[str, Union[str, io.BytesIO]]]:
        for rel, file in super()._package_files():
            if rel == CARD and isinstance(self.path, Path) and (self.path / 'training.json').exists():
                text = refreshed_model_card(self.path)
                if text is not None:
                    yield rel, io.BytesIO(text.encode('utf-8'))
                    continue
            yield rel, file

    def _hf_readme(self, *, repo: str, branch: Optional[str] = 'main', pretty_name: Optional[str] = None,
                   metadata: Optional[Dict[str, Any]] = None) -> Optional[str]:
        """The hub page is the model card (with the hub's tags), loading with ``pt.Artifact.from_hf``."""
        text = refreshed_model_card(self.path, hf_repo=repo if branch in (None, 'main') else f'{repo}@{branch}') \
            if isinstance(self.path, Path) else None
        if text is None:
            return super()._hf_readme(repo=repo, branch=branch, pretty_name=pretty_name, metadata=metadata)
        tags = ['pyterrier', 'pyterrier-artifact', f'pyterrier-artifact.{self.ARTIFACT_TYPE}',
                f'pyterrier-artifact.{self.ARTIFACT_TYPE}.{self.ARTIFACT_FORMAT}', 'pyterrier-knowacq']
        head = ['---'] + ([f'pretty_name: {pretty_name!r}'] if pretty_name else []) + ['tags:'] + \
            [f'- {t}' for t in tags] + ['task_categories:', '- text-retrieval', 'viewer: false', '---', '']
        return '\n'.join(head) + text


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _in_package(prog: Path) -> Optional[str]:
    """The module name of a script inside this package (``pyterrier_knowacq.cli``), else None."""
    root = Path(__file__).resolve().parents[1]
    try:
        rel = prog.resolve().relative_to(root).with_suffix('')
    except ValueError:
        return None
    return '.'.join((root.name,) + rel.parts)


def _command() -> str:
    """The command line of this process, as it was typed (``knowacq train x.yaml``, ``python -m pytest ...``)."""
    argv = list(sys.argv) or ['']
    prog = Path(argv[0])
    if argv[0] in ('', '-c', '-'):
        head = 'python -c ...' if argv[0] != '-' else 'python - (a script on stdin)'
    elif prog.name == '__main__.py':
        head = f'python -m {prog.parent.name}'
    elif prog.suffix == '.py' and _in_package(prog):
        head = 'python -m ' + _in_package(prog)
    elif prog.suffix == '.py':
        head = f'python {shlex.quote(argv[0])}'
    else:
        head = prog.name
    return ' '.join([head] + [shlex.quote(a) for a in argv[1:]])


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for dist in ('pyterrier-knowacq', 'python-terrier', 'transformers', 'torch'):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def _card_info(text: str) -> Optional[Dict[str, Any]]:
    m = _CARD_TAG.search(text or '')
    if not m:
        return None
    try:
        return json.loads(m.group(1))
    except json.JSONDecodeError:
        return None


def refreshed_model_card(folder, hf_repo: Optional[str] = None) -> Optional[str]:
    """The folder's model card rendered again from its own provenance and the folder's current ``training.json``;
    ``None`` where the folder holds no card written by knowacq."""
    folder = Path(folder)
    card = folder / CARD
    info = _card_info(card.read_text(encoding='utf-8')) if card.exists() else None
    if info is None:
        return None
    return render_model_card(folder, info, hf_repo=hf_repo)


def write_model_card(folder) -> Path:
    """Rewrite ``folder/README.md`` from its provenance and the ``training.json`` now in the folder (call it after
    writing ``training.json`` next to a saved model). A folder without a knowacq card is left as it is."""
    from .._util import atomic_write_text
    text = refreshed_model_card(folder)
    if text is not None:
        atomic_write_text(Path(folder) / CARD, text)
    return Path(folder) / CARD


def _fmt(value) -> str:
    if isinstance(value, float):
        return f'{value:.4f}'
    return '-' if value is None else str(value)


def _training_section(folder: Path) -> list:
    path = folder / 'training.json'
    if not path.exists():
        return ['## Training', '',
                'No `training.json` in this folder: the model was not trained by `knowacq train` (a fresh model from '
                '`new()`, a converted checkpoint), or the trainer has not written it yet.', '']
    try:
        info = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, json.JSONDecodeError) as e:
        return ['## Training', '', f'`training.json` could not be read ({e}).', '']
    lines = ['## Training', '']
    facts = [('dataset', info.get('dataset')), ('training split', info.get('split')), ('stage', info.get('stage')),
             ('seed', info.get('seed')), ('optimiser steps', info.get('steps')), ('training groups', info.get('groups')),
             ('selected checkpoint', info.get('selected')), ('wall time (s)', info.get('wall_time_s'))]
    lines += [f'- {k}: `{v}`' for k, v in facts if v is not None]
    if info.get('data'):
        lines += [f'- data notes: `{json.dumps(info["data"], sort_keys=True, default=str)}`']
    if info.get('spec') is not None:
        try:
            import yaml
            spec = yaml.safe_dump(info['spec'], sort_keys=False, default_flow_style=False).rstrip()
        except Exception:   # a spec yaml cannot represent: show it as JSON
            spec = json.dumps(info['spec'], indent=2, default=str)
        lines += ['', 'Training spec:', '', '```yaml', spec, '```']
    lines += ['', '## Validation', '']
    val = info.get('validation') or {}
    best = info.get('best_metric')
    if not val and best is None:
        lines += ['No validation yardsticks were recorded for this model.', '']
        return lines
    n_val = len(info.get('validation_qids') or [])
    lines += [f'Measured on {n_val or "the"} validation queries carved from the training split (the test split is '
              'never read):', '']
    measures = {m for v in val.values() if isinstance(v, dict) for m in v}
    measures = sorted(measures | ({'nDCG@10'} if best is not None else set()))
    lines += ['| | ' + ' | '.join(measures) + ' |', '|---' * (len(measures) + 1) + '|']
    for label, key in (('first stage', 'first_stage'), ('untrained model (start)', 'start')):
        if isinstance(val.get(key), dict):
            lines.append(f'| {label} | ' + ' | '.join(_fmt(val[key].get(m)) for m in measures) + ' |')
    if best is not None:
        lines.append('| best checkpoint | ' + ' | '.join(_fmt(best) if m == 'nDCG@10' else '-' for m in measures) + ' |')
    return lines + ['']


_USAGE = {
    'bi_encoder': '''import pyterrier as pt
import pyterrier_dr
from pyterrier_knowacq.models.first_stage import PisaBM25

# a pyterrier_knowacq.BiEncoder
model = {load}
ds = pt.get_dataset('knowacq:msmarco-passage')
rerank = PisaBM25('msmarco-passage') % 100 >> ds.text_loader() >> model.scorer()
index = pyterrier_dr.FlexIndex('corpus.flex')
(model.doc_encoder() >> index.indexer()).index(ds.get_corpus_iter())
retrieve = model.query_encoder() >> index.retriever()''',
    'cross_encoder': '''import pyterrier as pt
from pyterrier_knowacq.models.first_stage import PisaBM25

# a pyterrier_knowacq.CrossEncoder
model = {load}
ds = pt.get_dataset('knowacq:msmarco-passage')
pipeline = PisaBM25('msmarco-passage') % 100 >> ds.text_loader() >> model.scorer()
pt.Experiment([pipeline], ds.get_topics('dl19'), ds.get_qrels('dl19'), ['nDCG@10'])''',
    'colbert_model': '''import pyterrier as pt
from pyterrier_knowacq.models.colbert_index import ColBERTIndex
from pyterrier_knowacq.models.first_stage import PisaBM25

# a pyterrier_knowacq.models.colbert.ColBERTModel
model = {load}
ds = pt.get_dataset('knowacq:msmarco-passage')
rerank = PisaBM25('msmarco-passage') % 100 >> ds.text_loader() >> model.scorer()
index = ColBERTIndex('corpus.colbert')
(model.doc_encoder() >> index.indexer()).index(ds.get_corpus_iter())
retrieve = index.retriever(model, num_results=100)''',
}

_FAMILY = {'bi_encoder': 'bi-encoder (single vector per text)', 'cross_encoder': 'cross-encoder (point-wise re-ranker)',
           'colbert_model': 'ColBERT (late interaction, token vectors)'}


def render_model_card(folder, info: Dict[str, Any], hf_repo: Optional[str] = None) -> str:
    """The model card of a saved folder: what it is, how it was made and trained, how to load it in a pipeline."""
    folder = Path(folder)
    kind = info.get('type', '')
    title = info.get('title') or f'{_FAMILY.get(kind, kind)} from {info.get("backbone", "?")}'
    lines = [f'<!-- knowacq-card {json.dumps(info, sort_keys=True, default=str)} -->', '', f'# {title}', '',
             f'A PyTerrier artifact (`{kind}.{FORMAT}`) written by pyterrier-knowacq '
             f'{info.get("versions", {}).get("pyterrier-knowacq", "")}.'.replace(' .', '.'), '', '## Model', '',
             f'- family: {_FAMILY.get(kind, kind)}', f'- backbone: `{info.get("backbone", "?")}`']
    if info.get('architecture'):
        lines.append(f'- architecture: {info["architecture"]}')
    for key, value in (info.get('settings') or {}).items():
        lines.append(f'- {key}: `{value}`')
    lines.append('')
    lines += _training_section(folder)
    lines += ['## How it was made', '', f'Saved {info.get("created", "")} by:', '', '```', info.get('command', '?'), '```',
              '', 'with ' + ', '.join(f'{k} {v}' for k, v in (info.get('versions') or {}).items()) + '.', '']
    load = f'pt.Artifact.from_hf({hf_repo!r})' if hf_repo else "pt.Artifact.load('path/to/this/folder')"
    lines += ['## Use it in a pipeline', '', '```python', _USAGE.get(kind, 'model = {load}').format(load=load), '```',
              '', '`pt.Artifact.load` needs `pip install pyterrier-knowacq` (the `pyterrier.artifact` entry point '
              f'`{kind}.{FORMAT}`); `artifact.build_package()` makes a `.tar.lz4` that `pt.Artifact.from_url` opens, and '
              '`to_hf(repo)` / `pt.Artifact.from_hf(repo)` share it on the Hugging Face hub.', '']
    return '\n'.join(lines)


def metadata_adapter(path, directory_listing) -> Optional[Dict[str, str]]:
    """``pyterrier.artifact.metadata_adapter``: type and format of knowacq folders written before ``pt_meta.json``
    (``knowacq.json``), of ColBERTv2 checkpoints (``artifact.metadata`` + weights) and of ColBERT indexes."""
    listing = set(directory_listing or ())
    if 'knowacq.json' in listing:
        try:
            kind = json.loads((Path(path) / 'knowacq.json').read_text()).get('kind')
        except (OSError, json.JSONDecodeError, AttributeError):
            return None
        if kind in TYPES:
            return {'type': TYPES[kind], 'format': FORMAT}
    if 'artifact.metadata' in listing and listing & {'model.safetensors', 'pytorch_model.bin'}:
        return {'type': 'colbert_model', 'format': FORMAT}
    if {'meta.json', 'tokens.faiss', 'tokens.f16'} <= listing:
        return {'type': 'colbert_index', 'format': FORMAT}
    return None
