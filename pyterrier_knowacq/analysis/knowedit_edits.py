"""Knowledge editing, part 2: edits of a backbone and their measured effect.

* **Knowledge-neuron suppression.** Integrated gradients (:mod:`.attribution`, batched over alphas) over the FFN
  up-projections (``intermediate.dense`` in BERT; ``gate_proj`` in Llama) score every intermediate neuron per text;
  :func:`select_neurons` takes the ``k`` neurons with the highest mean score on a set (``select='top'``) or the
  highest mean score *above its matched set's* (``select='contrast'``, default: H's neurons are those H needs more
  than C, C's those C needs more than H, so neurons every text needs are left alone and length effects cancel).
  :func:`zero_neurons` is a persistent weight edit: the neuron's row of the up-projection weight and its bias are
  set to zero (BERT: the pre-activation is then 0 and GELU(0) = 0; Llama: ``gate_proj`` and ``up_proj`` rows, so
  ``silu(0) * 0 = 0``), so the edited model saves as safetensors and fine-tunes like any other (fine-tuning may
  re-grow the rows: that is the question asked).
* **Unlearning.** :class:`MLMHead` is a masked-LM head tied to the encoder's word embeddings (dense + GELU +
  LayerNorm, then the embedding matrix as decoder, plus a bias), built here because sentence-embedding checkpoints
  (all-MiniLM-L6-v2) ship none; :func:`fit_mlm_head` fits its transform and bias on neutral passages with the encoder
  frozen. :func:`unlearn` is gradient ascent on the masked-LM loss of a set's texts (head frozen; by default only the
  transformer layers move, not the embeddings), seeded, for at most ``max_steps`` steps, stopping once the loss on a
  fixed masking of the set exceeds ``factor`` times its start. Plain ascent raises the loss of every text alike (it
  wrecks the language model, not one set's knowledge), so ``retain`` texts (neutral passages, in neither set) add a
  descent term, ``-L(set) + retain_weight * L(retain)``, the forget/retain objective of unlearning methods
  (gradient difference): what rises is what the set has and the neutral texts do not.
* **Effect check.** :func:`pseudo_log_likelihood`: each token masked in turn (all masked copies batched), the mean
  log-probability of the true token per text (Salazar et al., 2020), with the same head for every model.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

# --- package imports (re-path here when modules move) -------------------------------------------------------------
from .._util import KnowacqError
from .attribution import IntegratedGradients, ffn_layers
# ------------------------------------------------------------------------------------------------------------------

__all__ = ['up_projections', 'neuron_scores', 'select_neurons', 'random_neurons', 'zero_neurons', 'MLMHead',
           'fit_mlm_head', 'mlm_loss', 'unlearn', 'pseudo_log_likelihood', 'Neuron']

Neuron = Tuple[str, int]   # (up-projection module name, neuron index)
_UP = ('intermediate.dense', 'gate_proj')


def up_projections(model) -> List[str]:
    """Names of the FFN up-projection modules (one per block, forward order) whose output rows are the neurons."""
    return [n for n in ffn_layers(model) if n.endswith(_UP)]


def neuron_scores(model, tokenizer, texts: Sequence[str], *, pooling: str = 'cls', steps: int = 10,
                  max_length: int = 128) -> Dict[str, np.ndarray]:
    """Normalised IG scores ``{up-projection: [texts, neurons]}`` (per text divided by its maximum over the network)."""
    ig = IntegratedGradients((model, tokenizer), pooling, steps=int(steps), max_length=int(max_length))
    ig.layer_names = up_projections(model)    # the neurons zeroing can remove: up-projections only
    was = model.training
    try:
        return ig.attribute([str(t) for t in texts]).scores
    finally:
        model.train(was)


def _flat(scores: Dict[str, np.ndarray]) -> Tuple[List[Neuron], np.ndarray]:
    names = [(layer, i) for layer, s in scores.items() for i in range(s.shape[1])]
    return names, np.concatenate([s.mean(0) if len(s) else np.zeros(s.shape[1]) for s in scores.values()])


def select_neurons(target: Dict[str, np.ndarray], k: int, reference: Optional[Dict[str, np.ndarray]] = None,
                   select: str = 'contrast') -> List[Neuron]:
    """The ``k`` neurons with the highest mean score on ``target`` (``top``), or the highest mean score minus the
    mean score on ``reference`` (``contrast``: the reference is the matched set, e.g. C for H and H for C);
    ties by layer then index. Sorted by (layer order, index)."""
    names, t = _flat(target)
    if select == 'contrast':
        if reference is None:
            raise KnowacqError('select: contrast needs the scores of a reference set (the matched set)')
        t = t - _flat(reference)[1]
    elif select != 'top':
        raise KnowacqError(f'neuron selection must be "contrast" or "top", got {select!r}')
    if not 0 < k <= len(names):
        raise KnowacqError(f'neurons k must be in 1..{len(names)} (the model has {len(names)} FFN neurons), got {k}')
    order = np.lexsort((np.arange(len(t)), -t))[:k]
    return sorted((names[i] for i in order), key=lambda n: (list(target).index(n[0]), n[1]))


def random_neurons(model, k: int, seed: int) -> List[Neuron]:
    """``k`` FFN neurons drawn uniformly without replacement (seeded)."""
    mods = dict(model.named_modules())
    names = [(layer, i) for layer in up_projections(model) for i in range(mods[layer].out_features)]
    idx = np.random.default_rng([seed, 27644437]).choice(len(names), int(k), replace=False)
    order = up_projections(model)
    return sorted((names[i] for i in idx), key=lambda n: (order.index(n[0]), n[1]))


@torch.no_grad()
def zero_neurons(model, neurons: Sequence[Neuron]):
    """Zero the up-projection rows (weight and bias) of ``neurons`` in place; Llama-style blocks also zero the matching
    ``up_proj`` row. Returns ``model``."""
    mods = dict(model.named_modules())
    by_layer: Dict[str, List[int]] = {}
    for layer, i in neurons:
        if layer not in mods:
            raise KnowacqError(f'{type(model).__name__} has no module {layer!r}')
        by_layer.setdefault(layer, []).append(int(i))
    for layer, idx in by_layer.items():
        rows = torch.tensor(sorted(set(idx)), dtype=torch.long)
        targets = [mods[layer]]
        if layer.endswith('gate_proj'):
            targets.append(mods[layer[:-len('gate_proj')] + 'up_proj'])
        for m in targets:
            m.weight[rows] = 0.0
            if m.bias is not None:
                m.bias[rows] = 0.0
    return model


class MLMHead(nn.Module):
    """``logits = LayerNorm(GELU(W h + b)) E^T + bias`` with ``E`` the encoder's word embeddings (tied, not owned:
    the head's parameters are its transform and bias only)."""

    def __init__(self, encoder, eps: float = 1e-12):
        super().__init__()
        emb = encoder.get_input_embeddings()
        hidden, dim = encoder.config.hidden_size, emb.weight.shape[1]
        self.dense = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim, eps=float(getattr(encoder.config, 'layer_norm_eps', eps)))
        self.bias = nn.Parameter(torch.zeros(emb.weight.shape[0]))
        self._encoder = [encoder]       # a list: the tied encoder is not a submodule of the head

    def tie(self, encoder) -> 'MLMHead':
        """Decode with ``encoder``'s word embeddings from now on (an edited copy of the fitted one)."""
        self._encoder = [encoder]
        return self

    def tied_to(self, encoder, *, own: bool = False) -> 'MLMHead':
        """This head decoding with ``encoder``'s embeddings, leaving ``self`` as it is: the same parameters
        (``own=False``) or a copy of them (``own=True``); the encoder itself is never copied."""
        if own:
            other = copy.deepcopy(self, memo={id(self._encoder[0]): self._encoder[0]})
        else:
            other = copy.copy(self)
        other._encoder = [encoder]
        return other

    def forward(self, hidden):
        x = self.norm(nn.functional.gelu(self.dense(hidden)))
        return x @ self._encoder[0].get_input_embeddings().weight.T + self.bias


