"""The kernels check themselves against the reference on the device they run on, before any result is used:
at first build (w4a16_linear with backend auto/kernel), and by the benchmark before it times anything."""

from __future__ import annotations

import logging

import torch

from quantkit.errors import QuantkitError
from quantkit.kernels import testing
from quantkit.kernels.packing import prepare
from quantkit.kernels.reference import reference_weight

log = logging.getLogger(__name__)


class KernelSelfCheckError(QuantkitError):
    """A W4A16 kernel disagreed with the pure-torch reference on this device."""


# (M, N, K, group, sym, act_order): decode and prefill sizes, asymmetric, act-order, N/K off powers of two.
CASES = (
    (1, 192, 576, 32, True, False),
    (3, 320, 1536, 64, False, True),
    (8, 2112, 1152, 128, True, False),
    (16, 256, 640, 32, False, False),
    (77, 576, 1536, 128, True, True),
    (300, 1536, 576, 64, False, False),
)

_checked: set = set()


def backends_for(m: int, device: torch.device | None = None) -> tuple[str, ...]:
    from quantkit.kernels.ops import DOT2_MAX_M, has_wgmma  # late: ops imports us

    if torch.version.hip:
        return ("dot2",) if m <= DOT2_MAX_M else ("wmma",)
    hopper = device is not None and has_wgmma(device)
    return (("mma", "dequant") + (("dot2",) if m <= DOT2_MAX_M else ()) + (("staged",) if m >= 32 else ())
            + (("wgmma",) if hopper else ()))


def self_check(device: torch.device | str | None = None, *, force: bool = False) -> None:
    """Run every kernel path on CASES, fp16 and bf16; raise KernelSelfCheckError on the first mismatch."""
    from quantkit.kernels.ops import w4a16_linear  # late: ops calls us

    device = torch.device(device or "cuda")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device in _checked and not force:
        return
    _checked.add(device)  # before running, so the paths below don't recurse into the check
    try:
        for seed, (m, n, k, g, sym, act) in enumerate(CASES):
            for dtype in (torch.float16, torch.bfloat16):
                ql = testing.random_qlinear(n, k, group_size=g, sym=sym, act_order=act, dtype=dtype, seed=seed)
                packed = prepare(ql, device=device, layouts=("mma", "dot2") if not torch.version.hip else ("dot2",))
                x = testing.random_activations(m, k, dtype=dtype, seed=100 + seed, device=device)
                bias = testing.random_activations(1, n, dtype=dtype, seed=200 + seed, device=device)[0]
                w = reference_weight(packed, dtype)
                for backend in backends_for(m, device):
                    torch.full((m * n * 2,), float("nan"), device=device)  # poison what the allocator hands out next
                    if backend == "staged":  # the shared-memory prefill kernel, whatever the shape
                        y = w4a16_linear(x, packed, bias, backend="mma", staged=True)
                    else:
                        y = w4a16_linear(x, packed, bias, backend=backend)
                    err = testing.relative_error(y, w, x, bias)
                    tol = testing.tolerance(dtype, backend=backend, k=k, group_size=g)
                    if not err <= tol:
                        raise KernelSelfCheckError(
                            f"W4A16 kernel '{backend}' disagrees with the reference on {device} "
                            f"(M={m} N={n} K={k} group={g} sym={sym} act_order={act} {dtype}): relative error "
                            f"{err:.2e} > {tol:.1e}; do not use its results, report this with the GPU name"
                        )
    except Exception:
        _checked.discard(device)
        raise
    log.info("W4A16 kernels agree with the reference on %s", device)
