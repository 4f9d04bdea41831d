"""A vLLM plugin (entry point ``vllm.general_plugins``, loaded in every vLLM process) that makes the weights of
vLLM's CPU build reloadable in place.

On a CPU, vLLM repacks each linear layer's weight for its GEMM kernel after loading and then empties the layer's
``weight``; a later in-place reload (``reload_weights``: opd's weight sync after each step, and ``opd eval --run``
loading each checkpoint into one engine) then has nowhere to write, and the engine silently keeps the old weights.
With this plugin the weight stays, and every in-place reload repacks the linear layers from their new weights, at
the cost of a second copy of the linear weights in host memory. It changes nothing on a GPU, and
``OPD_VLLM_KEEP_CPU_WEIGHTS=0`` turns it off.
"""

from __future__ import annotations

import os


def register() -> None:
    if os.environ.get("OPD_VLLM_KEEP_CPU_WEIGHTS", "1") == "0":
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    import vllm.model_executor.layers.utils as layer_utils
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner  # the CPU runner's base

    dispatch = layer_utils.dispatch_cpu_unquantized_gemm
    if getattr(dispatch, "_opd", False):  # plugins may load more than once per process
        return

    def keep_weights(layer, remove_weight: bool) -> None:
        dispatch(layer, remove_weight=False)

    reload = GPUModelRunner.reload_weights

    def reload_and_repack(self, *args, **kwargs):
        reload(self, *args, **kwargs)
        for module in self.get_model().modules():
            weight = getattr(module, "weight", None)
            if hasattr(module, "cpu_linear") and weight is not None and weight.ndim == 2 and not weight.is_meta:
                dispatch(module, remove_weight=False)  # the kernel's packed copy, from the reloaded weight

    keep_weights._opd = reload_and_repack._opd = True  # type: ignore[attr-defined]
    layer_utils.dispatch_cpu_unquantized_gemm = keep_weights
    GPUModelRunner.reload_weights = reload_and_repack
