"""The public API as the issues fix it: code outside this repository calls these names with these
parameters. Each signature below is copied from an issue; the code may add parameters (with
defaults, keyword-only or after the issue's positional ones), never rename, reorder or drop one."""

import dataclasses
import inspect

import pytest

import dllm
import dllm.models
import dllm.sampling.cuda_graph
import dllm.sedd
import dllm.unmask_schedule
from dllm.models import ARTransformer, DiffusionTransformer, LLaDAModel

ISSUE_SIGNATURES = {
    # the foundation issue
    dllm.ops.sample_categorical: "logits, temperature=1.0, *, generator=None",
    # the SEDD-kernel issue
    dllm.ops.sedd_step: "logits, x, sigma, dsig, *, graph, method, scale_by_sigma=True, generator=None",
    dllm.ops.score_entropy_loss: "logits, x_t, x0, sigma, dsigma, *, graph, scale_by_sigma=True",
    dllm.ops.masked_diffusion_loss: "logits, x_t, x0, weight, *, mask_id",
    dllm.ops.sample_transition: "x0, sigma, *, graph, num_classes, generator=None",
    # the unmasking issue
    dllm.ops.predict_masked: "logits, x, *, mask_id, temperature=0.0, top_k=0, top_p=1.0, confidence='prob', "
                             "logits_shift=0, generator=None",
    dllm.ops.commit_tokens: "x, x0, conf, *, mask_id, num_tokens=None, threshold=None, prob=None, window=None, "
                            "position_temperature=0.0, generator=None",
    # the attention issue
    dllm.ops.attention: "q, k, v, *, kv_len=None, q_len=None, softmax_scale=None",
    dllm.ops.attention_varlen: "q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k",
    # the sampling issue
    dllm.generate: "model, prompt=None, *, gen_length, steps, sampler, block_length=None, temperature=0.0, top_k=0, "
                   "top_p=1.0, threshold=None, alg_temp=0.0, cfg_scale=0.0, infill=None, attention_mask=None, "
                   "cache=None, cuda_graph=False, generator=None, callback=None, return_history=False",
    # the published-checkpoints issue (its closing note spells out the keywords)
    dllm.models.from_pretrained: "path, *, map_location='cpu', dtype=None",
    # docs/api.md's (written against the issues' names)
    dllm.ops.rotary: "x, cos, sin",
    dllm.ops.raise_pending_errors: "",
    dllm.ops.adaln: "x, weight, shift, scale, *, eps=1e-5",
    dllm.ops.adaln_residual: "x, update, gate, weight, shift, scale, *, eps=1e-5",
    dllm.unmask_schedule.linear_transfer_counts: "masked, steps",
    dllm.sampling.cuda_graph.clear_graphs: "model=None",
    ARTransformer.generate: "self, prompt, max_new_tokens, *, temperature=1.0, generator=None, cuda_graph=False",
    ARTransformer.decode_step: "self, token, cache, position, *, temperature, generator=None",
    dllm.sedd.Absorbing: "vocab_size",
    dllm.sedd.Uniform: "vocab_size",
    dllm.sedd.LogLinear: "eps=1e-3",
    dllm.sedd.Geometric: "sigma_min=1e-4, sigma_max=20.0",
}


def _expected(text: str) -> inspect.Signature:
    namespace = {}
    exec(f"def f({text}): pass", namespace)
    return inspect.signature(namespace["f"])


def _mismatches(actual: inspect.Signature, expected: inspect.Signature) -> list[str]:
    problems = []
    got = list(actual.parameters.values())
    names = [p.name for p in got]
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    want_positional = [p.name for p in expected.parameters.values() if p.kind in positional]
    got_positional = [p.name for p in got if p.kind in positional]
    if got_positional[:len(want_positional)] != want_positional:
        problems.append(f"positional parameters {got_positional}, the issue's {want_positional}")
    for p in got_positional[len(want_positional):]:  # additions after the issue's positional ones
        if actual.parameters[p].default is inspect.Parameter.empty:
            problems.append(f"added positional parameter {p!r} without a default")
    for want in expected.parameters.values():
        if want.name not in names:
            problems.append(f"no parameter {want.name!r}")
            continue
        have = actual.parameters[want.name]
        if have.kind != want.kind:
            problems.append(f"{want.name!r} is {have.kind.description}, the issue's {want.kind.description}")
        if have.default != want.default:
            problems.append(f"{want.name!r} defaults to {have.default!r}, the issue's {want.default!r}")
    for p in got:  # additions must not be required
        if p.name not in expected.parameters and p.default is inspect.Parameter.empty and p.kind not in (
                inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            problems.append(f"added parameter {p.name!r} is required")
    return problems


@pytest.mark.parametrize("fn", list(ISSUE_SIGNATURES), ids=lambda fn: fn.__qualname__)
def test_signatures_match_the_issues(fn):
    expected = _expected(ISSUE_SIGNATURES[fn])
    assert _mismatches(inspect.signature(fn), expected) == []


def test_the_comparison_catches_renames_reorders_and_defaults():
    want = _expected("a, b=1, *, c, d=None")
    assert _mismatches(_expected("a, b=1, *, c, d=None, e=0"), want) == []
    assert _mismatches(_expected("a, b=1, e=None, *, c, d=None"), want) == []
    assert _mismatches(_expected("x, b=1, *, c, d=None"), want)
    assert _mismatches(_expected("b=1, a=0, *, c, d=None"), want)
    assert _mismatches(_expected("a, b=2, *, c, d=None"), want)
    assert _mismatches(_expected("a, b=1, c=0, d=None"), want)
    assert _mismatches(_expected("a, b=1, *, c, d=None, e"), want)


def test_generation_output_fields_in_the_issues_order():
    assert [f.name for f in dataclasses.fields(dllm.GenerationOutput)] == ["sequences", "history", "nfe", "step_times"]


@pytest.mark.parametrize("cls", [DiffusionTransformer, ARTransformer, LLaDAModel])
def test_model_classes_save_and_load_a_folder(cls):
    # the models issue: save_pretrained(dir) / from_pretrained(dir), config.json + model.safetensors
    for method in (cls.save_pretrained, cls.from_pretrained):
        params = [p for p in inspect.signature(method).parameters.values() if p.name != "self"]
        assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert all(p.default is not inspect.Parameter.empty or p.kind is p.VAR_KEYWORD for p in params[1:])


def test_top_level_names():
    for name in ("build_info", "ops", "generate", "GenerationOutput", "load_for_sampling", "train", "TrainConfig",
                 "models", "sedd", "reference"):
        assert hasattr(dllm, name), name
    assert {"version", "torch", "cuda", "cuda_archs"} <= set(dllm.build_info())
