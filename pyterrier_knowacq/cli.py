"""The ``knowacq`` command line: run experiments, the offline quickstart, reports, the leaderboard, training."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from pathlib import Path

from ._util import KnowacqError

# a link to the repository's experiments/ folder, so wheels ship the experiment files too
REPO_EXPERIMENTS = Path(__file__).resolve().parent / 'experiments'


def _experiment_file(name: str) -> Path:
    path = Path(name)
    if path.exists():
        return path
    shipped = REPO_EXPERIMENTS / (name if name.endswith('.yaml') else f'{name}.yaml')
    if shipped.exists():
        return shipped
    raise KnowacqError(f'experiment file {name} not found (looked in . and {REPO_EXPERIMENTS})')


def cmd_run(args):
    from .experiment import run_experiment
    out = run_experiment(_experiment_file(args.file), output=args.output, overwrite=args.overwrite, dry_run=args.dry_run,
                         limit_topics=args.limit_topics, command=_command())
    print(f'[knowacq] results: {out.resolve()}')
    return out


def cmd_quickstart(args):
    from .experiment import run_experiment
    out = run_experiment(_experiment_file('quickstart'), output=args.output, overwrite=True, command=_command())
    print(f'[knowacq] results: {out.resolve()}')
    try:
        from .leaderboard import build_site
    except ImportError:
        return out
    index = build_site([out], args.site)
    print(f'[knowacq] leaderboard: {Path(index).resolve()}')
    return out


def cmd_report(args):
    from .report import write_report
    text = write_report(args.results)
    if args.output:
        from ._util import atomic_write_text
        atomic_write_text(args.output, text)
        print(f'[knowacq] report written to {args.output}')
    print(text)


def cmd_leaderboard(args):
    from .leaderboard import build_site
    index = build_site(args.results, args.output)
    print(f'[knowacq] leaderboard: {Path(index).resolve()}')


def cmd_train(args):
    from .training.stages import train_from_config
    out = train_from_config(args.file)
    # validation-only selection table: the yardsticks are measured on queries carved from the training split
    print('[knowacq] validation nDCG@10 (queries carved from the training split; the test split is never read):')
    print(f'  {"model":<28} {"first stage":>11} {"start":>7} {"best":>7}  folder')
    for name, folder in out.items():
        info = json.loads((Path(folder) / 'training.json').read_text()) if (Path(folder) / 'training.json').exists() else {}
        val = info.get('validation') or {}

        def fmt(value):
            return f'{value:7.4f}' if isinstance(value, (int, float)) else f'{"-":>7}'
        print(f'  {name:<28} {fmt((val.get("first_stage") or {}).get("nDCG@10")):>11} '
              f'{fmt((val.get("start") or {}).get("nDCG@10"))} {fmt(info.get("best_metric"))}  {folder}')


def cmd_list(args):
    from .backbones import ALIASES
    from .datasets import DATASETS
    from .stages import STAGES, _load_plugins
    _load_plugins()
    print('datasets: ' + ', '.join(sorted(DATASETS)) + ', beir:/path, irds:<id>')
    print('models:   ' + ', '.join(sorted(ALIASES)) + ', random:<name>, local folders, HF ids')
    print('stages:   ' + ', '.join(sorted(STAGES)))


def _command() -> str:
    return 'knowacq ' + ' '.join(shlex.quote(a) for a in sys.argv[1:])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='knowacq', description=__doc__)
    sub = p.add_subparsers(dest='command', required=True)
    r = sub.add_parser('run', help='run an experiment file')
    r.add_argument('file')
    r.add_argument('-o', '--output', help='results folder (default results/<name>)')
    r.add_argument('--overwrite', action='store_true', help='replace an existing results folder')
    r.add_argument('--dry-run', action='store_true', help='tiny models and a few topics: check that the file runs')
    r.add_argument('--limit-topics', type=int, help='evaluate on the first N topics only')
    r.set_defaults(fn=cmd_run)
    q = sub.add_parser('quickstart', help='run experiments/quickstart.yaml offline and build the leaderboard')
    q.add_argument('-o', '--output', default='results/quickstart')
    q.add_argument('--site', default='site')
    q.set_defaults(fn=cmd_quickstart)
    rep = sub.add_parser('report', help='study claims vs our figures, from results folders')
    rep.add_argument('results', nargs='+')
    rep.add_argument('-o', '--output')
    rep.set_defaults(fn=cmd_report)
    lb = sub.add_parser('leaderboard', help='build the static leaderboard site')
    lb.add_argument('results', nargs='+')
    lb.add_argument('-o', '--output', default='site')
    lb.set_defaults(fn=cmd_leaderboard)
    t = sub.add_parser('train', help='train a model from a YAML file')
    t.add_argument('file')
    t.set_defaults(fn=cmd_train)
    ls = sub.add_parser('list', help='list datasets, model aliases and pipeline stages')
    ls.set_defaults(fn=cmd_list)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f'[knowacq] warning: {message}', file=sys.stderr)


def main(argv=None) -> int:
    import warnings
    args = parser().parse_args(argv)
    warnings.showwarning = _show_warning
    # a plain `kill` becomes SystemExit, so atomic writers remove their partial folders on the way out
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        args.fn(args)
    except KnowacqError as e:
        print(f'knowacq: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
