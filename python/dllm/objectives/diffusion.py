"""The diffusion objectives: SEDD score entropy, MDLM continuous-time masked diffusion, LLaDA masked CE."""

from __future__ import annotations

import torch

from ..sedd.schedules import get_noise
from .base import Objective, draw_mask_counts, loss_at_masked, masked_by_count, sample_t
from .losses import masked_diffusion_loss, score_entropy_loss


def _network_sigma(noise, m: torch.Tensor) -> torch.Tensor:
    """The network's noise input at mask rate ``m``: the total noise -log(1 - m), clamped to the
    schedule's range [sigma(0), sigma(1)] that training covered (rates above the schedule's last,
    1 - eps for the log-linear one, meet the network as the samplers' first step does: at sigma(1))."""
    lo, hi = noise(torch.tensor([0.0, 1.0], dtype=torch.float64))[0].tolist()
    return (-torch.log1p(-m)).clamp(lo, hi).float()


class SEDD(Objective):
    """Score entropy (SEDD, Lou et al. 2024, arXiv:2310.16834): per-sequence
    ``sum_l dsigma(t) * SE``, mean over the batch.

    ``graph="absorb"`` (the mask is the last vocabulary entry, logits scaled by sigma) or
    ``"uniform"`` (the model's output covers the real tokens only, no mask).
    """

    name = "sedd"
    time_conditioning = True

    def __init__(self, tokenizer, *, graph: str = "absorb", noise: str = "loglinear", sampling_eps: float = 1e-3):
        super().__init__(tokenizer)
        if graph not in ("absorb", "uniform"):
            raise ValueError(f"unknown graph {graph!r}; expected 'absorb' or 'uniform'")
        if self.mask_id != self.vocab_size - 1:
            raise ValueError(f"SEDD needs the mask as the last vocabulary entry; this tokenizer has it at "
                             f"{self.mask_id} of {self.vocab_size}")
        self.graph, self.noise, self.sampling_eps = graph, get_noise(noise), sampling_eps

    @property
    def model_vocab_size(self) -> int:
        return self.vocab_size if self.graph == "absorb" else self.vocab_size - 1

    def draw(self, batch, seq_len, generator):
        d = {"t": sample_t(batch, generator, self.sampling_eps, antithetic=False),
             "u": torch.rand(batch, seq_len, generator=generator)}
        if self.graph == "uniform":
            d["y"] = torch.randint(0, self.model_vocab_size, (batch, seq_len), generator=generator)
        return d

    def noisy(self, x0, draws):
        sigma, dsigma = self.noise(draws["t"].to(x0.device))
        move = draws["u"].to(x0.device) < -torch.expm1(-sigma)[:, None]
        if self.graph == "absorb":
            x_t = torch.where(move, torch.full_like(x0, self.mask_id), x0)
        else:
            x_t = torch.where(move, draws["y"].to(x0.device), x0)
        return x_t, sigma, dsigma

    def nll(self, model, x0, draws):
        x_t, sigma, dsigma = self.noisy(x0, draws)
        if self.graph == "absorb":
            return loss_at_masked(score_entropy_loss, model, x_t, sigma, self.mask_id, x0, sigma, dsigma,
                                  graph="absorb", scale_by_sigma=True)
        return score_entropy_loss(model(x_t, sigma), x_t, x0, sigma, dsigma, graph=self.graph, scale_by_sigma=False)

    def bound_draw(self, batch, seq_len, generator):
        if self.graph == "absorb":
            return draw_mask_counts(batch, seq_len, generator)
        # v in (0, 1], stratified over the batch; "below" picks the sequences that cover (0, sigma(0)]
        strata = torch.rand(batch, generator=generator, dtype=torch.float64) + torch.randperm(batch, generator=generator)
        return {"v": 1 - strata / batch, "below": torch.rand(batch, generator=generator, dtype=torch.float64),
                "u": torch.rand(batch, seq_len, generator=generator, dtype=torch.float64),
                "y": torch.randint(0, self.model_vocab_size, (batch, seq_len), generator=generator)}

    def bound(self, model, x0, draws):
        """Absorb: the DWDSE bound with the all-mask prior, int_0^inf dsigma E[sum_masked SE]. In the mask
        rate m = 1 - e^{-sigma} that is int_0^1 (dm / m) E[sum_masked SE * expm1(sigma)], estimated by
        mask counts (``masked_by_count``). The training estimator (t in [eps, 1]) leaves out sigma above
        sigma(1) (the prior term: the forward process ends with a fraction eps unmasked, the samplers
        start all-masked) and expects (1 - eps) log V per token of a uniform model whose exact NLL is
        log V. Uniform: see ``_uniform_bound``."""
        if self.graph == "uniform":
            return self._uniform_bound(model, x0, draws)
        x_t, m, w = masked_by_count(x0, draws, self.mask_id)
        sigma = -torch.log1p(-m)
        return loss_at_masked(score_entropy_loss, model, x_t, _network_sigma(self.noise, m), self.mask_id, x0,
                              sigma.float(), (w * torch.expm1(sigma)).float(), graph="absorb", scale_by_sigma=True)

    def _uniform_bound(self, model, x0, draws):
        """The DWDSE bound with the uniform prior the samplers start from at sigma(1):
        int_0^{sigma(1)} E[sum SE] dsigma + L KL(q_{sigma(1)}(.|x0) || uniform), the KL in closed form
        (each token is noised alone). The training estimator (t in [eps, 1], weighted 1 / (1 - eps))
        leaves out sigma below sigma(eps), where the integrand grows like log(1 / sigma), and the prior
        term, so it can read below the exact NLL. Here t = v^2 for v uniform on (0, 1]: a token that
        jumped at noise sigma scores about K / sigma with probability about sigma, which uniform t would
        meet with infinite variance. A schedule with sigma(0) > 0 (geometric) gives (0, sigma(0)] a small
        share of the sequences, which draw the jump probability 1 - e^{-sigma} in (0, 1 - e^{-sigma(0)}]
        the same way and feed the network sigma(0), the least noise it was trained on."""
        K, L = self.model_vocab_size, x0.shape[1]
        v, below = draws["v"].to(x0.device), draws["below"].to(x0.device)
        t = v * v
        sigma, dsigma = self.noise(t)
        (sigma0, sigma1), _ = self.noise(torch.tensor([0.0, 1.0], dtype=torch.float64))
        share = 0.05 if sigma0 > 0 else 0.0
        low = below < share
        if share:
            jump0 = -torch.expm1(-sigma0)
            jump = jump0 * t
            sigma = torch.where(low, -torch.log1p(-jump), sigma)
            dsigma = torch.where(low, jump0 / (1 - jump) / share, dsigma / (1 - share))
        dsigma = dsigma * 2 * v  # over the density of t = v^2
        move = draws["u"].to(x0.device) < -torch.expm1(-sigma)[:, None]
        x_t = torch.where(move, draws["y"].to(x0.device), x0)
        logits = model(x_t, torch.where(low, sigma0.to(sigma), sigma).float())
        integral = score_entropy_loss(logits, x_t, x0, sigma.float(), dsigma.float(), graph="uniform",
                                      scale_by_sigma=False)
        jump1 = -torch.expm1(-sigma1)
        kept = 1 - jump1 + jump1 / K  # q_{sigma(1)}(x0 | x0); every other token has jump1 / K
        prior = kept * torch.log(kept * K) + (1 - kept) * torch.log(jump1)
        return integral + L * prior.to(integral)

    def train_loss(self, nll, seq_len):
        return nll.mean()  # SEDD's reduction: summed over positions, averaged over sequences

    def config(self):
        return {"name": self.name, "graph": self.graph, "noise": self.noise.config()}


