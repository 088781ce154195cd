"""Slow, obvious NumPy references for the kernels and the network, each written once.

The kernel tests (CPU twins here, CUDA twins in ``tests/cuda`` against the CPU
ones) and the network and feature tests compare against these. Each is the
plainest version of its definition: loops over pixels and offsets, or one NumPy
expression, in float64 unless the kernel's own float32 arithmetic is the point.
Shapes: ``(C, H, W)`` feature maps, ``(H, W, 2)`` int fields of ``(y, x)`` matches
and ``(H, W, 2)`` float flows of ``(dx, dy)``.
"""

import math
from fractions import Fraction

import numpy as np

from diva_numba.models import vgg

# --- fields ----------------------------------------------------------------------------


def clamp_field(field, bounds):
    """``(H, W, 2)`` field -> int32 ``(H, W, 2)``: every match clamped into a ``bounds`` map."""
    return np.stack(
        [np.clip(field[..., 0], 0, bounds[0] - 1), np.clip(field[..., 1], 0, bounds[1] - 1)],
        axis=-1,
    ).astype(np.int32)


# --- patch distance and PatchMatch (patch_distance.py, patchmatch.py) -------------------


def patch_distance(a, a_prime, b, b_prime, field, patch_size):
    """d(p, field[p]) by the definition, one pixel and one offset at a time, in float64.

    ``a, a_prime``: ``(C, Ha, Wa)``; ``b, b_prime``: ``(C, Hb, Wb)``; ``field``:
    ``(Ha, Wa, 2)`` matches in B, clamped. Returns float64 ``(Ha, Wa)``: minus the mean,
    over the offsets inside both maps, of ``a.b + a'.b'`` at ``p + o`` and ``q + o``.
    """
    r = patch_size // 2
    _, source_height, source_width = a.shape
    _, target_height, target_width = b.shape
    out = np.empty((source_height, source_width))
    for py in range(source_height):
        for px in range(source_width):
            qy = min(max(field[py, px, 0], 0), target_height - 1)
            qx = min(max(field[py, px, 1], 0), target_width - 1)
            total = 0.0
            valid = 0
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    sy, sx, ty, tx = py + dy, px + dx, qy + dy, qx + dx
                    if not (0 <= sy < source_height and 0 <= sx < source_width):
                        continue
                    if not (0 <= ty < target_height and 0 <= tx < target_width):
                        continue
                    total += np.dot(a[:, sy, sx].astype(np.float64), b[:, ty, tx])
                    total += np.dot(a_prime[:, sy, sx].astype(np.float64), b_prime[:, ty, tx])
                    valid += 1
            out[py, px] = -total / valid
    return out


def best_patch_distance(a, a_prime, b, b_prime, patch_size):
    """The smallest distance over every position of B, for every pixel of A (float64).

    Shapes as in `patch_distance`; returns ``(Ha, Wa)``. For each patch offset o, one
    matrix product gives the dot products of all pixel pairs (p + o, q + o); features
    outside a map are zero and do not count.
    """
    r = patch_size // 2

    def shifted(features, features_prime, dy, dx):
        """Rows: the 2C-vector at (p + o) of every pixel p, and whether it is inside."""
        channels, height, width = features.shape
        both = np.concatenate([features, features_prime]).astype(np.float64)
        padded = np.pad(both, ((0, 0), (r, r), (r, r)))
        inside = np.pad(np.ones((height, width)), r)
        window = (slice(r + dy, r + dy + height), slice(r + dx, r + dx + width))
        vectors = padded[:, window[0], window[1]].reshape(2 * channels, -1).T
        return vectors, inside[window].ravel()

    total = count = 0.0
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            source, source_inside = shifted(a, a_prime, dy, dx)
            target, target_inside = shifted(b, b_prime, dy, dx)
            total = total + source @ target.T
            count = count + np.outer(source_inside, target_inside)
    return (-total / count).min(axis=1).reshape(a.shape[1:])


