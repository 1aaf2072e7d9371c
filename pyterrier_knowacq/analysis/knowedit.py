"""Knowledge editing: does fine-tuning bring back what the backbone lost? (issue 15; our design, since the original
method was never released.)

1. **Sets** (:mod:`.knowedit_sets`): H = relevant passages of queries Q_H of a split never trained on (DL 2019), C =
   a control of the same size drawn from the other queries Q_C with identical counts per (token-length bin, grade);
   no training positive is in either.
2. **Edits** (:mod:`.knowedit_edits`) of the backbone, each with its matched control: ``suppress-H`` zeroes the
   ``neurons.k`` FFN neurons integrated gradients attribute to H more than to C, ``suppress-C`` as many chosen the same
   way for C, ``suppress-random`` as many random ones (persistent weight edits, saved as safetensors);
   ``unlearn-H`` / ``unlearn-C`` are gradient ascent on a tied masked-LM head's loss over H's / C's texts.
3. **Edit effect**: pseudo-log-likelihood of H and C passages under every edited backbone (same fitted head).
4. **Fine-tuning**: every arm (and the ``unedited`` backbone, saved the same way) with the identical InfoNCE recipe
   (:func:`~pyterrier_knowacq.training.dense.train_biencoder`) on a view of the dataset without H and C (neither can
   be a positive or a negative; the trainer's positives are checked against H and C, by docno and text).
5. **Retrievability** (:mod:`.knowedit_eval`): end-to-end dense retrieval over the corpus; each H and C passage's
   rank for its query, R_set@100 and nDCG@10 per query; Wilcoxon per passage and paired t per query, Holm across
   the arms; claims in the verdict vocabulary of :mod:`.stats`.
6. **Plots**: rank distributions of H and C per arm, rank and PLL shifts against the unedited arm.

Confound: all-MiniLM-L6-v2 was trained on MS MARCO pairs, so its backbone already knows these passages; removal is
the direction that can be tested offline (adding knowledge would need data it has not seen).

Section (an experiment's ``knowedit:``; every key has a default, see :data:`DEFAULTS`)::

    knowedit:
      dataset: msmarco-passage
      split: dl19                         # H and C come from here (never trained on)
      backbone: minilm-l6
      arms: [unedited, suppress-H, suppress-C, suppress-random, unlearn-H, unlearn-C]
      sets: {size: 200, rel_min: 2, bins: 5, match_label: true}
      neurons: {k: 64, select: contrast, texts: 24, steps: 10, max_length: 64}   # k < 1: a share of the neurons
      mlm_head: {texts: 256, maskings: 2, steps: 300, lr: 0.002, max_length: 64}
      unlearn: {lr: 2.0e-5, max_steps: 40, batch: 8, factor: 2.0, params: encoder, eval_every: 5, max_length: 64}
      pll: {passages: 32, max_length: 48, copies: null}
      train: {split: dl20, spec: {<the knowacq InfoNCE recipe>}}
      retrieval: {corpus: slice, k: 1000, max_length: 64, stages: [fine-tuned]}   # + 'edited backbone'
                                          # corpus: pool = H, C, other relevant passages (pool_relevant) and
                                          # the BM25 top pool_depth of their queries (+ distractors random ones)

Outputs: ``tables/knowedit_sets.csv``, ``knowedit_neurons.csv``, ``knowedit_unlearn.csv``, ``knowedit_pll.csv``,
``knowedit_ranks.csv``, ``knowedit_queries.csv``, ``knowedit_tests.csv``, ``knowedit_training.csv``,
``knowedit_claims.json``; ``plots/knowedit-*.png|svg``. Edited backbones, the head and the IG scores are cached
under ``$KNOWACQ_CACHE/knowedit/<key>/``; the fine-tuned models and dense indexes in the project's own caches.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

# --- package imports (re-path here when modules move) -------------------------------------------------------------
from .._util import KnowacqError, atomic_write_json, cache_dir, check_keys, write_csv
from ..models.backbones import load_encoder, model_fingerprint
from ..models.biencoder import BiEncoder
from ..datasets.core import get_dataset
from ..training.dense import train_biencoder, validate_dense_spec
from . import knowedit_edits as edits
from . import knowedit_eval as evaluation
from . import stats
from .knowedit_sets import CorpusView, assert_not_trained_on, build_sets, excluded_positives, training_positives
# ------------------------------------------------------------------------------------------------------------------

__all__ = ['run_knowedit', 'DEFAULTS', 'ARMS', 'resolve_config']

VERSION = 1
ARMS = ('unedited', 'suppress-H', 'suppress-C', 'suppress-random', 'unlearn-H', 'unlearn-C')
STAGES = ('edited backbone', 'fine-tuned')
#: the knowacq InfoNCE recipe (experiments/knowacq.yaml, minilm-cls-ft)
RECIPE = {'kind': 'bi-encoder', 'backbone': 'minilm-l6', 'pooling': 'cls', 'normalize': True, 'temperature': 0.05,
          'max_length': 96, 'query_max_length': 32, 'queries_per_batch': 8, 'negatives': 3,
          'data': {'run': 'bm25', 'depth': 30, 'rel_threshold': 2, 'neg_max_label': 1, 'per_positive': True,
                   'extra': ['msmarco-dev-positives']},
          'validation': {'queries': 10, 'run': 'bm25', 'depth': 30}, 'lr': 2.0e-5, 'steps': 150}
DEFAULTS: Dict[str, Any] = {
    'dataset': 'msmarco-passage', 'split': 'dl19', 'backbone': 'minilm-l6', 'arms': list(ARMS),
    'sets': {'size': 200, 'rel_min': 2, 'bins': 5, 'match_label': True, 'queries': None},
    'neurons': {'k': 64, 'select': 'contrast', 'texts': 24, 'steps': 10, 'max_length': 64},
    'mlm_head': {'texts': 256, 'maskings': 2, 'steps': 300, 'lr': 2e-3, 'batch': 256, 'max_length': 64},
    'unlearn': {'lr': 2e-5, 'max_steps': 40, 'batch': 8, 'factor': 2.0, 'mask_prob': 0.15, 'params': 'encoder',
                'eval_every': 5, 'eval_texts': 64, 'max_length': 64, 'texts': None, 'retain': 0, 'retain_weight': 1.0},
    'pll': {'passages': 32, 'max_length': 48, 'copies': None, 'batch': 128},
    'train': {'split': 'dl20', 'spec': RECIPE},
    'retrieval': {'corpus': 'slice', 'k': 1000, 'max_length': 64, 'stages': ['fine-tuned'], 'pool_depth': 100,
                  'pool_relevant': True, 'distractors': 0},
    'claims': None,
}
#: the dry run: tiny-bert, a few passages and steps, retrieval over a small pool
DRY = {'backbone': 'tiny-bert', 'sets': {'size': 8, 'bins': 2, 'queries': 4},
       'neurons': {'k': 8, 'texts': 3, 'steps': 2, 'max_length': 32},
       'mlm_head': {'texts': 32, 'steps': 20, 'max_length': 32, 'maskings': 1},
       'unlearn': {'max_steps': 3, 'eval_every': 1, 'max_length': 32, 'lr': 1e-3},
       'pll': {'passages': 4, 'max_length': 16},
       'retrieval': {'corpus': 'pool', 'k': 100, 'max_length': 32, 'stages': ['fine-tuned'], 'pool_depth': 10,
                     'pool_relevant': False, 'distractors': 50}}
DRY_SPEC = {'steps': 2, 'queries_per_batch': 2, 'negatives': 1, 'max_length': 32}


def _merge(base: Dict, over: Optional[Dict]) -> Dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) and k != 'spec' else copy.deepcopy(v)
    return out


def resolve_config(config: Optional[Dict], dry_run: bool = False) -> Dict:
    """The section with :data:`DEFAULTS` filled in, checked (unknown keys, arms, stages); the dry-run variant when
    ``dry_run``."""
    config = dict(config or {})
    check_keys(config, DEFAULTS, 'knowedit: unknown keys')
    for key in ('sets', 'neurons', 'mlm_head', 'unlearn', 'pll', 'train', 'retrieval'):
        if config.get(key) is not None:
            if not isinstance(config[key], dict):
                raise KnowacqError(f'knowedit {key}: must be a mapping, got {config[key]!r:.60}')
            check_keys(config[key], DEFAULTS[key], f'knowedit {key}: unknown keys')
    cfg = _merge(DEFAULTS, config)
    if dry_run:
        cfg = _merge(cfg, DRY)
        spec = {**cfg['train']['spec'], **DRY_SPEC}
        spec['data'] = {**(spec.get('data') or {}), 'max_queries': 8, 'extra': []}
        if spec.get('validation'):
            spec['validation'] = {**spec['validation'], 'queries': 3, 'depth': 5}
            spec['eval_every'] = 1
        cfg['train'] = {**cfg['train'], 'spec': spec}
    bad = [a for a in cfg['arms'] if a not in ARMS]
    if bad or 'unedited' not in cfg['arms']:
        raise KnowacqError(f'knowedit arms: {bad or "unedited is missing"}; choose from {list(ARMS)} (unedited is the '
                           'reference every arm is compared with)')
    stages = cfg['retrieval']['stages']
    if not stages or any(s not in STAGES for s in stages):
        raise KnowacqError(f'knowedit retrieval stages must be a non-empty list of {list(STAGES)}, got {stages!r}')
    if cfg['retrieval']['corpus'] not in ('slice', 'pool'):
        raise KnowacqError(f'knowedit retrieval corpus must be slice (the whole corpus) or pool (judged + BM25 top-100 '
                           f'passages of the queries), got {cfg["retrieval"]["corpus"]!r}')
    retain = cfg['unlearn']['retain']
    if isinstance(retain, bool) or not isinstance(retain, int) or retain < 0:
        raise KnowacqError(f'knowedit unlearn.retain must be a count of neutral passages (0: no retain term, e.g. 256), '
                           f'got {retain!r}')
    validate_dense_spec(dict(cfg['train']['spec']))
    return cfg


def _key(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_backbone(model, tokenizer, folder: Path, spec: Dict, name: str) -> Path:
    """A backbone as a bi-encoder folder (safetensors, tokenizer, knowacq.json with the recipe's pooling and
    normalisation), loadable by the trainer (as a backbone) and by the dense retriever (as a zero-shot model)."""
    bienc = BiEncoder(model, tokenizer, pooling=spec.get('pooling', 'cls'), normalize=bool(spec.get('normalize', False)),
                      name=name, max_length=int(spec.get('max_length', 128)),
                      query_max_length=int(spec.get('query_max_length', 32)), device='cpu')
    bienc.save(folder)
    return folder


def _neuron_count(k, total: int) -> int:
    """``neurons.k``: a count, or a share of all FFN neurons when below 1 (0.01 = 1%)."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k <= 0:
        raise KnowacqError(f'knowedit neurons.k must be a count (64) or a share of the FFN neurons (0.01), got {k!r}')
    return max(1, int(round(k * total))) if k < 1 else int(k)


