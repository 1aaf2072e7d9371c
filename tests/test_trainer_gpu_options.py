"""The trainer's GPU-efficiency options, checked where they can be on a CPU: precision resolution (bf16 only on capable
GPUs), gradient checkpointing (same losses), micro-batches (same updates), the memory measurement behind
``micro_batch: auto`` and ``knowacq plan``, and adapter-only LoRA checkpoints (small, resume bit-identical)."""
import ctypes
import json

import pytest
import torch
from torch import nn

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.training.examples import Group
from pyterrier_knowacq.training.losses import get_loss
from pyterrier_knowacq.training.trainer import TrainConfig, Trainer, resolve_precision

WORDS = ['cats', 'dogs', 'cars', 'rivers', 'music', 'stars', 'trees', 'ships']
TEXTS = {f'd{i}': f'passage {i} tells a long story about {WORDS[i % 8]} and {WORDS[(i * 3) % 8]} ' * (1 + i % 3)
         for i in range(24)}
GROUPS = [Group(f'q{i}', f'what about {WORDS[i % 8]}', [f'd{i}'], [f'd{(i + k) % 24}' for k in (1, 5, 9, 13)])
          for i in range(16)]


def cfg(**kw):
    base = dict(lr=1e-3, max_steps=2, warmup=0, progress=False, log_every=1, checkpoint_every=0, seed=3, device='cpu')
    base.update(kw)
    return TrainConfig(**base)


def ce_task(seed=0, queries_per_batch=4, max_length=64):
    from pyterrier_knowacq.models.crossencoder import CrossEncoder
    from pyterrier_knowacq.training.crossencoder_task import CrossEncoderTask
    ce = CrossEncoder.new('tiny-bert', pooling='mean', seed=seed)
    return CrossEncoderTask(ce, 'lce', GROUPS, texts_of=lambda ds: [TEXTS[d] for d in ds], group_size=4,
                            queries_per_batch=queries_per_batch, max_length=max_length, seed=1)


# -- precision
def test_precision_auto_is_fp32_on_cpu(tmp_path):
    assert TrainConfig(max_steps=1).precision == 'auto'
    assert resolve_precision('auto', 'cpu') is None and resolve_precision('fp32', 'cpu') is None

    class Spy:
        def __init__(self):
            self.model = nn.Linear(4, 1)
            self.autocast = []

        def batches(self, epoch, rank, world_size):
            return [[0, 1], [2, 3]]

        def loss(self, model, batch):
            self.autocast.append(torch.is_autocast_enabled('cpu'))
            return model(torch.ones(len(batch), 4)).pow(2).mean(), {}

        def save(self, folder):
            pass
    spy = Spy()
    trainer = Trainer(spy, cfg(), tmp_path)
    trainer.train()
    assert trainer.dtype is None and spy.autocast == [False, False]


def test_bf16_on_cpu_is_one_clear_error(tmp_path):
    with pytest.raises(KnowacqError) as e:
        Trainer(ce_task(), cfg(precision='bf16'), tmp_path).train()
    msg = str(e.value)
    assert '\n' not in msg and 'bf16' in msg and 'precision: auto or fp32' in msg
    assert not (tmp_path / 'final').exists()
    with pytest.raises(KnowacqError, match='precision must be one of'):
        TrainConfig(max_steps=1, precision='fp16')
    with pytest.raises(KnowacqError, match='micro_batch must be auto'):
        TrainConfig(max_steps=1, micro_batch=0)


# -- gradient checkpointing
def test_gradient_checkpointing_same_losses(tmp_path):
    plain, ckpt = ce_task(), ce_task()
    a = Trainer(plain, cfg(), tmp_path / 'a').train()
    b = Trainer(ckpt, cfg(gradient_checkpointing=True), tmp_path / 'b').train()
    assert any(getattr(m, 'gradient_checkpointing', False) for m in ckpt.model.backbone.modules())
    assert not any(getattr(m, 'gradient_checkpointing', False) for m in plain.model.backbone.modules())
    la, lb = [h['loss'] for h in a.history], [h['loss'] for h in b.history]
    assert lb[0] == pytest.approx(la[0], rel=1e-6)          # step 1: the same forward (dropout included)
    assert lb[1] == pytest.approx(la[1], rel=1e-4)          # step 2: the same gradients went into step 1's update