class MDLM(Objective):
    """Continuous-time masked diffusion with SUBS (MDLM, Sahoo et al. 2024, arXiv:2406.07524):
    ``-log p(x0) * dsigma / expm1(sigma)`` at masked positions (``1/t`` for the log-linear
    schedule), antithetic t."""

    name = "mdlm"

    def __init__(self, tokenizer, *, noise: str = "loglinear", sampling_eps: float = 1e-3, antithetic: bool = True):
        super().__init__(tokenizer)
        self.noise, self.sampling_eps, self.antithetic = get_noise(noise), sampling_eps, antithetic

    def draw(self, batch, seq_len, generator):
        return {"t": sample_t(batch, generator, self.sampling_eps, self.antithetic),
                "u": torch.rand(batch, seq_len, generator=generator)}

    def nll(self, model, x0, draws):
        sigma, dsigma = self.noise(draws["t"].to(x0.device))
        move = draws["u"].to(x0.device) < -torch.expm1(-sigma)[:, None]
        x_t = torch.where(move, torch.full_like(x0, self.mask_id), x0)
        return loss_at_masked(masked_diffusion_loss, model, x_t, sigma, self.mask_id, x0, dsigma / torch.expm1(sigma),
                              mask_id=self.mask_id)

    def bound_draw(self, batch, seq_len, generator):
        return draw_mask_counts(batch, seq_len, generator)

    def bound(self, model, x0, draws):
        """The continuous-time NELBO with the all-mask prior over mask rates [0, 1] (``masked_by_count``).
        The training estimator's mask rate (1 - eps) t, t in [eps, 1], never reaches the prior: it
        expects (1 - eps) log V per token of a uniform model whose exact NLL is log V."""
        x_t, m, w = masked_by_count(x0, draws, self.mask_id)
        return loss_at_masked(masked_diffusion_loss, model, x_t, _network_sigma(self.noise, m), self.mask_id, x0,
                              w.float(), mask_id=self.mask_id)

    def step_bound(self, model, x0, draws):
        """The T-step bound's estimator of the samplers' process (mask rate t, all-masked at t = 1, as
        ``dllm.sampling``'s mdlm sampler runs it), for t drawn from the grid {1/T, ..., 1}: CE of the
        masked tokens weighted by (alpha_s - alpha_t) / (1 - alpha_t) * T = 1 / t. The network sees the
        sigma the sampler feeds it at mask rate t (the log-linear one, whatever schedule trained it)."""
        from ..sampling.masked import loglinear_sigma

        t = draws["t"].to(x0.device)
        x_t = torch.where(draws["u"].to(x0.device) < t[:, None], torch.full_like(x0, self.mask_id), x0)
        return loss_at_masked(masked_diffusion_loss, model, x_t, loglinear_sigma(t), self.mask_id, x0, 1.0 / t,
                              mask_id=self.mask_id)

    def config(self):
        return {"name": self.name, "noise": self.noise.config(), "antithetic": self.antithetic}


