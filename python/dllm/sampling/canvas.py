"""The canvas a sampler fills: the prompts (left-padded, or aligned from their attention mask)
followed by gen_length masks or an infill template, checked against the model's vocabulary and window."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import torch

from .model_protocol import max_seq_len_of

UNKNOWN = -1  # in an infill template: a position to generate (the only marker a uniform graph has)


def _check_window(model, canvas: int, gen_length: int) -> None:
    """A canvas longer than the model takes is named by its parts before the first network call."""
    window = max_seq_len_of(model)
    if window is None or canvas <= window:
        return
    prompt = canvas - gen_length
    fix = (f"lower gen_length to at most {window}" if prompt == 0 else
           f"shorten the prompt, or lower gen_length to at most {window - prompt}" if prompt < window else
           "shorten the prompt: it alone fills the window")
    raise ValueError(f"the prompt ({prompt} tokens) and gen_length ({gen_length}) make a canvas of {canvas} tokens, "
                     f"longer than the model's max_seq_len of {window}: {fix}")


def token_tensor(value, what: str, device) -> torch.Tensor:
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{what} must hold token ids, not text ({value[:20]!r}): encode it with the model's "
                        "tokenizer first")
    if isinstance(value, Mapping):  # a tokenizer's output (a dict or Hugging Face's BatchEncoding)
        raise TypeError(f"{what} must hold token ids, got a {type(value).__name__} with keys {list(value)[:4]}: "
                        "pass a tokenizer's output as prompt=enc['input_ids'], attention_mask=enc['attention_mask']")
    try:
        t = torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError) as error:  # ragged nested lists, objects that are not numbers
        raise ValueError(f"{what} must be a tensor, an array or a list of token ids, with rows of one length "
                         f"(got {type(value).__name__}: {error})") from None
    if t.numel() and (t.dtype == torch.bool or t.is_floating_point() or t.is_complex()):
        raise TypeError(f"{what} must hold integer token ids, got {t.dtype}")
    return t.to(torch.int64)


def _left_align(prompt: torch.Tensor, attention_mask, device):
    """The prompts with their padding moved to the left (right-padded rows are rotated), and the mask."""
    mask = torch.as_tensor(attention_mask, device=device)
    mask = mask[None] if mask.dim() == 1 else mask
    if mask.shape != prompt.shape:
        raise ValueError(f"attention_mask must have the prompt's shape {tuple(prompt.shape)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("attention_mask must hold 1 (or True) on real tokens and 0 (or False) on padding")
    mask = mask.bool()
    run_starts = mask & ~torch.nn.functional.pad(mask, (1, 0))[:, :-1]
    if bool((run_starts.sum(-1) > 1).any()):
        raise ValueError("attention_mask must mark one contiguous run of real tokens per row (left or right padding)")
    order = torch.sort(mask.to(torch.int8), dim=1, stable=True).indices  # pads first, tokens in their order
    return prompt.gather(1, order), mask.gather(1, order)


def _check_vocab(tokens: torch.Tensor, what: str, vocab_size: int | None, placeholder: int,
                 pad_id: int | None = None) -> None:
    """``pad_id``: the model's, where it pads ``tokens``."""
    if vocab_size is None:
        return
    outside = tokens[(tokens >= vocab_size) & (tokens != placeholder)]
    if pad_id is not None and pad_id >= vocab_size and bool((outside == pad_id).any()):
        raise ValueError(f"the model's pad_id {pad_id}, which pads the prompts, is outside its vocabulary of "
                         f"{vocab_size}")
    if outside.numel():
        raise ValueError(f"the {what} holds token id {int(outside.max())}, outside the model's vocabulary of "
                         f"{vocab_size}")


