"""The deconvolution's loss and gradient replayed as a CUDA graph: one launch per evaluation.

See docs/DESIGN.md section 2 ("Launches and the CUDA graph").

:meth:`SubNetwork.loss_and_gradient <diva_numba.network.subnetwork.SubNetwork.loss_and_gradient>`
with ``cuda_graph=True`` on a GPU comes here. A workspace's pass always reads and writes
the same buffers, so it is captured once (:mod:`diva_numba.gpu.launch_graphs`) and replayed:

* the input and the target change between calls, so the graph reads them from buffers
  of its own, the workspace's :class:`GraphSlot`, into which each call copies the input
  (one launch) and, when its key changes, the target;
* on first use the pass runs eagerly (the reference, and every kernel compiled and
  loaded), then once more with the capture's own cuBLAS handle, is captured and
  replayed, and the replay is compared with the reference
  (:func:`~diva_numba.gpu.launch_graphs.compare_replay`);
* when the capture or the first replay raises (a GPU, driver or library that refuses
  it) or the replay differs from the reference, the network gives graphs up (its
  ``graph_problem`` says why, and one notice says so); its evaluations then launch
  kernel by kernel.

An L-BFGS iteration that evaluates once thus makes four launches in all: the input's
copy, the graph, and the optimiser's two (``kernels.lbfgs_ops``).
"""

from __future__ import annotations

import logging

from diva_numba.gpu.device import array_module, error_line
from diva_numba.gpu.launch_graphs import array_queue, compare_replay, graph_capture
from diva_numba.kernels import vector_ops
from diva_numba.kernels.targets import device_empty, kernel_array


class GraphSlot:
    """A workspace's CUDA graph and the fixed buffers its input and target are copied into.

    Parameters
    ----------
    workspace : network_buffers.Workspace
        On a GPU.
    """

    def __init__(self, workspace):
        like = workspace.input_gradient
        dtype = like.dtype
        self.input = device_empty(workspace.input_shapes[0], dtype, like=like)
        self.target = device_empty(workspace.output_shape, dtype, like=like)
        self.k_input, self.k_target = kernel_array(self.input), kernel_array(self.target)
        self.k_flat_input = kernel_array(self.input.reshape(-1))
        self.k_flat_target = kernel_array(self.target.reshape(-1))
        #: The instantiated graph, once captured and checked.
        self.graph = None
        #: The key of the target in :attr:`target` (None: copy it at the next call).
        self.target_key = None
        self._sources: dict[int, tuple[object, object]] = {}

    def flat_source(self, x):
        """``kernel_array`` of ``x`` flattened, kept for the arrays a caller passes again.

        The optimiser evaluates its two point rows in turn, the same two arrays every
        time: each is wrapped for Numba once, not at every evaluation.
        """
        key = id(x)
        if key not in self._sources or self._sources[key][0] is not x:
            if len(self._sources) >= 2:
                self._sources.clear()
            self._sources[key] = (x, kernel_array(x.reshape(-1)))
        return self._sources[key][1]


def graphed_loss_and_gradient(network, workspace, x, target, target_key):
    """``network.loss_and_gradient(x, target)`` through the workspace's CUDA graph.

    Parameters
    ----------
    network : SubNetwork
    workspace : Workspace
        ``network``'s workspace for ``x``, on a GPU.
    x, target : GPU arrays, checked by the caller (``x`` C-contiguous)
    target_key : object or None
        See ``SubNetwork.loss_and_gradient``.

    Returns
    -------
    loss, grad : the workspace's buffers, as ``SubNetwork.loss_and_gradient`` returns them.
    """
    if workspace.graph is None:
        workspace.graph = GraphSlot(workspace)
    slot = workspace.graph
    vector_ops.copy(slot.k_flat_input, slot.flat_source(x))
    if target_key is None or slot.target_key is not target_key:
        vector_ops.copy(slot.k_flat_target, kernel_array(target.reshape(-1)))
        slot.target_key = target_key
    if slot.graph is None:
        _capture_and_check(network, workspace, slot)
    else:
        slot.graph.launch()
    return workspace.loss, workspace.input_gradient


def _capture_and_check(network, workspace, slot: GraphSlot) -> None:
    """First use of a workspace's graph: reference, capture, first replay, comparison.

    Leaves the workspace holding the evaluation of ``slot.input`` either way: the
    replay's when it matches the reference, the eager pass's otherwise.
    """

    def evaluate(queue):
        network._evaluate(workspace, slot.k_input, slot.k_target, queue)

    eager = array_queue(array_module(slot.input))
    evaluate(eager)
    reference = workspace.loss.copy(), workspace.input_gradient.copy()
    try:
        capture = graph_capture(like=slot.input)
        capture.warm_up(evaluate)
        graph = capture.capture(evaluate)
    except Exception as exc:
        _give_up(network, workspace, f"the capture failed ({error_line(exc)})")
        evaluate(eager)
        return
    try:
        graph.launch()
        check = compare_replay(*reference, workspace.loss, workspace.input_gradient)
    except Exception as exc:  # a launch the driver refuses; a fault would recur below
        _give_up(network, workspace, f"the first replay failed ({error_line(exc)})")
        evaluate(eager)
        return
    network.graph_check = check
    if not check.passed:
        _give_up(network, workspace, f"the first replay differs from the eager pass ({check})")
        evaluate(eager)
        return
    slot.graph = graph


def _give_up(network, workspace, reason: str) -> None:
    """Turn graphs off for ``network`` with one notice (the workspace's slot is dropped)."""
    from diva_numba.network.features import notice_once

    network.graph_problem = reason
    workspace.graph = None
    notice_once(
        f"CUDA graphs are off for the deconvolution: {reason}; its kernels are launched one by one",
        logging.WARNING,
    )
