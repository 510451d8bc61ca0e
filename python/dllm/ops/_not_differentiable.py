"""Autograd kernels that raise, for the ops' outputs and second derivatives that have no gradient."""

import torch


# Without an autograd kernel, torch's fallback would let gradients flow through these ops as None
# or zeros with only a warning: the samplers' float outputs (log-probabilities, confidences) and
# second derivatives of the fused losses and attention raise instead. They raise when the
# gradient is computed, not when the backward is traced: torch.compile traces the backward of
# every output that requires grad (a sampler's conf or logprob returned from a compiled function
# whose logits require grad), so the backward emits this op, whose fake kernel lets the trace
# through and whose kernel raises, in eager at once and in a compiled backward when it runs.
@torch.library.custom_op("dllm::_not_differentiable", mutates_args=())
def _not_differentiable(grad: torch.Tensor, shape: list[int], dtype: torch.dtype, what: str) -> torch.Tensor:
    raise RuntimeError(f"{what} is not differentiable")


@_not_differentiable.register_fake
def _not_differentiable_fake(grad, shape, dtype, what):
    return grad.new_empty(shape, dtype=dtype)


def _register_not_differentiable(op: str, what: str) -> None:
    def setup_context(ctx, inputs, output, keyword_only_inputs=None):
        ctx.inputs = [(t.shape, t.dtype) if isinstance(t, torch.Tensor) else None for t in inputs]

    def backward(ctx, *grads):
        anchor = next(g for g in grads if g is not None)
        return tuple(torch.ops.dllm._not_differentiable(anchor, meta[0], meta[1], what) if need and meta else None
                     for need, meta in zip(ctx.needs_input_grad, ctx.inputs))

    torch.library.register_autograd(f"dllm::{op}", backward, setup_context=setup_context)


_register_not_differentiable("sample_categorical", "dllm.ops.sample_categorical (its logprob output)")
_register_not_differentiable("predict_masked", "dllm.ops.predict_masked (its confidence output)")
_register_not_differentiable("adaln", "dllm.ops.adaln (models run its math in torch under autograd)")
_register_not_differentiable("adaln_residual", "dllm.ops.adaln_residual (models run its math in torch under autograd)")
for _op, _names in (("attention", "attention and attention_varlen"), ("score_entropy_loss", "score_entropy_loss"),
                    ("masked_diffusion_loss", "masked_diffusion_loss")):
    _register_not_differentiable(f"{_op}_backward", f"the gradient of dllm.ops.{_names} (no double backward)")
