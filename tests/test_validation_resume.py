"""Validation before work, and no lost work after a failure.

- ``knowacq run FILE --dry-run`` (and ``knowacq train FILE --dry-run``) checks every model spec with its kind's own
  validator, every data path and every model name, and reports all problems in one error, in seconds, before anything
  is trained or indexed; a real run performs the same checks first.
- A failed system no longer discards the systems that finished: the results folder is written with them, marked
  incomplete; running again reuses them and completes the folder.
"""
import json
import re
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pyterrier as pt
import pytest
import yaml

from pyterrier_knowacq import KnowacqError
from pyterrier_knowacq.cli import main
from pyterrier_knowacq.experiments.preflight import PreflightError, check_experiment, check_train_file

EXPERIMENTS = Path(__file__).resolve().parents[1] / 'experiments'


def _inject(text: str, old: str, new: str) -> str:
    assert text.count(old) >= 1, old
    return text.replace(old, new, 1)


def _cache_is_empty(cache: Path):
    """Nothing was built: the cache holds only the fixture's links to the tiny test models."""
    entries = {p.relative_to(cache).as_posix() for p in cache.rglob('*')}
    assert entries <= {'models', 'models/tiny-bert', 'models/tiny-llama'}, sorted(entries)[:20]


def _numbered(err: str):
    """The numbered problem lines of a pre-run report."""
    return [line.strip() for line in err.splitlines() if re.match(r'\s+\d+\. ', line)]


# -- (a) the study's grid: a misspelt key, a missing teacher file and a misspelt stage, all at once ----------------

def _bad_multistage(tmp_path) -> Path:
    text = (EXPERIMENTS / 'multistage-msmarco.yaml').read_text()
    # a typo in a model spec of the real grid (it would surface when ELECTRA-C starts training on the GPU machine)
    text = _inject(text, 'lr: 1.0e-5, steps: 20000, warmup: 1000,', 'lr: 1.0e-5, steps: 20000, warmpu: 1000,')
    # a teacher run that does not exist, in the models the dry run trains
    text = _inject(text, 'stages: [{loss: ranknet, data: {teacher: rankgpt-3.5,',
                   f'stages: [{{loss: ranknet, data: {{teacher: {tmp_path}/missing/rankgpt.trec,')
    # a misspelt stage in a system
    text = _inject(text, 'BM25 >> D: bm25(k=100) >> text >>', 'BM25 >> D: bm25(k=100) >> txet >>')
    path = tmp_path / 'multistage-bad.yaml'
    path.write_text(text)
    return path


def test_dry_run_reports_typo_missing_teacher_and_misspelt_stage_at_once(tmp_path, cache, capsys):
    path = _bad_multistage(tmp_path)
    out = tmp_path / 'res'
    t0 = time.perf_counter()
    rc = main(['run', str(path), '--dry-run', '-o', str(out)])
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert rc == 2
    errors = [line for line in err.splitlines() if line.startswith('knowacq: error:')]
    assert len(errors) == 1 and '3 problems in' in errors[0], err       # ONE error ...
    lines = _numbered(err)
    assert len(lines) == 3, err                                          # ... listing each problem on its own line
    assert any("'warmpu'" in line and "did you mean 'warmup'" in line and "model 'ELECTRA-C'" in line for line in lines)
    assert any('missing/rankgpt.trec does not exist' in line and "model 'ELECTRA-D'" in line for line in lines)
    assert any("unknown stage 'txet'" in line and "did you mean 'text'" in line for line in lines)
    assert all(line.split('. ', 1)[1].startswith(f'{path}:') for line in lines)   # each names its file and line
    # the real grid's teacher file lives on the GPU machine: the dry run warns, it does not stop
    assert 'marco-train-100k.rankgpt-3.5.trec' in err and 'only the real run reads it' in err
    assert "model 'roberta-base' cannot be checked offline" in err     # a hub id, offline: a warning
    assert seconds < 30, f'the checks took {seconds:.1f} s'
    _cache_is_empty(cache)                                               # no training, no index
    assert not out.exists() and not (tmp_path / '.knowacq-work').exists()


