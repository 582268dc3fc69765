"""The published methods: one module per paper, each registering its drivers and method presets.

- :mod:`prunelab.methods.relief` — neural network relief (Dekhovich et al., Machine Learning 2024).
- :mod:`prunelab.methods.interspace` — interspace pruning (Wimmer et al., CVPR 2022).
- :mod:`prunelab.methods.slimming` — network slimming and proximal network slimming (Liu et al. 2017;
  Bui et al. 2023).
- :mod:`prunelab.methods.pretraining` — the pre-trained vs from-scratch pruning study (Hubens et al.
  2020).
"""
