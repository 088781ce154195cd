"""The exercises of tests/test_cuda_ptx.py: calls that launch every CUDA kernel.

Each kernel module of the kernels package has an exercise in :data:`EXERCISES` that
calls its public functions on tiny stand-in GPU arrays (:func:`ptx_standin.gpu`), so
that every kernel it defines is launched with every argument type a real run gives
it; :data:`CALLER_EXERCISES` does the same for the callers outside the package whose
launches matter (the network's views of its workspace, the optimiser's state). The
launches are recorded, not run, and then compiled for the real CUDA target.

To add a kernel module, add its ``_exercise_<module>(rng)`` here and its entry in
:data:`EXERCISES`: a kernel module without one, or a kernel that its exercise does
not launch, fails the test.
"""

from __future__ import annotations

import numpy as np
from ptx_standin import gpu


def _random_features(shape, rng):
    return gpu(np.maximum(rng.standard_normal(shape), 0).astype(np.float32))


def _random_field(shape, target_shape, rng):
    ys = rng.integers(0, target_shape[0], size=shape)
    xs = rng.integers(0, target_shape[1], size=shape)
    return np.stack([ys, xs], axis=-1).astype(np.int32)


def _exercise_normalize(rng):
    from diva_numba.kernels import normalize

    features = _random_features((4, 5, 6), rng)
    normalize.normalize_features(features)
    mask = normalize.response_mask(features, kind="sigmoid")
    normalize.response_mask(features, kind="step")
    normalize.blend(features, features, mask, alpha=0.5)
    normalize.blend(features, np.asarray(features), np.asarray(mask), alpha=0.5)


def _exercise_voting(rng):
    from diva_numba.kernels import voting

    source = _random_features((3, 5, 6), rng)
    field = _random_field((4, 4), (5, 6), rng)
    voting.vote(source, gpu(field), patch_size=3)
    voting.vote(source, field, patch_size=5)


def _exercise_nnf_resample(rng):
    from diva_numba.kernels import nnf_resample

    field = gpu(_random_field((4, 5), (4, 5), rng))
    flow = rng.uniform(-2, 2, size=(4, 5, 2)).astype(np.float32)
    nnf_resample.upsample_field(field, target_shape=(8, 10), source_shape=(8, 10))
    nnf_resample.pull_field(field, flow, source_shape=(4, 5))
    nnf_resample.pull_field(field, gpu(flow), source_shape=(4, 5))


def _exercise_patch_distance(rng):
    from diva_numba.kernels import patch_distance

    maps = [_random_features((4, 5, 6), rng) for _ in range(4)]
    field = _random_field((5, 6), (5, 6), rng)
    patch_distance.patch_distance(*maps, gpu(field), patch_size=3)
    patch_distance.patch_distance(*maps, field, patch_size=5)


def _exercise_patchmatch(rng):
    from diva_numba.kernels import patchmatch

    maps = [_random_features((4, 5, 6), rng) for _ in range(4)]
    params = patchmatch.PatchMatchParams(iterations=1, search_radius=2)
    patchmatch.patchmatch(*maps, params=params)
    patchmatch.patchmatch(
        *maps,
        init_field=gpu(_random_field((5, 6), (5, 6), rng)),
        params=params,
        refine_mask=np.ones((5, 6), dtype=bool),
    )


def _exercise_im2col(rng):
    from diva_numba.kernels import activations, im2col

    for dtype in (np.float32, np.float64):
        image = gpu(rng.standard_normal((2, 4, 5)).astype(dtype))
        bias = gpu(rng.standard_normal(2).astype(dtype))
        columns = im2col.im2col(image)
        im2col.im2col(image, bias=bias)
        im2col.col2im(columns, 4, 5)
        im2col.col2im(columns, 4, 5, pre_activation=image, bias=bias)
        pre = gpu(rng.standard_normal((2, 7, 9)).astype(dtype))
        pooled, argmax = activations.maxpool_forward(pre, bias=bias)
        im2col.col2im_unpool(im2col.im2col(pooled), argmax, pre, bias)


