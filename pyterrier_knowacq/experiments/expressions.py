"""Parse pipeline expressions such as ``run(name=bm25) >> text >> ce(model=C, batch_size=64) % 10``.

Each stage is a registered name with optional keyword parameters; values are read as YAML scalars (numbers,
booleans, quoted or bare strings, lists). ``% K`` after a stage cuts the ranking to depth K.
"""
from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from .._util import KnowacqError

_STAGE = re.compile(r'^\s*([A-Za-z_][\w\-]*)\s*(?:\((.*)\))?\s*(?:%\s*(\d+))?\s*$', re.S)


@dataclass(frozen=True)
class StageSpec:
    name: str
    params: Dict[str, Any] = field(default_factory=dict)
    cutoff: Optional[int] = None

    def __str__(self):
        args = ', '.join(f'{k}={v}' for k, v in self.params.items())
        return f'{self.name}({args})' if args else self.name


def _split_top_level(text: str, sep: str) -> List[str]:
    parts, depth, quote, start, i = [], 0, None, 0, 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = None
        elif c in '"\'':
            quote = c
        elif c in '([{':
            depth += 1
        elif c in ')]}':
            depth -= 1
            if depth < 0:
                raise KnowacqError(f'unbalanced ")" in {text!r}')
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i + len(sep)
            i += len(sep)
            continue
        i += 1
    if depth or quote:
        raise KnowacqError(f'unbalanced brackets or quotes in {text!r}')
    parts.append(text[start:])
    return parts


def _value(raw: str):
    raw = raw.strip()
    try:
        value = yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError):   # ValueError: a date-like value that is no date (2024-13-45)
        value = raw
    if isinstance(value, (datetime.date, datetime.datetime)):   # a run name such as 2024-01-31 stays text
        value = raw
    if isinstance(value, str):
        try:
            return float(value) if re.fullmatch(r'[-+]?\d*\.?\d+[eE][-+]?\d+', value) else value
        except ValueError:
            return value
    return value


def parse_pipeline(expr: str) -> List[StageSpec]:
    """``'a(x=1) >> b % 10'`` -> ``[StageSpec('a', {'x': 1}), StageSpec('b', {}, 10)]``."""
    if not isinstance(expr, str) or not expr.strip():
        raise KnowacqError(f'a system must be a pipeline expression such as "bm25 >> text >> ce(model=NAME)", got {expr!r}')
    stages = []
    for part in _split_top_level(expr, '>>'):
        m = _STAGE.match(part)
        if not m:
            raise KnowacqError(f'cannot read stage {part.strip()!r} in {expr!r}; write stages as name or name(key=value, ...)')
        name, args, cutoff = m.groups()
        params = {}
        if args and args.strip():
            for arg in _split_top_level(args, ','):
                key, eq, raw = arg.partition('=')
                if not eq or not key.strip().isidentifier():
                    raise KnowacqError(f'stage {name!r} in {expr!r}: parameters must be key=value, got {arg.strip()!r}')
                params[key.strip()] = _value(raw)
        stages.append(StageSpec(name, params, int(cutoff) if cutoff else None))
    return stages
