"""Perplexity over non-overlapping windows of a text: each window of ``ctx`` tokens predicts its tokens 1..ctx-1."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from quantkit.errors import InputError


@dataclass
class Scores:
    nll: torch.Tensor  # fp64 [tokens], negative log-likelihood of every predicted token, window after window

    @property
    def tokens(self) -> int:
        return self.nll.numel()

    @property
    def ppl(self) -> float:
        return math.exp(float(self.nll.mean()))

    @property
    def stderr(self) -> float:
        """Standard error of the perplexity (delta method on the mean NLL)."""
        if self.tokens < 2:
            return float("nan")
        return self.ppl * float(self.nll.std()) / math.sqrt(self.tokens)

    def to_dict(self) -> dict:
        return {"ppl": round(self.ppl, 4), "stderr": round(self.stderr, 4), "tokens": self.tokens}


def windows(ids: torch.Tensor, *, ctx: int, max_windows: int | None = None) -> torch.Tensor:
    """[W, ctx] non-overlapping windows of a 1-D token tensor (the tail shorter than ctx is dropped)."""
    count = ids.numel() // ctx
    if max_windows is not None:
        count = min(count, max_windows)
    if count < 1:
        raise InputError(f"the text has {ids.numel()} tokens, fewer than one window of {ctx}; use a longer text or a smaller --ctx")
    return ids[: count * ctx].view(count, ctx)


def tokenize(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


@torch.inference_mode()
def window_logprobs(model, batch: torch.Tensor) -> torch.Tensor:
    """log-softmax of the logits predicting tokens 1..ctx-1 of each window, fp32 [B, ctx-1, vocab]."""
    logits = model(batch.to(model.device)).logits[:, :-1].float()
    return torch.log_softmax(logits, dim=-1)


def score(model, wins: torch.Tensor, *, desc: str = "perplexity", progress: bool = True, on_window=None) -> Scores:
    """NLL of every predicted token; ``on_window(i, logprobs)`` sees each window's log-probabilities."""
    out = []
    for i in tqdm(range(wins.shape[0]), desc=desc, unit="window", disable=not progress):
        lp = window_logprobs(model, wins[i : i + 1])
        target = wins[i : i + 1, 1:].to(lp.device)
        out.append(-lp.gather(-1, target.unsqueeze(-1)).squeeze(-1).flatten().double().cpu())
        if on_window is not None:
            on_window(i, lp)
    return Scores(torch.cat(out))
