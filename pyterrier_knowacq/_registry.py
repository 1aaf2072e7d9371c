"""One registry type for everything users pick by name: losses, poolings, stages, backbone aliases, datasets, trainers.

A :class:`Registry` is a ``dict`` (so ``name in REG``, ``list(REG)`` and ``REG.items()`` work as before) with a
``register`` decorator and a lookup that fails with one :class:`~pyterrier_knowacq.KnowacqError` naming the choices
and the closest one, in the style of ir_measures' measure registry.

Example::

    LOSSES = Registry('loss', hint='set `loss:` in the model spec')

    @LOSSES.register('lce')
    class LCE(Loss): ...

    LOSSES.get_entry('lcee')   # KnowacqError: unknown loss 'lcee' (did you mean 'lce'?); choose one of [...]; set ...
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Generic, Optional, TypeVar

from ._util import KnowacqError

__all__ = ['Registry']

T = TypeVar('T')


class Registry(Dict[str, T], Generic[T]):
    """Named entries of one kind (``Registry('loss')``); ``kind`` and ``hint`` only shape the error message."""

    def __init__(self, kind: str, hint: str = '', cutoff: float = 0.6):
        super().__init__()
        self.kind, self.hint, self.cutoff = kind, hint, cutoff

    def register(self, name: str, entry: Optional[T] = None):
        """``REG.register('x', obj)`` adds an entry; ``@REG.register('x')`` decorates a class or function."""
        if entry is not None:
            self[name] = entry
            return entry

        def wrap(obj: T) -> T:
            self[name] = obj
            return obj
        return wrap

    def suggestion(self, name: str) -> str:
        """`` (did you mean 'x'?)`` for the closest registered name, or an empty string."""
        close = difflib.get_close_matches(str(name), [str(k) for k in self], n=1, cutoff=self.cutoff)
        return f' (did you mean {close[0]!r}?)' if close else ''

    def unknown(self, name: str) -> KnowacqError:
        """The one-line error for a name that is not registered."""
        hint = f'; {self.hint}' if self.hint else ''
        return KnowacqError(f'unknown {self.kind} {name!r}{self.suggestion(name)}; choose one of {sorted(self)}{hint}')

    def get_entry(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name is one :class:`KnowacqError` with the closest match."""
        if name not in self:
            raise self.unknown(name)
        return self[name]

    def decorator(self) -> Callable[[str], Callable[[T], T]]:
        """A module-level ``register_x`` function for this registry (``register_loss = LOSSES.decorator()``)."""
        return lambda name: self.register(name)
