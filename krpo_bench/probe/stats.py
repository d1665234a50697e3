"""Summary statistics of M one-batch gradients against a reference gradient (streamed: the
gradients themselves are not kept, only their sum and per-batch scalars)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from scipy import stats


@dataclass
class GradientTally:
    """Running sums over the one-batch gradients of one (estimator, group size)."""

    reference: torch.Tensor
    total: torch.Tensor | None = None
    cosines: list[float] = field(default_factory=list)
    squared_norms: list[float] = field(default_factory=list)
    advantage_rms: list[float] = field(default_factory=list)

    def add(self, gradient: torch.Tensor, advantages: torch.Tensor) -> None:
        """Record one batch's gradient and its advantages (NaN-free). The running sum stays in the
        gradient's float32 (one parameter-sized vector per row of the table); norms and dot products
        are taken in float64."""
        self.total = gradient.clone() if self.total is None else self.total + gradient
        norm = gradient.double().norm().item()
        self.cosines.append(cosine(gradient, self.reference) if norm > 0 else 0.0)
        self.squared_norms.append(norm**2)
        self.advantage_rms.append(advantages.double().pow(2).mean().sqrt().item() if advantages.numel() else 0.0)

    def summary(self, confidence: float = 0.95) -> dict[str, float]:
        """Mean one-batch cosine to the reference with a t-interval over batches; the cosine of the mean
        gradient (raw: with M batches it still carries the mean's own noise) and of the expected gradient
        (its bias alone: mean . ref / (|E g| |ref|), NaN when |E g|^2 is not resolved); the trace of the
        gradient covariance; the signal-to-noise ratio |E g|^2 / tr Cov(g), with |E g|^2 estimated
        without bias as |mean|^2 - tr/M; the advantages' root mean square; the share of zero gradients."""
        m = len(self.cosines)
        cos = torch.tensor(self.cosines, dtype=torch.float64)
        mean = self.total.double() / m
        half = stats.t.ppf(0.5 + confidence / 2, m - 1) * cos.std().item() / math.sqrt(m) if m > 1 else math.nan
        trace = (sum(self.squared_norms) - m * mean.norm().item() ** 2) / (m - 1)
        signal = mean.norm().item() ** 2 - trace / m
        return {
            "cos_mean": cos.mean().item(),
            "cos_ci_low": cos.mean().item() - half,
            "cos_ci_high": cos.mean().item() + half,
            "cos_of_mean": cosine(mean, self.reference) if mean.norm() > 0 else 0.0,
            "cos_expected": (
                (mean @ self.reference.double().to(mean.device)).item() / math.sqrt(signal) / self.reference.norm().item()
                if signal > 0 else math.nan
            ),
            "grad_norm": math.sqrt(sum(self.squared_norms) / m),
            "var_trace": trace,
            "snr": signal / trace if trace > 0 else math.nan,
            "adv_rms": sum(self.advantage_rms) / m,
            "zero_grad_frac": sum(n == 0 for n in self.squared_norms) / m,
        }


def paired_difference(a: list[float], b: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of a - b over paired batches (same rollouts) with its t-interval."""
    diff = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    m = len(diff)
    half = stats.t.ppf(0.5 + confidence / 2, m - 1) * diff.std().item() / math.sqrt(m) if m > 1 else math.nan
    return diff.mean().item(), diff.mean().item() - half, diff.mean().item() + half


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two flat vectors (float64)."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double().to(a.device), dim=0).item()