# --- voting (voting.py) -----------------------------------------------------------------


def vote(source, field, patch_size):
    """Patch-average voting: ``source`` ``(C, Hs, Ws)``, ``field`` ``(H, W, 2)`` -> ``(C, H, W)``.

    In float64. Pixel p averages ``source[field[q] - (q - p)]`` over the neighbours q of its patch
    whose vote lands inside the source; with none, it takes its own clamped match.
    """
    channels, source_height, source_width = source.shape
    height, width = field.shape[:2]
    half = patch_size // 2
    out = np.empty((channels, height, width), dtype=np.float64)
    for y in range(height):
        for x in range(width):
            received = []
            for oy in range(-half, half + 1):
                for ox in range(-half, half + 1):
                    qy, qx = y + oy, x + ox
                    if not (0 <= qy < height and 0 <= qx < width):
                        continue
                    sy, sx = field[qy, qx, 0] - oy, field[qy, qx, 1] - ox
                    if 0 <= sy < source_height and 0 <= sx < source_width:
                        received.append(source[:, sy, sx])
            if not received:
                sy = min(max(field[y, x, 0], 0), source_height - 1)
                sx = min(max(field[y, x, 1], 0), source_width - 1)
                received.append(source[:, sy, sx])
            out[:, y, x] = np.mean(np.array(received, dtype=np.float64), axis=0)
    return out


# --- NNF resampling (nnf_resample.py), in exact rational arithmetic ---------------------

HALF = Fraction(1, 2)


def _nearest_cell(position, size, cell_count):
    """Cell of a ``cell_count`` axis whose centre is nearest to pixel ``position`` of ``size``."""
    return math.floor((position + HALF) * Fraction(cell_count, size))


def _clamp(value, size):
    return min(max(value, 0), size - 1)


def _moved(y, x, flow, shape):
    """(y, x, inside) after the flow, exactly; NaN vectors do not move and are outside."""
    height, width = shape
    fy, fx = _nearest_cell(y, height, flow.shape[0]), _nearest_cell(x, width, flow.shape[1])
    dx, dy = flow[fy, fx]
    if not (np.isfinite(dx) and np.isfinite(dy)):
        return y, x, False
    new_y = math.floor(y + Fraction(float(dy)) * Fraction(height, flow.shape[0]) + HALF)
    new_x = math.floor(x + Fraction(float(dx)) * Fraction(width, flow.shape[1]) + HALF)
    return new_y, new_x, 0 <= new_y < height and 0 <= new_x < width


def upsample_field(field, target_shape, source_shape):
    """``(h, w, 2)`` field -> int32 ``(*target_shape, 2)`` with matches in ``source_shape``.

    Each pixel takes the offset (match minus position) of its nearest old cell,
    scaled by the size ratio and rounded half up, then clamped into the source.
    """
    old_height, old_width = field.shape[:2]
    height, width = target_shape
    out = np.empty((height, width, 2), dtype=np.int32)
    for y in range(height):
        for x in range(width):
            py, px = _nearest_cell(y, height, old_height), _nearest_cell(x, width, old_width)
            offset_y = (int(field[py, px, 0]) - py) * Fraction(height, old_height)
            offset_x = (int(field[py, px, 1]) - px) * Fraction(width, old_width)
            out[y, x, 0] = _clamp(y + math.floor(offset_y + HALF), source_shape[0])
            out[y, x, 1] = _clamp(x + math.floor(offset_x + HALF), source_shape[1])
    return out


