"""Loss functions: pure functions of tensors, each tested against an independent computation.

contrastive.py     NT-Xent (SimCLR), ...
reconstruction.py  masked mean squared error (inpainting, MAE)
"""
from .contrastive import cosine_similarity, nt_xent, nt_xent_logits
from .reconstruction import masked_mse

__all__ = ["cosine_similarity", "nt_xent", "nt_xent_logits", "masked_mse"]