def _exercise_activations(rng):
    from diva_numba.kernels import activations

    for dtype in (np.float32, np.float64):
        values = gpu(rng.standard_normal((2, 5, 5)).astype(dtype))
        bias = gpu(np.zeros(2, dtype=dtype))
        activations.relu_forward(values, bias=bias)
        activations.relu_forward(values, bias=bias, out=gpu(np.zeros_like(values)))
        activations.relu_forward(values)
        activations.relu_backward(gpu(rng.standard_normal((2, 5, 5)).astype(dtype)), values)
        pooled, argmax = activations.maxpool_forward(values)
        activations.maxpool_forward(values, bias=bias)
        activations.maxpool_backward(pooled, argmax, 5, 5)


def _exercise_reductions(rng):
    from diva_numba.kernels import reductions

    scalars = gpu(np.zeros(64))
    for dtype in (np.float32, np.float64):
        a, b = (gpu(rng.standard_normal(10).astype(dtype)) for _ in range(2))
        reductions.dot(a, b, scalars, 0)
        reductions.dot(a, b, scalars, 0, work=reductions.ReductionWork(a, 4))
    reductions.copy_scalar(gpu(np.ones(1)), scalars, 3)
    reductions.copy_scalar(2.5, scalars, 4)


def _exercise_squared_error(rng):
    from diva_numba.kernels import squared_error

    scalars = gpu(np.zeros(64))
    for dtype in (np.float32, np.float64):
        a, b, out = (gpu(rng.standard_normal(10).astype(dtype)) for _ in range(3))
        squared_error.squared_error(a, b, grad_out=out, scalars=scalars, slot=1)
        pre, target, grad = (gpu(rng.standard_normal((2, 5)).astype(dtype)) for _ in range(3))
        squared_error.relu_squared_error(
            pre, gpu(np.zeros(2, dtype)), target, grad_out=grad, scalars=scalars, slot=1
        )


def _exercise_vector_ops(rng):
    from diva_numba.kernels import vector_ops

    scalars = gpu(np.zeros(64))
    for dtype in (np.float32, np.float64):
        a, b, out = (gpu(rng.standard_normal(10).astype(dtype)) for _ in range(3))
        vector_ops.combine(out, a, b, alpha=1.0, beta=-1.0)
        vector_ops.copy(out, a)
        vector_ops.add_scaled(out, a, scalars, plus=0, minus=1, over=2)
        vector_ops.scale(out, scalars, numerator=0, denominator=1)


def _exercise_lbfgs_ops(rng):
    from diva_numba.kernels import lbfgs_ops
    from diva_numba.kernels.reductions import ReductionWork

    scalars = gpu(np.zeros(64))
    history = 2
    for dtype in (np.float32, np.float64):
        a = gpu(rng.standard_normal(10).astype(dtype))
        work = ReductionWork(a, lbfgs_ops.trial_sum_count(history))
        rows = gpu(rng.standard_normal((4 + 2 * history, 10)).astype(dtype))
        rows_layout = {"gradient_row": 2, "direction": 3, "first_history": 4, "history": history}
        lbfgs_ops.trial_scalars(
            rows, a, gpu(np.ones(1)), scalars, current=0, trial=1, loss_slot=0, first_slot=2,
            work=work, **rows_layout,
        )  # fmt: skip
        lbfgs_ops.lbfgs_step(
            rows, a, (0.5,) * (2 * history + 1), scalars, mode=lbfgs_ops.STEP_ACCEPT, slot=1,
            current=1, previous=0, out=0, step=1.0, slope_slot=1, work=work, **rows_layout,
        )  # fmt: skip


