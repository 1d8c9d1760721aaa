"""QAT training of candidate networks: ``trainer`` (the batched trainer and its two engines,
PyTorch and fused C) and ``kernels`` (the C kernels, compiled and cached on first use).

Nothing is imported here: ``import inag.train`` stays cheap, torch loads with ``trainer``.
"""
