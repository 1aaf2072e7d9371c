"""The numbers a plan assumes that are not measured (the package docstring says where each comes from); a plan
records them under ``assumptions``."""

GIB = 2 ** 30
MIB = 2 ** 20
#: the share of the device memory a training step may use (the trainer's micro_batch: auto fits into 80% of it)
BUDGET_FRACTION = 0.8
#: bf16-autocast activations relative to the fp32 measurement (see the package docstring)
BF16_ACTIVATION_FACTOR = 0.65
#: passages per query that are measured; larger groups are scaled linearly (each passage is its own sequence)
DOC_CAP = 16
#: model FLOP utilisation of a CPU relative to its measured fp32 matmul rate
CPU_MFU = 0.5
#: BERT word pieces (and Llama sentence pieces) per whitespace word of English text
TOKENS_PER_WORD = 1.3
#: tokens of a typical MS MARCO / NQ question with its special tokens
QUERY_TOKENS = 12
#: a PISA index takes about this share of the raw corpus text
PISA_FRACTION = 0.35
#: ColBERT's IVF-PQ index: 16 code bytes + an 8-byte id per token
COLBERT_TOKEN_OVERHEAD = 24
