"""Knowledge editing (issue 15): sets, edits, the training guard, retrievability and the whole study on tiny-bert."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.analysis import knowedit_edits as edits
from pyterrier_knowacq.analysis.knowedit_sets import (CorpusView, assert_not_trained_on, build_sets,
                                                      excluded_positives, training_positives)
from pyterrier_knowacq.models.backbones import load_encoder, load_tokenizer

TINY_SPEC = {'backbone': 'tiny-bert', 'pooling': 'cls', 'steps': 1, 'queries_per_batch': 2, 'negatives': 1,
             'data': {'run': 'bm25', 'depth': 10, 'rel_threshold': 2, 'neg_max_label': 1, 'max_queries': 8}}


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Tiny models: one intra-op thread is faster (and steadier on a busy machine) than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def tok():
    return load_tokenizer('tiny-bert')


def test_sets_are_disjoint_matched_and_seeded(msmarco, tok):
    exclude = excluded_positives(TINY_SPEC, msmarco, 'dl20')
    sets = build_sets(msmarco, 'dl19', size=60, tokenizer=tok, seed=3, bins=4, exclude=exclude)
    H, C = sets.H, sets.C
    assert len(H) == len(C) == 60
    assert not set(H.qid) & set(C.qid) and not set(H.docno) & set(C.docno)
    assert not (set(H.docno) | set(C.docno)) & exclude
    assert (H.label >= 2).all() and (C.label >= 2).all()
    # identical counts per (length bin, grade): the length distributions match
    count = lambda f: f.groupby(['bin', 'label']).size()   # noqa: E731
    pd.testing.assert_series_equal(count(H), count(C))
    assert abs(H.length.median() - C.length.median()) <= 0.25 * H.length.median()
    assert sets.summary()['length_mannwhitney_p'] > 0.05
    qrels = msmarco.get_qrels('dl19').astype({'qid': str, 'docno': str}).set_index(['qid', 'docno'])['label']
    assert all(qrels[(q, d)] >= 2 for q, d in zip(H.qid, H.docno))      # each passage is relevant to its own query
    again = build_sets(msmarco, 'dl19', size=60, tokenizer=tok, seed=3, bins=4, exclude=exclude)
    assert again.docnos() == sets.docnos()
    other = build_sets(msmarco, 'dl19', size=60, tokenizer=tok, seed=4, bins=4, exclude=exclude)
    assert other.docnos() != sets.docnos()


def _hook_outputs(model, x):
    out = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: out.__setitem__(n, o.detach().clone()))
             for n, m in model.named_modules() if n.endswith('intermediate') and not n.endswith('.dense')]
    try:
        with torch.no_grad():
            model(**x)
    finally:
        for h in hooks:
            h.remove()
    return out


def test_zeroing_silences_exactly_the_chosen_neurons_and_persists(tmp_path, tok):
    from pyterrier_knowacq.analysis.knowedit import _save_backbone
    model, _ = load_encoder('tiny-bert')
    x = tok(['the quick brown fox jumps over the lazy dog', 'what is a neuron'], return_tensors='pt', padding=True)
    chosen = [('encoder.layer.0.intermediate.dense', 3), ('encoder.layer.0.intermediate.dense', 17),
              ('encoder.layer.1.intermediate.dense', 40)]
    before = _hook_outputs(model, x)
    edited = edits.zero_neurons(__import__('copy').deepcopy(model), chosen)
    _save_backbone(edited, tok, tmp_path / 'edited', {'pooling': 'cls'}, 'tiny-bert+test')
    reloaded, _ = load_encoder(str(tmp_path / 'edited'))   # safetensors round trip keeps the edit
    for m in (edited, reloaded):
        after = _hook_outputs(m, x)
        l0, l1 = after['encoder.layer.0.intermediate'], after['encoder.layer.1.intermediate']
        assert torch.all(l0[..., [3, 17]] == 0) and torch.all(l1[..., 40] == 0)
        keep = [i for i in range(l0.shape[-1]) if i not in (3, 17)]
        torch.testing.assert_close(l0[..., keep], before['encoder.layer.0.intermediate'][..., keep])  # same input
        assert (l0[..., keep].abs() > 0).float().mean() > 0.9
    assert torch.any(_hook_outputs(model, x)['encoder.layer.0.intermediate'][..., 3] != 0)    # original untouched
    rnd = edits.random_neurons(model, 10, seed=0)
    assert len(set(rnd)) == 10 and rnd == edits.random_neurons(model, 10, seed=0) != edits.random_neurons(model, 10, seed=1)


def test_ig_selection_contrasts_the_sets(tok):
    model, _ = load_encoder('tiny-bert')
    # a fresh BERT's last LayerNorm (gain 1, bias 0) makes ||[CLS]|| constant: IG would be flat (all 0), so give it a
    # random gain and bias, as a trained model has
    import copy
    import torch
    model = copy.deepcopy(model)   # load_encoder may hand out a shared instance
    ln = model.encoder.layer[-1].output.LayerNorm
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        ln.weight.copy_(torch.rand(ln.weight.shape, generator=gen) + 0.5)
        ln.bias.copy_(torch.randn(ln.bias.shape, generator=gen) * 0.1)
    h = edits.neuron_scores(model, tok, ['volcano lava magma eruption crater'] * 2, steps=2, max_length=16)
    c = edits.neuron_scores(model, tok, ['violin orchestra symphony concert music'] * 2, steps=2, max_length=16)
    assert list(h) == ['encoder.layer.0.intermediate.dense', 'encoder.layer.1.intermediate.dense']
    top_h, top_c = edits.select_neurons(h, 12, c), edits.select_neurons(c, 12, h)
    assert len(top_h) == 12 and not set(top_h) & set(top_c)
    flat = {(k, i): float(h[k][:, i].mean() - c[k][:, i].mean()) for k in h for i in range(h[k].shape[1])}
    assert min(flat[n] for n in top_h) >= sorted(flat.values())[-12] - 1e-9
    with pytest.raises(KnowacqError, match='1..128'):
        edits.select_neurons(h, 500, c)


H_TEXTS = ['volcano lava magma eruption crater ash', 'the volcano erupted lava and ash over the crater',
           'magma rises into the crater before an eruption', 'lava flows from the volcano after the eruption']
C_TEXTS = ['violin orchestra symphony concert music', 'the orchestra played a symphony with a solo violin',
           'a concert of chamber music for violin and piano', 'the symphony orchestra tuned before the concert']
NEUTRAL = ['the weather today is sunny with a light breeze', 'bread is baked from flour water and yeast',
           'trains leave the station every ten minutes', 'the river flows into the sea near the town',
           'a cat sleeps on the warm windowsill', 'the library opens at nine in the morning'] * 4


def test_unlearning_hits_h_more_than_c(tok):
    model, _ = load_encoder('tiny-bert')
    head, losses = edits.fit_mlm_head(model, tok, NEUTRAL + H_TEXTS + C_TEXTS, steps=50, lr=2e-2, batch=64,
                                      max_length=24, maskings=3, seed=0)
    assert losses[-1] < losses[0]
    pll_h0 = edits.pseudo_log_likelihood(model, head, tok, H_TEXTS, max_length=24)
    pll_c0 = edits.pseudo_log_likelihood(model, head, tok, C_TEXTS, max_length=24)
    forgot, history = edits.unlearn(model, tok, head, H_TEXTS, lr=3e-3, max_steps=6, batch=4, factor=1.5,
                                    max_length=24, eval_every=3, seed=0, monitor=C_TEXTS)
    assert history[-1]['loss_set'] > history[0]['loss_set']
    rise_h = history[-1]['loss_set'] - history[0]['loss_set']
    rise_c = history[-1]['loss_monitor'] - history[0]['loss_monitor']
    assert rise_h > rise_c
    drop_h = pll_h0 - edits.pseudo_log_likelihood(forgot, head, tok, H_TEXTS, max_length=24)
    drop_c = pll_c0 - edits.pseudo_log_likelihood(forgot, head, tok, C_TEXTS, max_length=24)
    assert drop_h.mean() > 0 and drop_h.mean() > drop_c.mean()
    # the original model is left alone; the strided approximation masks every token once
    np.testing.assert_allclose(edits.pseudo_log_likelihood(model, head, tok, H_TEXTS, max_length=24), pll_h0, atol=1e-5)
    assert np.all(np.isfinite(edits.pseudo_log_likelihood(model, head, tok, H_TEXTS, max_length=24, copies=3)))


def test_retain_term_keeps_neutral_text_while_the_set_is_forgotten(tok):
    """Gradient difference: the same ascent on H with a descent term on neutral texts leaves the neutral loss lower
    than plain ascent does, and still raises H's loss."""
    model, _ = load_encoder('tiny-bert')
    head, _ = edits.fit_mlm_head(model, tok, NEUTRAL + H_TEXTS + C_TEXTS, steps=50, lr=2e-2, batch=64, max_length=24,
                                 maskings=3, seed=0)
    run = dict(lr=3e-3, max_steps=8, batch=4, factor=100.0, max_length=24, eval_every=4, seed=0, monitor=NEUTRAL)
    plain, h_plain = edits.unlearn(model, tok, head, H_TEXTS, **run)
    kept, h_kept = edits.unlearn(model, tok, head, H_TEXTS, retain=NEUTRAL, retain_weight=2.0, **run)
    assert h_kept[-1]['step'] == h_plain[-1]['step'] == 8
    assert h_kept[-1]['loss_set'] > h_kept[0]['loss_set']
    assert h_kept[-1]['loss_monitor'] < h_plain[-1]['loss_monitor']
    assert np.isfinite(h_kept[-1]['loss_retain']) and np.isnan(h_plain[-1]['loss_retain'])
    with pytest.raises(KnowacqError, match='retain is empty'):
        edits.unlearn(model, tok, head, H_TEXTS, retain=[], **run)
    with pytest.raises(KnowacqError, match='retain_weight'):
        edits.unlearn(model, tok, head, H_TEXTS, retain=NEUTRAL, retain_weight=float('nan'), **run)


