"""The shared trainer on a tiny model: resume after a kill is bit-identical, NaN stops cleanly, best kept."""
import json

import pytest
import torch
from torch import nn

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.training.losses import get_loss
from pyterrier_knowacq.training.trainer import TrainConfig, Trainer


class ToyTask:
    """Groups of 4 feature vectors, the first one relevant; a dropout layer makes the RNG state matter."""

    def __init__(self, seed=0, nan_at=None, metrics=None):
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 1))
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(40, 4, 8, generator=g)
        self.x[:, 0] += 0.5
        self.nan_at = nan_at
        self.calls = 0
        self.metrics = list(metrics or [])
        self.loss_fn = get_loss('lce')

    def batches(self, epoch, rank, world_size):
        order = torch.randperm(40, generator=torch.Generator().manual_seed(1000 + epoch)).tolist()
        order = order[rank::world_size]
        return [order[i:i + 4] for i in range(0, len(order), 4)]

    def batch_ids(self, batch):
        return [f'q{i}' for i in batch]

    def loss(self, model, batch):
        self.calls += 1
        scores = model(self.x[batch]).squeeze(-1)
        loss = self.loss_fn(scores)
        if self.nan_at is not None and self.calls == self.nan_at:
            loss = loss * float('nan')
        return loss, {'acc': (scores.argmax(1) == 0).float().mean().item()}

    def validate(self, model):
        return {'nDCG@10': self.metrics.pop(0)}

    def save(self, folder):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(folder / 'model.safetensors'))


