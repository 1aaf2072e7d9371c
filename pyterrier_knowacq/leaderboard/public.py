"""What a published page may show: absolute paths made relative to the repository (``experiments/x.yaml``), to
``$KNOWACQ_CACHE`` or cut to their last component, and the machine's host name replaced by ``host``.

Example::

    public_text('results in /home/me/repo/results/quickstart on myhost')   # 'results in results/quickstart on host'
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional

__all__ = ['REPO_ROOT', 'public_path', 'public_text', 'public_json']

# what the site may show of a path: the repository checkout this package lives in, and the model/index cache
REPO_ROOT = Path(__file__).resolve().parents[2]
_PATH_CHARS = r'[^\s/\'"<>`|;,()\[\]{}=]'
# an absolute POSIX path of two or more components, not part of a relative path, a URL or a ~/ path
_ABS_PATH = re.compile(r'(?<![\w.:/~$@-])(?:file://)?/(?:' + _PATH_CHARS + r'+/)+' + _PATH_CHARS + r'*')
_WIN_PATH = re.compile(r'\b[A-Za-z]:\\(?:[^\s\\\'"<>|]+\\)*[^\s\\\'"<>|]*')
_CACHE_DIRS = ('cache', '.cache', 'knowacq-cache')


def public_path(path: str) -> str:
    """An absolute path as a published page may show it: relative to the repository (``experiments/x.yaml``), under
    ``$KNOWACQ_CACHE`` (``$KNOWACQ_CACHE/models/trained/0d83...``), or only its last component (``…/results``)."""
    path = path[len('file://'):] if path.startswith('file://') else path
    parts = [p for p in path.split('/') if p]
    try:
        rel = Path(path).relative_to(REPO_ROOT)
        if str(rel) != '.':
            return rel.as_posix()
    except ValueError:
        pass
    cache = os.environ.get('KNOWACQ_CACHE')
    if cache and path.rstrip('/').startswith(cache.rstrip('/') + '/'):
        return '$KNOWACQ_CACHE/' + path.rstrip('/')[len(cache.rstrip('/')) + 1:]
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in _CACHE_DIRS and i + 1 < len(parts):
            rest = parts[i + 1:]
            if parts[i] == '.cache' and rest[0] == 'pyterrier_knowacq':
                rest = rest[1:]
            elif parts[i] == '.cache':
                continue
            if rest:
                return '$KNOWACQ_CACHE/' + '/'.join(rest)
    if 'experiments' in parts[:-1]:
        return '/'.join(parts[parts.index('experiments'):])
    return '…/' + (parts[-1] if parts else '')


def _host_names() -> List[str]:
    import socket
    names = set()
    try:
        names.update({socket.gethostname(), socket.getfqdn()})
    except OSError:
        pass
    # a short or generic name would also match ordinary words
    return sorted(n for n in names if n and len(n) >= 4 and n not in ('localhost', 'localhost.localdomain'))


_HOSTS: Optional[List[str]] = None


def public_text(text: str, hosts: bool = True) -> str:
    """``text`` with every absolute path replaced by :func:`public_path` and (``hosts``) the machine's host name by
    ``host``: what a built page may show (results folders record where they were written: ``-o /tmp/...``, model
    cache paths). Rendered HTML gets ``hosts=False``: its data was scrubbed before, and a host name such as ``main``
    must not touch the markup."""
    global _HOSTS
    if not text:
        return text
    if '/' in text:
        text = _ABS_PATH.sub(lambda m: public_path(m.group(0)), text)
    if ':\\' in text:
        text = _WIN_PATH.sub(lambda m: '…\\' + m.group(0).rstrip('\\').split('\\')[-1], text)
    if not hosts:
        return text
    if _HOSTS is None:
        _HOSTS = _host_names()
    for host in _HOSTS:
        if host in text:
            text = re.sub(r'(?<![\w.-])' + re.escape(host) + r'(?![\w-])', 'host', text)
    return text


def public_json(obj):
    """:func:`public_text` applied to every string (keys too) of a JSON-like object."""
    if isinstance(obj, str):
        return public_text(obj)
    if isinstance(obj, dict):
        return {public_text(str(k)): public_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [public_json(v) for v in obj]
    return obj
