"""Model and run names as the experiment checks read them, shared by the preflight (``preflight``) and the plan
(``planning``): a hub id, the NAME of ``random:NAME[@SEED]``, and the closest of the names a lookup knows (the
packaged aliases, a dataset's runs), said as :class:`~pyterrier_knowacq._registry.Registry` says it.

Example::

    random_base('random:minilm-l6@3')                                    # 'minilm-l6'
    is_hub_id('colbert-ir/colbertv2.0'), is_hub_id('./runs/x.trec')      # (True, False)
    registry_of('run', ['bm25', 'rankgpt-3.5']).suggestion('rankgtp-3.5')   # " (did you mean 'rankgpt-3.5'?)"
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Union

from .._registry import Registry

__all__ = ['HUB_ID', 'is_hub_id', 'random_base', 'registry_of']

#: what the Hugging Face hub accepts as a model id: ``name`` or ``owner/name``
HUB_ID = re.compile(r'^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$')


def is_hub_id(name) -> bool:
    """Whether ``name`` has the shape of a hub id (it may still be a local folder, or not exist)."""
    return bool(HUB_ID.match(str(name)))


def random_base(name: str) -> str:
    """The model whose architecture ``random:NAME[@SEED]`` has (``NAME``); any other name is itself."""
    return name[len('random:'):].partition('@')[0] if name.startswith('random:') else name


def registry_of(kind: str, entries: Union[Mapping, Iterable[str]]) -> Registry:
    """``entries`` (a mapping, or names) as a :class:`Registry` of ``kind``, for its lookup and did-you-mean; a
    registry is returned as it is."""
    if isinstance(entries, Registry):
        return entries
    reg: Registry = Registry(kind)
    reg.update(entries if isinstance(entries, Mapping) else dict.fromkeys(entries))
    return reg