def pull_field(field, flow, source_shape):
    """Field ``(H, W, 2)`` pulled along ``flow`` (any grid) -> (field, uint8 invalid ``(H, W)``).

    Pixel p takes the match of the pixel the flow moves it to (clamped into the
    field's grid, then into ``source_shape``); ``invalid`` marks moves leaving the grid.
    """
    height, width = field.shape[:2]
    out = np.empty_like(field)
    invalid = np.empty((height, width), dtype=np.uint8)
    for y in range(height):
        for x in range(width):
            qy, qx, inside = _moved(y, x, flow, (height, width))
            match = field[_clamp(qy, height), _clamp(qx, width)]
            out[y, x] = _clamp(match[0], source_shape[0]), _clamp(match[1], source_shape[1])
            invalid[y, x] = not inside
    return out, invalid


# --- per-pixel channel maths (normalize.py) ---------------------------------------------


def normalize_features(features, eps):
    """``(C, H, W)`` -> float64 ``(C, H, W)``: each pixel's vector over (its L2 norm + eps)."""
    out = np.empty(features.shape, dtype=np.float64)
    for y in range(features.shape[1]):
        for x in range(features.shape[2]):
            vector = features[:, y, x].astype(np.float64)
            out[:, y, x] = vector / (math.sqrt(float(vector @ vector)) + eps)
    return out


def responses(features):
    """float32 ``(C, H, W)`` -> float32 ``(H, W)``: sum of squares over the channels.

    Same float32 arithmetic as the kernels: channel by channel.
    """
    out = np.zeros(features.shape[1:], dtype=np.float32)
    for channel in features:
        out += channel * channel
    return out


def response_mask(features, kind, kappa, tau):
    """float32 ``(C, H, W)`` -> float64 ``(H, W)`` in [0, 1].

    The responses rescaled to [0, 1] (all 0 where flat), then ``level >= tau`` for
    ``kind="step"`` or ``1 / (1 + exp(-kappa (level - tau)))`` for ``"sigmoid"``.
    """
    values = responses(features)
    low, high = values.min(), values.max()
    level = (values - low) / (high - low) if high > low else np.zeros_like(values)
    level = level.astype(np.float64)
    if kind == "step":
        return (level >= np.float32(tau)).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-kappa * (level - tau)))


def blend(feat_a, reconstructed, mask, alpha):
    """``(C, H, W)`` maps and an ``(H, W)`` mask -> float64 ``(C, H, W)``.

    ``w A + (1 - w) R`` with the per-pixel weight ``w = alpha * mask``.
    """
    weight = alpha * mask.astype(np.float64)
    return feat_a * weight + reconstructed * (1 - weight)


# --- deconvolution pieces (im2col.py, activations.py) -----------------------------------


def _im2col_entries(channels, height, width):
    """``(row, column, c, sy, sx)`` of every entry of the im2col matrix inside the image."""
    for c in range(channels):
        for ky in range(3):
            for kx in range(3):
                for y in range(height):
                    for x in range(width):
                        sy, sx = y + ky - 1, x + kx - 1
                        if 0 <= sy < height and 0 <= sx < width:
                            yield c * 9 + ky * 3 + kx, y * width + x, c, sy, sx


def im2col(image):
    """``(C, H, W)`` -> ``(9 C, H W)``: the 3x3 neighbourhoods of the pixels as columns.

    Row ``9 c + 3 ky + kx``, column ``y W + x`` holds ``image[c, y + ky - 1, x + kx - 1]``,
    zero outside the image (padding 1); same dtype as ``image``.
    """
    cols = np.zeros((image.shape[0] * 9, image.shape[1] * image.shape[2]), dtype=image.dtype)
    for row, column, c, sy, sx in _im2col_entries(*image.shape):
        cols[row, column] = image[c, sy, sx]
    return cols


