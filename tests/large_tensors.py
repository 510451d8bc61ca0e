"""The CPU ops on logits of more than 2^31 elements (LLaDA's V = 126464 at B 8, L 4096 holds 4e9),
where an offset formed in 32 bits would read the wrong rows. Each row carries a planted maximum (or
its own logits), so the rows past 2^31 elements are checked where they are. Run by hand, about a
minute and 10 GB of memory: ``python tests/large_tensors.py``; not part of the suite, whose machines
may not hold that much."""

from __future__ import annotations

import torch

import dllm


def planted(shape: tuple[int, int, int], last: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bfloat16 logits sharing one random row, each row's maximum planted at its own index < last."""
    logits = torch.empty(shape, dtype=torch.bfloat16)
    logits.copy_(torch.randn(shape[-1]).bfloat16().expand(shape))
    rows = torch.arange(shape[0] * shape[1])
    peak = ((rows * 7919) % last).view(shape[:2])
    logits.view(-1, shape[-1])[rows, peak.view(-1)] = 100.0
    return logits, peak


def check_sampling() -> None:
    V = 126464
    logits, peak = planted((1, 2**31 // V + 3, V), V - 1)  # never the mask id V - 1
    assert logits.numel() > 2**31
    x = torch.full(peak.shape, V - 1)
    for temperature in (0.0, 1.0):
        x0, _ = dllm.ops.predict_masked(logits, x, mask_id=V - 1, temperature=temperature)
        tokens, _ = dllm.ops.sample_categorical(logits, temperature)
        assert torch.equal(x0, peak) and torch.equal(tokens, peak), temperature


def check_sedd() -> None:
    K, B = 50258, 2
    L = 2**31 // K // B + 5  # batch 1's last rows end past 2^31 elements
    logits = torch.empty(B, L, K, dtype=torch.bfloat16)
    logits.copy_(torch.randn(K).bfloat16().expand(B, L, K))
    pos = torch.tensor([L - 1, L - 2, L - 7])
    logits[1, pos] = (3 * torch.randn(3, K)).bfloat16()
    mask = K - 1
    x_t = torch.randint(0, mask, (B, L))
    x0 = x_t.clone()
    x_t[1, pos], x0[1, pos] = mask, torch.tensor([5, 77, 50000])
    leaf = logits.requires_grad_()
    loss = dllm.ops.masked_diffusion_loss(leaf, x_t, x0, torch.tensor([1.0, 2.5]), mask_id=mask)
    loss.sum().backward()
    rows = logits.detach()[1, pos].double()
    rows[:, mask] = float("-inf")
    rows.requires_grad_()
    want = -2.5 * torch.log_softmax(rows, -1).gather(1, x0[1, pos, None]).sum()
    want.backward()
    assert loss[0] == 0 and abs(loss[1].item() - want.item()) < 1e-4 * want.item(), (loss, want)
    grad = leaf.grad
    assert not grad[0].any() and not grad[1, : L - 7].any()
    torch.testing.assert_close(grad[1, pos].double(), torch.nan_to_num(rows.grad), rtol=2**-8, atol=1e-6)
    del grad, leaf
    # the final denoising step draws each of those rows' planted token
    with torch.no_grad():
        logits[1, pos] = -30.0
        logits[1, pos, torch.tensor([11, 222, 40000])] = 60.0
    drawn = dllm.ops.sedd_step(logits.detach(), x_t, 0.01, 0.01, graph="absorb", method="denoise")
    assert drawn[1, pos].tolist() == [11, 222, 40000]


if __name__ == "__main__":
    torch.manual_seed(0)
    check_sampling()
    check_sedd()
    print("sample_categorical, predict_masked, masked_diffusion_loss and sedd_step: right past 2^31 elements")
