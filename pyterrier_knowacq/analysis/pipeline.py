"""The knowledge-acquisition analysis behind an experiment's ``analysis:`` section: probes per layer, statistics,
integrated gradients, tables and plots in the results folder.

Section format (see ``experiments/knowacq.yaml``)::

    analysis:
      n: [2, 3, 4, 5]
      probes: [concat, interaction]
      test: mcnemar                      # or bootstrap; Holm over the layers of each curve
      max_length: 128
      probe: {l2_grid: [0.001, 0.1], max_epochs: 300, patience: 20}
      probe_data:
        msmarco: {dataset: msmarco-passage, split: dl19, negatives: judged, rel_min: 2, max_per_query: 20}
        nq: {dpr_json: nq-dpr-sample}
      train: {dataset: msmarco-passage, split: dl20}      # where `spec:` models are fine-tuned (cached)
      groups:
        minilm-cls:
          pooling: cls
          data: [msmarco]
          layers: all                    # or a stride (3) or a list of indices
          backbone: minilm-l6
          compare:
            fine-tuned: {spec: {backbone: minilm-l6, pooling: cls, steps: 150}}
            random: random:minilm-l6
            dpr-paired: {query: facebook/dpr-question_encoder-single-nq-base, doc: facebook/dpr-ctx_encoder-single-nq-base}
      ig: {groups: [minilm-cls], data: msmarco, texts: 16, steps: 20}   # also threshold (0.1 / 0.01) and skip: [label]

The ``ig:`` section is checked with the rest before anything runs (keys, groups, data, ``texts >= 1``, ``steps >= 2``,
``0 < threshold < 1``). A model is a name (alias, folder, hub id, ``random:``, or a name of the experiment's ``models:`` passed in
``models``), ``{base: M, adapter: LORA}`` (a LoRA adapter merged into its base, e.g. RepLLaMA),
``{spec: <bi-encoder spec>}`` (fine-tuned with :func:`~pyterrier_knowacq.training.dense.train_biencoder`,
cached, so the same spec in ``models:`` is trained once), or ``{query: M, doc: M}`` (separate encoders).

Outputs: ``tables/probe_accuracy.csv``, ``tables/probe_n_trend.csv``, ``tables/probe_data.csv``,
``tables/ig_layers.csv``, ``tables/ig_neurons.csv``, ``plots/probe-*.png|svg``, ``plots/ig-*.png|svg``.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from .._util import KnowacqError, atomic_write_text, check_keys

__all__ = ['run_analysis', 'ANALYSIS_KEYS']

ANALYSIS_KEYS = {'n', 'probes', 'test', 'max_length', 'batch_size', 'probe', 'probe_data', 'train', 'groups', 'ig'}
GROUP_KEYS = {'pooling', 'data', 'layers', 'backbone', 'compare', 'max_length', 'query_prefix', 'doc_prefix'}
IG_KEYS = {'groups', 'data', 'texts', 'steps', 'threshold', 'skip'}
DECODER_HINTS = ('llama', 'smol', 'mistral', 'qwen', 'gpt', 'repllama')


def _tiny(name: str) -> str:
    random = name.startswith('random:')
    base = name[len('random:'):] if random else name
    tiny = 'tiny-llama' if any(h in base.lower() for h in DECODER_HINTS) else 'tiny-bert'
    return f'random:{tiny}@1' if random else tiny   # @1: random:tiny-bert@0 has tiny-bert's very weights


def _dry(config: Dict) -> Dict:
    """Every model swapped for tiny-bert / tiny-llama, a few examples, short probes and IG."""
    config = copy.deepcopy(config)
    # an entry's own `dry_run:` names the offline stand-in of its data (an irds: collection cannot be read offline)
    config['probe_data'] = {name: dict(spec.get('dry_run') or spec) for name, spec in (config.get('probe_data') or {}).items()}
    if isinstance(config.get('train'), dict) and config['train'].get('dry_run'):
        config['train'] = dict(config['train']['dry_run'])
    for spec in config['probe_data'].values():
        if 'dpr_json' not in spec:
            spec['max_queries'] = 9
        spec['max_per_query'] = 3
        spec['min_examples'] = 3
    config['probe'] = {**(config.get('probe') or {}), 'max_epochs': 20, 'l2_grid': [1e-2]}
    config['max_length'] = 32
    for g in (config.get('groups') or {}).values():
        g['backbone'] = _dry_model(g['backbone'])
        g['compare'] = {k: _dry_model(v) for k, v in (g.get('compare') or {}).items()}
        g['layers'] = 'all'
    if config.get('ig'):
        config['ig'] = {**config['ig'], 'texts': 2, 'steps': 4}
    return config


def _dry_model(m):
    if isinstance(m, str):
        return _tiny(m)
    if isinstance(m, dict) and 'spec' in m:
        return m   # train_biencoder(dry_run=True) swaps the backbone itself
    if isinstance(m, dict) and 'adapter' in m:
        return _tiny(m.get('base', 'llama'))
    if isinstance(m, dict):
        return {k: _tiny(v) for k, v in m.items()}
    return m


def _check(config: Dict):
    if not isinstance(config, dict):
        raise KnowacqError(f'analysis: must be a mapping, got {type(config).__name__}')
    check_keys(config, ANALYSIS_KEYS, 'analysis: unknown keys')
    if not config.get('groups'):
        raise KnowacqError('analysis: needs `groups:` (name -> {pooling, data, backbone, compare})')
    if not config.get('probe_data'):
        raise KnowacqError('analysis: needs `probe_data:` (name -> {dataset, split, ...} or {dpr_json: ...})')
    for name, g in config['groups'].items():
        check_keys(g, GROUP_KEYS, f'analysis group {name!r}: unknown keys')
        if 'backbone' not in g:
            raise KnowacqError(f'analysis group {name!r}: needs `backbone:` (the pre-trained model every other is compared with)')
        for d in g.get('data') or list(config['probe_data']):
            if d not in config['probe_data']:
                raise KnowacqError(f'analysis group {name!r}: probe data {d!r} is not defined under probe_data: {list(config["probe_data"])}')
    ns = config.get('n', [2, 3, 4, 5])
    if not ns or any(not isinstance(n, int) or n < 2 for n in ns):
        raise KnowacqError(f'analysis n must be a list of integers >= 2, got {ns!r}')
    if config.get('ig'):
        _check_ig(config['ig'], config)


def _check_ig(ig, config: Dict):
    """The ``ig:`` section, before any model is trained or probed (it runs last: a typo would cost the whole run)."""
    if not isinstance(ig, dict):
        raise KnowacqError(f'analysis ig: must be a mapping like {{groups: [g], data: d, texts: 16, steps: 20}}, got {ig!r}')
    check_keys(ig, IG_KEYS, 'analysis ig: unknown keys')
    for g in ig.get('groups') or []:
        if g not in config['groups']:
            raise KnowacqError(f'analysis ig: group {g!r} is not defined under groups: {list(config["groups"])}')
    if ig.get('data') is not None and ig['data'] not in config['probe_data']:
        raise KnowacqError(f'analysis ig: probe data {ig["data"]!r} is not defined under probe_data: {list(config["probe_data"])}')
    from .attribution import MIN_STEPS
    for key, low in (('texts', 1), ('steps', MIN_STEPS)):
        value = ig.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise KnowacqError(f'analysis ig: {key} must be an integer >= {low}, got {value!r}')
    threshold = ig.get('threshold')
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not 0 < threshold < 1):
        raise KnowacqError(f'analysis ig: threshold must be a number in (0, 1) (the study: 0.1 encoders, 0.01 '
                           f'decoders), got {threshold!r}')


class _Resolver:
    """Model entries -> (query encoder, doc encoder, tokenizer for the query encoder)."""

    def __init__(self, config, models, seed, dry_run):
        self.train = config.get('train') or {}
        self.models = models or {}
        self.seed, self.dry_run = seed, dry_run

    def __call__(self, entry, pooling) -> Tuple[str, str, Optional[str]]:
        if isinstance(entry, dict) and 'spec' in entry:
            from ..training.dense import train_biencoder
            spec = {**entry['spec'], 'pooling': entry['spec'].get('pooling', pooling)}
            ds = entry.get('dataset', self.train.get('dataset'))
            split = entry.get('split', self.train.get('split'))
            if not ds:
                raise KnowacqError('analysis: a {spec: ...} model needs `train: {dataset, split}` (or dataset/split in the entry)')
            folder = str(train_biencoder(spec, dataset=ds, train_split=split, seed=self.seed, dry_run=self.dry_run))
            return self._folder(folder, pooling)
        if isinstance(entry, dict) and 'adapter' in entry:
            name = merged_adapter(entry['base'], entry['adapter'])
            return name, name, None
        if isinstance(entry, dict):
            if set(entry) != {'query', 'doc'}:
                raise KnowacqError(f'analysis: a model entry is a name, {{spec: ...}}, {{base: M, adapter: LORA}} or '
                                   f'{{query: M, doc: M}}; got {entry}')
            q, d = self.models.get(entry['query'], entry['query']), self.models.get(entry['doc'], entry['doc'])
            return str(q), str(d), None
        name = str(self.models.get(str(entry), entry))
        if Path(name).is_dir():
            return self._folder(name, pooling)
        return name, name, None

    @staticmethod
    def _folder(folder, pooling):
        meta_file = Path(folder) / 'knowacq.json'
        if meta_file.exists():
            meta = json.loads(meta_file.read_text())
            if meta.get('pooling') and meta['pooling'] != pooling:
                raise KnowacqError(f'{folder} is a bi-encoder trained with pooling {meta["pooling"]!r}, but the analysis group '
                                   f'uses {pooling!r}; put it in a group with pooling {meta["pooling"]!r}')
            if meta.get('query_model'):
                return str(Path(folder) / meta['query_model']), str(folder), str(folder)
        return str(folder), str(folder), None


def merged_adapter(base: str, adapter: str) -> str:
    """A LoRA adapter (e.g. castorini/repllama-v1-7b-lora-passage) merged into its base model, cached as a folder.

    The one loading path for adapters, :func:`pyterrier_knowacq.models.backbones.merge_adapter`: the base loads strictly,
    and every adapter weight must load into it (else :class:`KnowacqError`), then the merged model is cached.
    """
    from ..models.backbones import merge_adapter
    return merge_adapter(base, adapter)


def _layers(spec, num_layers: int) -> List[int]:
    if spec in (None, 'all'):
        return list(range(num_layers))
    if isinstance(spec, int):
        out = list(range(0, num_layers, spec))
        return out if out[-1] == num_layers - 1 else out + [num_layers - 1]
    if isinstance(spec, list):
        bad = [i for i in spec if not isinstance(i, int) or not -num_layers <= i < num_layers]
        if bad:
            raise KnowacqError(f'analysis layers: index {bad[0]!r} is out of range for a model with {num_layers} layers '
                               f'(0 = embeddings .. {num_layers - 1})')
        return sorted({i % num_layers for i in spec})
    raise KnowacqError(f'analysis layers must be "all", a stride or a list of indices, got {spec!r}')


def _probe_group(gname, g, config, sets, resolve, seed, log) -> List[dict]:
    from .probing import probe_layers
    from .representations import LayerEncoder
    from .stats import holm, paired_test, wilson_interval
    pooling = g.get('pooling', 'cls')
    ns = config.get('n', [2, 3, 4, 5])
    probes = config.get('probes', ['concat', 'interaction'])
    test = paired_test(config.get('test', 'mcnemar'))
    popts = config.get('probe') or {}
    kw = {k: popts[k] for k in ('l2_grid', 'max_epochs', 'patience', 'lr') if k in popts}
    max_length = int(g.get('max_length', config.get('max_length', 128)))
    variants = {'backbone': g['backbone'], **(g.get('compare') or {})}
    rows, trend = [], []
    for dname in g.get('data') or list(sets):
        ps = sets[dname]
        correct: Dict[tuple, np.ndarray] = {}
        for label, entry in variants.items():
            t0 = time.time()
            qm, dm, tok = resolve(entry, pooling)
            qenc = LayerEncoder(qm, pooling, max_length=max_length, tokenizer=tok, batch_size=int(config.get('batch_size', 32)))
            denc = LayerEncoder(dm, pooling, max_length=max_length, batch_size=int(config.get('batch_size', 32)))
            if qenc.num_layers != denc.num_layers:
                raise KnowacqError(f'{label}: query and passage encoders have different depths ({qenc.num_layers} vs {denc.num_layers})')
            qs = qenc.encode([g.get('query_prefix', '') + t for t in ps.queries])
            ds = denc.encode([g.get('doc_prefix', '') + t for t in ps.passages])
            layers = _layers(g.get('layers', 'all'), denc.num_layers)
            for n in ns:
                qi, pi, y = ps.for_n(n)
                masks = {s: ps.mask(s) for s in ('train', 'val', 'test')}
                cells = [(probe, layer) for probe in probes for layer in layers]
                # each job gathers its layer's inputs when its fit starts: only the fits running hold them
                fits = probe_layers([lambda probe=probe, layer=layer: dict(
                    probe=probe, q=np.asarray(qs[layer])[qi], p=np.asarray(ds[layer])[pi], label=y, seed=seed, **masks,
                    **kw) for probe, layer in cells])
                for (probe, layer), res in zip(cells, fits):
                    correct[(label, n, probe, layer)] = res.correct
                    lo, hi = wilson_interval(int(res.correct.sum()), len(res.correct))
                    rows.append({'group': gname, 'data': dname, 'model': label, 'pooling': pooling, 'n': n, 'probe': probe,
                                 'layer': layer, 'rel_layer': layer / max(1, denc.num_layers - 1), 'accuracy': res.accuracy,
                                 'ci_low': lo, 'ci_high': hi, 'n_test': len(res.correct), 'val_accuracy': res.val_accuracy,
                                 'l2': res.l2, 'epochs': res.epochs, 'query_model': qm, 'doc_model': dm})
            log(f'{gname}/{dname}/{label}: {len(layers)} layers x N={ns} x {probes} in {time.time() - t0:.0f} s')
            last = layers[-1]
            for probe in probes:
                a, b = correct[(label, min(ns), probe, last)], correct[(label, max(ns), probe, last)]
                trend.append({'group': gname, 'data': dname, 'model': label, 'probe': probe, 'layer': last,
                              **{f'acc_n{n}': float(correct[(label, n, probe, last)].mean()) for n in ns},
                              'n_low': min(ns), 'n_high': max(ns), 'p_value': test(a, b)})
        # paired tests against the backbone, Holm over the layers of each curve
        for r in rows:
            if r['data'] != dname or r['group'] != gname:
                continue
            if r['model'] == 'backbone':
                r['p_value'], r['diff_vs_backbone'] = np.nan, 0.0
                continue
            base = correct.get(('backbone', r['n'], r['probe'], r['layer']))
            mine = correct[(r['model'], r['n'], r['probe'], r['layer'])]
            if base is None:
                r['p_value'], r['diff_vs_backbone'] = np.nan, np.nan
            else:
                r['p_value'], r['diff_vs_backbone'] = test(mine, base), float(mine.mean() - base.mean())
    frame = pd.DataFrame(rows)
    frame['p_holm'], frame['significant'] = np.nan, False
    for _, idx in frame.groupby(['group', 'data', 'model', 'n', 'probe']).groups.items():
        reject, adj = holm(frame.loc[idx, 'p_value'].to_numpy())
        frame.loc[idx, 'p_holm'] = adj
        frame.loc[idx, 'significant'] = reject
    return frame.to_dict('records'), trend


def _ig(config, groups, sets, resolve, out_dir, log):
    from .attribution import IntegratedGradients
    from .plots import ig_heatmap
    ig = config['ig']
    dname = ig.get('data') or next(iter(sets))
    if dname not in sets:
        raise KnowacqError(f'analysis ig: probe data {dname!r} is not defined under probe_data')
    ps = sets[dname]
    test_pos = sorted(set(ps.positive[ps.mask('test')].tolist()))
    texts = [ps.passages[i] for i in test_pos][:int(ig.get('texts', 16))]
    layer_rows, neuron_rows, plots = [], [], []
    for gname in ig.get('groups') or list(groups):
        g = groups[gname]
        pooling = g.get('pooling', 'cls')
        shares = {}
        for label, entry in {'backbone': g['backbone'], **(g.get('compare') or {})}.items():
            if label in (ig.get('skip') or []):
                continue
            t0 = time.time()
            _, dm, _ = resolve(entry, pooling)
            attr = IntegratedGradients(dm, pooling, steps=int(ig.get('steps', 20)), threshold=ig.get('threshold'),
                                       max_length=int(config.get('max_length', 128)))
            res = attr.attribute(texts)
            shares[label] = res.share
            counts = res.per_layer_counts().assign(group=gname, data=dname, model=label, threshold=attr.threshold, texts=len(texts))
            layer_rows.append(counts)
            neuron_rows.append(res.neuron_table().assign(group=gname, model=label))
            log(f'IG {gname}/{label}: {len(texts)} texts x {len(attr.layer_names)} dense layers in {time.time() - t0:.0f} s')
        plots += ig_heatmap(shares, out_dir / 'plots', f'ig-{gname}', f'IG: share of {dname} passages where each FFN neuron '
                            f'is active ({gname})')
    return pd.concat(layer_rows, ignore_index=True), pd.concat(neuron_rows, ignore_index=True), plots


def _write_csv(frame: pd.DataFrame, path: Path):
    atomic_write_text(path, frame.to_csv(index=False))


def run_analysis(config: Dict[str, Any], out_dir: Path, *, seed: int, dry_run: bool = False,
                 models: Optional[Dict[str, str]] = None, verbose: bool = True) -> Dict[str, Any]:
    """Run the ``analysis:`` section into ``out_dir`` (tables/, plots/) and return a summary for meta.json.

    Args:
        config: the section (see the module docstring).
        out_dir: the results folder being built (the experiment runner's temporary folder).
        seed: fixes probe splits, passage shuffles, probe initialisation and fine-tuning.
        dry_run: swap every model for tiny-bert / tiny-llama and the data for a few examples.
        models: the experiment's trained models (``models:`` name -> folder), usable by name in ``compare``.
    """
    from .plots import probe_curves
    from .probe_data import load_probe_set
    started = time.time()
    _check(config)
    if dry_run:
        config = _dry(config)
    out_dir = Path(out_dir)
    (out_dir / 'tables').mkdir(parents=True, exist_ok=True)
    (out_dir / 'plots').mkdir(parents=True, exist_ok=True)

    def log(msg):
        if verbose:
            print(f'[knowacq analysis] {msg}', flush=True)
    ns = config.get('n', [2, 3, 4, 5])
    sets = {name: load_probe_set(spec, seed=seed, n_max=max(ns)) for name, spec in config['probe_data'].items()}
    for name, ps in sets.items():
        log(f'probe data {name}: {ps.summary()}')
    _write_csv(pd.DataFrame([{'name': k, **v.summary()} for k, v in sets.items()]), out_dir / 'tables' / 'probe_data.csv')
    resolve = _Resolver(config, models, seed, dry_run)
    rows, trend = [], []
    for gname, g in config['groups'].items():
        r, t = _probe_group(gname, g, config, sets, resolve, seed, log)
        rows += r
        trend += t
    acc = pd.DataFrame(rows)
    _write_csv(acc, out_dir / 'tables' / 'probe_accuracy.csv')
    _write_csv(pd.DataFrame(trend), out_dir / 'tables' / 'probe_n_trend.csv')
    plots = []
    for (gname, dname, probe), sub in acc.groupby(['group', 'data', 'probe'], sort=False):
        plots += probe_curves(sub, out_dir / 'plots', f'probe-{gname}-{dname}-{probe}', f'{probe} probe, {gname}, {dname}')
    summary = {'probe_data': {k: v.summary() for k, v in sets.items()}, 'groups': list(config['groups']),
               'n': ns, 'probes': config.get('probes', ['concat', 'interaction']), 'test': config.get('test', 'mcnemar'),
               'dry_run': dry_run}
    if config.get('ig'):
        layers, neurons, ig_plots = _ig(config, config['groups'], sets, resolve, out_dir, log)
        _write_csv(layers, out_dir / 'tables' / 'ig_layers.csv')
        _write_csv(neurons, out_dir / 'tables' / 'ig_neurons.csv')
        plots += ig_plots
    last = acc.sort_values('layer').groupby(['group', 'data', 'model', 'n', 'probe']).tail(1)
    summary['last_layer_accuracy'] = {f'{r.group}/{r.data}/{r.model}/N={r.n}/{r.probe}': round(float(r.accuracy), 4)
                                      for r in last.itertuples()}
    summary['tables'] = sorted(p.name for p in (out_dir / 'tables').glob('*.csv'))
    summary['plots'] = sorted(set(plots))
    summary['wall_time_s'] = round(time.time() - started, 1)
    return summary