def _neutral_texts(ds, sets, split: str, n: int, seed: int, salt: int = 7877) -> List[str]:
    """``n`` seeded passages of the collection judged for no query of ``split`` and in neither set."""
    judged = set(ds.get_qrels(split)['docno'].astype(str))
    avoid = judged | set(sets.docnos())
    pool = sorted(d for d in ds.known_docnos() if d not in avoid)
    pick = np.random.default_rng([seed, salt]).choice(len(pool), min(int(n), len(pool)), replace=False)
    return ds.get_texts([pool[i] for i in sorted(pick)])


def _subset(frame: pd.DataFrame, n: Optional[int], seed: int, salt: int) -> pd.DataFrame:
    if n is None or n >= len(frame):
        return frame
    idx = np.random.default_rng([seed, salt]).choice(len(frame), int(n), replace=False)
    return frame.iloc[np.sort(idx)]


def _pool_view(ds, sets, split: str, depth: int, distractors: int, seed: int, relevant: bool = True) -> CorpusView:
    """The retrieval corpus of ``corpus: pool``: H, C, the other passages judged relevant to their queries (when
    ``relevant``), the shipped BM25 top ``depth`` of those queries, and ``distractors`` random passages."""
    queries = set(sets.q_h) | set(sets.q_c)
    qrels = ds.get_qrels(split).astype({'qid': str, 'docno': str})
    keep = set(qrels[qrels['qid'].isin(queries) & (qrels['label'] > 0)]['docno']) if relevant else set()
    try:
        run = ds.get_run('bm25', split).astype({'qid': str, 'docno': str})
        run = run[run['qid'].isin(queries)]
        if 'rank' in run.columns:
            run = run[run['rank'] < int(depth)]
        keep |= set(run['docno'])
    except KnowacqError:
        pass
    if distractors:
        rest = sorted(set(ds.known_docnos()) - keep)
        pick = np.random.default_rng([seed, 4421]).choice(len(rest), min(distractors, len(rest)), replace=False)
        keep |= {rest[i] for i in pick}
    keep &= set(ds.known_docnos())
    return CorpusView(ds, keep=keep | set(sets.docnos()), label='pool')


