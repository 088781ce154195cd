"""One synthesis scale's images, its guides, and its guided search (docs/DESIGN.md section 10).

:class:`ScaleImages` holds a scale's maps on the device; :meth:`ScaleImages.source_guides`
and :meth:`ScaleImages.target_guides` turn them into the two sides of the guided
patch distance (:mod:`~diva_numba.synthesis.guide_channels`); :func:`search_scale` runs the
analogy's PatchMatch with them, over the whole scale or, when few pixels are
searched (a video frame, whose previous output vouches for the rest), over boxes
around those pixels alone, so that the cost follows what changed and not the
output's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diva_numba.gpu.device import Device, array_module, to_device, upload_together
from diva_numba.images import resize
from diva_numba.kernels.patchmatch import PatchMatchParams, patchmatch
from diva_numba.kernels.voting import vote
from diva_numba.network.regions import marked_boxes
from diva_numba.synthesis.guide_channels import (
    halves,
    pull_source,
    pull_target,
    ssd_source,
    ssd_target,
)
from diva_numba.synthesis.temporal_guide import TRUSTED

#: Tile side, in pixels of a scale, of the boxes searched around the searched pixels.
SEARCH_TILE = 32

#: Above this share of a scale in boxes, the scale is searched in one piece.
MAX_BOX_SHARE = 0.5


@dataclass
class ScaleImages:
    """One scale's images on the device: the frame's as they were made (uint8 (H, W, 3)
    images, float32 and uint8 (H, W) masks), the exemplar's as float32 (3, Hb, Wb)
    maps, 0..1.

    The frame's images become float maps only where they are read (:meth:`map`):
    at a fine scale of a video frame, that is a few boxes.
    """

    frame: dict
    exemplar: object
    latent: object | None
    temporal_weight: float

    @classmethod
    def make(cls, structure, exemplar, latent, temporal, shape, exemplar_shape, work_structure,
             device, cache, *, reliability=None, searched=None,
             with_structure=False):  # fmt: skip
        """The scale's maps; the frame's go up to the device in one transfer.

        The frame's: ``structure_guide``, ``work_structure`` (A at the working
        size) brought to the scale: the latent B exists only at the working
        size, and A compared with it must carry no finer detail than it does
        (with a latent image); ``previous`` and ``reliability``, guide (c) and
        its per-pixel weight (with a temporal guide; ``reliability`` is the
        latter at the scale's size if the caller has it); ``searched``, the host
        mask given; ``structure``, A at the scale (``with_structure``).
        """
        host = {}
        if with_structure:
            host["structure"] = resize(structure, *shape)
        if latent is not None:
            host["structure_guide"] = resize(work_structure, *shape)
        use_temporal = temporal is not None and temporal.weight > 0
        if use_temporal:
            host["previous"] = resize(temporal.previous, *shape)
            host["reliability"] = (
                scale_reliability(temporal, shape) if reliability is None else reliability
            )
            if temporal.carry is not None:
                host["carry"] = scale_map(temporal.carry, shape)
        if searched is not None:
            host["searched"] = searched
        return cls(
            frame=upload_together(host, device),
            exemplar=cache.get(exemplar, exemplar_shape, device),
            latent=None if latent is None else cache.get(latent, exemplar_shape, device),
            temporal_weight=temporal.weight if use_temporal else 0.0,
        )

    def has(self, name: str) -> bool:
        return name in self.frame

    def map(self, name: str, box: tuple[int, int, int, int] | None = None):
        """Frame image ``name`` as a float32 (3, H, W) map, 0..1, or a float mask as is;
        cut to ``box`` = ``(top, bottom, left, right)`` if given."""
        value = self.frame[name]
        if box is not None:
            top, bottom, left, right = box
            value = value[top:bottom, left:right]
        if value.ndim == 2:
            return value
        xp = array_module(value)
        return xp.ascontiguousarray(value.transpose(2, 0, 1)).astype(xp.float32) * xp.float32(
            1 / 255
        )

    def has_guides(self, params) -> bool:
        """True when some image guide compares A with B' (the pull alone decides nothing)."""
        return (
            (self.latent is not None and params.structure_weight > 0)
            or params.stroke_weight > 0
            or self.has("previous")
        )

    def source_guides(self, field_k, patch_size: int, params, *, prior, box=None) -> tuple:
        """The source pair ``(A, A')`` of the guided patch distance, over ``box`` if given.

        Parameters
        ----------
        field_k : int32 array (H, W, 2)
            The field over the same pixels (voted into the current A' for the
            stroke guide).
        patch_size : int
        params : SynthesisParams
        prior : float32 array (H, W, 2) or None
            Positions the pull draws towards, over the same pixels; None leaves
            the pull out.
        box : (top, bottom, left, right), optional
        """
        xp = array_module(self.exemplar)
        source = []
        if self.latent is not None and params.structure_weight > 0:
            source += ssd_source(self.map("structure_guide", box), params.structure_weight, None)
        if params.stroke_weight > 0:
            a_prime = vote(self.exemplar, field_k, patch_size=patch_size)
            source += ssd_source(a_prime, params.stroke_weight, None)
        if self.has("previous"):
            reliability = self.map("reliability", box)
            source += ssd_source(self.map("previous", box), self.temporal_weight, reliability)
        if prior is not None:
            source += pull_source(prior, params.prior_weight, params.prior_period)
        return halves(source, xp)

    def target_guides(self, params, *, pull: bool, cache) -> tuple:
        """The target pair ``(B, B')``, in the order of :meth:`source_guides`.

        It depends on the exemplar alone: made once per scale size and kept in ``cache``.
        """
        xp = array_module(self.exemplar)
        use_structure = self.latent is not None and params.structure_weight > 0
        use_stroke = params.stroke_weight > 0
        use_temporal = self.has("previous")

        def make():
            target = []
            if use_structure:
                target += ssd_target(self.latent)
            if use_stroke:
                target += ssd_target(self.exemplar)
            if use_temporal:
                target += ssd_target(self.exemplar)
            if pull:
                target += pull_target(self.exemplar.shape[1:], params.prior_period, xp)
            return halves(target, xp)

        key = ("targets", use_structure, use_stroke, use_temporal, pull, params.prior_period)
        images = (self.exemplar, self.latent)
        return cache.memo(key, self.exemplar.shape[1:], images, make)


def search_scale(images: ScaleImages, field_k, prior, *, searched, params, search, cache):
    """The scale's guided PatchMatch from ``field_k``: over the whole scale, or over boxes.

    Parameters
    ----------
    images : ScaleImages
    field_k : int32 array (H, W, 2)
        The starting matches, inside the exemplar's scale.
    prior : float32 array (H, W, 2) or None
        Positions the pull draws towards.
    searched : uint8 host array (H, W) or None
        Where a match may move (None: everywhere); the device copy the scale's
        images carry is used if they have one (:meth:`ScaleImages.make`). When
        its boxes cover under :data:`MAX_BOX_SHARE` of the scale, only they are
        searched: the tiles holding a mark, merged into rectangles, each grown
        by a margin of frozen pixels (the patch radius and the longest jump) so
        that every searched pixel's patch and propagation stay inside its box.
        Boxes are searched one after the other; where two abut, the second sees
        the first's result.
    params : SynthesisParams
    search : PatchMatchParams
    cache : ExemplarCache

    Returns
    -------
    int32 array (H, W, 2)
        The new field (``field_k`` may be updated in place).
    """
    target = images.target_guides(params, pull=prior is not None, cache=cache)
    xp = array_module(field_k)
    # The scale's images carry a video frame's mask; the appearance alignment's comes here.
    mask = images.frame["searched"] if images.has("searched") else searched
    if mask is not None:
        mask = xp.asarray(mask)
    boxes = _search_boxes(searched, search)
    if boxes is None:
        source = images.source_guides(field_k, search.patch_size, params, prior=prior)
        field, _ = patchmatch(*source, *target, init_field=field_k, params=search,
                              refine_mask=mask, score_frozen=False)  # fmt: skip
        return field
    for keep, grown in boxes:
        top, bottom, left, right = grown
        inner = (slice(keep[0] - top, keep[1] - top), slice(keep[2] - left, keep[3] - left))
        box_mask = xp.zeros((bottom - top, right - left), dtype=xp.uint8)
        box_mask[inner] = mask[keep[0] : keep[1], keep[2] : keep[3]]
        start = xp.ascontiguousarray(field_k[top:bottom, left:right])
        source = images.source_guides(
            start, search.patch_size, params, box=grown,
            prior=None if prior is None else prior[top:bottom, left:right],
        )  # fmt: skip
        found, _ = patchmatch(*source, *target, init_field=start, params=search,
                              refine_mask=box_mask, score_frozen=False)  # fmt: skip
        field_k[keep[0] : keep[1], keep[2] : keep[3]] = found[inner]
    return field_k


def _search_boxes(searched, search: PatchMatchParams):
    """``(keep, grown)`` boxes around the marks of ``searched``, or None for the whole scale."""
    if searched is None:
        return None
    height, width = searched.shape
    margin = search.patch_size // 2 + max(search.jumps, default=0)
    boxes = []
    for top, bottom, left, right in marked_boxes(searched, tile=SEARCH_TILE):
        grown = (max(0, top - margin), min(height, bottom + margin),
                 max(0, left - margin), min(width, right + margin))  # fmt: skip
        boxes.append(((top, bottom, left, right), grown))
    area = sum((b - t) * (r - l) for _, (t, b, l, r) in boxes)
    return boxes if area <= MAX_BOX_SHARE * height * width else None


class ExemplarCache:
    """The exemplar's (and the latent image's) scales as device maps, made once.

    Entries are keyed by the image object and the scale's size; an image that
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


def scale_reliability(temporal, shape) -> np.ndarray:
    """The temporal guide's reliability at a scale's ``shape``, float32 (H, W)."""
    return scale_map(temporal.reliability, shape)


def scale_map(values: np.ndarray, shape) -> np.ndarray:
    """A float (H, W) map of the output's size at a scale's ``shape``, float32."""
    return resize(values.astype(np.float32)[:, :, None], *shape).reshape(shape)


def carried_pixels(reliability, carry=None):
    """Where a video frame's scale starts from the earlier output's field (bool (H, W)):
    the flow trusted and, where the guide says so, carried (:attr:`TemporalGuide.carry`).

    ``reliability`` and ``carry`` are the scale's float (H, W) maps, both on the
    host or both on the device; ``carry`` None carries wherever the flow is trusted.
    """
    trusted = reliability >= TRUSTED
    if carry is not None:
        trusted &= carry >= TRUSTED
    return trusted


def _chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)