def cfg(**kw):
    base = dict(lr=1e-2, max_steps=12, warmup=2, checkpoint_every=3, progress=False, log_every=1, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def weights(task):
    return {k: v.clone() for k, v in task.model.state_dict().items()}


def test_resume_after_kill_is_identical(tmp_path):
    ref = ToyTask()
    res = Trainer(ref, cfg(), tmp_path / 'a').train()
    assert res.steps == 12 and (tmp_path / 'a' / 'final' / 'model.safetensors').exists()
    assert not (tmp_path / 'a' / 'checkpoint').exists()

    class Killed(Exception):
        pass

    def kill(trainer, step, logs):
        if step == 8:
            raise Killed()
    with pytest.raises(Killed):
        Trainer(ToyTask(), cfg(), tmp_path / 'b', callbacks=[kill]).train()
    state = json.loads((tmp_path / 'b' / 'checkpoint' / 'state.json').read_text())
    assert state['step'] == 6
    resumed = ToyTask(seed=99)  # different init: the checkpoint must overwrite it
    res2 = Trainer(resumed, cfg(), tmp_path / 'b').train()
    assert res2.steps == 12
    a, b = weights(ref), weights(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h['loss'] for h in res.history] == [h['loss'] for h in res2.history]


def test_epochs_and_grad_accum(tmp_path):
    task = ToyTask()
    res = Trainer(task, cfg(max_steps=None, epochs=2, grad_accum=2, checkpoint_every=0), tmp_path).train()
    assert res.steps == 2 * (10 // 2)
    assert task.calls == 20


def test_nan_loss_stops_with_step_and_ids(tmp_path):
    task = ToyTask(nan_at=5)
    with pytest.raises(KnowacqError, match=r'step 5 \(batch query ids \[.q'):
        Trainer(task, cfg(checkpoint_every=3), tmp_path).train()
    state = json.loads((tmp_path / 'checkpoint' / 'state.json').read_text())
    assert state['step'] == 3  # last good checkpoint kept
    assert not (tmp_path / 'final').exists()


def test_best_checkpoint_kept(tmp_path):
    task = ToyTask(metrics=[0.2, 0.5, 0.3])
    res = Trainer(task, cfg(max_steps=9, eval_every=3, checkpoint_every=0), tmp_path).train()
    assert res.best_metric == 0.5 and res.model_dir == tmp_path / 'best'
    from safetensors.torch import load_file
    best = load_file(str(tmp_path / 'best' / 'model.safetensors'))
    final = load_file(str(tmp_path / 'final' / 'model.safetensors'))
    assert not all(torch.equal(best[k], final[k]) for k in best)
    vals = [h['val_nDCG@10'] for h in json.loads((tmp_path / 'history.json').read_text())['history'] if 'val_nDCG@10' in h]
    assert vals == [0.2, 0.5, 0.3]


def test_schedule_warmup_then_linear_decay(tmp_path):
    t = Trainer(ToyTask(), cfg(warmup=0.25), tmp_path)
    f = t._schedule(8)
    assert [round(f(s), 3) for s in range(9)] == [0.5, 1.0, 1.0, 0.833, 0.667, 0.5, 0.333, 0.167, 0.0]


def test_bad_config():
    with pytest.raises(KnowacqError, match='max_steps or epochs'):
        TrainConfig()
    with pytest.raises(KnowacqError, match='unknown training settings'):
        TrainConfig.from_dict({'max_steps': 3, 'learning_rate': 1})


def test_wrong_architecture_checkpoint(tmp_path):
    class Killed(Exception):
        pass

    def kill(trainer, step, logs):
        if step == 4:
            raise Killed()
    with pytest.raises(Killed):
        Trainer(ToyTask(), cfg(), tmp_path, callbacks=[kill]).train()
    other = ToyTask()
    other.model = nn.Sequential(nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 1))
    with pytest.raises(KnowacqError, match='does not fit this model'):
        Trainer(other, cfg(), tmp_path).train()


# -- lazy batches: light specs per epoch, passage texts looked up per batch (one call), resume on the same batch
TEXTS = {f'd{i}': f'passage number {i} about ' + ('cats' if i % 2 else 'dogs') for i in range(20)}


def ce_task(lookups, seed=0, single=False):
    from pyterrier_knowacq.models.crossencoder import CrossEncoder
    from pyterrier_knowacq.training.crossencoder_task import CrossEncoderTask
    from pyterrier_knowacq.training.examples import Group
    groups = [Group(f'q{i}', 'cats' if i % 2 else 'dogs', [f'd{i}'], [f'd{(i + 1) % 20}', f'd{(i + 3) % 20}'])
              for i in range(12)]
    ce = CrossEncoder.new('tiny-bert', pooling='mean', seed=seed)

    def texts_of(docnos):
        lookups.append(list(docnos))
        return [TEXTS[d] for d in docnos]

    def text_of(docno):                     # the older single-docno form, wrapped by the task
        lookups.append([docno])
        return TEXTS[docno]
    kw = {'texts_of': texts_of} if not single else {}
    return CrossEncoderTask(ce, 'lce', groups, text_of if single else None, group_size=3, queries_per_batch=2,
                            max_length=32, seed=3, **kw)


def test_batches_are_light_and_texts_are_fetched_per_batch(tmp_path):
    lookups = []
    task = ce_task(lookups)
    batches = task.batches(0, 0, 1)
    assert len(batches) == 6 and not lookups                        # an epoch's batches need no text
    for batch in batches:
        for qid, query, docnos, target, index in batch:
            assert qid.startswith('q') and set(docnos) <= set(TEXTS) and len(target) == 3
    res = Trainer(task, cfg(max_steps=4, grad_accum=2, checkpoint_every=0, lr=1e-3), tmp_path).train()
    assert res.steps == 4
    assert len(lookups) == 8                                         # 4 steps x 2 batches: one lookup each
    epoch0 = [[d for item in b for d in item[2]] for b in batches]
    assert lookups[:6] == epoch0                                     # in batch order, the batch's docnos at once
    single = []
    old = ce_task(single, single=True)
    assert old.loss(old.model, old.batches(0, 0, 1)[0])[0].isfinite()
    assert len(single) == 6                                           # text_of still works, one docno at a time


def test_cross_encoder_resume_lands_on_the_same_batch(tmp_path):
    ref = ce_task([])
    full = Trainer(ref, cfg(max_steps=5, grad_accum=2, checkpoint_every=2, lr=1e-3), tmp_path / 'a').train()

    class Killed(Exception):
        pass

    def kill(trainer, step, logs):
        if step == 3:
            raise Killed()
    with pytest.raises(Killed):
        Trainer(ce_task([]), cfg(max_steps=5, grad_accum=2, checkpoint_every=2, lr=1e-3), tmp_path / 'b', callbacks=[kill]).train()
    lookups = []
    resumed = ce_task(lookups, seed=5)
    res = Trainer(resumed, cfg(max_steps=5, grad_accum=2, checkpoint_every=2, lr=1e-3), tmp_path / 'b').train()
    assert res.steps == 5 and len(lookups) == 6                     # steps 3..5 only, two batches each
    a, b = weights(ref), weights(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h['loss'] for h in full.history] == [h['loss'] for h in res.history]