def run_knowedit(config: Optional[Dict[str, Any]], out_dir, *, seed: int = 42, dry_run: bool = False,
                 verbose: bool = True) -> Dict[str, Any]:
    """Run the knowledge-editing study into ``out_dir`` (``tables/``, ``plots/``); returns a summary for meta.json
    with ``claims`` (report.json format), ``timings`` (seconds per phase) and the arms' model folders.

    Args:
        config: the ``knowedit:`` section (see the module docstring; ``None``: all defaults).
        out_dir: the results folder being built.
        seed: fixes the sets, neuron choice, head, unlearning, fine-tuning and every subsample.
        dry_run: tiny-bert, a few passages, 2 training steps, retrieval over a small pool (see :data:`DRY`).
    """
    started = time.time()
    cfg = resolve_config(config, dry_run)
    out_dir = Path(out_dir)
    tables, plots_dir = out_dir / 'tables', out_dir / 'plots'
    tables.mkdir(parents=True, exist_ok=True)
    plots_dir.mkdir(parents=True, exist_ok=True)
    timings: Dict[str, float] = {}
    clock = [time.time()]

    def log(msg, phase=None):
        if phase:
            timings[phase] = round(timings.get(phase, 0.0) + time.time() - clock[0], 1)
        clock[0] = time.time()
        if verbose:
            print(f'[knowacq knowedit] {msg}' + (f' ({timings[phase]:.0f} s)' if phase else ''), flush=True)

    ds = get_dataset(cfg['dataset'])
    split, train_split = cfg['split'], cfg['train']['split']
    spec = {k: v for k, v in dict(cfg['train']['spec']).items() if k != 'kind'}
    arms = list(dict.fromkeys(cfg['arms']))
    encoder, tok = load_encoder(cfg['backbone'])
    sets = build_sets(ds, split, tokenizer=tok, seed=seed, exclude=excluded_positives(spec, ds, train_split),
                      **{k: v for k, v in cfg['sets'].items() if v is not None})
    write_csv(sets.table(), tables / 'knowedit_sets.csv')
    log(f'sets: {sets.summary()}', 'sets')

    key = _key(VERSION, model_fingerprint(cfg['backbone']), sets.docnos('H'), sets.docnos('C'), seed,
               {k: cfg[k] for k in ('neurons', 'mlm_head', 'unlearn')}, spec.get('pooling'), spec.get('normalize'),
               spec.get('max_length'), spec.get('query_max_length'))
    work = cache_dir('knowedit', key)
    folders: Dict[str, Path] = {}
    meta: Dict[str, Dict] = {}

    def cached(arm):
        folder, info = work / arm, work / f'{arm}.json'
        if (folder / 'knowacq.json').exists() and info.exists():
            folders[arm], meta[arm] = folder, json.loads(info.read_text())
            return True
        return False

    def store(arm, model, info):
        folders[arm] = _save_backbone(model, tok, work / arm, spec, f'{cfg["backbone"]}+{arm}')
        meta[arm] = info
        atomic_write_json(work / f'{arm}.json', info)

    if not cached('unedited'):
        store('unedited', encoder, {'arm': 'unedited'})
    # masked-LM head (for unlearning and the PLL check), fitted once on neutral passages
    head_file = work / 'mlm_head.safetensors'
    from safetensors.torch import load_file, save_file
    head = edits.MLMHead(encoder)
    if head_file.exists() and (work / 'mlm_head.json').exists():
        head.load_state_dict(load_file(str(head_file)))
        head_losses = json.loads((work / 'mlm_head.json').read_text())
    else:
        hc = cfg['mlm_head']
        head, head_losses = edits.fit_mlm_head(encoder, tok, _neutral_texts(ds, sets, split, hc['texts'], seed),
                                               steps=hc['steps'], lr=hc['lr'], batch=hc['batch'], max_length=hc['max_length'],
                                               maskings=hc['maskings'], seed=seed)
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(work / 'mlm_head.tmp.safetensors'))
        os.replace(work / 'mlm_head.tmp.safetensors', head_file)
        atomic_write_json(work / 'mlm_head.json', head_losses)
    log(f'masked-LM head: loss {head_losses[0]:.2f} -> {np.mean(head_losses[-10:]):.2f}', 'mlm_head')

    # (a) knowledge-neuron suppression
    nc = cfg['neurons']
    neuron_rows = []
    if any(a.startswith('suppress') for a in arms):
        if not all(cached(a) for a in arms if a.startswith('suppress')):
            ig_file = work / 'ig.npz'
            if ig_file.exists():
                z = np.load(ig_file)
                scores = {s: {k[2:]: z[k] for k in z.files if k.startswith(f'{s}:')} for s in 'HC'}
            else:
                scores = {s: edits.neuron_scores(encoder, tok, _subset(getattr(sets, s), nc['texts'], seed, 11)['text'].tolist(),
                                                 pooling=spec.get('pooling', 'cls'), steps=nc['steps'],
                                                 max_length=nc['max_length']) for s in 'HC'}
                np.savez(work / 'ig.tmp.npz', **{f'{s}:{k}': v for s in 'HC' for k, v in scores[s].items()})
                os.replace(work / 'ig.tmp.npz', ig_file)
            k = _neuron_count(nc['k'], sum(s.shape[1] for s in scores['H'].values()))
            chosen = {'suppress-H': edits.select_neurons(scores['H'], k, scores['C'], nc['select']),
                      'suppress-C': edits.select_neurons(scores['C'], k, scores['H'], nc['select']),
                      'suppress-random': edits.random_neurons(encoder, k, seed)}
            for arm in [a for a in arms if a.startswith('suppress')]:
                model = edits.zero_neurons(copy.deepcopy(encoder), chosen[arm])
                mean = {s: {f'{layer}:{i}': float(scores[s][layer][:, i].mean()) for layer, i in chosen[arm]} for s in 'HC'}
                store(arm, model, {'arm': arm, 'neurons': [[layer, int(i)] for layer, i in chosen[arm]],
                                   'mean_score_H': mean['H'], 'mean_score_C': mean['C']})
        for arm in [a for a in arms if a.startswith('suppress')]:
            for layer, i in meta[arm]['neurons']:
                neuron_rows.append({'arm': arm, 'layer': layer, 'neuron': i, 'score_H': meta[arm]['mean_score_H'][f'{layer}:{i}'],
                                    'score_C': meta[arm]['mean_score_C'][f'{layer}:{i}']})
        write_csv(pd.DataFrame(neuron_rows), tables / 'knowedit_neurons.csv')
        first = next(a for a in arms if a.startswith('suppress'))
        log(f'suppression: {len(meta[first]["neurons"])} neurons per arm', 'suppress')

    # (b) unlearning by gradient ascent on the masked-LM loss
    uc = cfg['unlearn']
    unlearn_rows = []
    # the retain texts of the descent term: neutral passages drawn apart from the head's (salt), the same for H and C
    retain = (_neutral_texts(ds, sets, split, uc['retain'], seed, salt=7919)
              if uc['retain'] and any(a.startswith('unlearn') and not cached(a) for a in arms) else None)
    for arm in [a for a in arms if a.startswith('unlearn')]:
        if not cached(arm):
            own, other = ('H', 'C') if arm.endswith('H') else ('C', 'H')
            texts = _subset(getattr(sets, own), uc['texts'], seed, 13)['text'].tolist()
            monitor = _subset(getattr(sets, other), uc['texts'], seed, 13)['text'].tolist()
            model, history = edits.unlearn(encoder, tok, head, texts, lr=uc['lr'], max_steps=uc['max_steps'],
                                           batch=uc['batch'], factor=uc['factor'], mask_prob=uc['mask_prob'],
                                           max_length=uc['max_length'], params=uc['params'], eval_every=uc['eval_every'],
                                           eval_texts=uc['eval_texts'], seed=seed, monitor=monitor, retain=retain,
                                           retain_weight=uc['retain_weight'])
            store(arm, model, {'arm': arm, 'history': history, 'steps': history[-1]['step']})
        unlearn_rows += [{'arm': arm, **h} for h in meta[arm]['history']]
        log(f'{arm}: {meta[arm]["steps"]} ascent steps, set loss {meta[arm]["history"][0]["loss_set"]:.2f} -> '
            f'{[h["loss_set"] for h in meta[arm]["history"] if np.isfinite(h["loss_set"])][-1]:.2f}', 'unlearn')
    if unlearn_rows:
        write_csv(pd.DataFrame(unlearn_rows), tables / 'knowedit_unlearn.csv')

    # (3) edit effect: pseudo-log-likelihood of H and C passages under every edited backbone
    pc = cfg['pll']
    pll_rows = []
    for arm in arms:
        model = load_encoder(str(folders[arm]))[0]
        for s in 'HC':
            sub = _subset(getattr(sets, s), pc['passages'], seed, 17)
            values = edits.pseudo_log_likelihood(model, head, tok, sub['text'].tolist(), max_length=pc['max_length'],
                                                 batch=pc['batch'], copies=pc['copies'])
            pll_rows += [{'arm': arm, 'set': s, 'docno': d, 'qid': q, 'PLL': float(v)}
                         for d, q, v in zip(sub['docno'], sub['qid'], values)]
    pll = pd.DataFrame(pll_rows)
    write_csv(pll, tables / 'knowedit_pll.csv')
    log('pseudo-log-likelihood of every edited backbone', 'pll')

    # (4) fine-tuning on a view without H and C, identical recipe for every arm
    view = CorpusView(ds, drop=sets.docnos(), label='knowedit')
    checked = assert_not_trained_on(sets.docnos(), sets.texts('H') + sets.texts('C'),
                                    training_positives(spec, view, train_split, seed))
    trained, training_rows = {}, []
    for arm in arms:
        folder = train_biencoder({**spec, 'backbone': str(folders[arm])}, dataset=view, train_split=train_split,
                                 seed=seed, verbose=False)
        trained[arm] = folder
        info = json.loads((Path(folder) / 'training.json').read_text())
        training_rows.append({'arm': arm, 'folder': str(folder), 'steps': info.get('steps'), 'groups': info.get('groups'),
                              'best_metric': info.get('best_metric'), 'selected': info.get('selected'),
                              'validation_start': json.dumps(info.get('validation', {}).get('start'))})
        log(f'fine-tuned {arm}: best validation nDCG@10 {info.get("best_metric")}', 'fine-tune')
    write_csv(pd.DataFrame(training_rows), tables / 'knowedit_training.csv')

    # (5) retrievability
    rc = cfg['retrieval']
    corpus = ds if rc['corpus'] == 'slice' else _pool_view(ds, sets, split, int(rc['pool_depth']),
                                                           int(rc.get('distractors') or 0), seed, bool(rc['pool_relevant']))
    topics, qrels = ds.get_topics(split).astype({'qid': str}), ds.get_qrels(split)
    rank_frames, query_frames = [], []
    for stage in rc['stages']:
        for arm in arms:
            model = trained[arm] if stage == 'fine-tuned' else folders[arm]
            r, q = evaluation.retrievability(model, corpus, topics, sets, qrels, k=rc['k'], max_length=rc['max_length'])
            rank_frames.append(r.assign(stage=stage, arm=arm))
            query_frames.append(q.assign(stage=stage, arm=arm))
            log(f'retrieval {stage} / {arm}: median rank H {r[r.set == "H"]["rank"].median():.0f}, '
                f'C {r[r.set == "C"]["rank"].median():.0f}', 'retrieval')
    ranks, queries = pd.concat(rank_frames, ignore_index=True), pd.concat(query_frames, ignore_index=True)
    write_csv(ranks.drop(columns=['text'], errors='ignore'), tables / 'knowedit_ranks.csv')
    write_csv(queries, tables / 'knowedit_queries.csv')

    # statistics, claims, plots
    settings = stats.claim_settings({'claims': cfg['claims']} if cfg['claims'] else None)
    table = evaluation.comparisons(ranks, queries, pll, settings)
    write_csv(table, tables / 'knowedit_tests.csv')
    found = evaluation.claims(table, stages=[s for s in ('fine-tuned', 'edited backbone') if s in rc['stages']])
    atomic_write_json(tables / 'knowedit_claims.json', found)
    plots = []
    for stage in rc['stages']:
        slug = stage.replace(' ', '-')
        sub = ranks[ranks['stage'] == stage]
        plots += evaluation.plot_ranks(sub, plots_dir, f'knowedit-ranks-{slug}', f'Ranks of H and C passages ({stage})',
                                       rc['k'] + 1)
        plots += evaluation.plot_shifts(sub, 'log2_rank', plots_dir, f'knowedit-rank-shift-{slug}',
                                        f'Rank change against the unedited arm ({stage})', 'Δ log2 rank (higher: worse)')
    plots += evaluation.plot_shifts(pll, 'PLL', plots_dir, 'knowedit-pll-shift', 'Pseudo-log-likelihood change of the '
                                    'edited backbones', 'Δ PLL per token (lower: forgotten)')
    log('tests, claims and plots', 'report')
    return {'study': 'knowedit', 'sets': sets.summary(), 'arms': arms, 'backbones': {a: str(f) for a, f in folders.items()},
            'models': {a: str(f) for a, f in trained.items()}, 'training_positives_checked': checked,
            'mlm_head_loss': [head_losses[0], float(np.mean(head_losses[-10:]))], 'claims': found,
            'tables': sorted(p.name for p in tables.glob('knowedit*')), 'plots': sorted(set(plots)),
            'timings': timings, 'dry_run': dry_run, 'wall_time_s': round(time.time() - started, 1)}
