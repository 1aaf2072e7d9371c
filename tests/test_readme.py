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
    from pyterrier_knowacq.experiment_config import check_config
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
        elif words[0] == 'torchrun':
            cli = words.index('pyterrier_knowacq.cli')
            parser().parse_args(words[cli + 1:])
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


@pytest.mark.slow
@pytest.mark.parametrize('code', _blocks('python'))
def test_python_blocks_run(code, tmp_path, cache):
    out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