def col2im(cols, height, width):
    """``(9 C, H W)`` -> ``(C, H, W)``: the adjoint of `im2col`, overlapping entries added."""
    image = np.zeros((cols.shape[0] // 9, height, width), dtype=cols.dtype)
    for row, column, c, sy, sx in _im2col_entries(image.shape[0], height, width):
        image[c, sy, sx] += cols[row, column]
    return image


def relu(values, bias=None):
    """``max(values + bias, 0)``, same dtype: ``values`` ``(C, H, W)``, ``bias`` ``(C,)``.

    Without ``bias``, ``values`` may have any shape.
    """
    if bias is not None:
        values = values + bias[:, None, None]
    return np.maximum(values, 0)


def relu_backward(grad, activation):
    """``grad`` where ``activation > 0``, else 0 (same shapes)."""
    return grad * (activation > 0)


def maxpool(values):
    """Caffe ceil-mode 2x2 stride-2 max-pool of ``(C, H, W)``.

    Returns (pooled ``(C, ceil(H/2), ceil(W/2))`` of ``values.dtype``, int64 argmax of
    the same shape, flat ``y W + x`` into each channel). Windows are clipped at an
    odd edge; ties take the first maximum in row-major order.
    """
    channels, height, width = values.shape
    out_h, out_w = (height + 1) // 2, (width + 1) // 2
    pooled = np.empty((channels, out_h, out_w), dtype=values.dtype)
    argmax = np.empty((channels, out_h, out_w), dtype=np.int64)
    for c in range(channels):
        for oy in range(out_h):
            for ox in range(out_w):
                window = values[c, 2 * oy : 2 * oy + 2, 2 * ox : 2 * ox + 2]
                wy, wx = np.unravel_index(np.argmax(window), window.shape)
                pooled[c, oy, ox] = window[wy, wx]
                argmax[c, oy, ox] = (2 * oy + wy) * width + 2 * ox + wx
    return pooled, argmax


def maxpool_backward(grad_pooled, argmax, height, width):
    """Pooled gradient ``(C, h, w)`` routed to its ``argmax`` -> ``(C, height, width)``."""
    grad = np.zeros((grad_pooled.shape[0], height * width), dtype=grad_pooled.dtype)
    for c in range(grad_pooled.shape[0]):
        for index, value in zip(argmax[c].ravel(), grad_pooled[c].ravel(), strict=True):
            grad[c, index] += value
    return grad.reshape(-1, height, width)


# --- L-BFGS vector operations (lbfgs_ops.py) --------------------------------------------


def dot(a, b):
    """``a . b`` of two ``(n,)`` vectors, in float64."""
    return np.dot(a.astype(np.float64), b.astype(np.float64))


def squared_error(output, target):
    """Same-shape arrays -> (loss ``sum (output - target)^2``, gradient ``2 (output - target)``).

    Both in float64.
    """
    difference = output.astype(np.float64) - target.astype(np.float64)
    return np.sum(difference**2), 2 * difference


def combine(a, b, alpha, beta):
    """``alpha a + beta b`` of ``(n,)`` vectors."""
    return alpha * a + beta * b


def add_scaled(y, x, scalars, plus, minus, over):
    """``y + (scalars[plus] - scalars[minus]) / scalars[over] x`` of ``(n,)`` vectors."""
    return y + (scalars[plus] - scalars[minus]) / scalars[over] * x


def scale(y, scalars, numerator, denominator):
    """``y * scalars[numerator] / scalars[denominator]`` of an ``(n,)`` vector."""
    return y * scalars[numerator] / scalars[denominator]


# --- the VGG network (network.py, features.py) ------------------------------------------


def conv3x3(x, weight, bias):
    """3x3 cross-correlation, zero padding 1, in float64.

    ``x`` ``(C, H, W)``, ``weight`` ``(O, C, 3, 3)``, ``bias`` ``(O,)`` -> ``(O, H, W)``.
    """
    _, height, width = x.shape
    padded = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((weight.shape[0], height, width))
    for ky in range(3):
        for kx in range(3):
            window = padded[:, ky : ky + height, kx : kx + width]
            out += np.einsum("oc,chw->ohw", weight[:, :, ky, kx].astype(np.float64), window)
    return out + bias.astype(np.float64)[:, None, None]


def vgg_levels(weights, x, layers):
    """Feature maps (float64) after each block's first ReLU among ``layers``.

    ``weights``: layer name -> (``(O, C, 3, 3)`` weight, ``(O,)`` bias); ``x``
    ``(C, H, W)``, the input of ``layers[0]``. Each layer is `conv3x3` then ReLU, and
    a ceil-mode `maxpool` follows the layers in ``vgg.POOL_AFTER``. Returns
    ``{level: (C, H, W)}``, level ``n`` being the output of ``conv{n}_1``.
    """
    levels = {}
    for name in layers:
        weight, bias = weights[name]
        x = np.maximum(conv3x3(x, weight, bias), 0)
        if name.endswith("_1"):
            levels[int(name[4])] = x
        if name in vgg.POOL_AFTER:
            x, _ = maxpool(x)
    return levels


# --- fused deconvolution kernels and the optimiser's passes ------------------------------


def col2im_unpool(cols, argmax, pre_activation, bias):
    """Gradient with respect to ``z`` of ``conv(maxpool(relu(z + b)))`` from its columns' one.

    ``cols`` ``(9 C, h w)`` of the pooled map, ``argmax`` ``(C, h, w)``, ``pre_activation``
    ``z`` ``(C, H, W)``, ``bias`` ``(C,)``: col2im, route to the maxima, gate by the ReLU.
    """
    _, height, width = pre_activation.shape
    pooled = col2im(cols, argmax.shape[1], argmax.shape[2])
    return relu_backward(
        maxpool_backward(pooled, argmax, height, width), relu(pre_activation, bias)
    )


def relu_squared_error(pre_activation, bias, target):
    """``(C, P)`` arrays -> (``sum (relu(z + b) - t)^2``, its gradient in ``z``), float64.

    ``relu(z + b)`` is formed in the arrays' dtype (as `relu` does), the rest in float64.
    """
    activation = relu(pre_activation[:, :, None], bias)[:, :, 0].astype(np.float64)
    difference = activation - target.astype(np.float64)
    return np.sum(difference**2), 2 * difference * (activation > 0)


def trial_scalars(rows, gradient, current, trial, gradient_row, direction, first_history, history):
    """The sums of ``lbfgs_ops.trial_scalars``, in its order, as float64 dot products.

    ``s = t - x`` and ``y = g_t - g`` are formed in the rows' dtype first (as the
    kernel stores them), then every product is taken in float64.
    """
    s = (rows[trial] - rows[current]).astype(np.float64)
    y = (gradient - rows[gradient_row]).astype(np.float64)
    g = gradient.astype(np.float64)
    t = rows[trial].astype(np.float64)
    d = rows[direction].astype(np.float64)
    sums = [g @ d, g @ g, t @ t, s @ s, s @ y, y @ y, s @ g, y @ g]
    for row in range(2 * history):
        h = rows[first_history + row].astype(np.float64)
        sums += [s @ h, y @ h, g @ h]
    return np.array(sums)


def lbfgs_step(rows, gradient, coefficients, mode, slot, current, previous, out, gradient_row,
               direction, first_history, history, step):  # fmt: skip
    """``lbfgs_ops.lbfgs_step`` on a copy of ``rows``: (new rows, ``g.d`` in float64).

    Modes: 0 plain, 1 take the gradient, 2 accept (store ``s``, ``y``, then take it).
    """
    rows = rows.copy()
    if mode == 2:
        rows[first_history + slot] = rows[current] - rows[previous]
        rows[first_history + history + slot] = gradient - rows[gradient_row]
    if mode in (1, 2):
        rows[gradient_row] = gradient
    basis = [*range(first_history, first_history + 2 * history), gradient_row]
    # Rows with a zero coefficient are not read (they may hold anything).
    d = np.zeros(rows.shape[1])
    for coefficient, row in zip(coefficients, basis, strict=True):
        if coefficient != 0:
            d = d + coefficient * rows[row].astype(np.float64)
    d = d.astype(rows.dtype)
    rows[direction] = d
    rows[out] = rows[current].astype(np.float64) + step * d.astype(np.float64)
    return rows, float(rows[gradient_row].astype(np.float64) @ d.astype(np.float64))


def two_loop_direction(steps, changes, gradient):
    """``-H g`` by the L-BFGS two-loop recursion on vectors (Nocedal & Wright 7.4), float64.

    ``steps`` and ``changes``: the pairs ``s_k``, ``y_k``, oldest first.
    """
    q = -np.asarray(gradient, dtype=np.float64)
    alphas = []
    for s, y in reversed(list(zip(steps, changes, strict=True))):
        alpha = (s @ q) / (y @ s)
        q = q - alpha * y
        alphas.append(alpha)
    if steps:
        q = q * (changes[-1] @ steps[-1]) / (changes[-1] @ changes[-1])
    for (s, y), alpha in zip(zip(steps, changes, strict=True), reversed(alphas), strict=True):
        beta = (y @ q) / (y @ s)
        q = q + (alpha - beta) * s
    return q


# --- field priors (field_prior.py, field_smoothing.py) -----------------------------------


def match_distinctiveness(a, a_prime, b, b_prime, field, patch_size, step):
    """float64 ``(Ha, Wa)``: ``max(0, min_q' d(p, q') - d(p, q))``, ``d`` as `patch_distance`.

    ``q`` is ``field[p]`` clamped into B, ``q'`` runs over ``q + step (dy, dx)`` for the 8
    ``(dy, dx) != (0, 0)`` in ``{-1, 0, 1}^2``, clamped into B; a ``q'`` that clamps back
    onto ``q`` does not count, and where none is left the result is 0.
    """
    bounds = b.shape[1:]
    centre = clamp_field(field, bounds)
    own = patch_distance(a, a_prime, b, b_prime, centre, patch_size)
    best = np.full(own.shape, np.inf)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            moved = clamp_field(centre + step * np.array([dy, dx]), bounds)
            other = patch_distance(a, a_prime, b, b_prime, moved, patch_size)
            best = np.where((moved == centre).all(axis=-1), best, np.minimum(best, other))
    return np.where(np.isinf(best), 0.0, np.maximum(best - own, 0.0))


def _recursive_filter_line(values, guide, feedback_base, ratio):
    """One RF pass, in place, over a line: ``values`` ``(K, n)``, ``guide`` ``(C, n)``."""
    n = values.shape[1]
    distance = [1 + ratio * np.abs(guide[:, x] - guide[:, x - 1]).sum() for x in range(n)]
    for x in range(1, n):
        values[:, x] += feedback_base ** distance[x] * (values[:, x - 1] - values[:, x])
    for x in range(n - 2, -1, -1):
        values[:, x] += feedback_base ** distance[x + 1] * (values[:, x + 1] - values[:, x])


def recursive_filter(values, guide, sigma_space, sigma_range, iterations):
    """Gastal and Oliveira's domain-transform RF, float64: ``(K, H, W)`` -> ``(K, H, W)``.

    ``guide`` ``(C, H, W)``. Iteration ``i = 1 .. N`` filters every row, then every column,
    left to right then back, with feedback ``a ** d``: ``a = exp(-sqrt(2) / sigma_i)``,
    ``sigma_i = sigma_space sqrt(3) 2^(N - i) / sqrt(4^N - 1)``, and ``d = 1 + sigma_space /
    sigma_range * sum_c |guide_c(x) - guide_c(x - 1)|`` between neighbours.
    """
    out = values.astype(np.float64)
    guide = guide.astype(np.float64)
    _, height, width = out.shape
    ratio = sigma_space / sigma_range
    n = iterations
    for i in range(1, n + 1):
        sigma = sigma_space * math.sqrt(3) * 2 ** (n - i) / math.sqrt(4**n - 1)
        base = math.exp(-math.sqrt(2) / sigma)
        for y in range(height):
            _recursive_filter_line(out[:, y, :], guide[:, y, :], base, ratio)
        for x in range(width):
            _recursive_filter_line(out[:, :, x], guide[:, :, x], base, ratio)
    return out


def smooth_field(positions, weights, guide, sigma_space, sigma_range, iterations, min_support):
    """Normalised convolution of displacements: (float64 ``(H, W, 2)`` positions, ``(H, W)``).

    ``D = positions - (y, x)``, weights that are not finite and positive (or whose position is
    not finite) count 0; returns ``(y, x) + RF(w D) / RF(w)`` and the support ``RF(w)``, the
    input position where the support is at most ``min_support``.
    """
    coordinates = np.indices(weights.shape).transpose(1, 2, 0)
    displacement = positions.astype(np.float64) - coordinates
    usable = np.isfinite(weights) & (weights > 0) & np.isfinite(displacement).all(axis=-1)
    w = np.where(usable, weights, 0.0)
    displacement = np.where(usable[..., None], displacement, 0.0)
    stack = np.stack([w * displacement[..., 0], w * displacement[..., 1], w])
    filtered = recursive_filter(stack, guide, sigma_space, sigma_range, iterations)
    support = filtered[2]
    out = positions.astype(np.float64).copy()
    for y, x in zip(*np.nonzero(support > min_support), strict=True):
        out[y, x] = filtered[:2, y, x] / support[y, x] + (y, x)
    return out, support


def upsample_positions(positions, target_shape, source_shape, coarse_source_shape):
    """Float ``(H, W, 2)`` positions -> float64 ``(*target_shape, 2)``, bilinear, centres aligned.

    Target pixel ``t`` samples the old grid at ``(t + 0.5) H / Ht - 0.5`` (clamped into it);
    the value ``u`` becomes ``(u + 0.5) Hbt / Hb - 0.5`` per axis (``source_shape`` over
    ``coarse_source_shape``).
    """
    height, width = positions.shape[:2]
    scale = np.array(source_shape, dtype=np.float64) / np.array(coarse_source_shape)
    p = positions.astype(np.float64)
    out = np.empty((*target_shape, 2))
    for ty in range(target_shape[0]):
        for tx in range(target_shape[1]):
            cy = min(max((ty + 0.5) * height / target_shape[0] - 0.5, 0.0), height - 1.0)
            cx = min(max((tx + 0.5) * width / target_shape[1] - 0.5, 0.0), width - 1.0)
            y0, x0 = int(cy), int(cx)
            y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
            fy, fx = cy - y0, cx - x0
            top = (1 - fx) * p[y0, x0] + fx * p[y0, x1]
            bottom = (1 - fx) * p[y1, x0] + fx * p[y1, x1]
            out[ty, tx] = ((1 - fy) * top + fy * bottom + 0.5) * scale - 0.5
    return out


def round_positions(positions, source_shape):
    """Float ``(H, W, 2)`` -> int32: ``floor(v + 0.5)`` in float64 clamped into ``source_shape``.

    NaN goes to 0.
    """
    rounded = np.floor(np.nan_to_num(positions.astype(np.float64), nan=0.0) + 0.5)
    return clamp_field(rounded, source_shape)


def carry_positions(positions, field, trusted, source_shape, field_source_shape):
    """Float64 copy of ``positions`` with, where ``trusted``, the match of ``field``'s nearest
    pixel (nearest-cell convention) moved from ``field_source_shape`` to ``source_shape``."""
    out = positions.astype(np.float64)
    scale = np.array(source_shape, np.float64) / np.array(field_source_shape)
    height, width = positions.shape[:2]
    for y in range(height):
        for x in range(width):
            if trusted[y, x]:
                fy = _nearest_cell(y, height, field.shape[0])
                fx = _nearest_cell(x, width, field.shape[1])
                out[y, x] = (field[fy, fx] + 0.5) * scale - 0.5
    return out