def test_real_run_checks_first_and_fails_in_seconds(tmp_path, cache):
    """The real run checks the same first: the teacher file on the GPU machine and hub ids are errors there."""
    path = _bad_multistage(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(PreflightError) as info:
        from pyterrier_knowacq.experiments.runner import run_experiment
        run_experiment(path, output=tmp_path / 'res')
    assert time.perf_counter() - t0 < 30
    problems = info.value.problems
    assert any("'warmpu'" in p for p in problems) and any("unknown stage 'txet'" in p for p in problems)
    assert sum('marco-train-100k.rankgpt-3.5.trec' in p and 'does not exist' in p for p in problems) == 4
    assert any(p.startswith("model 'google/electra-base-discriminator' is not a local folder") for p in problems)
    assert not any('missing/rankgpt.trec' in p for p in problems)       # the dry-run variant is not read by a real run
    _cache_is_empty(cache)
    assert not (tmp_path / 'res').exists()


# -- (b) the knowledge-acquisition grid: a missing DPR JSON file of the analysis' probes ---------------------------

def test_dry_run_reports_missing_dpr_json_with_the_other_problems(tmp_path, cache, capsys):
    text = (EXPERIMENTS / 'knowacq-full.yaml').read_text()
    # the dry run reads the NQ probe's offline stand-in (`dry_run:`), so that is where the missing file goes
    text = _inject(text, 'dry_run: {dpr_json: nq-dpr-sample}', f'dry_run: {{dpr_json: {tmp_path}/biencoder-nq-dev.json}}')
    text = _inject(text, '    lr: 1.0e-4\n    steps: 5000\n', '    lr: 1.0e-4\n    warmpu: 0.1\n    steps: 5000\n')
    text = _inject(text, 'pipeline: dense(model=facebook/contriever', 'pipeline: dnese(model=facebook/contriever')
    path = tmp_path / 'knowacq-bad.yaml'
    path.write_text(text)
    t0 = time.perf_counter()
    assert main(['run', str(path), '--dry-run', '-o', str(tmp_path / 'res')]) == 2
    assert time.perf_counter() - t0 < 30
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if line.startswith('knowacq: error:')]) == 1
    lines = _numbered(err)
    assert any('biencoder-nq-dev.json does not exist' in line and "probe data 'nq'" in line for line in lines), err
    assert any("model 'llama2-lora-ft'" in line and "'warmpu'" in line for line in lines), err
    assert any("unknown stage 'dnese'" in line and "did you mean 'dense'" in line for line in lines), err
    _cache_is_empty(cache)
    assert not (tmp_path / 'res').exists()


def test_every_model_kind_is_checked_by_its_own_validator(tmp_path, cache):
    config = {
        'name': 'kinds', 'dataset': 'msmarco-passage', 'folds': [{'train': 'dl20', 'test': 'dl19'}],
        'models': {
            'ce': {'backbone': 'tiny-bert', 'stages': [{'loss': 'lec', 'steps': 2}]},
            'bi': {'kind': 'bi-encoder', 'backbone': 'tiny-bert', 'steps': 2, 'temperature': 0},
            'cb': {'kind': 'colbert', 'backbone': 'tiny-bert', 'steps': 2, 'loss': 'margin'},
            'teach': {'kind': 'colbert', 'backbone': 'tiny-bert', 'steps': 2, 'data': {'teacher': 'rankgtp-3.5'}},
        },
        'systems': {'BM25': 'run(name=bm25)', 'Missing run': 'run(name=tasb-v2)',
                    'Folder': 'run(name=bm25) >> text >> biencoder(model=./no/such/model-folder)'},
    }
    path = tmp_path / 'kinds.yaml'
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(PreflightError) as info:
        check_experiment(path, dry_run=False, echo=False)
    text = str(info.value)
    assert "model 'ce'" in text and "loss 'lec'" in text and "did you mean 'lce'" in text      # validate_spec
    assert "model 'bi'" in text and 'temperature must be > 0' in text                          # validate_dense_spec
    assert "model 'cb'" in text and "ColBERT training loss must be 'infonce' or 'kl'" in text  # validate_colbert_spec
    assert "no run (nor a file) 'rankgtp-3.5' (did you mean 'rankgpt-3.5" in text
    assert "has no run 'tasb-v2'" in text
    assert 'model folder ./no/such/model-folder does not exist' in text
    assert len(info.value.problems) == 6, text


def test_train_dry_run_checks_the_file_and_trains_nothing(tmp_path, cache, capsys):
    good = EXPERIMENTS / 'multistage-select.yaml'
    assert main(['train', str(good), '--dry-run']) == 0
    assert 'nothing was trained' in capsys.readouterr().out
    text = _inject(good.read_text(), '        warmup: 0.1\n', '        warmpu: 0.1\n')
    text = _inject(text, 'data: {run: bm25,', f'data: {{run: {tmp_path}/bm25.trec,')
    bad = tmp_path / 'select-bad.yaml'
    bad.write_text(text)
    assert main(['train', str(bad), '--dry-run']) == 2
    err = capsys.readouterr().err
    lines = _numbered(err)
    assert any("'warmpu'" in line for line in lines) and any('bm25.trec does not exist' in line for line in lines), err
    _cache_is_empty(cache)


# -- (d) the shipped files pass -------------------------------------------------------------------------------------

@pytest.mark.parametrize('path', sorted(EXPERIMENTS.glob('*.yaml')), ids=lambda p: p.name)
def test_shipped_experiment_files_pass_their_dry_run_checks(path, cache):
    raw = yaml.safe_load(path.read_text())
    check = check_experiment if 'systems' in raw else check_train_file
    report = check(path, dry_run=True, echo=False)
    assert not report.errors
    for warning in report.warnings:   # only hub ids (offline here) and files kept on the machine of the real run
        assert 'cannot be checked offline' in warning or 'only the real run reads it' in warning, warning
    _cache_is_empty(cache)


# -- (c) a failed system keeps the others; a rerun resumes ----------------------------------------------------------

