"""Learned optimizers as PyLO (Belilovsky-Lab/pylo, arXiv 2506.10315) ships them, in pure PyTorch.

    weights.py    loading published weights (config.json + model.safetensors, PyLO's PyTorchModelHubMixin
                  layout and tensor names) from a local directory or the Hugging Face hub; writing them back
    features.py   the accumulators and per-parameter / per-tensor input features both nets read
    velo_net.py   VeLO's per-tensor LSTM and the per-parameter MLP it generates (hypernetwork)
    mulo_net.py   muLO's per-parameter MLP (small_fc_lopt)

The optimizers themselves are `optbench/optim/algorithms/velo.py` and `mulo.py`.
"""
