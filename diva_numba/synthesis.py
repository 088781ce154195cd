"""Guided synthesis at full resolution: from the working-size field to the output's pixels.

The deep analogy runs at a working size (its VGG levels, PatchMatch and
deconvolutions cost per pixel); the user wants the output at the input's own
size. This stage takes the working-size field ``phi_ab`` (A -> B') and brings it
to the output size coarse to fine, in steps of at most 2x, and every output
pixel is copied (patch-voted) from the exemplar B' at its own resolution, so
nothing is ever resampled twice (docs/DESIGN.md section 10). At every level:

1. *The prior.* Each match is weighted by how distinctive it is (how much
   better it is than the shifted matches around it:
   :func:`~diva_numba.kernels.field_prior.match_distinctiveness`), and the
   displacements are fitted to a smooth, edge-aware model under those weights
   (:func:`~diva_numba.kernels.field_prior.smooth_field`, guided by A's edges
   so that motion boundaries survive). Off by default (``fit``): measured, it
   does not pay (docs/DESIGN.md section 10).
2. *The appearance alignment*, at one level (the largest below ``fine_from``
   times the working size): A recoloured into B''s look and a dense optical
   flow between the two (:mod:`~diva_numba.alignment`). The guides below see
   B' only through the latent image B, at the working size, so they cannot
   correct the working field's bias of a working pixel or two; the flow can,
   where B' shows A's content. Its positions replace the matches they move
   by one to eight working pixels, and those matches are left out of this
   level's search (the guides would pull them back; a temporal guide, where
   given, still steers them). The frame loop turns it
   off on seeded video frames, whose matches come from the photo flow between
   frames (:func:`~diva_numba.frames.stylise_frames`).
3. *Guided PatchMatch* from the field, with a patch distance that sums
   weighted guides: (a) A against the latent image B (B''s structure in A's
   look: one appearance domain, so colours compare), (b) the current A'
   against B' (coherent strokes), (c) for video the previous output moved
   along the flow, and a robust pull towards the level's starting positions.
4. The field is upsampled smoothly (bilinear in the positions, scaled to
   B''s resolution at the next level).

Each guide is a weighted sum of squared differences, written as a dot product
of augmented channels (:mod:`~diva_numba.guide_channels`) so that the
analogy's own PatchMatch kernels (CPU and CUDA twins) run it unchanged; the
pull is bounded, so a true discontinuity is not dragged along.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from diva_numba.alignment import AlignmentParams, aligned_positions, alignment_level
from diva_numba.device import Device, array_module, to_device, to_host
from diva_numba.guide_channels import halves, pull_source, pull_target, ssd_source, ssd_target
from diva_numba.imageio import resize
from diva_numba.kernels.field_prior import (
    match_distinctiveness,
    round_positions,
    upsample_positions,
)
from diva_numba.kernels.field_smoothing import FieldPriorParams, smooth_field
from diva_numba.kernels.patchmatch import PatchMatchParams, patchmatch
from diva_numba.kernels.voting import vote
from diva_numba.temporal_guide import TemporalGuide, carried_positions, unreliable_pixels


@dataclass(frozen=True)
class SynthesisParams:
    """Knobs of the full-resolution synthesis (docs/DESIGN.md section 10).

    Attributes
    ----------
    patch_size : int
        Patch side of the guided PatchMatch and of the vote at the working
        level and every level up to ``fine_from`` times the working size.
    iterations : int
        Guided PatchMatch rounds at those levels.
    jumps : tuple of int
        Propagation distances of each round there.
    fine_from : float
        Levels at least this many times the working size (per side) are
        *fine*: the latent image and the pull carry nothing finer than the
        working size, so a local touch-up is all the search can add there,
        and these levels cost most.
    fine_patch_size, fine_iterations, fine_jumps
        Patch side, rounds and propagation distances at the fine levels.
    fine_search : {"unreliable", "everywhere"}
        Where the fine levels search on a video frame with a temporal guide:
        only the pixels the previous output does not vouch for (occluded in
        the flow, and a patch around them; elsewhere the previous field,
        carried along the flow, stands), or every pixel. Measured on a painted
        pan at 400 x 240 from 96: warping error 0.43 against 0.46, and the
        fine levels' cost where little is occluded.
    search_radius : int
        First random-search radius (pixels of the level); the field is close
        already, so the search stays local.
    structure_weight : float
        Guide (a): A against the latent image B.
    stroke_weight : float
        Guide (b): the current A' against B'. Off by default: A' is voted
        from the current field, so the guide anchors every match where it
        is, and on every case measured it cost precision (a 1-px offset
        stays uncorrected on 57% of the pixels at weight 0.1, on 1% at 0).
    prior_weight : float
        Pull towards the fitted field (0 turns the pull off; the fit still
        seeds the search unless ``fit`` is False).
    prior_period : float
        Pixels over which the pull saturates (at half the period it is at its
        largest).
    fit : bool
        Fit the field to the prior before each level's search (off: on a
        painted, deformed copy of a photo it moved the median error from 5.47
        to 5.51 px alone and 5.21 to 5.49 px before the search).
    prior : FieldPriorParams
        The edge-aware fit (spatial and range scales).
    max_step : float
        Largest size ratio between two levels.
    seed : int
        Seeds the random search.
    alignment : AlignmentParams
        The appearance alignment (``rounds=0`` turns it off). On by default:
        on a painted, deformed copy of a photo (451 x 300, working size 224)
        it brings the field's median error from 5.16 to 1.72 px (73% within
        3 px, 27% before).
    """

    patch_size: int = 5
    iterations: int = 4
    jumps: tuple[int, ...] = (2, 1)
    fine_from: float = 3.0
    fine_patch_size: int = 3
    fine_iterations: int = 1
    fine_jumps: tuple[int, ...] = (1,)
    fine_search: str = "unreliable"
    search_radius: int = 2
    structure_weight: float = 1.0
    stroke_weight: float = 0.0
    prior_weight: float = 0.1
    prior_period: float = 24.0
    fit: bool = False
    prior: FieldPriorParams = field(default_factory=FieldPriorParams)
    max_step: float = 2.0
    seed: int = 0
    alignment: AlignmentParams = field(default_factory=AlignmentParams)

    def __post_init__(self):
        for name in ("structure_weight", "stroke_weight", "prior_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.fine_search not in ("everywhere", "unreliable"):
            raise ValueError("fine_search must be 'everywhere' or 'unreliable'")
        if self.max_step <= 1:
            raise ValueError("max_step must be above 1")
        if self.prior_period <= 0:
            raise ValueError("prior_period must be positive")


@dataclass
class Synthesis:
    """Result of :func:`synthesize`.

    Attributes
    ----------
    image : uint8 NumPy array (H, W, 3)
        The structure image's look transferred at its own size.
    field : int32 array (H, W, 2)
        For each output pixel its ``(y, x)`` in the exemplar at its own size
        (device array on a CUDA run).
    levels : list of (int, int)
        The output sizes of the levels, working size first.
    """

    image: np.ndarray
    field: object
    levels: list[tuple[int, int]]


def level_sizes(
    work_shape: tuple[int, int], output_shape: tuple[int, int], *, max_step: float = 2.0
) -> list[tuple[int, int]]:
    """The (H, W) of each synthesis level: the working size, then geometric steps to the output.

    Examples
    --------
    >>> level_sizes((144, 256), (1080, 1920))
    [(144, 256), (282, 502), (553, 984), (1080, 1920)]
    """
    ratio = max(output_shape[0] / work_shape[0], output_shape[1] / work_shape[1])
    if tuple(output_shape) == tuple(work_shape):
        return [tuple(work_shape)]
    steps = max(1, math.ceil(math.log(max(ratio, 1.0)) / math.log(max_step) - 1e-9))
    sizes = [tuple(work_shape)]
    for step in range(1, steps):
        t = step / steps
        sizes.append(
            tuple(round(w * (o / w) ** t) for w, o in zip(work_shape, output_shape, strict=True))
        )
    sizes.append(tuple(output_shape))
    return sizes


def synthesize(
    structure: np.ndarray,
    exemplar: np.ndarray,
    work_field,
    latent,
    *,
    exemplar_work_shape: tuple[int, int],
    device: Device,
    params: SynthesisParams = SynthesisParams(),  # noqa: B008 (frozen)
    temporal: TemporalGuide | None = None,
    cache: ExemplarCache | None = None,
) -> Synthesis:
    """Bring a working-size field to the structure image's size and copy the exemplar through it.

    Parameters
    ----------
    structure : uint8 array (H, W, 3)
        The structure image A (a frame) at the output size.
    exemplar : uint8 array (Hb, Wb, 3)
        The exemplar B' at the resolution its pixels are copied from.
    work_field : int32 array (h, w, 2)
        ``phi_ab`` at the working size, into the exemplar at
        ``exemplar_work_shape``; host or device array.
    latent : uint8 array (hb, wb, 3) or None
        B (the exemplar's structure in A's look) at ``exemplar_work_shape``;
        None turns guide (a) off.
    exemplar_work_shape : (int, int)
        The exemplar's size in the deep analogy.
    device : Device
    params : SynthesisParams
    temporal : TemporalGuide, optional
        Guide (c), at the output size.
    cache : ExemplarCache, optional
        Keeps the exemplar's and the latent image's levels on the device from
        one call to the next (a video: one per run).

    Returns
    -------
    Synthesis
    """
    cache = cache if cache is not None else ExemplarCache()
    cache.keep_only(exemplar, latent)
    xp_field = to_device(work_field, device)
    xp = array_module(xp_field)
    positions = xp_field.astype(xp.float32)
    sizes = level_sizes(tuple(work_field.shape[:2]), structure.shape[:2], max_step=params.max_step)
    exemplar_sizes = _exemplar_sizes(exemplar_work_shape, exemplar.shape[:2], len(sizes))
    work_area = sizes[0][0] * sizes[0][1]
    field_k = None
    align_level = alignment_level(sizes, exemplar_sizes, fine_from=params.fine_from,
                                  params=params.alignment)  # fmt: skip
    for level, (shape, exemplar_shape) in enumerate(zip(sizes, exemplar_sizes, strict=True)):
        if level:
            positions = upsample_positions(
                positions,
                target_shape=shape,
                coarse_source_shape=exemplar_sizes[level - 1],
                source_shape=exemplar_shape,
            )
        fine = shape[0] * shape[1] >= params.fine_from**2 * work_area
        patch = params.fine_patch_size if fine else params.patch_size
        iterations = params.fine_iterations if fine else params.iterations
        jumps = params.fine_jumps if fine else params.jumps
        images = _LevelImages.make(structure, exemplar, latent, temporal, shape, exemplar_shape,
                                   sizes[0], device, cache)  # fmt: skip
        if images.previous is not None and temporal.field is not None:
            positions = carried_positions(
                to_device(temporal.field, device), images.reliability, positions,
                exemplar_shape, exemplar.shape[:2],
            )  # fmt: skip
        field_k = round_positions(positions, exemplar_shape)
        searched = None  # where the search may move a match (None: everywhere)
        if level == align_level:
            aligned, accepted = aligned_positions(
                resize(structure, *shape), resize(exemplar, *exemplar_shape), to_host(positions),
                work_scale=shape[1] / sizes[0][1], params=params.alignment,
            )  # fmt: skip
            positions = to_device(aligned, device)
            field_k = round_positions(positions, exemplar_shape)
            # The aligned matches are not searched: the guides would pull them back. A
            # previous output, where there is one, must still steer every match.
            searched = (~accepted).view(np.uint8) if images.previous is None else None
        if params.fit and images.has_guides(params):
            source, target = images.guides(field_k, patch, params, prior=None, cache=cache)
            weights = match_distinctiveness(*source, *target, field_k, patch_size=patch)
            positions, _ = smooth_field(positions, weights, images.structure, params=params.prior)
            field_k = round_positions(positions, exemplar_shape)
        if fine and params.fine_search == "unreliable" and images.previous is not None:
            # The previous output vouches for these matches already (it steered them at
            # the coarser levels); a fine level touches up only what it does not show.
            searched = unreliable_pixels(temporal.reliability, shape, patch)
        prior = positions if params.prior_weight > 0 else None
        if iterations and images.has_guides(params):
            source, target = images.guides(field_k, patch, params, prior=prior, cache=cache)
            field_k, _ = patchmatch(
                *source, *target, init_field=field_k,
                params=PatchMatchParams(
                    patch_size=patch, iterations=iterations, search_radius=params.search_radius,
                    seed=(params.seed * 1_000_003 + level) & 0xFFFFFFFF, jumps=jumps,
                ), refine_mask=searched,
            )  # fmt: skip
            positions = field_k.astype(xp.float32)
    image = _pixels(vote(images.exemplar, field_k, patch_size=patch))
    return Synthesis(image=image, field=field_k, levels=sizes)


def _exemplar_sizes(work_shape, final_shape, count: int) -> list[tuple[int, int]]:
    """The exemplar's size at each of ``count`` levels: geometric from its working size."""
    if count == 1:
        return [tuple(final_shape)]
    return [
        tuple(
            round(w * (f / w) ** (k / (count - 1)))
            for w, f in zip(work_shape, final_shape, strict=True)
        )
        for k in range(count)
    ]