def test_no_edited_or_control_passage_is_a_training_positive(msmarco, cache, tok):
    sets = build_sets(msmarco, 'dl19', size=20, tokenizer=tok, seed=1, exclude=excluded_positives(TINY_SPEC, msmarco, 'dl20'))
    view = CorpusView(msmarco, drop=sets.docnos(), label='knowedit')
    d = sets.docnos()[0]
    assert view.find_texts([d]) == [None] and d not in view.known_docnos()
    with pytest.raises(KnowacqError, match='no text'):
        view.get_texts([d])
    assert view.id != msmarco.id and view.fingerprint() != msmarco.fingerprint()
    assert view.corpus_fingerprint() != msmarco.corpus_fingerprint()
    positives = training_positives(TINY_SPEC, view, 'dl20', seed=0)
    assert positives and assert_not_trained_on(sets.docnos(), sets.texts('H') + sets.texts('C'), positives) == len(positives)
    # the guard can fail: a set holding a real training positive (by docno, or by text under another docno)
    trained = training_positives(TINY_SPEC, msmarco, 'dl20', seed=0)
    first = sorted(trained)[0]
    with pytest.raises(KnowacqError, match='training positive'):
        assert_not_trained_on([first], [], trained)
    with pytest.raises(KnowacqError, match='training positive'):
        assert_not_trained_on(['another-id'], [trained[first]], trained)


