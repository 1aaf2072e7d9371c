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

__all__ = ['probe_curves', 'ig_heatmap', 'replot_ig', 'save_figure']


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


def ig_heatmap(shares: Dict[str, Dict[str, np.ndarray]], folder: Path, stem: str, title: str, top: int = 48) -> List[str]:
    """``shares``: model -> {dense layer name -> per-neuron share of examples active}.

    A layer has hundreds to thousands of neurons, too many columns to read at any page width, and most are never
    active. So each row shows the layer's ``top`` neurons ranked by share (left: the most often active), and the row
    label gives how many of the layer's neurons are active in at least half of the examples and at all; the full
    per-neuron table is ``tables/ig_neurons.csv``."""
    plt = _plt()
    models = list(shares)
    rows = max(len(v) for v in shares.values())
    fig, axes = plt.subplots(len(models), 1, figsize=(10, 0.9 + 0.32 * rows * len(models) + 0.5 * len(models)),
                             squeeze=False, constrained_layout=True)
    im = None
    for ax, m in zip(axes[:, 0], models):
        layers = list(shares[m])
        width = min(top, max(len(v) for v in shares[m].values()))
        grid = np.full((len(layers), width), np.nan)
        labels = []
        for i, name in enumerate(layers):
            values = np.sort(np.asarray(shares[m][name], dtype=float))[::-1]
            grid[i, :min(width, len(values))] = values[:width]
            labels.append(f'{_short(name)}  ({int((values >= 0.5).sum())} / {int((values > 0).sum())} of {len(values)})')
        im = ax.imshow(grid, aspect='auto', interpolation='nearest', vmin=0, vmax=1, cmap='viridis')
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels(labels, fontsize=9)
        ax.set_title(m, fontsize=11, loc='left')
        ax.set_xlabel(f'neurons ranked by share (the top {width} of each layer)', fontsize=9)
        ax.tick_params(axis='x', labelsize=8)
    if im is not None:
        fig.colorbar(im, ax=axes[:, 0].tolist(), label='share of examples in which the neuron is active', shrink=0.5)
    fig.suptitle(f'{title}\nrow label: layer (neurons active in >= half of the examples / in any / all)', fontsize=11)
    return save_figure(fig, folder, stem)


def replot_ig(results: Path) -> List[str]:
    """Redraw ``plots/ig-<group>.{png,svg}`` of a results folder from its ``tables/ig_neurons.csv`` (no model runs)."""
    results = Path(results)
    table = pd.read_csv(results / 'tables' / 'ig_neurons.csv')
    layers = pd.read_csv(results / 'tables' / 'ig_layers.csv')
    out = []
    for group, sub in table.groupby('group', sort=False):
        data = layers.loc[layers['group'] == group, 'data']
        dname = data.iloc[0] if len(data) else 'probe'
        shares = {model: {layer: g.sort_values('neuron')['share'].to_numpy() for layer, g in msub.groupby('layer', sort=False)}
                  for model, msub in sub.groupby('model', sort=False)}
        out += ig_heatmap(shares, results / 'plots', f'ig-{group}',
                          f'IG: share of {dname} passages where each FFN neuron is active ({group})')
    return out


def _short(name: str) -> str:
    parts = name.split('.')
    nums = [p for p in parts if p.isdigit()]
    return f'L{nums[-1] if nums else "?"} {parts[-2] if parts[-1] == "dense" else parts[-1]}'