class LLaDA(Objective):
    """LLaDA's pre-training loss (Nie et al. 2025, arXiv:2502.09992): mask with
    ``p = (1 - eps) t + eps``, CE on masked tokens divided by ``p``, summed and divided by
    batch * length. The CE is over the vocabulary without the mask token (MDLM's SUBS, as
    dllm's samplers never propose it), where LLaDA's covers the mask too: the values differ
    from LLaDA's by the mask's share of each softmax."""

    name = "llada"
    arch = "llada"
    random_length = 0.01  # "1% of the pre-training data is set to a random length in [1, 4096]"

    def __init__(self, tokenizer, *, eps: float = 1e-3):
        super().__init__(tokenizer)
        self.eps = eps

    def draw(self, batch, seq_len, generator):
        return {"t": torch.rand(batch, generator=generator), "u": torch.rand(batch, seq_len, generator=generator)}

    def nll(self, model, x0, draws):
        p = (1 - self.eps) * draws["t"].to(x0.device) + self.eps
        x_t = torch.where(draws["u"].to(x0.device) < p[:, None], torch.full_like(x0, self.mask_id), x0)
        return loss_at_masked(masked_diffusion_loss, model, x_t, None, self.mask_id, x0, 1.0 / p, mask_id=self.mask_id)

    def bound_draw(self, batch, seq_len, generator):
        return draw_mask_counts(batch, seq_len, generator)

    def bound(self, model, x0, draws):
        """The NELBO over mask rates [0, 1] (``masked_by_count``); training's rates (1 - eps) t + eps leave out [0, eps)."""
        x_t, _, w = masked_by_count(x0, draws, self.mask_id)
        return loss_at_masked(masked_diffusion_loss, model, x_t, None, self.mask_id, x0, w.float(), mask_id=self.mask_id)

    def config(self):
        return {"name": self.name, "eps": self.eps}
