"""Loss functions: pure functions of tensors, each tested against an independent computation.

contrastive.py     NT-Xent (SimCLR), InfoNCE against a queue (MoCo v2) or the batch (MoCo v3), ...
distillation.py    BYOL's 2 - 2 cos, DINO's centred and sharpened targets, cross-entropy and centre
dinov2.py          iBOT's masked patch loss, KoLeo, Sinkhorn-Knopp centring
reconstruction.py  masked mean squared error (inpainting, MAE)
equivariance.py    ego-motion equivariance with a contrastive margin (DrLIM when maps are identity)
"""
from .contrastive import cosine_similarity, info_nce, info_nce_queue, nt_xent, nt_xent_logits
from .distillation import byol_loss, center_and_sharpen, cross_view_entropy, dino_center, dino_loss
from .dinov2 import ibot_patch_loss, koleo_loss, sinkhorn_knopp
from .reconstruction import masked_mse
from .equivariance import equivariance_loss

__all__ = ["cosine_similarity", "nt_xent", "nt_xent_logits", "masked_mse", "info_nce", "info_nce_queue",
           "byol_loss", "center_and_sharpen", "dino_center", "dino_loss", "cross_view_entropy",
           "equivariance_loss", "ibot_patch_loss", "koleo_loss", "sinkhorn_knopp"]
