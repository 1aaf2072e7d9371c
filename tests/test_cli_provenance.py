"""The command line (version, help, errors naming flags, trec_eval measure names, fast one-line hub failures) and the
provenance a results folder records (library versions, platform, run tags)."""
import argparse
import gzip
import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest

from pyterrier_knowacq import KnowacqError
from pyterrier_knowacq.cli import main, parser

RUN_ONLY = """
name: tiny-provenance
dataset: msmarco-passage
topics: [dl19]
systems:
  BM25: run(name=bm25, k=5)
  BM25 top 3: run(name=bm25, k=3)
baseline: BM25
measures: [nDCG@10, ndcg_cut_10, recip_rank, map, P_10]
"""

MISSPELT_MODEL = """
name: misspelt
dataset: msmarco-passage
topics: [dl19]
systems:
  MiniLM: run(name=bm25, k=5) >> text >> biencoder(model=minlm-l6)
"""

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, text, name='exp.yaml'):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def silent_hub():
    """``https://127.0.0.1:PORT``: a server that accepts TCP connections and never answers (the worst case: a hub
    behind a network that swallows packets), so a client waits until its own time limit."""
    import socket
    server = socket.create_server(('127.0.0.1', 0), backlog=16)
    yield f'https://127.0.0.1:{server.getsockname()[1]}'
    server.close()