def test_retrievability_table_and_a_broken_model_ranks_worse(msmarco, cache, tok, tmp_path):
    from pyterrier_knowacq.analysis.knowedit import _save_backbone
    from pyterrier_knowacq.analysis.knowedit_eval import retrievability
    model, mtok = load_encoder('minilm-l6')
    spec = {'pooling': 'mean', 'normalize': True}
    good_folder = _save_backbone(model, mtok, tmp_path / 'good', spec, 'minilm')
    with torch.no_grad():   # deliberately broken: every token gets the same embedding (no content left)
        emb = model.embeddings.word_embeddings.weight
        emb[:] = emb.mean(0, keepdim=True)
    bad_folder = _save_backbone(model, mtok, tmp_path / 'bad', spec, 'minilm-broken')
    sets = build_sets(msmarco, 'dl19', size=6, tokenizer=tok, seed=2, queries=4, bins=2)
    qrels = msmarco.get_qrels('dl19').astype({'qid': str, 'docno': str})
    others = sorted(set(msmarco.known_docnos()) - set(qrels[qrels.qid.isin(sets.q_h + sets.q_c)].docno))
    rng = np.random.default_rng(0)
    keep = set(sets.docnos()) | {others[i] for i in rng.choice(len(others), 80, replace=False)}   # 80 random passages
    pool = CorpusView(msmarco, keep=keep, label='pool')
    topics = msmarco.get_topics('dl19')
    good, gq = retrievability(good_folder, pool, topics, sets, qrels, k=50, max_length=48)
    bad, _ = retrievability(bad_folder, pool, topics, sets, qrels, k=50, max_length=48)
    assert list(good.columns) == ['set', 'docno', 'qid', 'label', 'rank', 'found', 'log2_rank']
    assert {'set', 'qid', 'passages', 'R_set@100', 'nDCG@10'} <= set(gq.columns)
    assert len(good) == 12 and good['rank'].between(1, 51).all() and (good.found == (good['rank'] <= 50)).all()
    assert set(gq.qid) == set(sets.q_h) | set(sets.q_c) and gq['nDCG@10'].between(0, 1).all()
    assert len(pool.known_docnos()) == 92
    assert good.log2_rank.mean() + 1.0 < bad.log2_rank.mean()


