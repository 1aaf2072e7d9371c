"""``knowacq plan FILE [--gpu h100|h200|a100-40g|cpu]``: what an experiment file will cost before it runs.

Per trained model: the peak memory of one training step, the micro-batch x accumulation that fits the device, the
estimated wall time, and the disk its checkpoints take. Per system: the memory of its models at inference, the wall
time over every test collection it runs on, and the indexes it builds (dense, ColBERT, PISA). The corpus and query
counts come from a small table of well-known ``irds:`` ids (:data:`KNOWN_SIZES`), else ir_datasets' own metadata,
else the dataset itself (counted). ``knowacq run`` computes the memory part for this machine's device before any
work and refuses a file with a model or a system that cannot fit (:func:`check_plan`; ``--force`` runs it anyway).

How the numbers are made (the assumptions):

* **Architectures** are read with ``AutoConfig`` where that works without the hub (a local folder, a packaged alias,
  the local Hugging Face cache); otherwise from :data:`KNOWN_CONFIGS`, the configs of the seed models
  (bert-base-uncased, ELECTRA-base, RoBERTa-base, Contriever, DPR, ColBERTv2, Llama-2-7B, RepLLaMA's LoRA adapter,
  SmolLM2-135M, all-MiniLM-L6-v2). Parameter counts come from the full model built on the ``meta`` device (exact,
  no memory).
* **Activations are measured**, never guessed: the real model class is built from the config with 1 and 2
  transformer layers (fp32, CPU; constant weights, since what is saved does not depend on them, and an embedding
  table cut to the token ids used) and the real training task of its family (``CrossEncoderTask``,
  ``BiEncoderTask``, ``ColBERTTask``, with LoRA applied by peft as the trainer does) computes its loss on synthetic
  texts long enough to fill the spec's sequence lengths (``max_length``, ``query_max_length``, ``train_doc_maxlen``:
  the peak of a step is a batch padded to the limit; one passage per group is short, so the padded attention-mask
  path runs as in real batches) at 1 and 2 queries of the spec's group size, with the BERT (MiniLM) or SmolLM2
  tokenizer standing in for the family's own. :func:`~.training.memory.activation_bytes` counts what autograd saves
  for the backward (on real MS MARCO passages a real step of the same task saved 0-2% less, all-MiniLM-L6's 6
  layers scaled from 1 and 2 included; ``tests/test_plan.py`` holds it within 2x). Three measurements (1
  layer x 1 query, 1 layer x 2 queries, 2 layers x 1 query) give a batch-independent part, a per-query part and a
  per-layer-per-query part, scaled linearly to the real number of layers and the spec's batch. Groups of more than
  :data:`DOC_CAP` passages (a cross-encoder's 1 + 99 negatives) are measured at :data:`DOC_CAP` and the per-query
  part is scaled by the group size (every passage is its own sequence). Only the forward pass is run: the backward
  would not change what is saved, and it triples the time. Results are cached under ``$KNOWACQ_CACHE/plan/``,
  keyed by the architecture, the shapes and the library versions.
* **GPU precision**: ``precision: auto`` trains under bf16 autocast on all three GPUs. Activations are then
  ``BF16_ACTIVATION_FACTOR`` (0.65) of the fp32 measurement, not a plain half: autocast keeps LayerNorm/RMSNorm, the
  residual stream, softmax and the losses in fp32 (the same steps measured under CPU bf16 autocast saved 0.62 (BERT)
  and 0.70 (Llama) of their fp32 bytes, without weight copies), and dropout masks are 1 byte either way. Autocast
  also keeps a bf16 copy of every matmul weight for the backward: 2 bytes per linear weight, the frozen base of a
  LoRA model included. On a GPU the measurement runs without attention dropout, because CUDA's fused attention
  kernels keep no ``T x T`` attention matrix (CPU training with dropout does, and the ``cpu`` plan measures that).
* **Weights**: master weights fp32 (4 bytes per parameter, as knowacq loads every model, a LoRA model's frozen base
  included), fp32 gradients (4 bytes) and AdamW's two fp32 moments (8 bytes) per *trainable* parameter (LoRA: the
  adapter only; frozen poolers, ``freeze_layers`` and bases take none). ``gradient_checkpointing: true`` keeps each
  layer's fp32 input plus one layer's activations. A step may use :data:`BUDGET_FRACTION` (80%) of the device
  memory, the share the trainer's ``micro_batch: auto`` fits into (:func:`~.training.memory.device_budget`); a GPU
  step that needs more at one query per forward pass does not fit (the trainer would refuse too), and anything else
  above the whole memory does not fit. On a CPU the trainer keeps the whole batch (no automatic micro-batches).
* **Inference** runs as the transformers do: cross-encoders and bi-encoders in fp32, ColBERT in fp16 on a GPU. The
  working memory of a batch is one layer's activations for ``batch_size`` sequences at the stage's ``max_length``
  (measured the same way, no gradients kept between layers), plus, for the analysis, every layer's hidden states.
* **Wall time** from FLOPs: training ``(2 x forward + 2 x input-gradient + 2 x weight-gradient params) x tokens``
  per step (6 x params x tokens for full fine-tuning, 4 x for LoRA, plus a forward again with gradient
  checkpointing; attention ``T^2`` terms added), at the spec's sequence limits, times the steps (``steps:``, or
  ``epochs:`` x training queries / batch). Inference ``2 x params x tokens`` over each system's candidates x queries
  at the corpus' mean passage length, and the corpus encoded once per (corpus, model) for dense and ColBERT
  indexes. Divided by a sustained rate: 400 TFLOP/s bf16 on an H100 (40% MFU of its 989 dense), 450 on an H200,
  150 on an A100-40G (48% of 312); fp32 inference 40 / 40 / 12 TFLOP/s (60% of the 67 / 67 / 19.5 fp32 peaks:
  TF32 matmuls are off by default in PyTorch); on a CPU, half (MFU 0.5) of this machine's measured fp32 matmul
  rate. Not included: data preparation (first-stage runs of training queries, teacher files, text look-ups),
  validation, checkpoint writes, index search and PISA (CPU work).
* **Disk**: dense indexes ``docs x dim x 4`` bytes (FlexIndex, fp32); ColBERT ``tokens x (dim x 2 + 24)`` (fp16
  vectors, IVF-PQ codes and ids) + doc lengths; PISA about 35% of the corpus text; checkpoints: each stage's final
  model in fp32 (LoRA with ``save: adapter``: the adapter only), the peak while training adding the resume
  checkpoint (weights + AdamW state) and the best/final copies.

The code, by concern (each module's docstring says more): ``assumptions`` (the numbers above), ``devices`` (the GPU
table, :func:`device_spec`), ``architectures`` (:data:`KNOWN_CONFIGS`, :func:`architecture`, :func:`param_counts`),
``measure`` (activations from real steps, cached), ``specs`` (what a model spec decides), ``sizes`` (corpus and query
counts, :data:`KNOWN_SIZES`), ``estimate_training`` and ``estimate_inference`` (memory, time and disk per model,
system, index and analysis group), ``plan`` (:func:`make_plan`) and ``report`` (:func:`format_plan`,
:func:`check_plan`, :class:`PlanRefused`).

Example::

    plan = make_plan('experiments/knowacq-full.yaml', gpu='h100')
    print(format_plan(plan))            # or json.dumps(plan)
"""
# the public names, importable from here as before the package was split (names outside __all__ included)
from .architectures import KNOWN_CONFIGS, Arch, architecture, param_counts  # noqa: F401
from .assumptions import (BF16_ACTIVATION_FACTOR, BUDGET_FRACTION, COLBERT_TOKEN_OVERHEAD, CPU_MFU,  # noqa: F401
                          DOC_CAP, GIB, MIB, PISA_FRACTION, QUERY_TOKENS, TOKENS_PER_WORD)
from .devices import GPUS, Device, cpu_gflops, device_spec  # noqa: F401
from .measure import MEASURE_VERSION, activation_estimate, measure_encoder, measure_training  # noqa: F401
from .plan import FORMAT, make_plan  # noqa: F401
from .report import PlanRefused, check_plan, format_plan
from .sizes import KNOWN_SIZES, KNOWN_TEACHERS  # noqa: F401

__all__ = ['GPUS', 'KNOWN_CONFIGS', 'KNOWN_SIZES', 'Device', 'Arch', 'PlanRefused', 'device_spec', 'architecture',
           'measure_training', 'measure_encoder', 'activation_estimate', 'make_plan', 'format_plan', 'check_plan',
           'BUDGET_FRACTION', 'BF16_ACTIVATION_FACTOR', 'DOC_CAP']