# -- micro-batches
class NoDropoutToy:
    """Toy groups of feature vectors; no dropout, so a split batch must give the very same update."""

    def __init__(self):
        torch.manual_seed(0)
        # no output bias: the listwise loss ignores a shift of all scores, so its gradient would be rounding noise
        self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1, bias=False))
        self.x = torch.randn(32, 4, 8, generator=torch.Generator().manual_seed(5))
        self.loss_fn = get_loss('lce')
        self.sizes = []

    def batches(self, epoch, rank, world_size):
        order = torch.randperm(32, generator=torch.Generator().manual_seed(epoch)).tolist()[rank::world_size]
        return [order[i:i + 8] for i in range(0, len(order), 8)]

    def loss(self, model, batch):
        self.sizes.append(len(batch))
        return self.loss_fn(model(self.x[batch]).squeeze(-1)), {}

    def save(self, folder):
        pass


def test_micro_batches_give_the_same_updates(tmp_path):
    whole, split, auto = NoDropoutToy(), NoDropoutToy(), NoDropoutToy()
    r1 = Trainer(whole, cfg(max_steps=3, grad_accum=2), tmp_path / 'a').train()
    r2 = Trainer(split, cfg(max_steps=3, grad_accum=2, micro_batch=3), tmp_path / 'b').train()
    Trainer(auto, cfg(max_steps=3, grad_accum=2, micro_batch='auto'), tmp_path / 'c').train()
    assert whole.sizes == [8] * 6 and auto.sizes == [8] * 6             # auto on a CPU: the task's own batch
    assert split.sizes == [3, 2, 3] * 6                                   # 8 queries -> 3 balanced micro-batches
    for p, q in zip(whole.model.parameters(), split.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert [h['loss'] for h in r2.history] == pytest.approx([h['loss'] for h in r1.history], rel=1e-5)


def test_micro_batch_needs_list_batches(tmp_path):
    class DictBatches(NoDropoutToy):
        def batches(self, epoch, rank, world_size):
            return [{'ids': b} for b in super().batches(epoch, rank, world_size)]
    with pytest.raises(KnowacqError, match='split_batch'):
        Trainer(DictBatches(), cfg(micro_batch=2), tmp_path).train()


def test_gradient_checkpointing_needs_a_hf_backbone(tmp_path):
    with pytest.raises(KnowacqError, match='gradient_checkpointing: false'):
        Trainer(NoDropoutToy(), cfg(gradient_checkpointing=True), tmp_path).train()


# -- memory measurement
def _malloc_in_use():
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
                                                   'fsmblks', 'uordblks', 'fordblks', 'keepcost')]
    try:
        libc = ctypes.CDLL('libc.so.6')
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        pytest.skip('needs glibc >= 2.33 (mallinfo2) to measure allocations directly')

    def in_use():
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd
    return in_use


def test_measure_step_memory_is_linear_and_close_to_direct():
    import gc
    from pyterrier_knowacq.training.memory import fit_micro_batch, measure_step_memory, peak_bytes
    task = ce_task(max_length=128)
    before = [p.detach().clone() for p in task.model.parameters()]
    rng = torch.get_rng_state()
    m = measure_step_memory(task, cfg(), batch_sizes=(1, 2, 4))
    assert torch.equal(torch.get_rng_state(), rng)                               # measuring moves no RNG
    assert all(torch.equal(a, b) for a, b in zip(before, task.model.parameters()))   # nor the weights
    assert all(p.grad is None for p in task.model.parameters())
    params = sum(p.numel() * 4 for p in task.model.parameters())
    assert m['params_bytes'] == params and m['optimizer_bytes'] == 2 * m['grad_bytes']
    per, fixed = m['activation_bytes_per_example'], m['activation_bytes_fixed']
    assert per > 0
    assert m['measured'][4] == pytest.approx(fixed + 4 * per, rel=0.25)          # linear in the queries
    assert peak_bytes(m, 8) - peak_bytes(m, 4) == 4 * per
    # a direct measurement: bytes malloc holds after the forward pass of 16 queries (the activations kept for backward)
    in_use = _malloc_in_use()
    from pyterrier_knowacq.training.memory import _example_batch
    batch = _example_batch(task, 16)
    task.model.train()
    gc.collect()
    start = in_use()
    loss = task.loss(task.model, batch)[0]
    direct = in_use() - start
    loss.backward()
    task.model.zero_grad(set_to_none=True)
    estimate = fixed + 16 * per
    assert 0.5 * direct <= estimate <= 2 * direct, (estimate, direct)
    # choosing the micro-batch
    assert fit_micro_batch(m, peak_bytes(m, 5) + 1, max_batch=16) == 5
    assert fit_micro_batch(m, 10 ** 15, max_batch=16) == 16
    with pytest.raises(KnowacqError, match='gradient_checkpointing: true'):
        fit_micro_batch(m, peak_bytes(m, 1) - 1, max_batch=16)


