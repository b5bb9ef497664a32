"""AdamW (Loshchilov and Hutter, ICLR 2019) for the LoRA parameters.

Written out rather than taken from torch.optim: constructing any
torch.optim optimizer imports torch._dynamo, 4 s of CPU per process, and
every federated round starts a fresh site process.  The update is the one
torch.optim.AdamW makes with its defaults (no amsgrad, bias-corrected
moments, weight decay applied to the parameter before the step).
"""
from __future__ import annotations

import math

import torch


class AdamW:
    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (
            0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        self.params = params
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.steps = 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        correction1 = 1 - self.beta1 ** self.steps
        correction2 = 1 - self.beta2 ** self.steps
        step_size = self.lr / correction1
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            p.mul_(1 - self.lr * self.weight_decay)
            m.lerp_(p.grad, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(p.grad, p.grad, value=1 - self.beta2)
            denom = (v.sqrt() / math.sqrt(correction2)).add_(self.eps)
            p.addcdiv_(m, denom, value=-step_size)
