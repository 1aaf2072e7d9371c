"""The ``knowacq`` command line: run and plan experiments, the offline quickstart, reports, leaderboard, training."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from importlib import resources
from pathlib import Path

from ._util import KnowacqError

# the shipped experiment files are package data (the repository's experiments/ is a link to this folder)
REPO_EXPERIMENTS = Path(str(resources.files('pyterrier_knowacq.experiments') / 'configs'))


def _experiment_file(name: str) -> Path:
    path = Path(name)
    if path.exists():
        return path
    shipped = REPO_EXPERIMENTS / (name if name.endswith('.yaml') else f'{name}.yaml')
    if shipped.exists():
        return shipped
    raise KnowacqError(f'experiment file {name} not found (looked in . and {REPO_EXPERIMENTS})')


def cmd_run(args):
    from .experiments.runner import ResultsExist, run_experiment
    from .experiments.planning import PlanRefused
    path = _experiment_file(args.file)
    try:   # checks every spec, data path and model name first (preflight.py): all problems at once, in seconds
        out = run_experiment(path, output=args.output, overwrite=args.overwrite, dry_run=args.dry_run,
                             limit_topics=args.limit_topics, command=_command(), force=args.force)
    except ResultsExist as e:   # the Python API names overwrite=True; here the flag is --overwrite
        raise KnowacqError(str(e).replace(e.flag, '--overwrite')) from e
    except PlanRefused as e:    # likewise force=True: --force
        raise KnowacqError(str(e).replace(e.flag, '--force')) from e
    print(f'[knowacq] results: {out.resolve()}')
    return out


def cmd_plan(args):
    import time
    from .experiments.planning import format_plan, make_plan
    started = time.perf_counter()
    plan = make_plan(_experiment_file(args.file), gpu=args.gpu, echo=not args.json)
    if args.json:
        print(json.dumps(plan, indent=2, default=str))
    else:
        print(format_plan(plan))
        print(f'[knowacq] planned in {time.perf_counter() - started:.1f} s')
    return plan


def cmd_quickstart(args):
    from .experiments.runner import run_experiment
    out = run_experiment(_experiment_file('quickstart'), output=args.output, overwrite=True, command=_command())
    print(f'[knowacq] results: {out.resolve()}')
    try:
        from .leaderboard.build import build_site
    except ImportError:
        return out
    index = build_site([out], args.site)
    print(f'[knowacq] leaderboard: {Path(index).resolve()}')
    return out


def cmd_report(args):
    from .reports.dispatch import write_report
    text = write_report(args.results)
    if args.output:
        from ._util import atomic_write_text
        atomic_write_text(args.output, text)
        print(f'[knowacq] report written to {args.output}')
    print(text)


def cmd_leaderboard(args):
    from .leaderboard.build import run
    run(args)   # prints '[knowacq] leaderboard: <index.html>'


def cmd_verify(args):
    from .leaderboard.verify import verify
    report = verify(args.results, systems=args.systems, every=args.all, tolerance=args.tolerance,
                    max_seconds=args.max_seconds, keep=args.keep)
    if not report.ok:
        raise KnowacqError(report.summary())


def cmd_train(args):
    from .experiments.preflight import check_train_file
    report = check_train_file(args.file, dry_run=args.dry_run)   # every problem at once, before any training
    print(report.summary(), flush=True)
    if args.dry_run:
        print('[knowacq] dry run: the file was checked; nothing was trained')
        return {}
    from .training.train_file import train_from_config
    out = train_from_config(args.file)   # each model by its kind (cross-encoder, bi-encoder, colbert)
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
    from .models.backbones import ALIASES
    from .datasets.core import DATASETS
    from .experiments.components import STAGES
    print('datasets: ' + ', '.join(sorted(DATASETS)) + ', beir:/path, irds:<id>')
    print('models:   ' + ', '.join(sorted(ALIASES)) + ', random:<name>, local folders, HF ids')
    print('stages:   ' + ', '.join(sorted(STAGES)))


def _command() -> str:
    return 'knowacq ' + ' '.join(shlex.quote(a) for a in sys.argv[1:])


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version('pyterrier-knowacq')
    except PackageNotFoundError:  # running from a source tree that was never installed
        from . import __version__
        return __version__


EPILOG = """\
environment variables:
  KNOWACQ_CACHE           where converted and trained models, indexes (PISA, dense, ColBERT), teacher
                          runs and analysis caches are kept (default ~/.cache/pyterrier_knowacq);
                          delete it to rebuild them
  HF_HUB_OFFLINE=1        never contact the Hugging Face hub: models must be local folders, packaged
                          aliases (knowacq list) or already in the local Hugging Face cache
  HF_HUB_ETAG_TIMEOUT     seconds a hub request may wait (knowacq sets 5 unless given)