def _canvas(prompt, attention_mask, infill, gen_length: int, mask_id: int, pad_id: int, device,
            vocab_size: int | None = None):
    """Left-padded prompts followed by gen_length masks (or the infill template), and the prompts'
    attention mask: None where nothing is padded, so the model runs its unmasked path."""
    if infill is not None:
        infill = token_tensor(infill, "infill", device)
        infill = torch.where(infill == UNKNOWN, mask_id, infill)
        infill = infill[None] if infill.dim() == 1 else infill
        if infill.dim() != 2 or infill.shape[-1] != gen_length:
            raise ValueError(f"infill must be [gen_length] or [B, gen_length] with gen_length {gen_length}, "
                             f"got {tuple(infill.shape)}")
        if bool(((infill < 0) & (infill != mask_id)).any()):
            raise ValueError(f"infill holds negative ids other than {UNKNOWN} (the unknown marker)")
    if prompt is None:
        if attention_mask is not None:
            raise ValueError("attention_mask marks the padding of a prompt; there is no prompt (prompt=None)")
        prompt = torch.empty(1 if infill is None else infill.shape[0], 0, dtype=torch.int64, device=device)
    elif isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ValueError("prompt is an empty list; pass None for unconditional generation")
        if all(isinstance(t, numbers.Integral) for t in prompt):
            prompt = [prompt]  # one prompt's token ids, as a Hugging Face tokenizer's encode returns them
        rows = [token_tensor(p, "prompt", device) for p in prompt]
        if any(r.dim() != 1 for r in rows):
            raise ValueError("a list of prompts must hold 1-D prompts (or be one prompt's token ids)")
        width = max(r.numel() for r in rows)
        if attention_mask is not None:
            # a batch padded to one length, as a tokenizer returns it with padding=True (lists)
            if any(r.numel() < width for r in rows):
                raise ValueError("attention_mask marks the padding of prompts of one length; these prompts have "
                                 "different lengths, which dllm left-pads itself: drop attention_mask, or give "
                                 "the prompts padded to one length")
            prompt, attention_mask = _left_align(torch.stack(rows), attention_mask, device)
        else:
            if any(r.numel() < width for r in rows):
                if pad_id == mask_id:
                    raise ValueError(f"the model's pad_id (model.pad_id, 0 when it sets none) equals its mask_id "
                                     f"({mask_id}): ragged prompts need another pad_id")
                attention_mask = torch.stack([torch.arange(width, device=device) >= width - r.numel() for r in rows])
            prompt = torch.full((len(rows), width), pad_id, dtype=torch.int64, device=device)
            for i, r in enumerate(rows):
                prompt[i, width - r.numel():] = r
    else:
        prompt = token_tensor(prompt, "prompt", device)
        prompt = prompt[None] if prompt.dim() == 1 else prompt
        if prompt.dim() != 2:
            raise ValueError(f"prompt must be [P] or [B, P], got shape {tuple(prompt.shape)}")
        if attention_mask is not None:
            prompt, attention_mask = _left_align(prompt, attention_mask, device)
    if attention_mask is not None and mask_id >= 0:  # (a uniform graph's -1 placeholder is refused below)
        masks_in_padding = (prompt == mask_id) & ~attention_mask
        if pad_id != mask_id:  # the padding is never attended: any other id serves (filled without a host sync)
            prompt = prompt.masked_fill(masks_in_padding, pad_id)
        elif bool(masks_in_padding.any()):
            raise ValueError(f"the prompts' padding (attention_mask 0) holds the mask token {mask_id}, which is "
                             "also the model's pad_id: pad with another id, or give the model a pad_id")
    if bool((prompt < 0).any()):
        raise ValueError("the prompt holds negative token ids")
    if bool((prompt == mask_id).any()):
        raise ValueError(f"the prompt (or its padding) contains the mask token {mask_id}")
    _check_vocab(prompt, "prompt", vocab_size, mask_id, None if attention_mask is None else pad_id)
    if infill is not None:
        _check_vocab(infill, "infill", vocab_size, mask_id)
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    if infill is not None and prompt.shape[0] == 1 < infill.shape[0]:
        # one prompt, several templates: each template completes its own copy of the prompt
        prompt = prompt.expand(infill.shape[0], -1)
        attention_mask = None if attention_mask is None else attention_mask.expand(infill.shape[0], -1)
    batch, width = prompt.shape
    gen = torch.full((batch, gen_length), mask_id, dtype=torch.int64, device=device)
    if infill is not None:
        if infill.shape[0] not in (1, batch):
            raise ValueError(f"infill has {infill.shape[0]} rows for {batch} prompts")
        gen = infill.expand(batch, gen_length).clone()
    x = torch.cat([prompt, gen], 1)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones_like(gen, dtype=torch.bool)], 1)
    return x, attention_mask, width
