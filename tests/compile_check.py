"""A loss under torch.compile(fullgraph=True) against the same loss run eagerly."""

import torch


def assert_compiled_loss_matches_eager(total, logits: torch.Tensor) -> None:
    """``total(logits)``: a scalar loss. Its value and d(loss)/d(logits) compiled and eager must agree."""
    compiled = torch.compile(total, fullgraph=True)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    got, want = compiled(a), total(b)
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(a.grad, b.grad)
