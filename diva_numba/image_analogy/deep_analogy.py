"""Deep Image Analogy for one image pair: A : A' :: B : B'.

Given a structure image A and a style image B', the analogy solves for the
latent images A' (A's structure, B''s look) and B (B''s structure, A's look)
coarse to fine over the VGG-19 feature levels 5..1 (docs/DESIGN.md section 2):

1. PatchMatch both ways between the normalised feature pairs (A, A') and (B, B');
2. vote the wanted features at level L through the fields, deconvolve them to
   level L-2 with L-BFGS, run forward to level L-1, and blend with the
   structure image's own features under a response mask;
3. upsample the fields to the next level.

At the pixels the fields vote A' from B' and B from A.

:class:`AnalogyModel` holds what does not change between images (the weights,
the feature extractor, the sub-networks and their GPU buffers); :func:`analogy`
runs one pair; :class:`WarmStart` carries what a video frame inherits from
the previous one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diva_numba.gpu.device import Device, array_module, to_device, to_host
from diva_numba.gpu.timing import Profile
from diva_numba.image_analogy.params import ALPHA_PRESETS, LBFGS_ITERATIONS_BY_DEVICE, AnalogyParams
from diva_numba.kernels.nnf_resample import upsample_field
from diva_numba.kernels.normalize import blend, normalize_features, response_mask
from diva_numba.kernels.patchmatch import identity_field, patchmatch
from diva_numba.kernels.voting import vote
from diva_numba.models import vgg
from diva_numba.network.regions import deconvolve_boxes
from diva_numba.network.subnetwork import FEATURE_LEVELS, SubNetwork, deconvolve
from diva_numba.optim.lbfgs import LBFGSParams

log = logging.getLogger("diva_numba")

# The parameters live in their own module; they are part of this one's interface too.
__all__ = [
    "ALPHA_PRESETS",
    "DECONVOLVED_LEVELS",
    "LBFGS_ITERATIONS_BY_DEVICE",
    "AnalogyModel",
    "AnalogyParams",
    "AnalogyResult",
    "WarmStart",
    "analogy",
    "load_model",
]

#: Levels whose latent features are reconstructed (L -> L-1).
DECONVOLVED_LEVELS = (5, 4, 3, 2)


@dataclass
class WarmStart:
    """What a video frame inherits from the previous one, already in its geometry.

    Every mapping is keyed by level (1..5); a level missing from a mapping gets
    the image-analogy default.

    Attributes
    ----------
    fields_ab : dict of int to int32 array (H_L, W_L, 2)
        Starting ``phi_ab`` (the previous frame's, moved along the optical flow).
    fresh_ab : dict of int to uint8 array (H_L, W_L)
        Pixels (1) whose seed is not to be trusted (occluded, or carried in from
        outside the frame): they start from the coarser level's field instead,
        as in a cold start. PatchMatch then searches every pixel.
    deconv_ab : dict of int to float32 array
        Warm starts of A''s deconvolution solved for level L (a map at L-2).
    latent_b : dict of int to float32 array, optional
        B's latent features at levels 1..4 from an earlier frame. B' does not
        move and A's look changes slowly, so a frame may reuse them: ``phi_ba``
        and B's deconvolutions are then skipped.
    patchmatch_iterations : int, optional
        Rounds per seeded level (fewer than a cold start needs).
    solve_levels : frozenset of int, optional
        Levels whose warm-started deconvolution runs; at the others the warm
        start stands as the solution and no objective is evaluated. None: all.
    solve_boxes : dict of int to list of Box
        Per level solved, the boxes of its solution map (level L-2) around the
        content new since the warm start was solved: only those are solved
        again (:mod:`diva_numba.network.regions`). A level missing here is solved over
        its whole map.
    """

    fields_ab: dict[int, object] = field(default_factory=dict)
    fresh_ab: dict[int, object] = field(default_factory=dict)
    deconv_ab: dict[int, object] = field(default_factory=dict)
    latent_b: dict[int, object] | None = None
    patchmatch_iterations: int | None = None
    solve_levels: frozenset[int] | None = None
    solve_boxes: dict[int, list] = field(default_factory=dict)


@dataclass
class AnalogyResult:
    """Output of :func:`analogy`.

    Attributes
    ----------
    a_prime, b : uint8 NumPy array (H, W, 3)
        A' at A's working size, B at B''s working size (RGB).
    nnf_ab, nnf_ba : int32 NumPy array (H, W, 2)
        Pixel-level fields: for each pixel of A its match ``(y, x)`` in B', and the
        reverse.
        ``nnf_ba`` is None when the warm start reused B's latent features.
    level_fields : dict of int to (nnf_ab, nnf_ba)
        Fields of every feature level (device arrays; ``nnf_ba`` may be None),
        for ``--save-levels`` and for seeding the next video frame.
    deconvolutions : dict of int to R_ab
        A''s deconvolution solution per level (device arrays), for warm starts.
    latent_b : dict of int to array
        B's latent features at levels 1..4 (device arrays), for reuse.
    profile : Profile
    """

    a_prime: np.ndarray
    b: np.ndarray | None
    nnf_ab: np.ndarray
    nnf_ba: np.ndarray | None
    level_fields: dict[int, tuple[object, object]]
    deconvolutions: dict[int, object]
    latent_b: dict[int, object]
    profile: Profile


class AnalogyModel:
    """The VGG-19 pieces the analogy needs, loaded once per device.

    Parameters
    ----------
    model_path : path-like
        The ONNX feature model (see :func:`diva_numba.models.store.ensure_model`).
    device : Device

    Notes
    -----
    Features come from onnxruntime, on the GPU when its CUDA provider works (TF32
    off); on a CUDA device without it (the CPU build of onnxruntime, which is what
    diva-numba installs, or a CUDA provider that fails), the project's own GPU
    forward pass computes them (same weights, same arithmetic up to float32
    rounding), and the first model loaded in the process says so, and why.
    """

    def __init__(self, model_path, device: Device):
        from diva_numba.network.features import FeatureExtractor, notice_once

        self.path = Path(model_path)
        self.device = device
        self.extractor = FeatureExtractor(model_path, device)
        self.weights = self.extractor.weights
        layers = self.weights.layers
        self.subnetworks = {lv: SubNetwork(layers, lv - 2, lv) for lv in DECONVOLVED_LEVELS}
        self._gpu_forward = None
        if device.is_cuda and not self.extractor.runs_on_gpu:
            self._gpu_forward = SubNetwork(layers, 0, 5, max_workspaces=2)
            # Expected with the CPU build (info); a CUDA provider that fails is a warning.
            notice_once(
                "computing the features with diva-numba's own GPU forward pass: "
                + self.extractor.gpu_unavailable_reason,
                logging.WARNING if self.extractor.cuda_provider_failed else logging.INFO,
            )
        elif device.is_cuda:
            log.debug("computing the features with onnxruntime's CUDA provider, TF32 off")

    def preprocess(self, rgb: np.ndarray):
        """Level 0 of an RGB uint8 (H, W, 3) image: float32 (3, H, W) on the device."""
        chw = np.ascontiguousarray(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1))
        return to_device(np.ascontiguousarray(self.weights.preprocess(chw)), self.device)

    def features(self, rgb: np.ndarray) -> dict[int, object]:
        """Levels 0..5 of an image: the preprocessed pixels and relu1_1..relu5_1."""
        level0 = self.preprocess(rgb)
        if self._gpu_forward is not None:
            maps = self._gpu_forward.forward_levels(level0, FEATURE_LEVELS)
        else:
            by_name = self.extractor(rgb)
            maps = [by_name[name] for name in vgg.FEATURE_LAYERS]
        return {0: level0, **dict(zip(FEATURE_LEVELS, maps, strict=True))}

    def pixels(self, level0) -> np.ndarray:
        """RGB uint8 (H, W, 3) image from a level-0 map (the inverse of preprocess)."""
        xp = array_module(level0)
        order = list(self.weights.channel_order)
        mean = xp.asarray(self.weights.mean, dtype=xp.float32)[:, None, None]
        scale = xp.asarray(self.weights.scale, dtype=xp.float32)[:, None, None]
        network_order = level0 / scale + mean
        rgb = xp.empty_like(network_order)
        rgb[order] = network_order
        return np.clip(np.rint(to_host(rgb).transpose(1, 2, 0)), 0, 255).astype(np.uint8)


def load_model(
    model: AnalogyModel | str | os.PathLike | None, device: Device, *, progress: bool = True
) -> AnalogyModel:
    """An :class:`AnalogyModel` on ``device``.

    Parameters
    ----------
    model : AnalogyModel, path-like or None
        A loaded model (returned as is when it is on ``device``), an ONNX file,
        or None for the default VGG-19 model, fetched and cached on first use.
    device : Device
    progress : bool, default True
        Show a progress bar while the default model is fetched.
    """
    if isinstance(model, AnalogyModel):
        if model.device.kind == device.kind:
            return model
        model = model.path
    if model is None:
        from diva_numba.models.store import ensure_model

        model = ensure_model(progress=progress)
    return AnalogyModel(model, device)


def analogy(
    model: AnalogyModel,
    image_a: np.ndarray,
    image_bp: np.ndarray,
    *,
    params: AnalogyParams = AnalogyParams(),  # noqa: B008 (frozen)
    features_bp: dict[int, object] | None = None,
    warm_start: WarmStart | None = None,
    profile: Profile | None = None,
) -> AnalogyResult:
    """Run Deep Image Analogy on one pair.

    Parameters
    ----------
    model : AnalogyModel
    image_a : uint8 array (Ha, Wa, 3)
        The structure image A (RGB), at its working size.
    image_bp : uint8 array (Hb, Wb, 3)
        The style image B' (RGB), at its working size.
    params : AnalogyParams
    features_bp : dict, optional
        ``model.features(image_bp)``, when the caller computed them once (video).
    warm_start : WarmStart, optional
        Seeds inherited from the previous video frame.
    profile : Profile, optional
        Collects the time per stage; a new one is made if not given.

    Returns
    -------
    AnalogyResult
    """
    profile = profile or Profile(model.device)
    warm_start = warm_start or WarmStart()
    with profile.stage("features"):
        feat_a = model.features(image_a)
        feat_bp = features_bp if features_bp is not None else model.features(image_bp)
    pyramid = _CoarseToFine(
        model, params, warm_start, profile, feat_a, feat_bp, image_a.shape[:2], image_bp.shape[:2]
    )
    for level in (5, 4, 3, 2, 1):
        pyramid.match(level)
        if level > 1:
            pyramid.reconstruct(level)
    return pyramid.result()


class _CoarseToFine:
    """One analogy's state as it goes down the levels: latent features and fields.

    :meth:`match` runs a level's PatchMatch (docs/DESIGN.md section 2, step 2),
    :meth:`reconstruct` the next level's latent features and starting fields
    (steps 3 and 4), :meth:`result` the pixels.
    """

    def __init__(self, model: AnalogyModel, params: AnalogyParams, warm_start: WarmStart,
                 profile: Profile, feat_a: dict, feat_bp: dict, shape_a, shape_b):  # fmt: skip
        self.model = model
        self.params = params
        self.warm_start = warm_start
        self.profile = profile
        self.feat_a = feat_a
        self.feat_bp = feat_bp
        self.shape_a = shape_a
        self.shape_b = shape_b
        self.reuse_b = warm_start.latent_b is not None
        # At level 5 the latent images take the structure features unchanged.
        self.feat_ap = {5: feat_a[5]}
        self.feat_b = {5: feat_bp[5], **(warm_start.latent_b or {})}
        self.fields: dict[int, tuple[object, object]] = {}
        self.deconvolutions: dict[int, object] = {}
        self.up_ab = self.up_ba = None
        self.lbfgs_params = LBFGSParams(
            history=params.lbfgs_history,
            max_iterations=params.lbfgs_iterations,
            min_relative_decrease=params.lbfgs_min_decrease,
        )
        self.mask_options = {"kind": params.mask, "kappa": params.kappa, "tau": params.tau}

    def match(self, level: int) -> None:
        """``phi_ab`` (and ``phi_ba`` unless B is reused) of ``level``."""
        params, warm_start, profile = self.params, self.warm_start, self.profile
        iterations = params.patchmatch_iterations
        if warm_start.patchmatch_iterations is not None and level in warm_start.fields_ab:
            iterations = warm_start.patchmatch_iterations
        with profile.stage("normalize", level):
            n_a = normalize_features(self.feat_a[level])
            n_ap = normalize_features(self.feat_ap[level])
            n_b = normalize_features(self.feat_b[level])
            n_bp = normalize_features(self.feat_bp[level])
        with profile.stage("patchmatch", level):
            init_ab = _initial_field(
                warm_start.fields_ab.get(level), warm_start.fresh_ab.get(level), self.up_ab,
                self.shape_a, self.shape_b, level, self.model.device,
            )  # fmt: skip
            nnf_ab, _ = patchmatch(
                n_a, n_ap, n_b, n_bp, init_field=init_ab,
                params=params.patchmatch_params(level, self.shape_a, 0, iterations),
            )  # fmt: skip
            nnf_ba = None
            if not self.reuse_b:
                nnf_ba, _ = patchmatch(
                    n_bp, n_b, n_ap, n_a, init_field=self.up_ba,
                    params=params.patchmatch_params(level, self.shape_b, 1, iterations),
                )  # fmt: skip
        self.fields[level] = (nnf_ab, nnf_ba)

    def reconstruct(self, level: int) -> None:
        """Latent A' (and B) at ``level - 1``, and the fields upsampled to it."""
        model, params, warm_start, profile = self.model, self.params, self.warm_start, self.profile
        nnf_ab, nnf_ba = self.fields[level]
        next_level = level - 1
        alpha = params.alpha(next_level)
        # A' gets B''s look through phi_ab; B gets A's look through phi_ba.
        with profile.stage("deconvolution", level):
            solves = warm_start.solve_levels is None or level in warm_start.solve_levels
            recon_ap, self.deconvolutions[level] = _reconstruct(
                model, level, self.feat_bp, nnf_ab, self.shape_a, self.shape_b,
                warm_start.deconv_ab.get(level), params,
                self.lbfgs_params if solves else LBFGSParams(max_iterations=0), profile,
                boxes=warm_start.solve_boxes.get(level),
            )  # fmt: skip
            if not self.reuse_b:
                recon_b, _ = _reconstruct(
                    model, level, self.feat_a, nnf_ba, self.shape_b, self.shape_a, None, params,
                    self.lbfgs_params, profile,
                )  # fmt: skip
        with profile.stage("blend", level):
            feat_a, feat_bp = self.feat_a[next_level], self.feat_bp[next_level]
            mask_a = response_mask(feat_a, **self.mask_options)
            self.feat_ap[next_level] = blend(feat_a, recon_ap, mask_a, alpha=alpha)
            if not self.reuse_b:
                mask_bp = response_mask(feat_bp, **self.mask_options)
                self.feat_b[next_level] = blend(feat_bp, recon_b, mask_bp, alpha=alpha)
        with profile.stage("upsample", level):
            shape_a = vgg.level_shape(*self.shape_a, next_level)
            shape_b = vgg.level_shape(*self.shape_b, next_level)
            self.up_ab = upsample_field(nnf_ab, target_shape=shape_a, source_shape=shape_b)
            if not self.reuse_b:
                self.up_ba = upsample_field(nnf_ba, target_shape=shape_b, source_shape=shape_a)

    def result(self) -> AnalogyResult:
        """A' and B voted from the pixels, with every level's fields and solutions."""
        with self.profile.stage("pixels"):
            # relu1_1 has the image's own resolution, so the level-1 fields are the
            # pixel fields.
            nnf_ab, nnf_ba = self.fields[1]
            patch = self.params.patch_size(0)
            a_prime = self.model.pixels(vote(self.feat_bp[0], nnf_ab, patch_size=patch))
            b = None
            if nnf_ba is not None:
                b = self.model.pixels(vote(self.feat_a[0], nnf_ba, patch_size=patch))
        return AnalogyResult(
            a_prime=a_prime,
            b=b,
            nnf_ab=to_host(nnf_ab),
            nnf_ba=None if nnf_ba is None else to_host(nnf_ba),
            level_fields=self.fields,
            deconvolutions=self.deconvolutions,
            latent_b={level: self.feat_b[level] for level in (4, 3, 2, 1)},
            profile=self.profile,
        )


def _initial_field(seed, fresh, fallback, shape_a, shape_b, level: int, device: Device):
    """PatchMatch's starting field: the seed, with ``fresh`` pixels from the fallback."""
    if seed is None:
        return fallback
    seed = to_device(seed, device)
    if fresh is None:
        return seed
    if fallback is None:
        fallback = to_device(
            identity_field(vgg.level_shape(*shape_a, level), vgg.level_shape(*shape_b, level)),
            device,
        )
    xp = array_module(seed)
    fresh = to_device(fresh, device).astype(bool)[:, :, None]
    return xp.ascontiguousarray(xp.where(fresh, fallback, seed).astype(xp.int32))


def _reconstruct(model: AnalogyModel, level: int, style_features: dict[int, object], nnf,
                 structure_shape: tuple[int, int], style_shape: tuple[int, int], warm_start,
                 params: AnalogyParams, lbfgs_params: LBFGSParams,
                 profile: Profile | None = None, *, boxes=None):  # fmt: skip
    """Level L-1 features of a latent image, and the level L-2 solution behind them.

    The target is the style features at level L warped through ``nnf``; the
    deconvolution solves for a level L-2 map whose forward pass matches it,
    starting from the style features at L-2 warped through the upsampled field
    (or from ``warm_start``), and runs it forward one level. With ``boxes``, a
    warm start is solved again only in those (:mod:`diva_numba.network.regions`).
    """
    network = model.subnetworks[level]
    if warm_start is not None and lbfgs_params.max_iterations == 0:
        # Nothing new in the frame: the moved solution stands, no objective is evaluated.
        solution = to_device(warm_start, model.device)
        return network.forward_levels(solution, (level - 1,))[0], solution
    low = level - 2
    target = vote(style_features[level], nnf, patch_size=params.patch_size(level))
    if warm_start is not None:
        initial = to_device(warm_start, model.device)
    else:
        low_nnf = upsample_field(
            nnf,
            target_shape=vgg.level_shape(*structure_shape, low),
            source_shape=vgg.level_shape(*style_shape, low),
        )
        initial = vote(style_features[low], low_nnf, patch_size=params.patch_size(low))
    if warm_start is None or boxes is None:
        results = [
            deconvolve(network, target, initial, params=lbfgs_params, cuda_graph=params.cuda_graphs)
        ]
        solution = results[0].x
    else:
        solution = array_module(initial).array(initial, copy=True)
        # A box is a few evaluations on a shape of its own: a graph would not repay its
        # capture (two eager passes), so boxes launch eagerly.
        results = deconvolve_boxes(
            lambda net, goal, start: deconvolve(
                net, goal, start, params=lbfgs_params, cuda_graph=False
            ),
            network, target, solution, boxes,
        )  # fmt: skip
    for result in results:
        if profile is not None:
            height, width = result.x.shape[1:]
            flops = result.evaluations * network.flops(height, width)
            profile.add_deconvolution_flops(level, flops)
        log.debug(
            "level %d %s: L-BFGS %d iterations, %d evaluations, loss %.4g -> %.4g (%s)",
            level, result.x.shape[1:], result.iterations, result.evaluations, result.losses[0],
            result.loss, result.reason,
        )  # fmt: skip
    (features,) = network.forward_levels(solution, (level - 1,))
    return features, solution
