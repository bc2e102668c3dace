"""The greedy token's check, shared by tests/test_eval.py (CPU) and tests/test_eval_gpu.py (the GPU's max and argmax
kernels), importing nothing the GPU image lacks."""

from __future__ import annotations

import torch

from quantkit.eval import greedy


def check_greedy_token(device: str) -> None:
    """greedy.greedy_token gives argmax's index (the first of equal maxima) on vocabularies that split into
    chunks and on one that does not, with ties inside a chunk and across chunks, in float32 and bfloat16."""
    gen = torch.Generator().manual_seed(0)
    for vocab in (128256, 49152, 151936, 50021):
        for dtype in (torch.float32, torch.bfloat16):
            # integer logits in a small range: many exact ties, in every chunk and across chunks
            logits = torch.randint(-50, 50, (5, vocab), generator=gen).to(dtype)
            logits[1, [7, vocab - 1]] = 60  # the maximum twice, in the first and the last chunk
            logits[2, :] = 3  # one value everywhere: index 0
            logits = logits.to(device)
            got = greedy.greedy_token(logits)
            assert got.shape == (5, 1) and got.dtype == torch.long
            assert torch.equal(got, logits.argmax(-1, keepdim=True)), (vocab, dtype, got.flatten().tolist())
            assert got[1, 0] == 7 and got[2, 0] == 0


def check_greedy_into(device: str) -> None:
    """quantkit.eval.greedy.greedy_into in one launch (ONE_LAUNCH; on the CPU through Triton's interpreter): the same
    indices as argmax on check_greedy_token's logits (ties inside a program's chunk and across programs, a row whose
    only maximum is its last element, -0.0 against 0.0), written into the step's token tensor, and again on a second
    call (the keys and counters left zero)."""
    saved, greedy.ONE_LAUNCH = greedy.ONE_LAUNCH, True
    try:
        gen = torch.Generator().manual_seed(1)
        for vocab in (128256, 50021, 4096, 100):
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                logits = torch.randint(-50, 50, (5, vocab), generator=gen).to(dtype)
                logits[1, [7, vocab - 1]] = 60  # the maximum twice, in the first and the last chunk
                logits[2, :] = 3  # one value everywhere: index 0
                logits[3, -1] = 99  # the maximum the very last element
                logits[4, :] = -1.0
                logits[4, [5, 9]] = torch.tensor([-0.0, 0.0], dtype=dtype)  # equal values: the first
                logits = logits.to(device)
                assert greedy.one_launch_runs(logits)
                want = logits.argmax(-1, keepdim=True)
                for _ in range(2):
                    token = torch.full((5, 1), -7, dtype=torch.long, device=device)
                    greedy.greedy_into(logits, token)
                    assert torch.equal(token, want), (vocab, dtype, token.flatten().tolist(), want.flatten().tolist())
                assert token[1, 0] == 7 and token[2, 0] == 0 and token[3, 0] == vocab - 1 and token[4, 0] == 5
                assert not greedy._keys[logits.device].any() and not greedy._counts[logits.device].any()
    finally:
        greedy.ONE_LAUNCH = saved