A model name that is not a local folder, an alias or in the Hugging Face cache needs the hub; when the hub is
unreachable the command stops at once with one error line.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='knowacq', description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-V', '--version', action='version', version=f'%(prog)s {_version()}',
                   help='print the version of pyterrier-knowacq and exit')
    sub = p.add_subparsers(dest='command', required=True, metavar='COMMAND', help='one of the commands below')
    r = sub.add_parser('run', help='run an experiment file', epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument('file', help='experiment YAML file, or the name of a shipped one (e.g. quickstart, knowacq)')
    r.add_argument('-o', '--output', help='results folder (default results/<name>)')
    r.add_argument('--overwrite', action='store_true', help='replace an existing results folder')
    r.add_argument('--dry-run', action='store_true',
                   help='check every spec, data path and model name, then run the file with tiny models and a few '
                        'topics (a real run checks the same first)')
    r.add_argument('--limit-topics', type=int, metavar='N', help='evaluate on the first N topics only')
    r.add_argument('--force', action='store_true',
                   help='run even when the memory plan says a model or system cannot fit this machine '
                        '(see knowacq plan)')
    r.set_defaults(fn=cmd_run)
    pl = sub.add_parser('plan', help='estimate the memory, micro-batches, time and disk of an experiment file')
    pl.add_argument('file', help='experiment YAML file, or the name of a shipped one (e.g. knowacq-full)')
    pl.add_argument('--gpu', default='auto', choices=['auto', 'h100', 'h200', 'a100-40g', 'cpu'],
                    help='device to plan for (default: this machine\'s GPU, else its CPU and RAM)')
    pl.add_argument('--json', action='store_true', help='print the plan as JSON (for machines)')
    pl.set_defaults(fn=cmd_plan)
    q = sub.add_parser('quickstart', help='run experiments/quickstart.yaml offline and build the leaderboard')
    q.add_argument('-o', '--output', default='results/quickstart',
                   help='results folder, replaced if it exists (default %(default)s)')
    q.add_argument('--site', default='site', help='folder for the leaderboard site (default %(default)s)')
    q.set_defaults(fn=cmd_quickstart)
    rep = sub.add_parser('report', help='study claims vs our figures, from results folders')
    rep.add_argument('results', nargs='+', help='results folders written by `knowacq run`')
    rep.add_argument('-o', '--output', help='also write the report (Markdown) to this file')
    rep.set_defaults(fn=cmd_report)
    lb = sub.add_parser('leaderboard', help='build the static leaderboard site')
    lb.add_argument('results', nargs='*', help='results folders written by `knowacq run` (or .tar.gz archives of them); '
                    "none: rebuild the repository's site from leaderboard/results/ (or re-render the site given with -o)")
    lb.add_argument('-o', '--output', default=None,
                    help='folder for the site, index.html inside (default: site; with no RESULTS, leaderboard/site)')
    lb.add_argument('--include-smoke', action='store_true',
                    help='also show smoke tests (*-ci experiments, --dry-run and --limit-topics runs)')
    lb.add_argument('--fresh', action='store_true', help='replace the site instead of adding to it')
    lb.add_argument('--shipped', action='store_true',
                    help="build the repository's site from leaderboard/results/*.tar.gz, from scratch")
    lb.add_argument('--pack', action='store_true',
                    help='write RESULTS as compressed site inputs into leaderboard/results/ (or -o) instead of building')
    lb.set_defaults(fn=cmd_leaderboard)
    v = sub.add_parser('verify', help='re-run the cheap systems of a results folder (or those named) and compare '
                       'them with its stored numbers')
    v.add_argument('results', help='results folder written by `knowacq run`')
    v.add_argument('-s', '--system', action='append', dest='systems', metavar='NAME',
                   help='re-run this system (repeatable; default: every system that trains no model and took at most '
                        '--max-seconds)')
    v.add_argument('--all', action='store_true', help='re-run every system (trains the models they need)')
    v.add_argument('--tolerance', type=float, default=1e-4,
                   help='largest absolute difference per measure that passes (default %(default)g)')
    v.add_argument('--max-seconds', type=float, default=60.0,
                   help='a system is cheap when its recorded time is at most this (default %(default)g)')
    v.add_argument('--keep', metavar='DIR', help='keep the re-run results folder here')
    v.set_defaults(fn=cmd_verify)
    t = sub.add_parser('train', help='train the models of a YAML file (each by its kind: cross-encoder, bi-encoder, colbert)')
    t.add_argument('file', help='training YAML file (dataset, folds or train_split, models: name -> spec with an optional '
                                'kind:, default cross-encoder)')
    t.add_argument('--dry-run', action='store_true',
                   help='check every model spec, data path and model name, list all problems, and train nothing')
    t.set_defaults(fn=cmd_train)
    ls = sub.add_parser('list', help='list datasets, model aliases and pipeline stages')
    ls.set_defaults(fn=cmd_list)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f'[knowacq] warning: {message}', file=sys.stderr)


