"""Perplexity over non-overlapping windows of a text: each window of ``ctx`` tokens predicts its tokens 1..ctx-1.

Against a baseline on the same windows, also what llama.cpp's perplexity tool reports beside perplexity, because
perplexity alone hides damage: the KL divergence KL(baseline || quantized) of the next-token distributions and
the top-1 agreement (how often both models rank the same token first), token by token.
"""

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


@dataclass
class Agreement:
    """Per-token comparison of a model with its baseline on the same windows."""

    kl: torch.Tensor  # fp64 [tokens], KL(baseline || model) of the next-token distributions, in nats
    same_top1: torch.Tensor  # bool [tokens], both models put the same token first

    @property
    def tokens(self) -> int:
        return self.kl.numel()

    @staticmethod
    def _stderr(values: torch.Tensor) -> float:
        return float(values.std()) / math.sqrt(values.numel()) if values.numel() > 1 else float("nan")

    def to_dict(self) -> dict:
        kl, top1 = self.kl, self.same_top1.double()
        return {
            "kl_divergence": round(float(kl.mean()), 6),
            "kl_divergence_stderr": round(self._stderr(kl), 6),
            "kl_divergence_p99": round(float(torch.quantile(kl.float(), 0.99)), 6),
            "kl_divergence_max": round(float(kl.max()), 6),
            "top1_agreement": round(float(top1.mean()), 6),
            "top1_agreement_stderr": round(self._stderr(top1), 6),
        }


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
    """log-softmax of the logits predicting tokens 1..ctx-1 of each window, fp32 [B, ctx-1, vocab].

    ``model`` is a transformers model, or anything with a ``logprobs(batch)`` method of the same contract
    (quantkit.eval.backends: the llama.cpp backend)."""
    if hasattr(model, "logprobs"):
        return model.logprobs(batch)
    logits = model(batch.to(model.device)).logits[:, :-1].float()
    return torch.log_softmax(logits, dim=-1)


def _nll(lp: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    target = batch[:, 1:].to(lp.device)
    return -lp.gather(-1, target.unsqueeze(-1)).squeeze(-1).flatten().double().cpu()


def score(model, wins: torch.Tensor, *, desc: str = "perplexity", progress: bool = True, on_window=None) -> Scores:
    """NLL of every predicted token; ``on_window(i, logprobs)`` sees each window's log-probabilities."""
    out = []
    for i in tqdm(range(wins.shape[0]), desc=desc, unit="window", disable=not progress):
        lp = window_logprobs(model, wins[i : i + 1])
        out.append(_nll(lp, wins[i : i + 1]))
        if on_window is not None:
            on_window(i, lp)
    return Scores(torch.cat(out))


def compare_window(base_lp: torch.Tensor, lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(base || model) per token fp64, same top-1 per token) for log-probabilities [B, T, vocab] of one window."""
    if base_lp.shape != lp.shape:
        raise InputError(f"the baseline gives log-probabilities of shape {tuple(base_lp.shape)}, the model "
                         f"{tuple(lp.shape)}; both must share one tokenizer and vocabulary")
    lp = lp.to(base_lp.device)
    kl = (base_lp.exp() * (base_lp - lp)).sum(-1).flatten().clamp_min(0).double().cpu()
    same = (base_lp.argmax(-1) == lp.argmax(-1)).flatten().cpu()
    return kl, same


def score_against(model, baseline, wins: torch.Tensor, *, progress: bool = True,
                  desc: str = "perplexity vs baseline") -> tuple[Scores, Scores, Agreement]:
    """(model scores, baseline scores, agreement), running both window by window: the baseline first, and only
    one window's log-probabilities of each held at a time."""
    nll, base_nll, kls, same = [], [], [], []
    for i in tqdm(range(wins.shape[0]), desc=desc, unit="window", disable=not progress):
        batch = wins[i : i + 1]
        base_lp = window_logprobs(baseline, batch)
        base_nll.append(_nll(base_lp, batch))
        lp = window_logprobs(model, batch)
        nll.append(_nll(lp, batch))
        kl, top1 = compare_window(base_lp, lp)
        kls.append(kl)
        same.append(top1)
        del base_lp, lp
    return Scores(torch.cat(nll)), Scores(torch.cat(base_nll)), Agreement(torch.cat(kls), torch.cat(same))
