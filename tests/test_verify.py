"""`knowacq verify RESULTS`: re-run the cheap systems of a results folder (or those named) and compare with its numbers.

Real runs: the shipped TREC DL 2019 first-stage runs through `knowacq run` on a few topics, then re-run by verify."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from pyterrier_knowacq import KnowacqError
from pyterrier_knowacq.leaderboard.verify import restricted_config, select_systems, verify

EXPERIMENT = """\
name: verify-me
dataset: msmarco-passage
topics: [dl19]
systems:
  BM25: run(name=bm25)
  TAS-B:
    pipeline: run(name=tasb)
    tags: {first_stage: tasb}
baseline: BM25
measures: [nDCG@10, RR(rel=2)@10]
"""


@pytest.fixture
def results(tmp_path, cache):
    from pyterrier_knowacq.experiments.runner import run_experiment
    path = tmp_path / 'verify-me.yaml'
    path.write_text(EXPERIMENT)
    out = tmp_path / 'results' / 'verify-me'
    run_experiment(path, output=str(out), limit_topics=6, command=f'knowacq run {path} -o {out} --limit-topics 6')
    return out


def test_verify_reruns_and_matches(results, capsys):
    report = verify(results)
    assert report.ok and report.systems == ['BM25', 'TAS-B'] and not report.skipped
    assert len(report.rows) == 2 * 2                                   # 2 systems x 1 collection x 2 measures
    assert all(r['status'] == 'ok' and r['diff'] <= 1e-4 for r in report.rows)
    assert all(r['collection'] == 'dl19' for r in report.rows)
    out = capsys.readouterr().out
    assert 'stored' in out and 'now' in out and 'OK, all 4 values within 0.0001' in out
    assert 'dl19 / TAS-B:' in out                                     # re-run time next to the recorded one


def test_verify_flags_a_changed_number_and_the_cli_fails(results, capsys):
    from pyterrier_knowacq.cli import main
    agg_file = results / 'dl19' / 'aggregated.csv'
    agg = pd.read_csv(agg_file)
    agg.loc[agg.name == 'TAS-B', 'nDCG@10'] += 0.01
    agg.to_csv(agg_file, index=False)
    report = verify(results, systems=['TAS-B'])
    assert not report.ok and report.systems == ['TAS-B']
    bad = report.failed
    assert len(bad) == 1 and bad[0]['measure'] == 'nDCG@10' and bad[0]['status'] == 'DIFF'
    assert bad[0]['diff'] == pytest.approx(0.01, abs=1e-9)
    assert verify(results, systems=['TAS-B'], tolerance=0.02).ok       # within a looser tolerance
    capsys.readouterr()
    assert main(['verify', str(results), '--system', 'TAS-B']) == 2
    err = capsys.readouterr().err
    assert '1 of 2 values differ by more than 0.0001' in err


def test_which_systems_are_cheap():
    meta = {'config': {'systems': {'BM25': 'bm25(k=100)', 'Slow': 'run(name=bm25) >> text >> biencoder(model=minilm-l6)',
                                   'Trained': {'pipeline': 'bm25(k=100) >> text >> ce(model=C)'},
                                   'Untimed': 'run(name=tasb)'},
                       'models': {'C': {'backbone': 'minilm-l6'}}, 'baseline': 'Trained',
                       'analysis': {'probes': True}},
            'timings': {'dl19': {'BM25': 1.5, 'Slow': 44.0, 'Trained': 40.0}, 'dl20': {'BM25': 0.5, 'Slow': 52.0}}}
    selected, skipped = select_systems(meta)
    assert selected == ['BM25']
    why = dict(skipped)
    assert why['Slow'] == '96 s recorded > 60 s' and why['Trained'] == 'trains C' and why['Untimed'] == 'no recorded time'
    assert select_systems(meta, max_seconds=100)[0] == ['BM25', 'Slow']
    assert select_systems(meta, every=True)[0] == ['BM25', 'Slow', 'Trained', 'Untimed']
    assert select_systems(meta, names=['Trained'])[0] == ['Trained']
    with pytest.raises(KnowacqError, match="no system 'Slw'.*did you mean 'Slow'"):
        select_systems(meta, names=['Slw'])
    cfg = restricted_config(meta['config'], ['BM25'])
    assert list(cfg['systems']) == ['BM25'] and 'models' not in cfg and 'baseline' not in cfg and 'analysis' not in cfg
    assert cfg['correction'] == 'none'                                # no baseline: nothing to correct
    cfg = restricted_config(meta['config'], ['Trained'])
    assert cfg['models'] == {'C': {'backbone': 'minilm-l6'}} and cfg['baseline'] == 'Trained'


def test_verify_refuses_what_it_cannot_rerun(tmp_path):
    with pytest.raises(KnowacqError, match='no meta.json'):
        verify(tmp_path)
    (tmp_path / 'meta.json').write_text(json.dumps({'config': {'systems': {'X': 'ce(model=C)'}, 'models': {'C': {}}},
                                                    'timings': {}}))
    with pytest.raises(KnowacqError, match='no system to re-run.*--system NAME or pass --all'):
        verify(tmp_path, echo=lambda *_: None)


def test_cli_parses_verify_and_leaderboard_options():
    from pyterrier_knowacq.cli import parser
    args = parser().parse_args(['verify', 'results/quickstart', '--system', 'BM25', '-s', 'PISA BM25 (31k slice)',
                                '--tolerance', '1e-3', '--max-seconds', '120'])
    assert args.systems == ['BM25', 'PISA BM25 (31k slice)'] and args.tolerance == 1e-3 and args.max_seconds == 120
    args = parser().parse_args(['leaderboard'])
    assert args.results == [] and args.output is None and not args.include_smoke   # the shipped site
    args = parser().parse_args(['leaderboard', 'results/x', '-o', 'site', '--include-smoke', '--fresh'])
    assert args.include_smoke and args.fresh and args.output == 'site'