def _exercise_field_prior(rng):
    from diva_numba.kernels import field_prior

    maps = [_random_features((4, 5, 6), rng) for _ in range(4)]
    field = _random_field((5, 6), (5, 6), rng)
    field_prior.match_distinctiveness(*maps, gpu(field), patch_size=3)
    field_prior.match_distinctiveness(*maps, field, patch_size=5, step=2)
    positions = gpu(field.astype(np.float32))
    weights = rng.random((5, 6)).astype(np.float32)
    guide = _random_features((3, 5, 6), rng)
    params = field_prior.FieldPriorParams(sigma_space=4.0, iterations=2)
    smoothed, _ = field_prior.smooth_field(positions, gpu(weights), guide, params=params)
    field_prior.smooth_field(positions, weights, np.asarray(guide), params=params)
    upsampled = field_prior.upsample_positions(
        smoothed, target_shape=(10, 12), source_shape=(9, 11), coarse_source_shape=(5, 6)
    )
    # A video frame's levels: the previous output's field, carried where the flow is trusted.
    carried = gpu(_random_field((20, 24), (18, 22), rng))
    trusted = gpu(rng.random((10, 12))) >= 0.5
    field_prior.carry_positions(
        upsampled, carried, trusted, source_shape=(9, 11), field_source_shape=(18, 22)
    )
    field_prior.round_positions(upsampled, (9, 11))


def _exercise_field_smoothing(rng):
    from diva_numba.kernels import field_smoothing

    values = gpu(rng.standard_normal((3, 5, 6)).astype(np.float32))
    guide = _random_features((2, 5, 6), rng)
    field_smoothing.recursive_filter(values, guide, sigma_space=4.0, sigma_range=0.2)
    field_smoothing.recursive_filter(values, np.asarray(guide), sigma_space=4.0, sigma_range=0.2)


def _exercise_network(rng):
    """The deconvolution's own calls: views and reshapes of its workspace buffers."""
    from diva_numba.models.readers import tiny_weights
    from diva_numba.network.subnetwork import SubNetwork

    for start, end in ((0, 2), (1, 3)):
        network = SubNetwork(tiny_weights(0, width=2).layers, start, end)
        image = gpu(rng.standard_normal((network.in_channels, 6, 7)).astype(np.float32))
        target = gpu(np.zeros(network.output_shape(6, 7), dtype=np.float32))
        network.loss_and_gradient(image, target)
        network.forward_levels(image, (end,))


def _exercise_lbfgs(rng):
    """The optimiser on device arrays: its state, register and launches as a run makes them.

    No kernel runs, so the register it reads back is made up: a loss that falls, a
    unit gradient, a descent direction whose first trial is accepted, positive
    curvature. That carries the run through steepest descent, accepted pairs and the
    two-loop recursion.
    """
    from diva_numba.optim import lbfgs

    def objective(x):
        return gpu(np.ones(1)), gpu(np.zeros(x.shape, np.float32))

    def made_up_register(scalars):
        register = np.zeros(scalars.shape)
        R = lbfgs._Register
        made_up_register.loss *= 0.5
        register[R.LOSS] = made_up_register.loss
        register[R.SLOPE0] = -1.0
        register[R.TRIAL + R.GRAD_SQUARED] = 1.0
        register[R.TRIAL + R.X_SQUARED] = 1.0
        register[[R.TRIAL + R.SS, R.TRIAL + R.SY, R.TRIAL + R.YY]] = 1.0
        return register

    made_up_register.loss = 1.0
    real_to_host = lbfgs.to_host
    lbfgs.to_host = made_up_register
    try:
        lbfgs.minimize_lbfgs(
            objective,
            gpu(rng.standard_normal((2, 3, 2)).astype(np.float32)),
            params=lbfgs.LBFGSParams(max_iterations=3, history=2),
        )
    finally:
        lbfgs.to_host = real_to_host


#: Kernel module -> the calls that launch each of its kernels. A kernel module
#: missing here, or a kernel its exercise does not launch, fails the test.
EXERCISES = {
    "field_prior": _exercise_field_prior,
    "field_smoothing": _exercise_field_smoothing,
    "normalize": _exercise_normalize,
    "voting": _exercise_voting,
    "nnf_resample": _exercise_nnf_resample,
    "patch_distance": _exercise_patch_distance,
    "patchmatch": _exercise_patchmatch,
    "im2col": _exercise_im2col,
    "activations": _exercise_activations,
    "reductions": _exercise_reductions,
    "squared_error": _exercise_squared_error,
    "vector_ops": _exercise_vector_ops,
    "lbfgs_ops": _exercise_lbfgs_ops,
}
#: Callers outside the kernels package whose launches are compiled too.
CALLER_EXERCISES = {"network": _exercise_network, "lbfgs": _exercise_lbfgs}
