"""What the checks found: :class:`Report` (errors stop the run, warnings do not) and :class:`PreflightError`, every
problem at once, one a line."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ..._util import KnowacqError


class PreflightError(KnowacqError):
    """Every problem the checks found: a numbered list, one problem a line (a single problem is its own one-line
    message). ``problems`` holds them one by one."""

    def __init__(self, source, problems: Sequence[str]):
        self.source = str(source)
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = (f'{len(self.problems)} problems in {source}; nothing was run:\n'
                       + '\n'.join(f'  {i}. {p}' for i, p in enumerate(self.problems, 1)))
        super().__init__(message)


@dataclass
class Report:
    """What the checks found: ``errors`` stop the run (:meth:`raise_errors`), ``warnings`` do not."""
    source: str
    config: Optional[Dict[str, Any]] = None
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    counts: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def raise_errors(self) -> None:
        if self.errors:
            raise PreflightError(self.source, self.errors)

    def summary(self) -> str:
        what = ', '.join(f'{n} {k}' for k, n in self.counts.items() if n)
        verdict = f'{len(self.errors)} problem(s)' if self.errors else 'no problems'
        warned = f', {len(self.warnings)} warning(s)' if self.warnings else ''
        return f'[knowacq] checked {self.source} ({what}) in {self.seconds:.1f} s: {verdict}{warned}'

    def echo(self) -> None:
        for w in self.warnings:
            print(f'[knowacq] warning: {w}', file=sys.stderr, flush=True)


@dataclass
class _Problem:
    text: str
    local: bool = False             # a file or folder of this machine: only a warning when the real run alone reads it
    warning: Optional[str] = None   # a hub id that cannot be verified now: the text when the real run alone loads it