def test_study_dry_run_writes_tables_plots_and_claims(cache, tmp_path):
    from pyterrier_knowacq.analysis.knowedit import RECIPE, resolve_config, run_knowedit
    with pytest.raises(KnowacqError, match='unknown keys'):
        resolve_config({'neuron': {}})
    with pytest.raises(KnowacqError, match='unedited'):
        resolve_config({'arms': ['suppress-H']})
    with pytest.raises(KnowacqError, match='unlearn.retain must be a count'):
        resolve_config({'unlearn': {'retain': -1}})
    config = {'arms': ['unedited', 'suppress-H', 'unlearn-H'], 'unlearn': {'retain': 16},
              'sets': {'queries': 4}, 'train': {'spec': {k: v for k, v in RECIPE.items() if k != 'validation'}}}
    out = run_knowedit(config, tmp_path / 'out', seed=1, dry_run=True, verbose=False)
    tables = tmp_path / 'out' / 'tables'
    for name in ('sets', 'neurons', 'unlearn', 'pll', 'ranks', 'queries', 'tests', 'training'):
        assert (tables / f'knowedit_{name}.csv').exists(), name
    assert pd.read_csv(tables / 'knowedit_unlearn.csv')['loss_retain'].notna().any()   # the retain term ran
    ranks = pd.read_csv(tables / 'knowedit_ranks.csv')
    assert set(ranks.arm) == set(config['arms']) and (ranks.groupby('arm').size() == ranks.groupby('arm').size().iloc[0]).all()
    tests = pd.read_csv(tables / 'knowedit_tests.csv')
    assert set(tests.arm) == {'suppress-H', 'unlearn-H'} and tests.p_holm.dropna().between(0, 1).all()
    assert (tests.p_holm.dropna() >= tests.loc[tests.p_holm.notna(), 'p_value'] - 1e-12).all()
    claims = json.loads((tables / 'knowedit_claims.json').read_text())
    assert [c['id'] for c in claims] == ['suppress_effect', 'unlearn_effect', 'suppress_persists', 'unlearn_persists',
                                        'removed_stays_unretrievable']
    vocab = ('equivalent within', 'different', 'supported (', 'inconclusive', 'not measured')
    for c in claims:
        assert {'study', 'claim', 'paper', 'ours', 'p_value', 'verdict', 'detail'} <= set(c)
        assert c['study'] == 'knowedit' and c['verdict'].startswith(vocab)
    assert out['claims'] == claims and out['training_positives_checked'] > 0
    assert {'knowedit-ranks-fine-tuned.png', 'knowedit-ranks-fine-tuned.svg', 'knowedit-pll-shift.svg'} <= set(out['plots'])


@pytest.mark.parametrize('name', ['knowedit-full.yaml', 'knowedit-full-dpr.yaml'])
def test_full_files_dry_run_through_knowacq_run_report_and_leaderboard(cache, tmp_path, name):
    """The hub-id files (bert-base, DPR's context encoder) run end to end on CPU with tiny-bert; the report reads
    their claims and the leaderboard gives the study its page."""
    from pathlib import Path
    from pyterrier_knowacq.cli import main
    from pyterrier_knowacq.reports.dispatch import study_claims
    out = tmp_path / 'res'
    assert main(['run', str(Path(__file__).parents[1] / 'experiments' / name), '--dry-run', '-o', str(out)]) == 0
    meta = json.loads((out / 'meta.json').read_text())
    assert meta['study'] == 'knowedit' and meta['knowedit']['dry_run'] and not meta.get('incomplete')
    claims = study_claims(out)
    assert [c['id'] for c in claims][-1] == 'removed_stays_unretrievable'
    assert main(['report', str(out)]) == 0   # writes report.json / report.md, which the study page shows
    assert json.loads((out / 'report.json').read_text())
    assert main(['leaderboard', str(out), '--include-smoke', '-o', str(tmp_path / 'site')]) == 0
    pages = list((tmp_path / 'site' / 'studies').glob('knowedit*.html'))
    assert len(pages) == 1 and 'removed knowledge stays unretrievable' in pages[0].read_text()