@dataclass
class _LevelImages:
    """One level's images as float32 (3, H, W) maps on the device, 0..1.

    ``structure_guide`` is A at the working size brought to the level: the
    latent B exists only at the working size, and A compared with it must
    carry no finer detail than it does.
    """

    structure: object
    structure_guide: object
    exemplar: object
    latent: object | None
    previous: object | None
    reliability: object | None
    temporal_weight: float

    @classmethod
    def make(cls, structure, exemplar, latent, temporal, shape, exemplar_shape, work_shape,
             device, cache):  # fmt: skip
        """The level's maps; the frame's go up to the device in one transfer."""
        host = {"structure": _chw(resize(structure, *shape))}
        if latent is not None:
            host["structure_guide"] = _chw(resize(resize(structure, *work_shape), *shape))
        use_temporal = temporal is not None and temporal.weight > 0
        if use_temporal:
            host["previous"] = _chw(resize(temporal.previous, *shape))
            reliability = temporal.reliability.astype(np.float32)[:, :, None]
            host["reliability"] = resize(reliability, *shape).reshape(1, *shape)
        maps = _upload_together(host, device)
        return cls(
            structure=maps["structure"],
            structure_guide=maps.get("structure_guide"),
            exemplar=cache.get(exemplar, exemplar_shape, device),
            latent=None if latent is None else cache.get(latent, exemplar_shape, device),
            previous=maps.get("previous"),
            reliability=maps["reliability"][0] if use_temporal else None,
            temporal_weight=temporal.weight if use_temporal else 0.0,
        )

    def has_guides(self, params: SynthesisParams) -> bool:
        """True when some image guide compares A with B' (the pull alone decides nothing)."""
        return (
            (self.latent is not None and params.structure_weight > 0)
            or params.stroke_weight > 0
            or self.previous is not None
        )

    def guides(self, field_k, patch_size: int, params: SynthesisParams, *, prior, cache):
        """The source and target pairs ``((A, A'), (B, B'))`` of the guided patch distance.

        The target side depends on the exemplar alone: it is made once per level
        and kept in ``cache``.
        """
        xp = array_module(self.structure)
        use_structure = self.latent is not None and params.structure_weight > 0
        use_stroke = params.stroke_weight > 0
        use_temporal = self.previous is not None
        source = []
        if use_structure:
            source += ssd_source(self.structure_guide, params.structure_weight, None)
        if use_stroke:
            a_prime = vote(self.exemplar, field_k, patch_size=patch_size)
            source += ssd_source(a_prime, params.stroke_weight, None)
        if use_temporal:
            source += ssd_source(self.previous, self.temporal_weight, self.reliability)
        if prior is not None:
            source += pull_source(prior, params.prior_weight, params.prior_period)

        def make_target():
            target = []
            if use_structure:
                target += ssd_target(self.latent)
            if use_stroke:
                target += ssd_target(self.exemplar)
            if use_temporal:
                target += ssd_target(self.exemplar)
            if prior is not None:
                target += pull_target(self.exemplar.shape[1:], params.prior_period, xp)
            return halves(target, xp)

        key = ("targets", use_structure, use_stroke, use_temporal, prior is not None,
               params.prior_period)  # fmt: skip
        images = (self.exemplar, self.latent)
        return halves(source, xp), cache.memo(key, self.exemplar.shape[1:], images, make_target)