# -- adapter-only LoRA checkpoints
def lora_task(seed=0, save_adapters=False):
    from pyterrier_knowacq.training.dense import BiEncoderTask, build_biencoder
    bienc = build_biencoder({'backbone': 'tiny-llama', 'pooling': 'last', 'steps': 1, 'max_length': 32,
                             'query_max_length': 16, 'lora': {'r': 2, 'alpha': 4}}, seed=seed)
    return BiEncoderTask(bienc, GROUPS, texts_of=lambda ds: [TEXTS[d] for d in ds], negatives=2,
                         queries_per_batch=4, seed=2, save_adapters=save_adapters)


def test_lora_checkpoints_hold_the_adapters_only_and_resume_identically(tmp_path):
    pytest.importorskip('peft')
    settings = dict(max_steps=5, checkpoint_every=2, lr=1e-2)
    ref = lora_task()
    full = Trainer(ref, cfg(**settings), tmp_path / 'ref').train()

    class Killed(Exception):
        pass

    def kill(trainer, step, logs):
        if step == 3:
            raise Killed()
    with pytest.raises(Killed):
        Trainer(lora_task(), cfg(**settings), tmp_path / 'run', callbacks=[kill]).train()
    ckpt = tmp_path / 'run' / 'checkpoint'
    state = json.loads((ckpt / 'state.json').read_text())
    assert state['step'] == 2 and state['adapter_only']
    base_bytes = sum(p.numel() * p.element_size() for p in ref.model.parameters())
    for name in ('model.safetensors', 'optimizer.safetensors'):
        assert (ckpt / name).stat().st_size < 0.02 * base_bytes, name      # adapters (+ their AdamW state) only
    from safetensors.torch import load_file
    assert all('lora_' in k for k in load_file(str(ckpt / 'model.safetensors')))

    resumed = lora_task(seed=9)            # other adapter init: the checkpoint must overwrite it
    res = Trainer(resumed, cfg(**settings), tmp_path / 'run').train()
    assert res.steps == 5
    for (n, a), (_, b) in zip(ref.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), n
    assert [h['loss'] for h in full.history] == [h['loss'] for h in res.history]


def test_lora_resume_on_other_base_weights_fails(tmp_path):
    pytest.importorskip('peft')

    class Killed(Exception):
        pass

    def kill(trainer, step, logs):
        if step == 2:
            raise Killed()
    with pytest.raises(Killed):
        Trainer(lora_task(), cfg(max_steps=4, checkpoint_every=1), tmp_path, callbacks=[kill]).train()
    other = lora_task()
    with torch.no_grad():
        next(p for p in other.model.parameters() if not p.requires_grad).mul_(1.5)   # another base model
    with pytest.raises(KnowacqError, match='other base weights'):
        Trainer(other, cfg(max_steps=4, checkpoint_every=1), tmp_path).train()


def test_lora_model_saved_as_adapters(tmp_path):
    pytest.importorskip('peft')
    task = lora_task(save_adapters=True)
    res = Trainer(task, cfg(max_steps=1), tmp_path).train()
    files = {p.name for p in res.model_dir.iterdir()}
    assert 'adapter_model.safetensors' in files and 'adapter_config.json' in files and 'model.safetensors' not in files
    base_bytes = sum(p.numel() * p.element_size() for p in task.model.parameters())
    assert (res.model_dir / 'adapter_model.safetensors').stat().st_size < 0.02 * base_bytes
    # the adapters reproduce the trained encoder on the base weights
    from peft import PeftModel
    from pyterrier_knowacq.models.backbones import load_encoder
    base, _ = load_encoder('tiny-llama')
    loaded = PeftModel.from_pretrained(base, str(res.model_dir)).eval()
    ids = torch.tensor([[5, 6, 7, 2]])
    trained = task.bienc.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).last_hidden_state, trained(input_ids=ids).last_hidden_state)