def test_ci_file_runs_the_real_study_small(cache, tmp_path):
    """experiments/knowedit-ci.yaml with MiniLM-L6 itself (no dry run): every path, real weights, real retrieval."""
    from pathlib import Path
    from pyterrier_knowacq.cli import main
    out = tmp_path / 'ci'
    assert main(['run', str(Path(__file__).parents[1] / 'experiments' / 'knowedit-ci.yaml'), '-o', str(out)]) == 0
    meta = json.loads((out / 'meta.json').read_text())
    assert not meta['knowedit']['dry_run'] and meta['knowedit']['training_positives_checked'] > 0
    sets = pd.read_csv(out / 'tables' / 'knowedit_sets.csv', dtype={'docno': str})
    assert set(sets['set']) == {'H', 'C'} and (sets.groupby('set').size() == 24).all()
    assert not set(sets[sets['set'] == 'H'].docno) & set(sets[sets['set'] == 'C'].docno)
    pll = pd.read_csv(out / 'tables' / 'knowedit_pll.csv')
    assert set(pll.arm) == {'unedited', 'suppress-H', 'suppress-C', 'unlearn-H', 'unlearn-C'}
    assert pll['PLL'].notna().all() and (pll['PLL'] < 0).all()


def _synthetic_study(h_specific: bool, seed: int = 0):
    """Ranks, per-query measures and PLL of five arms; the edits lower H's PLL more than C's only if ``h_specific``."""
    rng = np.random.default_rng(seed)
    arms = ['unedited', 'suppress-H', 'suppress-C', 'unlearn-H', 'unlearn-C']
    rank_rows, query_rows, pll_rows = [], [], []
    for s in ('H', 'C'):
        base_rank = rng.uniform(2, 8, 60)
        base_pll = rng.normal(-8, 0.5, 60)
        for arm in arms:
            edited = arm != 'unedited' and arm.endswith(f'-{s}')
            drop = (1.0 if edited else 0.1) if h_specific else (0.1 if edited else 1.0)
            drop = 0.0 if arm == 'unedited' else drop
            for i in range(60):
                rank_rows.append({'stage': 'fine-tuned', 'arm': arm, 'set': s, 'docno': f'{s}{i}', 'qid': f'{s}q{i % 12}',
                                  'log2_rank': base_rank[i] + rng.normal(0, 0.01)})
                pll_rows.append({'arm': arm, 'set': s, 'docno': f'{s}{i}', 'PLL': base_pll[i] - drop + rng.normal(0, 0.02)})
            for q in range(12):
                query_rows.append({'stage': 'fine-tuned', 'arm': arm, 'set': s, 'qid': f'{s}q{q}',
                                   'R_set@100': 0.5 + rng.normal(0, 0.01), 'nDCG@10': 0.5 + rng.normal(0, 0.01)})
    return pd.DataFrame(rank_rows), pd.DataFrame(query_rows), pd.DataFrame(pll_rows)


@pytest.mark.parametrize('h_specific', [True, False])
def test_retrievability_claims_say_when_the_edit_check_failed(h_specific):
    """A retrievability claim is about *removed* knowledge only if the edit removed H more than C: where the PLL check
    does not support that, the claim carries a precondition note (first in its detail), and its verdict stays the
    verdict on the measured ranks."""
    from pyterrier_knowacq.analysis import knowedit_eval as ev
    ranks, queries, pll = _synthetic_study(h_specific)
    found = {c['id']: c for c in ev.claims(ev.comparisons(ranks, queries, pll))}
    effect = found['suppress_effect']['verdict'], found['unlearn_effect']['verdict']
    persists = [found[k] for k in ('suppress_persists', 'unlearn_persists', 'removed_stays_unretrievable')]
    for family in ('suppress', 'unlearn'):   # both halves of the edit check are tested, C's too (it once dropped out)
        assert [p['label'] for p in found[f'{family}_effect']['parts']] == [f'PLL H: {family}-H - {family}-C',
                                                                             f'PLL C: {family}-C - {family}-H']
    if h_specific:
        assert effect == ('supported (lower)', 'supported (lower)')
        assert not any('precondition' in c for c in persists)
    else:
        assert effect == ('different, opposite direction',) * 2
        for c in persists:
            assert c['precondition'].startswith('precondition not met: the ')
            assert c['detail'].startswith(c['precondition'])
            assert c['verdict'].startswith('equivalent')     # the ranks did not move: that verdict is kept
        assert 'suppress edit check' in found['suppress_persists']['precondition']
        assert 'unlearn' not in found['suppress_persists']['precondition']
        assert 'suppress' in found['removed_stays_unretrievable']['precondition'] \
            and 'unlearn' in found['removed_stays_unretrievable']['precondition']
    assert not any('precondition' in found[k] for k in ('suppress_effect', 'unlearn_effect'))
