"""Every code block of the README works: YAML blocks are valid experiment files, shell lines name real make targets
and parse as `knowacq` commands, and Python blocks run (slow: the pipeline example encodes the 31k-passage slice)."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r'^```(\w+)\n(.*?)^```', (ROOT / 'README.md').read_text(encoding='utf-8'), re.S | re.M)


def _blocks(lang):
    return [pytest.param(code, id=f'{lang}-{i}') for i, (kind, code) in enumerate(BLOCKS) if kind == lang]


def test_readme_has_code_blocks():
    kinds = {k for k, _ in BLOCKS}
    assert {'bash', 'python', 'yaml'} <= kinds, kinds


@pytest.mark.parametrize('code', _blocks('yaml'))
def test_yaml_blocks_are_valid_experiments(code):
    from pyterrier_knowacq.experiments.config import check_config
    check_config(yaml.safe_load(code), 'README.md')


def _commands(code):
    for line in code.splitlines():
        line = line.split('#', 1)[0].strip()
        if line:
            words = shlex.split(line)
            while words and re.match(r'^[A-Z_]+=', words[0]):   # VAR=value prefixes
                words = words[1:]
            yield words


@pytest.mark.parametrize('code', _blocks('bash'))
def test_shell_blocks_name_real_targets_and_commands(code):
    from pyterrier_knowacq.cli import parser
    targets = set(re.findall(r'^([\w-]+):', (ROOT / 'Makefile').read_text(), re.M))
    for words in _commands(code):
        if words[0] == 'make':
            assert set(words[1:]) <= targets, f'README runs make {words[1:]}, the Makefile has {sorted(targets)}'
        elif words[0] == 'knowacq':
            parser().parse_args(words[1:])            # argparse exits (fails the test) on an unknown flag
        elif words[0] == 'torchrun':   # the CLI, or the sharded corpus encoder, each with its own argument parser
            if 'pyterrier_knowacq.models.sharding' in words:
                from pyterrier_knowacq.models.sharding import _parser
                _parser().parse_args(words[words.index('pyterrier_knowacq.models.sharding') + 1:])
            else:
                parser().parse_args(words[words.index('pyterrier_knowacq.cli') + 1:])
        else:
            assert words[0] in {'pip', 'unset', 'export', 'cd', 'python', 'git'}, f'unchecked README command {words}'
            if words[0] == 'pip' and '-e' in words:
                extras = re.findall(r'\[([\w,]+)\]', ' '.join(words))
                import configparser
                cfg = configparser.ConfigParser()
                cfg.read(ROOT / 'setup.cfg')
                declared = set(cfg['options.extras_require'])
                for e in ','.join(extras).split(','):
                    assert not e or e in declared, f'README installs extra {e!r}, setup.cfg declares {sorted(declared)}'


def _small_msmarco(root: Path, n_queries: int = 4):
    """The embedded DL19 slice cut to a few judged queries, their BM25 top 100 and judged passages (same layout)."""
    from pyterrier_knowacq.datasets.core import MsMarcoPassage, get_dataset
    full = get_dataset('msmarco-passage')
    qrels = full.get_qrels('dl19')
    topics = full.get_topics('dl19')
    topics = topics[topics.qid.isin(set(qrels.qid))].head(n_queries)
    keep = set(topics.qid)
    run = full.get_run('bm25', 'dl19')
    run, qrels = run[run.qid.isin(keep)], qrels[qrels.qid.isin(keep)]
    for sub in ('queries', 'qrels', 'runs/first-stage', 'collection'):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / 'queries' / 'dl19.tsv').write_text(''.join(f'{q}\t{t}\n' for q, t in zip(topics.qid, topics['query'])))
    (root / 'qrels' / 'dl19.qrels').write_text(''.join(f'{q} 0 {d} {l}\n' for q, d, l in qrels[['qid', 'docno', 'label']].values))
    (root / 'runs' / 'first-stage' / 'bm25.dl19.top100.trec').write_text(
        ''.join(f'{q} Q0 {d} {r + 1} {s} bm25\n' for q, d, r, s in run[['qid', 'docno', 'rank', 'score']].values))
    docnos = sorted(set(run.docno) | set(qrels.docno))   # (the slice lacks the text of some judged passages)
    (root / 'collection' / 'passages.tsv').write_text(
        ''.join(f'{d}\t{t}\n' for d, t in zip(docnos, full.find_texts(docnos)) if t is not None))
    (root / 'PROVENANCE.md').write_text('A few DL19 queries of the embedded slice (README test).\n')
    ds = MsMarcoPassage(root)
    ds.splits = ('dl19',)
    return ds


@pytest.mark.parametrize('code', _blocks('python'))
def test_python_blocks_run_on_a_small_corpus(code, tmp_path, cache, monkeypatch, capsys):
    """The README's Python runs as written, with `msmarco-passage` served by a four-query cut of it (the whole slice
    is the slow test below)."""
    import pyterrier_knowacq.datasets.core as datasets
    monkeypatch.setitem(datasets._CACHE, ('msmarco-passage', None), _small_msmarco(tmp_path / 'small'))
    monkeypatch.chdir(tmp_path)
    scope = {'__name__': '__readme__'}
    exec(compile(code, 'README.md', 'exec'), scope)
    assert 'MiniLM dense' in capsys.readouterr().out
    res = scope['res'].set_index('name')
    assert res.loc['MiniLM dense', 'nDCG@10'] > 0 and res.loc['BM25 >> MiniLM', 'nDCG@10'] > 0


@pytest.mark.slow
@pytest.mark.parametrize('code', _blocks('python'))
def test_python_blocks_run(code, tmp_path, cache):
    out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
