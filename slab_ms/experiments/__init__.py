"""Experiments that train and measure, each ``python -m slab_ms.experiments.<module>``: the paper's ablations at
small scale (``ablation``), γ step by step during a real run (``gamma_trace``), the dense-prediction demo on a
PRepBN backbone (``detection``, scored by ``detection_metrics``) and the corpus demo of PRepBN for language
models (``lm_demo``)."""