def _encode(tokenizer, texts, max_length):
    return tokenizer([str(t) for t in texts], truncation=True, max_length=int(max_length), padding=False)['input_ids']


def _masks(ids: List[List[int]], special: set, prob: float, rng: np.random.Generator) -> List[np.ndarray]:
    """Positions to mask per text: each non-special token with ``prob``, at least one per text."""
    out = []
    for row in ids:
        cand = np.array([i for i, t in enumerate(row) if t not in special])
        if len(cand) == 0:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        pick = cand[rng.random(len(cand)) < prob]
        out.append(pick if len(pick) else cand[rng.integers(len(cand), size=1)])
    return out


def _batch(tokenizer, ids, masks):
    """Padded ``input_ids`` with ``[MASK]`` at the masked positions, the attention mask, and the flat targets."""
    width = max(len(r) for r in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    x = torch.full((len(ids), width), pad, dtype=torch.long)
    att = torch.zeros((len(ids), width), dtype=torch.long)
    rows, cols, target = [], [], []
    for r, (row, m) in enumerate(zip(ids, masks)):
        x[r, :len(row)] = torch.tensor(row)
        att[r, :len(row)] = 1
        for c in m:
            rows.append(r)
            cols.append(int(c))
            target.append(row[int(c)])
    x[rows, cols] = tokenizer.mask_token_id
    return x, att, torch.tensor(rows), torch.tensor(cols), torch.tensor(target)


def mlm_loss(encoder, head: MLMHead, tokenizer, ids, masks) -> torch.Tensor:
    """Mean cross-entropy of the masked tokens (``ids``: token ids per text, ``masks``: positions per text)."""
    x, att, rows, cols, target = _batch(tokenizer, ids, masks)
    hidden = encoder(input_ids=x, attention_mask=att).last_hidden_state
    return nn.functional.cross_entropy(head(hidden[rows, cols]), target)


def _special(tokenizer) -> set:
    if tokenizer.mask_token_id is None:
        raise KnowacqError(f'{type(tokenizer).__name__} has no [MASK] token: the masked-LM edits need an encoder tokenizer')
    return set(tokenizer.all_special_ids)


def fit_mlm_head(encoder, tokenizer, texts: Sequence[str], *, steps: int = 300, lr: float = 2e-3, batch: int = 256,
                 max_length: int = 64, mask_prob: float = 0.15, maskings: int = 2, seed: int = 0
                 ) -> Tuple[MLMHead, List[float]]:
    """A fresh :class:`MLMHead` fitted on ``texts`` with ``encoder`` frozen; returns the head and its loss per step.

    The encoder runs once per text and masking (``maskings`` seeded maskings of each text, ``[MASK]`` at each
    non-special token with ``mask_prob``); its hidden states at the masked positions are kept, and the head (transform
    and bias; the decoder is the frozen word-embedding matrix) is trained on them for ``steps`` mini-batches of
    ``batch`` masked tokens."""
    torch.manual_seed(seed)
    head = MLMHead(encoder)
    encoder.eval()
    ids, special = _encode(tokenizer, texts, max_length), _special(tokenizer)
    rng = np.random.default_rng([seed, 5381])
    states, targets = [], []
    with torch.no_grad():
        for _ in range(int(maskings)):
            for i in range(0, len(ids), 32):
                part = ids[i:i + 32]
                x, att, rows, cols, target = _batch(tokenizer, part, _masks(part, special, mask_prob, rng))
                states.append(encoder(input_ids=x, attention_mask=att).last_hidden_state[rows, cols])
                targets.append(target)
    states, targets = torch.cat(states), torch.cat(targets)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    grads = {n: p.requires_grad for n, p in encoder.named_parameters()}
    encoder.requires_grad_(False)          # the tied embeddings stay as they are: no gradient for them
    try:
        for _ in range(int(steps)):
            pick = torch.from_numpy(rng.choice(len(targets), min(int(batch), len(targets)), replace=False))
            loss = nn.functional.cross_entropy(head(states[pick]), targets[pick])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        for n, p in encoder.named_parameters():
            p.requires_grad_(grads[n])
    head.eval()
    return head, losses


def _trainable(encoder, params: str):
    for p in encoder.parameters():
        p.requires_grad_(False)
    if params == 'all':
        chosen = [p for n, p in encoder.named_parameters() if 'pooler' not in n]
    elif params == 'encoder':
        chosen = [p for n, p in encoder.named_parameters() if 'embed' not in n and 'pooler' not in n]
    elif params == 'ffn':
        chosen = [p for n, p in encoder.named_parameters() if any(k in n for k in ('intermediate.dense', 'output.dense', '.mlp.'))
                  and 'attention' not in n]
    else:
        raise KnowacqError(f'unlearn params must be all, encoder or ffn, got {params!r}')
    for p in chosen:
        p.requires_grad_(True)
    return chosen


def unlearn(encoder, tokenizer, head: MLMHead, texts: Sequence[str], *, lr: float = 2e-5, max_steps: int = 50,
            batch: int = 8, factor: float = 2.0, mask_prob: float = 0.15, max_length: int = 64, params: str = 'encoder',
            eval_every: int = 5, eval_texts: Optional[int] = 64, seed: int = 0,
            monitor: Optional[Sequence[str]] = None, retain: Optional[Sequence[str]] = None,
            retain_weight: float = 1.0) -> Tuple[nn.Module, List[Dict]]:
    """Gradient ascent on the masked-LM loss of ``texts``: a copy of ``encoder`` (the original is left alone) and the
    history ``[{step, loss_train, loss_set, loss_monitor}]``. ``loss_set`` is the loss of one fixed masking of a
    seeded subset of ``eval_texts`` texts (all with ``None``), measured every ``eval_every`` steps (the stopping
    criterion: above ``factor`` x its start); as many ``monitor`` texts (e.g. the control set) get the same
    fixed-mask loss for the record. Dropout off, gradient norm clipped at 1, the head frozen; the ascent batches are
    drawn from all ``texts``. With ``retain`` texts, every step also draws a batch of them and descends on their loss
    weighted by ``retain_weight`` (``loss_retain`` in the history)."""
    if retain is not None and not len(retain):
        raise KnowacqError('unlearn: retain is empty; give neutral texts for the descent term, or None to turn it off')
    if not math.isfinite(float(retain_weight)) or retain_weight < 0:
        raise KnowacqError(f'unlearn: retain_weight must be a finite number >= 0, got {retain_weight!r}')
    torch.manual_seed(seed)
    model = copy.deepcopy(encoder).eval()
    head = head.tied_to(model, own=True)
    for p in head.parameters():
        p.requires_grad_(False)
    special = _special(tokenizer)
    ids = _encode(tokenizer, texts, max_length)
    keep = _encode(tokenizer, retain, max_length) if retain is not None else None

    def sample(rows, salt):   # a seeded subset of eval_texts rows (all without eval_texts)
        if not eval_texts or eval_texts >= len(rows):
            return list(rows)
        return [rows[i] for i in sorted(np.random.default_rng([seed, salt]).choice(len(rows), int(eval_texts), replace=False))]
    probe = sample(ids, 910)
    fixed = _masks(probe, special, mask_prob, np.random.default_rng([seed, 911]))
    mon = sample(_encode(tokenizer, monitor, max_length), 913) if monitor else None
    mon_masks = _masks(mon, special, mask_prob, np.random.default_rng([seed, 912])) if mon else None

    def fixed_loss(rows, masks):
        return _mean_loss(model, head, tokenizer, rows, masks)
    params_ = _trainable(model, params)
    opt = torch.optim.AdamW(params_, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng([seed, 2027])
    start = fixed_loss(probe, fixed)
    history = [{'step': 0, 'loss_train': float('nan'), 'loss_retain': float('nan'), 'loss_set': start,
                'loss_monitor': fixed_loss(mon, mon_masks) if mon else float('nan')}]
    for step in range(1, int(max_steps) + 1):
        pick = [ids[i] for i in rng.choice(len(ids), min(batch, len(ids)), replace=False)]
        loss = mlm_loss(model, head, tokenizer, pick, _masks(pick, special, mask_prob, rng))
        objective, kept = -loss, float('nan')
        if keep is not None:
            rows = [keep[i] for i in rng.choice(len(keep), min(batch, len(keep)), replace=False)]
            kept_loss = mlm_loss(model, head, tokenizer, rows, _masks(rows, special, mask_prob, rng))
            objective, kept = objective + float(retain_weight) * kept_loss, float(kept_loss.detach())
        opt.zero_grad()
        objective.backward()
        torch.nn.utils.clip_grad_norm_(params_, 1.0)
        opt.step()
        if step % max(1, int(eval_every)) and step != int(max_steps):
            history.append({'step': step, 'loss_train': float(loss.detach()), 'loss_retain': kept,
                            'loss_set': float('nan'), 'loss_monitor': float('nan')})
            continue
        now = fixed_loss(probe, fixed)
        history.append({'step': step, 'loss_train': float(loss.detach()), 'loss_retain': kept, 'loss_set': now,
                        'loss_monitor': fixed_loss(mon, mon_masks) if mon else float('nan')})
        if not math.isfinite(now) or now > factor * start:
            break
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval(), history


def _mean_loss(model, head, tokenizer, rows, masks, chunk: int = 32) -> float:
    """Token-weighted mean masked-LM loss over ``rows`` with fixed ``masks``."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), chunk):
            n = sum(len(m) for m in masks[i:i + chunk])
            if n:
                total += float(mlm_loss(model, head, tokenizer, rows[i:i + chunk], masks[i:i + chunk])) * n
                count += n
    return total / max(count, 1)


@torch.no_grad()
def pseudo_log_likelihood(encoder, head: MLMHead, tokenizer, texts: Sequence[str], *, max_length: int = 48,
                          batch: int = 128, copies: Optional[int] = None) -> np.ndarray:
    """Mean log-probability per token of each text, every non-special token masked in turn (all masked copies of all
    texts batched ``batch`` sequences at a time), decoded with ``head`` tied to ``encoder``.

    ``copies=None`` is the pseudo-log-likelihood proper (one copy per token, each with one ``[MASK]``); ``copies=N``
    is a cheaper approximation: N copies per text, the j-th masking the tokens ``j, j+N, j+2N, ...`` together (every
    token still masked exactly once)."""
    head = head.tied_to(encoder)
    encoder.eval()
    ids = _encode(tokenizer, texts, max_length)
    special = _special(tokenizer)
    jobs = []   # (text, ids, masked positions)
    for t, row in enumerate(ids):
        pos = np.array([i for i, tok in enumerate(row) if tok not in special], dtype=np.int64)
        if copies:
            groups = [pos[j::int(copies)] for j in range(min(int(copies), len(pos)))]
        else:
            groups = [pos[j:j + 1] for j in range(len(pos))]
        jobs += [(t, row, g) for g in groups]
    total, count = np.zeros(len(ids)), np.zeros(len(ids))
    jobs.sort(key=lambda c: len(c[1]))      # similar lengths together: little padding
    for i in range(0, len(jobs), int(batch)):
        part = jobs[i:i + int(batch)]
        x, att, rows, cols, target = _batch(tokenizer, [c[1] for c in part], [c[2] for c in part])
        hidden = encoder(input_ids=x, attention_mask=att).last_hidden_state[rows, cols]
        logp = torch.log_softmax(head(hidden), dim=-1).gather(1, target[:, None])[:, 0].numpy()
        np.add.at(total, [part[r][0] for r in rows.tolist()], logp)
        np.add.at(count, [part[r][0] for r in rows.tolist()], 1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
