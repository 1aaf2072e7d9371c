"""Two-process DDP training on gloo (torchrun): both ranks end with identical weights, rank 0 writes the model."""
import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, os, sys, torch
    from pyterrier_knowacq.crossencoder import CrossEncoder
    from pyterrier_knowacq.training.crossencoder_task import CrossEncoderTask
    from pyterrier_knowacq.training.examples import Group
    from pyterrier_knowacq.training.trainer import TrainConfig, Trainer
    torch.set_num_threads(1)
    out = sys.argv[1]
    texts = {f'd{i}': f'passage number {i} about ' + ('cats' if i % 2 else 'dogs') for i in range(20)}
    groups = [Group(f'q{i}', 'cats' if i % 2 else 'dogs', [f'd{i}'], [f'd{(i + 1) % 20}', f'd{(i + 3) % 20}']) for i in range(16)]
    ce = CrossEncoder.new('tiny-bert', pooling='mean', seed=0)
    task = CrossEncoderTask(ce, 'lce', groups, texts.__getitem__, group_size=3, queries_per_batch=2, max_length=32, seed=3)
    res = Trainer(task, TrainConfig(lr=1e-3, max_steps=4, progress=False, log_every=1, checkpoint_every=2), out).train()
    rank = int(os.environ['RANK'])
    total = sum(float(p.double().sum()) for p in ce.model.parameters())
    json.dump({'rank': rank, 'world': int(os.environ['WORLD_SIZE']), 'checksum': total,
               'losses': [h['loss'] for h in res.history]}, open(os.path.join(out, f'rank{rank}.json'), 'w'))
''')


def test_torchrun_two_processes_gloo(tmp_path):
    script = tmp_path / 'ddp_train.py'
    script.write_text(SCRIPT)
    out = tmp_path / 'out'
    out.mkdir()
    env = dict(__import__('os').environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29517',
                           str(script), str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((out / f'rank{r}.json').read_text()) for r in (0, 1))
    assert r0['world'] == 2 and r1['world'] == 2
    assert r0['checksum'] == pytest.approx(r1['checksum'], rel=0, abs=1e-9)   # gradients were all-reduced
    assert len(r0['losses']) == 4 and all(l == l and abs(l) < 1e6 for l in r0['losses'] + r1['losses'])
    assert r0['losses'] != r1['losses']                                      # each rank saw its own shard
    assert (out / 'final' / 'knowacq.json').exists() and (out / 'history.json').exists()