#: top-level packages whose exceptions mean the hub or the network failed (httpx2/httpcore2: vendored copies)
_NETWORK_PACKAGES = ('huggingface_hub', 'requests', 'httpx', 'httpcore', 'urllib3')


def _network_error(error: BaseException) -> bool:
    import socket
    package = type(error).__module__.split('.')[0].rstrip('0123456789')
    return package in _NETWORK_PACKAGES or isinstance(error, (ConnectionError, TimeoutError, socket.gaierror))


def _hub_failure(error: BaseException):
    """The hub or network error behind ``error``, if ``error`` is one (or an ``OSError`` raised from one, as
    transformers does); ``None`` for anything else, which keeps its traceback."""
    if not (isinstance(error, OSError) or _network_error(error)):
        return None
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if _network_error(error):
            return error
        error = error.__cause__
    return None


def _one_line(text: str, limit: int = 600) -> str:
    text = ' '.join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


def main(argv=None) -> int:
    import warnings
    # a hub request that cannot be answered should fail in seconds, not minutes (read by huggingface_hub on import)
    os.environ.setdefault('HF_HUB_ETAG_TIMEOUT', '5')
    os.environ.setdefault('HF_HUB_DOWNLOAD_TIMEOUT', '10')
    args = parser().parse_args(argv)
    warnings.showwarning = _show_warning
    # a plain `kill` becomes SystemExit, so atomic writers remove their partial folders on the way out
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        args.fn(args)
    except KnowacqError as e:
        from .experiments.preflight import PreflightError
        # the pre-run report lists several problems, one a line; every other error is one line
        text = str(e) if isinstance(e, PreflightError) and len(e.problems) > 1 else _one_line(e)
        print(f'knowacq: error: {text}', file=sys.stderr)
        return 2
    except Exception as e:
        cause = _hub_failure(e)
        if cause is None:
            raise
        detail = _one_line(e if str(e).strip() else cause, 400)
        print(f'knowacq: error: the Hugging Face hub could not serve a model ({type(cause).__name__}: {detail}); check '
              'the model name and the network, or use a local folder or a packaged alias (knowacq list)', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
