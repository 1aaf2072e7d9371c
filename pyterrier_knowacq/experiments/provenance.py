"""Provenance of a run, recorded in meta.json: the library versions that can change the numbers, the hardware and
OS (ir_metadata's platform block) and the git commit of the package.

Example::

    _versions()['torch'], _platform()['gpus'], _git_commit()   # '2.3.1', [], 'abc123...-dirty'
"""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Dict, Optional

__all__ = ['VERSIONED_MODULES']


#: import names of every library whose version can change the numbers; the versions recorded are those of the
#: distributions that really provide them (the ``pyterrier`` module comes from ``pyterrier``, not the empty
#: ``python-terrier`` shim; ``faiss`` from ``faiss-cpu`` or ``faiss-gpu``)
VERSIONED_MODULES = ('pyterrier', 'pyterrier_alpha', 'pyterrier_dr', 'pyterrier_pisa', 'ir_datasets', 'ir_measures',
                     'torch', 'transformers', 'tokenizers', 'safetensors', 'huggingface_hub', 'accelerate', 'peft',
                     'sentence_transformers', 'faiss', 'numpy', 'pandas', 'scipy', 'statsmodels')


def _versions() -> Dict[str, str]:
    """``{'python': ..., 'pyterrier-knowacq': ..., 'pyterrier': ..., 'torch': ..., ...}``: the installed libraries that
    can change the numbers, keyed by normalised distribution name; missing (optional) ones are left out."""
    import re
    from importlib.metadata import PackageNotFoundError, packages_distributions, version
    out = {'python': platform.python_version(), 'platform': platform.platform()}
    providers = packages_distributions()
    for dist in ['pyterrier-knowacq'] + [d for module in VERSIONED_MODULES for d in providers.get(module, [])]:
        key = re.sub(r'[-_.]+', '-', dist).lower()
        if key in out:
            continue
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def _platform() -> Dict[str, object]:
    """The hardware and OS a run was measured on (ir_metadata's platform block): CPU model, logical cores, RAM, GPUs."""
    import os
    cpu = None
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f if line.lower().startswith('model name')), None)
    except OSError:
        pass
    ram_gb = None
    try:
        ram_gb = round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30, 1)
    except (AttributeError, ValueError, OSError):
        pass
    gpus, cuda = [], None
    try:
        import torch
        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            cuda = torch.version.cuda
    except Exception:  # a broken CUDA set-up must not stop the run from recording the rest
        pass
    return {'cpu': cpu or platform.processor() or platform.machine() or None, 'logical_cores': os.cpu_count(),
            'ram_gb': ram_gb, 'gpus': gpus, 'cuda': cuda, 'os': platform.platform(), 'machine': platform.machine(),
            'python': f'{platform.python_implementation()} {platform.python_version()}'}


def _git_commit() -> Optional[str]:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ('-dirty' if dirty else '')
    except (OSError, subprocess.SubprocessError):
        pass
    return None
