"""Analyses of what a retriever knows: layer-wise representations, probes, integrated gradients, statistics, plots.

The heavy pieces import torch/transformers lazily; ``pipeline.run_analysis`` is what the experiment runner calls.
"""
