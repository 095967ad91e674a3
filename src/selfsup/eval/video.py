"""Analyses of the video and interaction methods (issue 9), usable from Python.

- `equivariance_error`: Jayaraman & Grauman's question, how well a linear map per motion class
  predicts the feature of the later frame from the earlier one. rho_g = mean |M z - z'| /
  mean |z - z'| over held-out pairs of class g: 1 means the map explains none of the change
  (an invariant-looking representation), 0 all of it; NaN for a class without change, or too
  few pairs to fit a map. Maps are the method's own (learned) or fitted by ridge regression on
  the other half of the pairs.
- `equivariance_report`: rho per motion class for a checkpoint on clips with motion signals.
- `outcome_scores`: the interaction heads on held-out records (grasp accuracy, R^2 of push and poke).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..views.pipeline import eval_view
from .features import refuse_nonfinite


MIN_FIT_PAIRS = 2  # pairs a class needs on each side (fit, measure) for a fitted rho


def fit_maps(z: np.ndarray, z_later: np.ndarray, ridge: float) -> np.ndarray:
    """(D, D) M minimising |z M^T - z_later|^2 + ridge |M|^2."""
    d = z.shape[1]
    return np.linalg.solve(z.T @ z + ridge * np.eye(d), z.T @ z_later).T


def equivariance_error(z: np.ndarray, z_later: np.ndarray, classes: np.ndarray, maps: np.ndarray | None = None,
                       ridge: float = 1e-2, dims: int = 32, seed: int = 0) -> dict[int, float]:
    """rho per class (see the module doc). z, z_later: (n, D); classes: (n,); maps: (G, D, D)
    learned maps, or None to fit each class's map on a random half of its pairs (in the top
    `dims` principal directions of z) and measure on the other half."""
    z, z_later = np.asarray(z, np.float64), np.asarray(z_later, np.float64)
    rng = np.random.default_rng(seed)
    if maps is None and z.shape[1] > dims:
        mean = z.mean(0)
        basis = np.linalg.svd(z - mean, full_matrices=False)[2][:dims].T  # (D, dims)
        z, z_later = (z - mean) @ basis, (z_later - mean) @ basis
    errors = {}
    for g in np.unique(classes):
        idx = np.flatnonzero(classes == g)
        if maps is None and len(idx) < 2 * MIN_FIT_PAIRS:  # a map fitted to 0 or 1 pairs predicts nothing
            errors[int(g)] = float("nan")
            continue
        if maps is None:
            idx = rng.permutation(idx)
            fit, idx = idx[:len(idx) // 2], idx[len(idx) // 2:]
            m = fit_maps(z[fit], z_later[fit], ridge)
        else:
            m = np.asarray(maps[g], np.float64)
        change = np.linalg.norm(z[idx] - z_later[idx], axis=1).mean()
        scale = np.linalg.norm(z[idx], axis=1).mean()
        # A class whose frames do not change (standing still) has nothing to predict: NaN.
        errors[int(g)] = float(np.linalg.norm(z[idx] @ m.T - z_later[idx], axis=1).mean() / change) \
            if change > 1e-6 * scale else float("nan")
    return errors


@torch.no_grad()
def _features(backbone, images: np.ndarray, rows: np.ndarray, size: int, device, batch: int = 256) -> torch.Tensor:
    out = []
    for start in range(0, len(rows), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[rows[start:start + batch]])).to(device)
        out.append(backbone(eval_view(x, size)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def equivariance_report(checkpoint, data, motion_classes: int | None = None, gap: int | None = None,
                        seed: int | None = None, device: str = "cpu", cache_dir=None,
                        image_size: int | None = None) -> dict:
    """{"fitted": {class: rho}, "pairs": {class: n}} on the encoder's pooled features, and for an
    egomotion checkpoint also {"learned": {class: rho}} with its own maps on its embedding z.

    The pairs of `data` (the training clips or others) are put in the run's motion classes, by
    the nearest of the class centres the run kept, so that each learned map is scored on its
    own motion. `motion_classes`, `gap` or `seed` other than the run's make classes of their own
    by k-means on `data`, as for a checkpoint of another method, and the learned maps are not
    scored. (An egomotion checkpoint written before the centres were kept: k-means on `data` with
    the run's settings, which gives the run's classes on the run's own clips only.) `image_size`:
    the encoder's input size, by default a checkpoint's training size, a random: encoder's the
    frames' own (see encoder.random_size)."""
    from ..data.video import open_clips, typical_frame_side
    from ..encoder import load_encoder, random_spec, size_for_side
    from ..methods.egomotion import Config, samples

    spec = str(checkpoint)
    if image_size is None and spec.startswith("random:"):  # the frames' size, as eval draws it at the images'
        image_size = size_for_side(random_spec(spec)[0], typical_frame_side(data))
    encoder = load_encoder(checkpoint, image_size=image_size)
    cfg = encoder.config
    trained = cfg.method_config if cfg is not None and cfg.method == "egomotion" else None
    run_seed = cfg.train.seed if trained is not None else 0
    base = trained or Config()
    # Only what decides the classes: the run's labelled clips need not be among `data`.
    config = Config(motion_classes=base.motion_classes if motion_classes is None else motion_classes,
                    pair_gap=base.pair_gap if gap is None else gap)
    seed = run_seed if seed is None else seed
    runs_classes = trained is not None and (config.motion_classes, config.pair_gap, seed) == (
        trained.motion_classes, trained.pair_gap, run_seed)
    method = None
    if runs_classes:
        from ..checkpoint import load_checkpoint
        from ..methods import restore_method

        method = restore_method(cfg, load_checkpoint(checkpoint)["model"]).eval()
    cache = open_clips(data, encoder.cache_size, cache_dir=cache_dir, show_progress=False)
    if method is not None and method.motion_centres.numel():
        rows, classes = _in_runs_classes(method, cache, config.pair_gap, data)
    else:
        made = samples(config, cache, seed)
        rows, classes = made.rows, made.side.motion_class
    backbone = encoder.backbone.to(device).eval()
    first = _features(backbone, cache.images, rows[:, 0], encoder.image_size, device)
    later = _features(backbone, cache.images, rows[:, 1], encoder.image_size, device)
    for features in (first, later):
        refuse_nonfinite(features, encoder)
    report = {"fitted": equivariance_error(F.normalize(first, dim=1).numpy(), F.normalize(later, dim=1).numpy(),
                                           classes, seed=seed),
              "pairs": {int(g): int(n) for g, n in zip(*np.unique(classes, return_counts=True))}}
    if method is not None:
        z, z_later = (F.normalize(method.head(f), dim=1).numpy() for f in (first, later))
        report["learned"] = equivariance_error(z, z_later, classes, maps=method.maps.detach().numpy())
    return report


def _in_runs_classes(method, cache, gap: int, data) -> tuple[np.ndarray, np.ndarray]:
    """The frame pairs of `cache` and the class of each among the run's motion classes (the
    nearest centre), with the readings matched to the run's by name."""
    from ..errors import UserError
    from ..methods.egomotion import motion_classes_of, reading_names
    from ..views.temporal import motion_pairs

    pairs = motion_pairs(cache, gap)
    trained, given = reading_names(method), list(cache.motion_columns)
    if sorted(trained) != sorted(given):
        raise UserError(f"the run's motion classes are made of the readings {', '.join(trained)}; the clips in "
                        f"{data} give {', '.join(given)}: give clips with the same motion columns")
    motion = pairs.motion[:, [given.index(name) for name in trained]]  # in the run's order
    return pairs.rows, motion_classes_of(motion, method.motion_scale.double().numpy(),
                                         method.motion_centres.double().numpy())


@torch.no_grad()
def outcome_scores(method, cache, rows: np.ndarray, device="cpu", batch: int = 256) -> dict[str, float]:
    """Grasp accuracy (and the majority rate to beat), R^2 of the push displacement and of the
    poke log-distance, on the interaction records at `rows`."""
    method = method.to(device).eval()
    grasp, push, poke = [], [], []
    for start in range(0, len(rows), batch):
        idx = rows[start:start + batch]
        x = torch.from_numpy(np.ascontiguousarray(cache.images[idx])).to(device)
        g, p, k, _ = method.predict(x, torch.from_numpy(cache.angle[idx]).to(device))
        grasp.append(g.cpu()), push.append(p.cpu()), poke.append(k.cpu())
    grasp, push, poke = torch.cat(grasp).numpy(), torch.cat(push).numpy(), torch.cat(poke).numpy()
    kind = cache.kind[rows]
    success = cache.success[rows]
    displacement = cache.displacement[rows]
    distance = np.log1p(np.linalg.norm(displacement, axis=1) * method.config.poke_scale)

    def r2(pred, true):
        return float(1 - ((pred - true) ** 2).sum() / max(((true - true.mean(0)) ** 2).sum(), 1e-12))

    g, p, k = kind == 0, kind == 1, kind == 2
    return {"grasp_acc": float(((grasp[g] > 0) == (success[g] > 0.5)).mean()),
            "grasp_majority": float(max(success[g].mean(), 1 - success[g].mean())),
            "push_r2": r2(push[p], displacement[p]), "poke_r2": r2(poke[k], distance[k])}
