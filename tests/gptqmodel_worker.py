"""Load a GPTQ checkpoint with GPTQModel (PyPI `gptqmodel`, torch backend, CPU, bf16) and save what it computes.

Run in its own process by tests/test_gptqmodel.py and bench/gptqmodel_check.py: importing gptqmodel patches
transformers, safetensors and torch._dynamo settings process-wide, which must not leak into other tests.

    python tests/gptqmodel_worker.py CHECKPOINT WINDOWS.pt OUT.pt [--no-weights]

WINDOWS.pt holds an int64 [W, ctx] tensor of token ids (tokenized by the caller, so both sides score the very
same tokens). OUT.pt receives {"logits": bf16 [W, ctx, vocab] as GPTQModel's model returns them,
"weights": {module name: GPTQModel's own dequantized weight, [N, K] in its dtype}, "kernels": {class names},
"versions": {...}}. The forward passes are GPTQModel's; nothing of quantkit is imported here.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("windows")
    ap.add_argument("out")
    ap.add_argument("--no-weights", action="store_true", help="skip saving the dequantized weights")
    args = ap.parse_args()

    import gptqmodel
    import transformers
    from gptqmodel import BACKEND, GPTQModel

    t0 = time.perf_counter()
    model = GPTQModel.load(args.checkpoint, backend=BACKEND.TORCH, device="cpu", dtype=torch.bfloat16)
    load_s = time.perf_counter() - t0
    hf = model.model
    hf.eval()

    wins = torch.load(args.windows)
    t0 = time.perf_counter()
    logits = []
    with torch.inference_mode():
        for i in range(wins.shape[0]):
            logits.append(hf(wins[i : i + 1]).logits)
    forward_s = time.perf_counter() - t0

    weights, kernels = {}, set()
    for name, module in hf.named_modules():
        if hasattr(module, "qweight") and hasattr(module, "dequantize_weight"):
            kernels.add(type(module).__name__)
            if not args.no_weights:
                with torch.inference_mode():
                    weights[name] = module.dequantize_weight().T.contiguous()  # GPTQModel keeps [K, N]
    torch.save({
        "logits": torch.cat(logits),
        "weights": weights,
        "kernels": sorted(kernels),
        "logits_dtype": str(logits[0].dtype),
        "seconds": {"load": round(load_s, 2), "forward": round(forward_s, 2)},
        "versions": {"gptqmodel": str(gptqmodel.__version__), "torch": str(torch.__version__),
                     "transformers": str(transformers.__version__), "python": sys.version.split()[0]},
    }, args.out)


if __name__ == "__main__":
    main()