class ExemplarCache:
    """The exemplar's (and the latent image's) levels as device maps, made once.

    Entries are keyed by the image object and the level's size; an image that
    is no longer passed (B refreshed) drops out at the next call.
    """

    def __init__(self):
        self._maps: dict[tuple[int, tuple[int, int]], tuple[np.ndarray, object]] = {}
        self._memos: dict[tuple, tuple[tuple, object]] = {}

    def get(self, image: np.ndarray, shape: tuple[int, int], device: Device):
        key = (id(image), tuple(shape))
        held = self._maps.get(key)
        if held is None or held[0] is not image:
            held = (image, to_device(_chw(resize(image, *shape)), device))
            self._maps[key] = held
        return held[1]

    def memo(self, key, shape, images, make):
        """``make()``, kept while ``images`` (the objects it was made from) stay the same."""
        full_key = (key, tuple(shape), tuple(id(image) for image in images))
        held = self._memos.get(full_key)
        if held is None or any(a is not b for a, b in zip(held[0], images, strict=True)):
            held = (images, make())
            self._memos[full_key] = held
        return held[1]

    def keep_only(self, *images) -> None:
        """Forget every entry but those of ``images``."""
        keep = {id(image) for image in images if image is not None}
        self._maps = {key: held for key, held in self._maps.items() if key[0] in keep}
        live = {id(held[1]) for held in self._maps.values()} | {id(None)}
        self._memos = {key: held for key, held in self._memos.items() if set(key[2]) <= live}


def _upload_together(host: dict[str, np.ndarray], device: Device) -> dict:
    """The (C, H, W) float32 maps of ``host`` on ``device`` in one transfer, as views."""
    packed = to_device(np.concatenate(list(host.values()), axis=0), device)
    maps, start = {}, 0
    for name, value in host.items():
        maps[name] = packed[start : start + value.shape[0]]
        start += value.shape[0]
    return maps


def _chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)


def _pixels(chw) -> np.ndarray:
    return np.clip(np.rint(to_host(chw).transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