CALLS = Counter()
BROKEN = {'on': True}


class _Counted(pt.Transformer):
    def __init__(self, inner, tag):
        self.inner, self.tag = inner, tag

    def transform(self, inp):
        CALLS[self.tag] += 1
        return self.inner(inp)


class _Flaky(pt.Transformer):
    def transform(self, inp):
        if BROKEN['on']:
            raise KnowacqError('the flaky stage failed on purpose')
        return inp


@pytest.fixture
def test_stages():
    from pyterrier_knowacq.experiments.components import STAGES, register_stage

    @register_stage('counted_run')
    def counted_run(ctx, name: str = 'bm25', tag: str = 'x', k: int = None):
        return _Counted(ctx.dataset.run_transformer(str(name), k=k), tag)

    @register_stage('flaky')
    def flaky(ctx):
        return _Flaky()
    CALLS.clear()
    BROKEN['on'] = True
    yield
    STAGES.pop('counted_run', None)
    STAGES.pop('flaky', None)


RESUME = """
name: resume
dataset: msmarco-passage
topics: [dl19]
systems:
  BM25: counted_run(name=bm25, tag=one)
  Flaky: counted_run(name=bm25, tag=two) >> flaky
  Top 5: counted_run(name=bm25, tag=three, k=5)
baseline: BM25
measures: [nDCG@10, RR(rel=2)@10]
"""


def test_failed_system_keeps_the_finished_ones_and_a_rerun_resumes(tmp_path, cache, capsys, test_stages):
    path = tmp_path / 'resume.yaml'
    path.write_text(RESUME)
    out = tmp_path / 'results' / 'resume'
    args = ['run', str(path), '-o', str(out), '--limit-topics', '6']
    assert main(args) == 2                                               # the 2nd of 3 systems fails
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith('knowacq: error: the flaky stage failed on purpose')
    assert CALLS == {'one': 1, 'two': 1, 'three': 1}                   # the others still ran
    meta = json.loads((out / 'meta.json').read_text())
    assert meta['incomplete'] is True
    assert meta['failed'] == [{'system': 'Flaky', 'collection': 'dl19', 'error': 'the flaky stage failed on purpose'}]
    first = pd.read_csv(out / 'dl19' / 'aggregated.csv').set_index('name')
    assert list(first.index) == ['BM25', 'Top 5'] and first.loc['BM25', 'nDCG@10'] > 0
    assert sorted(p.name for p in (out / 'dl19' / 'runs').iterdir()) == ['bm25.res.gz', 'top-5.res.gz']
    first_timings = meta['timings']['dl19']
    assert set(first_timings) == {'BM25', 'Top 5'}
    from pyterrier_knowacq.leaderboard.data import read_experiment
    exp = read_experiment(out, 'x', 'resume')
    assert any('INCOMPLETE' in p and 'Flaky' in p for p in exp.problems)   # the leaderboard says so
    assert (tmp_path / 'results' / '.knowacq-work' / 'resume').is_dir()

    # fixed, and the third system changed: a plain rerun (no --overwrite: the folder is incomplete) resumes
    BROKEN['on'] = False
    path.write_text(RESUME.replace('tag=three, k=5', 'tag=three, k=4'))
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert 'reusing finished system BM25' in stdout and 'reusing finished system Top 5' not in stdout
    assert CALLS == {'one': 1, 'two': 2, 'three': 2}                   # BM25 was not run again
    meta = json.loads((out / 'meta.json').read_text())
    assert 'incomplete' not in meta and 'failed' not in meta and meta['reused'] == {'dl19': ['BM25']}
    assert meta['timings']['dl19']['BM25'] == first_timings['BM25']   # measured by the run that finished it
    done = pd.read_csv(out / 'dl19' / 'aggregated.csv').set_index('name')
    assert list(done.index) == ['BM25', 'Flaky', 'Top 5']
    assert done.loc['BM25', 'nDCG@10'] == first.loc['BM25', 'nDCG@10']   # the kept run gives the same numbers
    assert done.loc['Flaky', 'nDCG@10'] == done.loc['BM25', 'nDCG@10']   # (flaky passes BM25 through)
    assert not (tmp_path / 'results' / '.knowacq-work').exists()        # the work folder is gone
    assert not [p for p in (tmp_path / 'results').iterdir() if p.name != 'resume']
    assert main(args) == 2 and 'already exists' in capsys.readouterr().err   # a complete folder is kept as before


def test_nothing_finished_leaves_nothing(tmp_path, cache, test_stages):
    from pyterrier_knowacq.experiments.runner import run_experiment
    path = tmp_path / 'broken.yaml'
    path.write_text('name: broken\ndataset: msmarco-passage\ntopics: [dl19]\nsystems:\n  F: run(name=bm25) >> flaky\n')
    with pytest.raises(KnowacqError, match='flaky stage failed'):
        run_experiment(path, output=tmp_path / 'res', limit_topics=2)
    assert not (tmp_path / 'res').exists() and not (tmp_path / '.knowacq-work').exists()
