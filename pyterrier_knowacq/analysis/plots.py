"""Figures of the knowledge-acquisition analysis, written as PNG and SVG (matplotlib, Agg backend).

* :func:`probe_curves` — probe accuracy per layer (one panel per N), one line per model with its 95% Wilson band,
  a marker where the model differs from the backbone after Holm correction, and the chance level 1/N.
* :func:`ig_heatmap` — per model, the share of examples in which each FFN neuron is active (rows: dense layers).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
import pandas as pd

__all__ = ['probe_curves', 'ig_heatmap', 'save_figure']


def _plt():
    import matplotlib
    matplotlib.use('Agg', force=True)
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, folder: Path, stem: str) -> List[str]:
    """Write ``stem.png`` and ``stem.svg`` atomically (temp name, then rename); returns the file names."""
    import os
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ('png', 'svg'):
        tmp = folder / f'.{stem}.tmp.{ext}'
        fig.savefig(tmp, format=ext, dpi=120 if ext == 'png' else None, bbox_inches='tight')
        os.replace(tmp, folder / f'{stem}.{ext}')
        out.append(f'{stem}.{ext}')
    _plt().close(fig)
    return out


def probe_curves(table: pd.DataFrame, folder: Path, stem: str, title: str) -> List[str]:
    """``table``: rows of one (group, data, probe) with columns model, n, layer, accuracy, ci_low, ci_high, significant."""
    plt = _plt()
    ns = sorted(table['n'].unique())
    fig, axes = plt.subplots(1, len(ns), figsize=(3.6 * len(ns), 3.2), sharey=True, squeeze=False)
    models = list(dict.fromkeys(table['model']))
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for ax, n in zip(axes[0], ns):
        sub = table[table['n'] == n]
        for i, m in enumerate(models):
            s = sub[sub['model'] == m].sort_values('layer')
            if s.empty:
                continue
            c = colours[i % len(colours)]
            ax.plot(s['layer'], s['accuracy'], marker='.', color=c, label=m, lw=1.5)
            ax.fill_between(s['layer'], s['ci_low'], s['ci_high'], color=c, alpha=0.15, lw=0)
            sig = s[s['significant'].astype(bool)]
            ax.scatter(sig['layer'], sig['accuracy'], marker='*', s=60, color=c, zorder=3)
        ax.axhline(1.0 / n, color='grey', ls=':', lw=1)
        ax.set_title(f'N = {n}')
        ax.set_xlabel('layer')
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel('probe accuracy (95% CI)')
    axes[0][-1].legend(fontsize=7, loc='lower right')
    fig.suptitle(f'{title}   (* differs from backbone, Holm-corrected; dotted: chance)', fontsize=9)
    return save_figure(fig, folder, stem)


def ig_heatmap(shares: Dict[str, Dict[str, np.ndarray]], folder: Path, stem: str, title: str) -> List[str]:
    """``shares``: model -> {dense layer name -> per-neuron share of examples active}."""
    plt = _plt()
    models = list(shares)
    fig, axes = plt.subplots(len(models), 1, figsize=(9, 1.2 + 0.35 * max(len(v) for v in shares.values()) * len(models)),
                             squeeze=False, constrained_layout=True)
    im = None
    for ax, m in zip(axes[:, 0], models):
        layers = list(shares[m])
        width = max(len(v) for v in shares[m].values())
        grid = np.full((len(layers), width), np.nan)
        for i, name in enumerate(layers):
            grid[i, :len(shares[m][name])] = shares[m][name]
        im = ax.imshow(grid, aspect='auto', interpolation='nearest', vmin=0, vmax=1, cmap='viridis')
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels([_short(n) for n in layers], fontsize=6)
        ax.set_title(m, fontsize=8)
        ax.set_xlabel('neuron', fontsize=7)
    if im is not None:
        fig.colorbar(im, ax=axes[:, 0].tolist(), label='share of examples active', shrink=0.8)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, folder, stem)


def _short(name: str) -> str:
    parts = name.split('.')
    nums = [p for p in parts if p.isdigit()]
    return f'L{nums[-1] if nums else "?"} {parts[-2] if parts[-1] == "dense" else parts[-1]}'
