"""Statistical checks for sampling kernels: observed frequencies against exact probabilities.

Only torch and numpy: the chi-square tail probability is the regularised upper incomplete gamma
function, so the tests need no SciPy (the GPU machine has no network to install it).
"""

import numpy as np
import torch


def exact_probs(logits: torch.Tensor, temperature: float) -> np.ndarray:
    """softmax(logits / T) of one row, in float64, from the values the kernel sees."""
    return torch.softmax(logits.double() / temperature, dim=-1).cpu().numpy()


def chi2_sf(stat: float, dof: int) -> float:
    """P(X >= stat) for X ~ chi-square with `dof` degrees of freedom."""
    return torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64),
                                   torch.tensor(stat / 2.0, dtype=torch.float64)).item()


def pooled(counts: np.ndarray, expected: np.ndarray, min_expected: float) -> tuple[np.ndarray, np.ndarray]:
    """Pools the categories whose expected count is below `min_expected` into one bin, so rare
    categories still count without breaking the chi-square approximation."""
    big = expected >= min_expected
    obs, exp = list(counts[big]), list(expected[big])
    if (~big).any():
        obs.append(counts[~big].sum())
        exp.append(expected[~big].sum())
        if exp[-1] < min_expected and len(exp) > 1:  # still too small: into the smallest other bin
            j = int(np.argmin(exp[:-1]))
            obs[j] += obs.pop()
            exp[j] += exp.pop()
    return np.array(obs, dtype=np.float64), np.array(exp, dtype=np.float64)


def chi_square_pvalue(tokens: torch.Tensor, probs: np.ndarray, min_expected: float = 5.0) -> float:
    """Pearson chi-square goodness-of-fit p-value of the draws against `probs`."""
    n = tokens.numel()
    counts = np.bincount(tokens.cpu().numpy().ravel(), minlength=probs.size).astype(np.float64)
    assert counts.size == probs.size, "a token outside the vocabulary was drawn"
    assert counts[probs == 0].sum() == 0, "a token of probability zero was drawn"
    obs, exp = pooled(counts[probs > 0], probs[probs > 0] * n, min_expected)
    if obs.size == 1:  # one bin holds all the mass, and no token outside it was drawn
        return 1.0
    stat = float(((obs - exp) ** 2 / exp).sum())
    return chi2_sf(stat, obs.size - 1)


def two_sample_pvalue(a: torch.Tensor, b: torch.Tensor, categories: int, min_expected: float = 5.0) -> float:
    """Chi-square test (2 x k contingency table) that two sets of draws share one distribution."""
    ca = np.bincount(a.cpu().numpy().ravel(), minlength=categories).astype(np.float64)
    cb = np.bincount(b.cpu().numpy().ravel(), minlength=categories).astype(np.float64)
    total = ca + cb
    share = ca.sum() / total.sum()
    small = total * min(share, 1 - share) < min_expected
    table = np.stack([ca[~small], cb[~small]])
    if small.any():
        table = np.concatenate([table, [[ca[small].sum()], [cb[small].sum()]]], axis=1)
    table = table[:, table.sum(0) > 0]
    expected = np.outer(table.sum(1), table.sum(0)) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    return chi2_sf(stat, table.shape[1] - 1)


def group_edges(vocab: int) -> list[int]:
    """The first and last entries of every group of 2048 and subgroup of 256, and the row's last:
    where an off-by-one in the hierarchical draw loses an entry."""
    return sorted({i for lo in range(0, vocab, 256) for i in (lo, min(lo + 255, vocab - 1))})


def poisson_z(observed: int, expected: float) -> float:
    """How many standard deviations a Poisson count lies from its mean."""
    return (observed - expected) / np.sqrt(expected)
