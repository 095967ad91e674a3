"""Views made on the model's device: batched, per-sample random augmentations of uint8 batches."""
from .masks import block_mask, random_patch_mask, visible_indices
from .multicrop import (byol_view_1, byol_view_2, dino_global_view_1, dino_global_view_2, dino_local_view,
                        multi_crop)
from .pipeline import (IMAGENET_MEAN, IMAGENET_STD, ViewConfig, apply_view, compile_views, eval_view,
                       make_view, make_views, sample_view_uniforms, to_float)
from .pretext import (ABBins, all_rotations, chromatic_guard, decode_lightness, denormalize, extract_tiles,
                      inpainting_masks, jigsaw_permutations, lab_to_rgb, light_views, min_hamming_distance,
                      quantize_lightness, relative_location_pair, rgb_to_lab, sample_tile_corners, shuffle_tiles,
                      standardize_tiles, tile_grid)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ViewConfig", "apply_view", "compile_views", "eval_view",
           "make_view", "make_views", "sample_view_uniforms", "to_float",
           "block_mask", "random_patch_mask", "visible_indices",
           "multi_crop", "byol_view_1", "byol_view_2", "dino_global_view_1", "dino_global_view_2", "dino_local_view",
           "ABBins", "all_rotations", "chromatic_guard", "decode_lightness", "denormalize", "extract_tiles",
           "inpainting_masks", "jigsaw_permutations", "lab_to_rgb", "light_views", "min_hamming_distance",
           "quantize_lightness", "relative_location_pair", "rgb_to_lab", "sample_tile_corners", "shuffle_tiles",
           "standardize_tiles", "tile_grid"]
