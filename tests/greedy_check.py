"""The greedy token's check, shared by tests/test_eval.py (CPU) and tests/test_eval_gpu.py (the GPU's max and argmax
kernels), importing nothing the GPU image lacks."""

from __future__ import annotations

import torch

from quantkit.eval import throughput


def check_greedy_token(device: str) -> None:
    """throughput.greedy_token gives argmax's index (the first of equal maxima) on vocabularies that split into
    chunks and on one that does not, with ties inside a chunk and across chunks, in float32 and bfloat16."""
    gen = torch.Generator().manual_seed(0)
    for vocab in (128256, 49152, 151936, 50021):
        for dtype in (torch.float32, torch.bfloat16):
            # integer logits in a small range: many exact ties, in every chunk and across chunks
            logits = torch.randint(-50, 50, (5, vocab), generator=gen).to(dtype)
            logits[1, [7, vocab - 1]] = 60  # the maximum twice, in the first and the last chunk
            logits[2, :] = 3  # one value everywhere: index 0
            logits = logits.to(device)
            got = throughput.greedy_token(logits)
            assert got.shape == (5, 1) and got.dtype == torch.long
            assert torch.equal(got, logits.argmax(-1, keepdim=True)), (vocab, dtype, got.flatten().tolist())
            assert got[1, 0] == 7 and got[2, 0] == 0