def _hubless_env(endpoint):
    """No offline variables, no proxies, and a hub endpoint that never answers."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE') and 'proxy' not in k.lower()}
    env.update(HF_ENDPOINT=endpoint, PYTHONPATH=str(ROOT))
    return env


# -- the command line ------------------------------------------------------------------------------------------

def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(['--version'])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f'knowacq {version("pyterrier-knowacq")}'


def test_every_argument_and_command_has_help():
    def check(p: argparse.ArgumentParser, where: str):
        for action in p._actions:
            assert action.help and action.help.strip(), f'{where}: {action.dest} has no help'
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help and choice.help.strip(), f'{where}: command {choice.dest} has no help'
                for name, sub in action.choices.items():
                    check(sub, f'{where} {name}')
    check(parser(), 'knowacq')


def test_help_documents_the_cache_variable(capsys):
    with pytest.raises(SystemExit):
        main(['--help'])
    out = capsys.readouterr().out
    assert 'KNOWACQ_CACHE' in out and '--version' in out


def test_existing_results_folder_names_the_cli_flag(tmp_path, capsys):
    from pyterrier_knowacq.experiments.runner import run_experiment
    path = _write(tmp_path, RUN_ONLY)
    (tmp_path / 'res').mkdir()
    assert main(['run', str(path), '-o', str(tmp_path / 'res')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('knowacq: error: ') and 'pass --overwrite' in err[0]
    assert 'overwrite=True' not in err[0]
    with pytest.raises(KnowacqError, match='overwrite=True'):  # the Python API keeps its own keyword
        run_experiment(path, output=tmp_path / 'res')


def test_trec_eval_measure_names_are_accepted():
    from pyterrier_knowacq.experiments.config import _measures
    got = [str(m) for m in _measures({'measures': ['ndcg_cut_10', 'recip_rank', 'map', 'recall_100', 'P_10', 'ndcg_cut.5',
                                                   'nDCG@10', 'RR(rel=2)@10']})]
    assert got == ['nDCG@10', 'RR', 'AP', 'R@100', 'P@10', 'nDCG@5', 'RR(rel=2)@10']  # nDCG@10 written twice: once


def test_unknown_measure_is_one_line_naming_both_syntaxes(tmp_path, capsys):
    path = _write(tmp_path, RUN_ONLY.replace('map,', 'mean_avg_prec,'))
    assert main(['run', str(path), '-o', str(tmp_path / 'res')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown measure 'mean_avg_prec'" in err[0]
    assert 'ir_measures' in err[0] and 'trec_eval' in err[0] and 'nDCG@10' in err[0] and 'ndcg_cut_10' in err[0]
    assert not (tmp_path / 'res').exists()


# -- the hub ---------------------------------------------------------------------------------------------------

def test_misspelt_model_without_hub_fails_at_once_in_one_line(tmp_path, silent_hub):
    """`knowacq run` with a misspelt model, no offline variables and no hub: one line, exit code 2, in seconds."""
    path = _write(tmp_path, MISSPELT_MODEL)
    out = tmp_path / 'res'
    proc = subprocess.run([sys.executable, '-m', 'pyterrier_knowacq.cli', 'run', str(path), '-o', str(out)],
                          capture_output=True, text=True, env=_hubless_env(silent_hub), timeout=120, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("knowacq: error: model 'minlm-l6' is not a local folder")
    assert "did you mean 'minilm-l6'?" in lines[0] and 'the hub is unreachable' in lines[0] and 'tiny-bert' in lines[0]
    assert not out.exists()
    # the hub part alone, timed inside the process once the interpreter and the libraries are loaded (the machine is
    # shared and slow to start Python; the endpoint never answers, so this includes the probe's 2 s limit)
    timed = textwrap.dedent(f"""
        import sys, time
        import pyterrier_knowacq.experiments.runner, pyterrier_knowacq.cli as cli
        t0 = time.perf_counter()
        rc = cli.main(['run', {str(path)!r}, '-o', {str(out)!r}])
        print(f'{{rc}} {{time.perf_counter() - t0:.3f}}')
    """)
    proc = subprocess.run([sys.executable, '-c', timed], capture_output=True, text=True, env=_hubless_env(silent_hub),
                          timeout=120, cwd=tmp_path)
    rc, seconds = proc.stdout.split()[-2:]
    assert rc == '2' and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert float(seconds) < 5, f'the hub failure took {seconds} s'


def test_offline_variables_fail_without_probing(monkeypatch):
    from pyterrier_knowacq.models import backbones
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(backbones, '_probe', lambda *address: pytest.fail('probed the hub while offline'))
    with pytest.raises(KnowacqError, match=r"did you mean 'tiny-bert'\?.*hub is offline.*unset HF_HUB_OFFLINE"):
        backbones.resolve_model('tiny-bret')


def test_unreachable_hub_is_probed_once(monkeypatch):
    from pyterrier_knowacq.models import backbones
    calls = []
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    monkeypatch.delenv('TRANSFORMERS_OFFLINE', raising=False)
    monkeypatch.setenv('HF_ENDPOINT', 'https://hub.invalid')
    for proxy in ('HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy'):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(backbones, '_probes', {})
    monkeypatch.setattr(backbones, '_probe', lambda *address: calls.append(address) or 'refused')
    for _ in range(2):
        with pytest.raises(KnowacqError, match=r'hub is unreachable \(hub.invalid:443: refused\).*connect to the network'):
            backbones.resolve_model('no-such-org/no-such-model')
    assert calls == [('hub.invalid', 443, True)]
    with pytest.raises(KnowacqError, match='unreachable'):  # random: checks its base the same way
        backbones.check_model_name('random:no-such-org/no-such-model')


def test_probe_gives_up_on_a_silent_host(monkeypatch, silent_hub):
    import time
    from pyterrier_knowacq.models import backbones
    monkeypatch.setattr(backbones, '_PROBE_TIMEOUT_S', 0.3)
    port = int(silent_hub.rsplit(':', 1)[1])
    t0 = time.perf_counter()
    assert backbones._probe('127.0.0.1', port, True)  # TCP opens, the TLS handshake never completes
    assert time.perf_counter() - t0 < 2
    assert backbones._probe('127.0.0.1', port, False) is None  # plain TCP: it answers
    assert backbones._probe('', 443) == 'no host in HF_ENDPOINT'


def test_a_local_model_folder_wins_over_alias_and_hub(tmp_path, monkeypatch):
    from pyterrier_knowacq.models import backbones
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(backbones, 'hub_problem', lambda: pytest.fail('consulted the hub for a local folder'))
    for name in ('some-org/some-model', 'tiny-bert'):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / 'config.json').write_text('{}')
        assert backbones.resolve_model(name) == name
    (tmp_path / 'minilm-l6').mkdir()  # a folder that is not a model does not hide the alias
    assert Path(backbones.resolve_model('minilm-l6'), 'config.json').exists()


def test_hub_errors_become_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    from huggingface_hub.errors import LocalEntryNotFoundError
    from pyterrier_knowacq import cli

    def hub_failure(args):
        try:
            raise LocalEntryNotFoundError('cannot find the requested files\nin the local cache')
        except LocalEntryNotFoundError as e:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from e
    monkeypatch.setattr(cli, 'cmd_list', hub_failure)
    assert cli.main(['list']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('knowacq: error: the Hugging Face hub could not serve a model')
    assert 'LocalEntryNotFoundError' in err[0]

    def bug(args):
        raise FileNotFoundError('a bug, not the hub')
    monkeypatch.setattr(cli, 'cmd_list', bug)
    with pytest.raises(FileNotFoundError):
        cli.main(['list'])

    def bug_while_handling_hub_error(args):
        try:
            raise LocalEntryNotFoundError('not cached')
        except LocalEntryNotFoundError:
            {}['missing']
    monkeypatch.setattr(cli, 'cmd_list', bug_while_handling_hub_error)
    with pytest.raises(KeyError):
        cli.main(['list'])


def test_cli_sets_short_hub_timeouts(monkeypatch):
    for var in ('HF_HUB_ETAG_TIMEOUT', 'HF_HUB_DOWNLOAD_TIMEOUT'):
        monkeypatch.setenv(var, 'unset')  # recorded first, so the test leaves the variable as it found it
        monkeypatch.delenv(var)
    assert main(['list']) == 0
    assert int(os.environ['HF_HUB_ETAG_TIMEOUT']) <= 10 and int(os.environ['HF_HUB_DOWNLOAD_TIMEOUT']) <= 10


# -- provenance ------------------------------------------------------------------------------------------------

def test_results_record_versions_platform_and_run_tags(tmp_path, capsys):
    path = _write(tmp_path, RUN_ONLY)
    out = tmp_path / 'res'
    assert main(['run', str(path), '-o', str(out), '--limit-topics', '2']) == 0
    meta = json.loads((out / 'meta.json').read_text())
    versions = meta['versions']
    import pyterrier
    assert versions['pyterrier'] == pyterrier.__version__ and 'python-terrier' not in versions  # the real distribution
    for dist in ('pyterrier-knowacq', 'pyterrier-alpha', 'pyterrier-dr', 'ir-datasets', 'ir-measures', 'torch',
                 'transformers', 'tokenizers', 'safetensors', 'numpy', 'pandas', 'scipy', 'python'):
        assert versions.get(dist), dist
    platform = meta['platform']
    assert set(platform) >= {'cpu', 'logical_cores', 'ram_gb', 'gpus', 'os'}
    assert platform['logical_cores'] == os.cpu_count() and platform['ram_gb'] > 0 and isinstance(platform['gpus'], list)
    assert meta['measures'] == ['nDCG@10', 'RR', 'AP', 'P@10']  # trec_eval names run, under ir_measures names
    for system in meta['systems']:
        with gzip.open(out / 'dl19' / 'runs' / f'{system["slug"]}.res.gz', 'rt') as f:
            tags = {line.split()[5] for line in f}
        assert tags == {system['slug']}
    assert {s['slug'] for s in meta['systems']} == {'bm25', 'bm25-top-3'}
