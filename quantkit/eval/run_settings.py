"""The environment variables that change what a speed run measures, so that a run's recorded command says them.

Each is read once, when its module is imported: QUANTKIT_COMBO_KERNELS, QUANTKIT_COMPILED_X_IMAGE and
QUANTKIT_SHARED_CACHE_POSITION (quantkit.eval.throughput), QUANTKIT_GLU_PDL, QUANTKIT_INDUCTOR_PDL, QUANTKIT_NORM_FOLD,
QUANTKIT_NORM_FOLD_ROWS, QUANTKIT_NORM_FOLD_SS, QUANTKIT_NORM_FOLD_SS_DOWN and QUANTKIT_ROPE_IN_QKV
(quantkit.eval.fuse), QUANTKIT_SPLITS_ROUND,
QUANTKIT_ATTENTION_PDL and QUANTKIT_SPLIT_KV_FUSED_COMBINE (quantkit.eval.decode_attention), QUANTKIT_ROPE_IN_ATTENTION
(quantkit.eval.attention), QUANTKIT_GREEDY_ONE_LAUNCH (quantkit.eval.greedy), QUANTKIT_WS_PIPELINED_32,
QUANTKIT_GLU_EPILOGUE, QUANTKIT_GLU_WS, QUANTKIT_FUSED_MLP and QUANTKIT_STREAM_WK_WARPS (quantkit.kernels.ops), QUANTKIT_L2_PREFETCH*
(quantkit.eval.prefetch), and
QUANTKIT_KERNEL_DEFINES (quantkit.kernels.build: the csrc tuning macros the extension is built with). A run's JSON
records what they did (``combo_kernels``, ``compiled_x_image``, ...); the command carries them too, so that running it
again measures the same thing. Torch-free: the command line builds its records with it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping

MEASURING = ("QUANTKIT_COMBO_KERNELS", "QUANTKIT_COMPILED_X_IMAGE", "QUANTKIT_GLU_EPILOGUE", "QUANTKIT_FUSED_MLP",
             "QUANTKIT_GLU_WS", "QUANTKIT_GLU_PDL", "QUANTKIT_SPLITS_ROUND", "QUANTKIT_ATTENTION_PDL",
             "QUANTKIT_SPLIT_KV_FUSED_COMBINE", "QUANTKIT_INDUCTOR_PDL", "QUANTKIT_NORM_FOLD", "QUANTKIT_NORM_FOLD_ROWS",
             "QUANTKIT_NORM_FOLD_SS", "QUANTKIT_NORM_FOLD_SS_DOWN", "QUANTKIT_WS_PIPELINED_32", "QUANTKIT_L2_PREFETCH",
             "QUANTKIT_L2_PREFETCH_MB", "QUANTKIT_L2_PREFETCH_MAX_M", "QUANTKIT_L2_PREFETCH_EVICT_FIRST",
             "QUANTKIT_STREAM_WK_WARPS", "QUANTKIT_SHARED_CACHE_POSITION", "QUANTKIT_ROPE_IN_ATTENTION",
             "QUANTKIT_GREEDY_ONE_LAUNCH", "QUANTKIT_ROPE_IN_QKV", "QUANTKIT_KERNEL_DEFINES")
# the package's other variables: where files go, what is logged, test hooks; none changes a figure
NOT_MEASURING = ("QUANTKIT_CACHE", "QUANTKIT_KERNEL_CACHE", "QUANTKIT_KERNEL_VERBOSE", "QUANTKIT_STANDIN_GGUF",
                 "QUANTKIT_GPTQ_SNAPSHOT_S", "QUANTKIT_GPTQ_TEST_KILL_AFTER")


def with_settings(command: str, environ: Mapping[str, str] = os.environ) -> str:
    """command prefixed with each MEASURING variable set in environ, as a shell would take it:
    ``QUANTKIT_COMBO_KERNELS=0 quantkit eval ...``."""
    prefix = [f"{name}={shlex.quote(environ[name])}" for name in MEASURING if name in environ]
    return " ".join(prefix + [command])
