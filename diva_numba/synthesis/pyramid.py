"""Guided synthesis at full resolution: from the working-size field to the output's pixels.

The deep analogy runs at a working size (its VGG levels, PatchMatch and
deconvolutions cost per pixel); the user wants the output at the input's own
size. This stage takes the working-size field ``phi_ab`` (A -> B') and brings it
to the output size coarse to fine, in steps of at most 2x, and every output
pixel is copied (patch-voted) from the exemplar B' at its own resolution, so
nothing is ever resampled twice (docs/DESIGN.md section 10). At every scale:

1. *The prior.* Each match is weighted by how distinctive it is (how much
   better it is than the shifted matches around it:
   :func:`~diva_numba.kernels.field_prior.match_distinctiveness`), and the
   displacements are fitted to a smooth, edge-aware model under those weights
   (:func:`~diva_numba.kernels.field_prior.smooth_field`, guided by A's edges
   so that motion boundaries survive). Off by default (``fit``): measured, it
   does not pay (docs/DESIGN.md section 10).
2. *The appearance alignment*, at one scale (the largest below ``fine_from``
   times the working size): A recoloured into B''s look and a dense optical
   flow between the two (:mod:`~diva_numba.synthesis.alignment`). The guides below see
   B' only through the latent image B, at the working size, so they cannot
   correct the working field's bias of a working pixel or two; the flow can,
   where B' shows A's content. Its positions replace the matches they move
   by one to eight working pixels, and those matches are left out of this
   scale's search (the guides would pull them back; a temporal guide, where
   given, still steers them). The frame loop turns it
   off on seeded video frames, whose matches come from the photo flow between
   frames (:func:`~diva_numba.run.frame_loop.stylise_frames`).
3. *Guided PatchMatch* from the field, with a patch distance that sums
   weighted guides: (a) A against the latent image B (B''s structure in A's
   look: one appearance domain, so colours compare), (b) the current A'
   against B' (coherent strokes), (c) for video the previous output moved
   along the flow, and a robust pull towards the scale's starting positions.
   On a video frame each scale starts from the previous output's field where
   the flow is trusted (:mod:`~diva_numba.synthesis.temporal_guide`) and searches only
   the rest, in boxes around it (:func:`~diva_numba.synthesis.scales.search_scale`),
   but for a coarse last scale, which searches everywhere: a seeded frame's
   synthesis costs what is new in it, not the output's size.
4. The field is upsampled smoothly (bilinear in the positions, scaled to
   B''s resolution at the next scale).

Each guide is a weighted sum of squared differences, written as a dot product
of augmented channels (:mod:`~diva_numba.synthesis.guide_channels`) so that the
analogy's own PatchMatch kernels (CPU and CUDA twins) run it unchanged; the
pull is bounded, so a true discontinuity is not dragged along.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from diva_numba.gpu.device import Device, array_module, to_device, to_host
from diva_numba.images import resize
from diva_numba.kernels.field_prior import (
    carry_positions,
    match_distinctiveness,
    round_positions,
    upsample_positions,
)
from diva_numba.kernels.field_smoothing import FieldPriorParams, smooth_field
from diva_numba.kernels.patchmatch import PatchMatchParams
from diva_numba.kernels.voting import vote
from diva_numba.synthesis.alignment import AlignmentParams, aligned_positions, alignment_scale
from diva_numba.synthesis.scales import (
    ExemplarCache,
    ScaleImages,
    carried_pixels,
    scale_map,
    scale_reliability,
    search_scale,
)
from diva_numba.synthesis.temporal_guide import TemporalGuide, unreliable_pixels


@dataclass(frozen=True)
class SynthesisParams:
    """Knobs of the full-resolution synthesis (docs/DESIGN.md section 10).

    Attributes
    ----------
    patch_size : int
        Patch side of the guided PatchMatch and of the vote at the working
        scale and every scale up to ``fine_from`` times the working size.
    iterations : int
        Guided PatchMatch rounds at those scales.
    jumps : tuple of int
        Propagation distances of each round there.
    fine_from : float
        Scales at least this many times the working size (per side) are
        *fine*: the latent image and the pull carry nothing finer than the
        working size, so a local touch-up is all the search can add there,
        and these scales cost most.
    fine_patch_size, fine_iterations, fine_jumps
        Patch side, rounds and propagation distances at the fine scales.
    fine_search : {"unreliable", "everywhere"}
        Where the fine scales search on a video frame with a temporal guide:
        only the pixels the previous output does not vouch for (occluded in
        the flow, and the patch radius around them; elsewhere the previous field,
        carried along the flow, stands), or every pixel. Measured on a painted
        pan at 400 x 240 from 96: warping error 0.43 against 0.46, and the
        fine scales' cost where little is occluded.
    coarse_search : {"unreliable", "everywhere"}
        The same at the other scales that a finer scale follows, on a frame
        whose previous field was carried: each starts from that field where the
        flow is trusted, and the next scale starts from it again there, so a
        search of those pixels changes nothing but their untrusted neighbours
        (measured on a painted pan and a disocclusion, 512 x 288 from 128: the
        same Lab and warping error to two decimals), and costs most of the
        frame: at 1080p from 256, 1.5 s of a seeded frame's synthesis, 0.2 s
        without. A coarse *last* scale (an output under three times the
        working size) searches everywhere: there the carried field, moved by
        whole pixels, would stand still under motion slower than a pixel a
        frame (a pan of 0.3 x 0.45 px, 256 x 144 at 256: Lab to the ideal 6.9
        against 4.8), though it flickers less on faster motion (warping error
        0.50 against 0.85 on a disocclusion).
    search_radius : int
        First random-search radius (pixels of the scale); the field is close
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
        Fit the field to the prior before each scale's search (off: on a
        painted, deformed copy of a photo it moved the median error from 5.47
        to 5.51 px alone and 5.21 to 5.49 px before the search).
    prior : FieldPriorParams
        The edge-aware fit (spatial and range scales).
    max_step : float
        Largest size ratio between two scales.
    seed : int
        Seeds the random search.
    vote_patch_size : int or None
        Patch side of the last scale's vote, which makes the output's pixels:
        1 (the default) copies each pixel's own match from the exemplar, so
        that where neighbouring matches disagree their pixels are not averaged
        into a wash of the painting's strokes; None votes with the scale's own
        patch (each pixel the mean of what the patches covering it point to).
        Measured on the bundled example (analogy mode): texture retention 0.91
        against 0.82, warping error 2.45 against 1.76 (the input's 2.19;
        docs/DESIGN.md section 10).
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
    coarse_search: str = "unreliable"
    search_radius: int = 2
    structure_weight: float = 1.0
    stroke_weight: float = 0.0
    prior_weight: float = 0.1
    prior_period: float = 24.0
    fit: bool = False
    prior: FieldPriorParams = field(default_factory=FieldPriorParams)
    max_step: float = 2.0
    seed: int = 0
    vote_patch_size: int | None = 1
    alignment: AlignmentParams = field(default_factory=AlignmentParams)

    def __post_init__(self):
        for name in ("structure_weight", "stroke_weight", "prior_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("fine_search", "coarse_search"):
            if getattr(self, name) not in ("everywhere", "unreliable"):
                raise ValueError(f"{name} must be 'everywhere' or 'unreliable'")
        if self.max_step <= 1:
            raise ValueError("max_step must be above 1")
        if self.prior_period <= 0:
            raise ValueError("prior_period must be positive")
        if self.vote_patch_size is not None and self.vote_patch_size not in (1, 3, 5):
            raise ValueError("vote_patch_size must be None, 1, 3 or 5")


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
    scales : list of (int, int)
        The output sizes of the scales, working size first.
    offsets : float32 array (H, W, 2) or None
        The ``(y, x)`` fractions of an exemplar pixel by which the image was
        sampled off ``field`` (0 where it copied the match), None where it
        copied every match: with ``field``, where each output pixel's content
        lies in the exemplar.
    """

    image: np.ndarray
    field: object
    scales: list[tuple[int, int]]
    offsets: np.ndarray | None = None


def scale_sizes(
    work_shape: tuple[int, int], output_shape: tuple[int, int], *, max_step: float = 2.0
) -> list[tuple[int, int]]:
    """The (H, W) of each synthesis scale: the working size, then geometric steps to the output.

    Examples
    --------
    >>> scale_sizes((144, 256), (1080, 1920))
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
        Keeps the exemplar's and the latent image's scales on the device from
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
    sizes = scale_sizes(tuple(work_field.shape[:2]), structure.shape[:2], max_step=params.max_step)
    exemplar_sizes = _exemplar_sizes(exemplar_work_shape, exemplar.shape[:2], len(sizes))
    field_k = None
    align_scale = alignment_scale(sizes, exemplar_sizes, fine_from=params.fine_from,
                                  params=params.alignment)  # fmt: skip
    work_structure = resize(structure, *sizes[0])
    for scale, (shape, exemplar_shape) in enumerate(zip(sizes, exemplar_sizes, strict=True)):
        if scale:
            positions = upsample_positions(
                positions,
                target_shape=shape,
                coarse_source_shape=exemplar_sizes[scale - 1],
                source_shape=exemplar_shape,
            )
        fine = is_fine_scale(shape, sizes[0], params.fine_from)
        patch = params.fine_patch_size if fine else params.patch_size
        iterations = params.fine_iterations if fine else params.iterations
        jumps = params.fine_jumps if fine else params.jumps
        last = scale == len(sizes) - 1
        reliability, searched = _video_scale(temporal, shape, patch, fine, last, params)
        carried = None
        images = ScaleImages.make(
            structure, exemplar, latent, temporal, shape, exemplar_shape, work_structure,
            device, cache, reliability=reliability, searched=searched, with_structure=params.fit,
        )  # fmt: skip
        if images.has("previous") and temporal.field is not None:
            positions = carry_positions(
                positions, to_device(temporal.field, device),
                carried_pixels(images.frame["reliability"], images.frame.get("carry")),
                source_shape=exemplar_shape, field_source_shape=exemplar.shape[:2],
            )  # fmt: skip
        field_k = round_positions(positions, exemplar_shape)
        moves_carried = images.has("previous") and temporal.field is not None
        if last and moves_carried and temporal.offsets is not None:
            # What the search leaves where it was carried moves by its fraction of a pixel;
            # the caller gives fractions only where its flow is precise to them.
            carried = to_host(field_k).copy()
        if scale == align_scale:
            aligned, accepted = aligned_positions(
                resize(structure, *shape), resize(exemplar, *exemplar_shape), to_host(positions),
                work_scale=shape[1] / sizes[0][1], params=params.alignment,
            )  # fmt: skip
            positions = to_device(aligned, device)
            field_k = round_positions(positions, exemplar_shape)
            # The aligned matches are not searched: the guides would pull them back. A
            # previous output, where there is one, must still steer every match.
            if not images.has("previous"):
                searched = (~accepted).view(np.uint8)
        if params.fit and images.has_guides(params):
            source = images.source_guides(field_k, patch, params, prior=None)
            target = images.target_guides(params, pull=False, cache=cache)
            weights = match_distinctiveness(*source, *target, field_k, patch_size=patch)
            structure_map = images.map("structure")
            positions, _ = smooth_field(positions, weights, structure_map, params=params.prior)
            field_k = round_positions(positions, exemplar_shape)
        if iterations and images.has_guides(params):
            search = PatchMatchParams(
                patch_size=patch, iterations=iterations, search_radius=params.search_radius,
                seed=(params.seed * 1_000_003 + scale) & 0xFFFFFFFF, jumps=jumps,
            )  # fmt: skip
            prior = positions if params.prior_weight > 0 else None
            field_k = search_scale(images, field_k, prior, searched=searched, params=params,
                                   search=search, cache=cache)  # fmt: skip
            positions = field_k.astype(xp.float32)
    offsets = None
    if carried is not None and reliability is not None and params.vote_patch_size == 1:
        carry = None if temporal.carry is None else scale_map(temporal.carry, reliability.shape)
        trusted = carried_pixels(reliability, carry)  # on the host: no download
        image, offsets = _sampled(exemplar, to_host(field_k), carried, trusted, temporal.offsets)
    else:
        image = _pixels(vote(images.exemplar, field_k, patch_size=params.vote_patch_size or patch))
    return Synthesis(image=image, field=field_k, scales=sizes, offsets=offsets)


def is_fine_scale(shape: tuple[int, int], work_shape: tuple[int, int], fine_from: float) -> bool:
    """Whether a scale of ``shape`` is a fine one: at least ``fine_from`` times the working
    size (:attr:`SynthesisParams.fine_from`), where the patches are smaller and the field
    is touched up; a flow from the working size is not precise to a fraction of a pixel
    there (the anchor frames refine it at the output size before giving fractions)."""
    return shape[0] * shape[1] >= fine_from**2 * work_shape[0] * work_shape[1]


def _sampled(exemplar: np.ndarray, field: np.ndarray, carried: np.ndarray, trusted: np.ndarray,
             offsets) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The exemplar (uint8, at its own size) through the last field (host), each trusted
    match the search left where it was carried moved by its fraction of a pixel
    (bicubic, which is exact at whole pixels); the others copied. Returns the image and
    the fractions it was sampled at (float32 (H, W, 2), 0 where copied).
    """
    kept = (field == carried).all(axis=-1) & trusted
    applied = np.where(kept[..., None], to_host(offsets), np.float32(0)).astype(np.float32)
    positions = field.astype(np.float32) + applied
    image = cv2.remap(exemplar, positions[..., 1], positions[..., 0], cv2.INTER_CUBIC,
                      borderMode=cv2.BORDER_REFLECT)  # fmt: skip
    return image, applied


def _video_scale(temporal, shape, patch_size: int, fine: bool, last: bool,
                 params: SynthesisParams):  # fmt: skip
    """A video frame's reliability at a scale (host (H, W)) and the pixels it searches
    (uint8 (H, W); None: all), or ``(None, None)`` without a temporal guide.

    The previous output vouches for the matches where the flow is trusted: a
    fine scale starts there from the previous output's field or from the
    coarser scale's, which the previous output steered, and touches up only
    the rest. A coarse scale starts from the previous output's field where it
    was carried; when a finer scale follows, that scale starts from it again
    there, so the coarse scale too need search only the rest. A coarse last
    scale searches everywhere (``coarse_search``).
    """
    if temporal is None or temporal.weight == 0:
        return None, None
    reliability = scale_reliability(temporal, shape)
    if fine:
        unreliable_only = params.fine_search == "unreliable"
    else:
        # A coarse last scale searches everywhere: a field moved by whole pixels would
        # stand still under slow motion. One moved with its fractions of a pixel (carried
        # from an anchor, the fractions sampled at the last scale) does not.
        follows = not last or temporal.offsets is not None
        unreliable_only = (
            params.coarse_search == "unreliable" and temporal.field is not None and follows
        )
    searched = unreliable_pixels(reliability, patch_size) if unreliable_only else None
    return reliability, searched


def _exemplar_sizes(work_shape, final_shape, count: int) -> list[tuple[int, int]]:
    """The exemplar's size at each of ``count`` scales: geometric from its working size."""
    if count == 1:
        return [tuple(final_shape)]
    return [
        tuple(
            round(w * (f / w) ** (k / (count - 1)))
            for w, f in zip(work_shape, final_shape, strict=True)
        )
        for k in range(count)
    ]


def _pixels(chw) -> np.ndarray:
    """uint8 (H, W, 3) of a float (3, H, W) map in 0..1: ``rint(255 v)``, saturated.

    OpenCV converts each plane without NumPy's full-size temporaries, each of
    which is fresh memory at 1080p (85 ms against 8, BENCHMARKS.md).
    """
    return cv2.merge([cv2.convertScaleAbs(plane, alpha=255) for plane in to_host(chw)])
