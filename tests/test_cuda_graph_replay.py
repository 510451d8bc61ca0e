"""cuda_graph=True on the CPU: every graphed sampler step replayed with CUDA-graph semantics
(tests/graph_replay.py) must give the eager run's tokens, draw for draw. The GPU tests here and
in test_kv_cache.py and test_models.py replay real CUDA graphs."""

import gc
import threading

import pytest
import torch

import dllm
from dllm.models import ARTransformer, build_model, model_config
from dllm.sampling import cuda_graph
from dllm.sampling.pretrained import ScoreModel
from dllm.sedd import Absorbing, Geometric, LogLinear, Uniform
from graph_replay import FreedSinceCapture, HostSyncInCapture, RecordedStep, cuda_graph_api_on_cpu, replay_on_cpu
from test_kv_cache import MASK, PROMPTS, V, make, perturbed

OTHER_PROMPTS = [[6, 2], [1, 2, 3, 4, 5, 6, 7], [9, 9, 9, 9]]  # PROMPTS' padded width, padded otherwise


def masked_model(arch, time_conditioning=False):
    return make(arch, layers=2, **({"time_conditioning": True} if time_conditioning else {}))


def score_model(graph, noise):
    torch.manual_seed(0)
    cfg = model_config("tiny", arch="dit", vocab_size=graph.num_classes, hidden=32, heads=4, layers=2, max_seq_len=96,
                       cond_dim=16, time_conditioning=True)
    return ScoreModel(perturbed(build_model(cfg)), graph, noise)


def eager_and_replayed(monkeypatch, model, second=None, **kw):
    """(eager, replayed) outputs of one call, or with ``second`` (the keywords that change) of two
    calls in a row with one generator each, the second replaying the first one's graphs."""
    runs = []
    for graph in (False, True):
        if graph:
            replay_on_cpu(monkeypatch)
        g = torch.Generator().manual_seed(3)
        runs.append([dllm.generate(model, generator=g, cuda_graph=graph, **kw)])
        captures = RecordedStep.captures
        if second is not None:
            runs[-1].append(dllm.generate(model, generator=g, cuda_graph=graph, **{**kw, **second}))
            assert RecordedStep.captures == captures  # the second call captured nothing
    (eager, *eager_more), (replayed, *replayed_more) = runs
    for a, b in zip(eager_more, replayed_more):
        assert torch.equal(a.sequences, b.sequences) and a.nfe == b.nfe
    return eager, replayed


CASES = [
    ("llada", "llada", {}), ("llada", "llada", {"cfg_scale": 1.0, "block_length": 8}),
    ("llada", "llada:random", {}), ("llada", "dream", {"alg_temp": 0.5}), ("llada", "dream:origin", {}),
    ("llada", "mdlm", {}), ("dit-t", "mdlm", {}), ("llada", "first-hitting", {}), ("dit-t", "first-hitting", {}),
    ("llada", "fast-dllm", {"block_length": 8, "threshold": 0.5}), ("dit-t", "fast-dllm", {"threshold": 0.5}),
    ("llada", "fast-dllm", {"block_length": 8, "threshold": 0.5, "cache": "dual"}),
    ("dit-t", "fast-dllm", {"block_length": 10, "threshold": 0.5, "cache": "dual"}),  # a shorter last block
]


@pytest.mark.parametrize("arch, sampler, kw", CASES, ids=[f"{a}-{s}-{len(k)}" for a, s, k in CASES])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_masked_samplers_replayed_as_graphs_equal_eager(monkeypatch, arch, sampler, kw, temperature):
    model = masked_model(arch.removesuffix("-t"), time_conditioning=arch.endswith("-t"))
    # The second call's prompts pad differently at the same width: new attention-mask values
    eager, replayed = eager_and_replayed(monkeypatch, model, {"prompt": OTHER_PROMPTS}, prompt=PROMPTS, gen_length=24,
                                         steps=12, sampler=sampler, temperature=temperature, return_history=True, **kw)
    assert torch.equal(replayed.sequences, eager.sequences)
    assert replayed.nfe == eager.nfe and len(replayed.step_times) == len(eager.step_times)
    assert all(torch.equal(a, b) for a, b in zip(replayed.history, eager.history))
    # mdlm: a step with the network and one reusing its logits; dual cache: the refresh, the cached
    # span and the shorter last block's
    assert 1 <= RecordedStep.captures <= (3 if "cache" in kw else 2)
    assert not (replayed.sequences == MASK).any()


@pytest.mark.parametrize("sampler, kw", [("mdlm", {}), ("fast-dllm", {"block_length": 8, "cache": "dual"})])
def test_bfloat16_weights_keep_their_graphs_across_calls(monkeypatch, sampler, kw):
    # How the e2e benchmark generates on a GPU: bfloat16 copies of the weights, no autocast.
    model = masked_model("dit").to(torch.bfloat16)
    eager, replayed = eager_and_replayed(monkeypatch, model, {"prompt": OTHER_PROMPTS}, prompt=PROMPTS, gen_length=16,
                                         steps=8, sampler=sampler, temperature=1.0, **kw)
    assert torch.equal(replayed.sequences, eager.sequences) and not (replayed.sequences == MASK).any()


def test_a_model_whose_weights_moved_gets_new_graphs(monkeypatch):
    # Graphs read the weights' addresses: after model.to(dtype) the old ones are freed.
    replay_on_cpu(monkeypatch)
    model = masked_model("dit")
    kw = dict(prompt=PROMPTS, gen_length=8, steps=4, sampler="llada", temperature=1.0)  # torch's generator
    dllm.generate(model, cuda_graph=True, **kw)
    model.to(torch.bfloat16)
    torch.manual_seed(1)
    replayed = dllm.generate(model, cuda_graph=True, **kw)
    assert RecordedStep.captures == 2
    torch.manual_seed(1)
    assert torch.equal(replayed.sequences, dllm.generate(model, **kw).sequences)



@pytest.mark.parametrize("attribute, values", [("logits_shift", (0, 1)), ("time_conditioned", (True, False))])
def test_a_changed_model_attribute_gets_new_graphs(monkeypatch, attribute, values):
    # A captured step froze the attribute's value: the same model with another value must not replay it.
    model = masked_model("dit", time_conditioning=True)
    g = torch.Generator()  # one object: a session is keyed by the generator too
    kw = dict(prompt=PROMPTS, gen_length=8, steps=4, sampler="dream", temperature=1.0, generator=g)
    expected = []
    def set_value(value):
        setattr(model, attribute, value)
        if attribute == "time_conditioned":  # a DiT called without sigma must be time-agnostic
            model.model.config.time_conditioning = value

    for value in values:
        set_value(value)
        g.manual_seed(0)
        expected.append(dllm.generate(model, **kw).sequences)
    assert not torch.equal(*expected)
    replay_on_cpu(monkeypatch)
    for value, eager in zip(values, expected):
        set_value(value)
        g.manual_seed(0)
        replayed = dllm.generate(model, cuda_graph=True, **kw)
        assert torch.equal(replayed.sequences, eager)
    assert RecordedStep.captures == 2


def test_a_call_overlapping_another_of_its_configuration_runs_eagerly(monkeypatch):
    # A kept session's buffers (canvas, padding mask, KV cache) serve one call at a time. The inner
    # call runs from the outer one's callback, as a second server thread would between two steps.
    model = masked_model("llada")
    kw = dict(gen_length=16, steps=8, sampler="llada", block_length=8)  # greedy: torch's generator alike
    eager = [dllm.generate(model, p, **kw).sequences for p in (PROMPTS, OTHER_PROMPTS)]
    replay_on_cpu(monkeypatch)
    dllm.generate(model, PROMPTS, cuda_graph=True, **kw)  # the configuration's graphs are kept
    captured, inner = RecordedStep.captures, []

    def interleave(step, x, logits):
        if step == 2:
            inner.append(dllm.generate(model, OTHER_PROMPTS, cuda_graph=True, **kw).sequences)

    outer = dllm.generate(model, PROMPTS, cuda_graph=True, callback=interleave, **kw).sequences
    assert torch.equal(outer, eager[0]) and torch.equal(inner[0], eager[1])
    assert RecordedStep.captures == captured  # the outer call replayed, the inner one ran eagerly


def test_a_call_on_another_stream_waits_for_the_work_the_last_one_left_queued(monkeypatch):
    # A server thread's call leaves the session with its copies and replays still queued on its
    # stream; the next call, from another thread on another stream, writes the same buffers. Its
    # stream must wait for the last call's event, recorded after that call's last replay, before
    # the new call's first replay (and the buffer copies before it, which follow the same wait).
    log = cuda_graph_api_on_cpu(monkeypatch)
    model = masked_model("dit")
    g = torch.Generator()  # one object: a session is keyed by the generator too
    kw = dict(gen_length=16, steps=8, sampler="mdlm", temperature=1.0, generator=g)
    prompts = (PROMPTS, OTHER_PROMPTS, PROMPTS)
    got, streams = [], []

    def call(i, prompt):
        g.manual_seed(i)
        got.append(dllm.generate(model, prompt, cuda_graph=True, **kw).sequences)
        streams.append(torch.cuda.current_stream())

    for i, prompt in enumerate(prompts):  # one after the other: each call gets the kept session
        thread = threading.Thread(target=call, args=(i, prompt))
        thread.start()
        thread.join()
    assert len(set(map(id, streams))) == 3

    def on(stream):  # (place in the log, what, mark) of what happened on stream
        return [(i, what, mark) for i, (what, s, mark) in enumerate(log) if s is stream]

    for before, after in zip(streams, streams[1:]):
        last_replay = max(i for i, what, _ in on(before) if what == "replay")
        records = [(i, mark) for i, what, mark in on(before) if what == "record"]
        assert records and records[-1][0] > last_replay
        first_replay = min(i for i, what, _ in on(after) if what == "replay")
        assert any(what == "wait" and mark == records[-1][1] and i < first_replay for i, what, mark in on(after))
    for i, (prompt, replayed) in enumerate(zip(prompts, got)):
        g.manual_seed(i)
        assert torch.equal(replayed, dllm.generate(model, prompt, **kw).sequences)


def test_a_session_freed_waits_for_the_work_its_last_call_left_queued(monkeypatch):
    # Freed, a session's buffers go back to the allocator of the stream that made them, while the
    # last call's copies and replays may still be queued on another: the host waits for them first.
    log = cuda_graph_api_on_cpu(monkeypatch)
    model = masked_model("dit")
    g = torch.Generator()
    kw = dict(gen_length=16, steps=8, sampler="mdlm", temperature=1.0, generator=g, cuda_graph=True)
    for evict in (lambda: cuda_graph.clear_graphs(model),  # cleared, or the least recently used one
                  lambda: dllm.generate(model, PROMPTS, **{**kw, "gen_length": 24})):
        monkeypatch.setattr(cuda_graph, "MAX_SESSIONS", 1)
        dllm.generate(model, PROMPTS, **kw)
        last = [mark for what, _, mark in log if what == "record"][-1]
        assert ("synchronize", None, last) not in log
        evict()
        gc.collect()
        assert ("synchronize", None, last) in log
    # ... but not when freed inside a capture (a garbage collection in the capturing thread), which
    # a host sync would invalidate
    dllm.generate(model, PROMPTS, **kw)
    last = [mark for what, _, mark in log if what == "record"][-1]
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(torch.Generator())
    with torch.cuda.graph(graph):
        cuda_graph.clear_graphs(model)
        gc.collect()
    assert ("synchronize", None, last) not in log


def test_a_capture_that_raised_is_captured_again(monkeypatch):
    # torch.cuda.graph ends a capture even when its body raised (Ctrl-C, out of memory): the next
    # call must capture anew with its own step, not replay the unfinished graph
    cuda_graph_api_on_cpu(monkeypatch)
    model = masked_model("llada")
    forward, calls = model.forward, []

    def interrupted_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first step's capture: after its warm-up run
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    model.forward = interrupted_once
    g = torch.Generator()  # one object: a session is keyed by the generator too
    kw = dict(prompt=PROMPTS, gen_length=16, steps=8, sampler="mdlm", temperature=1.0, generator=g)
    with pytest.raises(KeyboardInterrupt):
        dllm.generate(model, cuda_graph=True, **kw)
    g.manual_seed(2)
    replayed = dllm.generate(model, cuda_graph=True, **kw)
    g.manual_seed(2)
    eager = dllm.generate(model, **kw)
    assert torch.equal(replayed.sequences, eager.sequences)


def test_a_capture_in_training_mode_is_not_replayed_in_eval_mode(monkeypatch):
    # a graph replays the dropout it captured: train() and eval() calls keep graphs apart
    model = make("llada", layers=2, dropout=0.3)
    kw = dict(prompt=PROMPTS, gen_length=16, steps=8, sampler="llada", block_length=8)
    eager = dllm.generate(model, **kw).sequences
    replay_on_cpu(monkeypatch)
    model.train()
    with pytest.warns(UserWarning):
        dllm.generate(model, cuda_graph=True, **kw)
    model.eval()
    assert torch.equal(dllm.generate(model, cuda_graph=True, **kw).sequences, eager)


def test_a_model_that_is_not_a_module_keeps_no_graphs(monkeypatch):
    # Its weights cannot be listed, so replaced ones could not be told from the captured ones.
    replay_on_cpu(monkeypatch)
    net = masked_model("llada")

    class Wrapped:  # a plain callable, as the model protocol allows
        mask_id = MASK

        def __call__(self, x, **kwargs):
            return net(x, **kwargs)

    wrapped, kw = Wrapped(), dict(prompt=PROMPTS, gen_length=8, steps=4, sampler="llada")
    dllm.generate(wrapped, cuda_graph=True, **kw)
    net.to(torch.bfloat16)
    assert torch.equal(dllm.generate(wrapped, cuda_graph=True, **kw).sequences, dllm.generate(net, **kw).sequences)
    assert RecordedStep.captures == 2


def test_autocast_gives_each_call_graphs_of_its_own(monkeypatch):
    # Autocast's cached weight casts, which the graphs read, end with the caller's autocast region.
    replay_on_cpu(monkeypatch)
    model = masked_model("llada")
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            dllm.generate(model, PROMPTS, gen_length=8, steps=4, sampler="llada", cuda_graph=True,
                          generator=torch.Generator().manual_seed(0))
    assert RecordedStep.captures == 2


@pytest.mark.parametrize("graph, noise", [(Absorbing(V - 1), LogLinear()), (Uniform(V), Geometric())])
@pytest.mark.parametrize("sampler", ["sedd-analytic", "sedd-euler"])
def test_sedd_samplers_replayed_as_graphs_equal_eager(monkeypatch, graph, noise, sampler):
    model = score_model(graph, noise)
    infill = torch.full((2, 20), -1 if isinstance(graph, Uniform) else graph.mask_id)
    infill[:, 3:6] = torch.tensor([4, 5, 6])
    other = infill.clone()
    other[:, 3:6] = torch.tensor([7, 8, 9])
    eager, replayed = eager_and_replayed(monkeypatch, model, {"infill": other}, infill=infill, gen_length=20, steps=10,
                                         sampler=sampler)
    assert torch.equal(replayed.sequences, eager.sequences) and replayed.nfe == eager.nfe == 11
    assert RecordedStep.captures == 1  # the final denoising step runs once, eagerly
    assert torch.equal(replayed.sequences[:, 3:6], infill[:, 3:6])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sampler", ["sedd-analytic", "sedd-euler"])
def test_sedd_samplers_replayed_from_real_cuda_graphs_equal_eager(sampler):
    model = score_model(Absorbing(V - 1), LogLinear()).cuda()
    runs = [dllm.generate(model, gen_length=32, steps=16, sampler=sampler, cuda_graph=graph,
                          generator=torch.Generator("cuda").manual_seed(3)) for graph in (False, True, True)]
    eager, graphed, again = runs
    assert torch.equal(graphed.sequences, again.sequences) and torch.equal(graphed.sequences, eager.sequences)
    assert graphed.nfe == 17 and not (graphed.sequences == V - 1).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ar_decoding_replayed_as_a_graph_equals_eager(monkeypatch, dtype):
    torch.manual_seed(0)
    cfg = model_config("tiny", arch="ar", vocab_size=V, hidden=32, heads=4, layers=2, max_seq_len=64)
    model = perturbed(ARTransformer(cfg)).to(dtype)
    prompts = torch.randint(0, V, (2, 3, 4))
    g = torch.Generator().manual_seed(7)
    eager = [model.generate(p, 20, temperature=1.0, generator=g) for p in prompts]
    replay_on_cpu(monkeypatch)
    g = torch.Generator().manual_seed(7)
    replayed = [model.generate(p, 20, temperature=1.0, generator=g, cuda_graph=True) for p in prompts]
    assert all(torch.equal(a, b) for a, b in zip(replayed, eager)) and RecordedStep.captures == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_call_on_another_stream_waits_for_the_replays_the_last_one_left_queued():
    # The first call leaves with its replays held up on its stream behind a sleeping kernel (after
    # its prefill wrote the kept cache); the second, on another stream, writes that cache at once.
    torch.manual_seed(0)
    cfg = model_config("tiny", arch="ar", vocab_size=V, hidden=32, heads=4, layers=2, max_seq_len=64)
    model = perturbed(ARTransformer(cfg)).cuda()
    prompts = torch.randint(0, V, (2, 3, 5), device="cuda")
    eager = [model.generate(p, 24, temperature=0.0) for p in prompts]
    model.generate(prompts[0], 24, temperature=0.0, cuda_graph=True)  # the graph, kept
    forward, held = model.forward, [True]

    def held_up(*args, **kwargs):  # the prefill (eager), not the captured decode step
        out = forward(*args, **kwargs)
        if held[0]:
            held[0] = False
            torch.cuda._sleep(2 * 10**8)  # about 0.1 s
        return out

    model.forward = held_up
    streams = [torch.cuda.Stream() for _ in prompts]
    got = []
    for stream, prompt in zip(streams, prompts):
        stream.wait_stream(torch.cuda.current_stream())  # the prompts
        with torch.cuda.stream(stream):
            got.append(model.generate(prompt, 24, temperature=0.0, cuda_graph=True))
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(got, eager))


def test_the_replay_serves_stale_values_and_refuses_host_syncs_and_freed_tensors():
    # What makes the tests above able to fail: a step that reads a changing Python number replays
    # the captured one, a step that reads a device value on the host cannot be captured, and a
    # replay that reads a tensor freed since its capture fails.
    x = torch.zeros(3)
    rate = [1.0]
    step = RecordedStep(lambda x: x.add_(rate[0]), None)
    for r in (1.0, 2.0, 5.0):
        rate[0] = r
        step(x)
    assert x.tolist() == [3.0] * 3  # eager: 8
    for syncing in (lambda x: x.add_(float(x.sum())), lambda x: x.mul_(2) if torch.equal(x, x) else x,
                    lambda x: x.add_(x[x > 1].sum())):  # a host read, an answer on the host, a mask's nonzero
        # (a read: torch 2.15 turns `x[mask] = number` into masked_fill_, which does not sync)
        with pytest.raises(HostSyncInCapture):
            RecordedStep(syncing, None)(x.clone())
    step = RecordedStep(lambda x: (x.__setitem__(1, 7.0), x.add_(torch.tensor(1.0))), None)  # constants a step makes
    for _ in range(2):
        y = torch.zeros(3)
        step(y)
        assert y.tolist() == [1.0, 8.0, 1.0]
    held = [torch.ones(3)]
    step = RecordedStep(lambda x: x.add_(held[0].t()), None)  # read through a view, as weights are
    step(x)
    held[0] = torch.ones(3)  # what the graph read is gone
    with pytest.raises(FreedSinceCapture):
        step(x)


def test_cuda_graph_with_a_prefix_cache_is_refused():
    with pytest.raises(ValueError, match="cannot be combined with cache='prefix'"):
        dllm.generate(masked_model("llada"), gen_length=8, steps=8, sampler="fast-dllm", cache="prefix", cuda_graph=True)


def test_a_call_with_another_generator_draws_from_it(monkeypatch):
    """The graphs register the generator they were captured with: a later call of one configuration
    with another generator object gets its own graphs, so that it draws from the generator it was given
    (replayed, each call gives what an eager call with its generator gives)."""
    model = make("llada", layers=1)
    kw = dict(prompt=PROMPTS, gen_length=12, steps=6, sampler="mdlm", temperature=1.0)
    eager = [dllm.generate(model, generator=torch.Generator().manual_seed(s), **kw).sequences for s in (3, 11)]
    assert not torch.equal(*eager)
    replay_on_cpu(monkeypatch)
    for s, want in zip((3, 11), eager):
        got = dllm.generate(model, generator=torch.Generator().manual_seed(s), cuda_graph=True, **kw).sequences
        assert torch.equal(got, want), s
    assert RecordedStep.captures >= 2  # the second generator's call captured its own


def _each_equals_eager(monkeypatch, model, calls):
    """Runs ``calls`` (keyword sets) eagerly, then replayed in a row (one kept graph session per
    configuration), each with its own seeded generator: every replayed call's canvases, step by step, must equal its eager one's."""
    eager = [dllm.generate(model, generator=torch.Generator().manual_seed(5), return_history=True, **kw).history
             for kw in calls]
    replay_on_cpu(monkeypatch)
    gen = torch.Generator().manual_seed(5)  # one object: the calls share the session keyed by everything else
    for kw, want in zip(calls, eager):
        gen.manual_seed(5)
        got = dllm.generate(model, generator=gen, cuda_graph=True, return_history=True, **kw).history
        assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want)), kw


def test_padded_and_unpadded_prompts_of_one_width_get_their_own_graphs(monkeypatch):
    """A graph captured for prompts without padding calls the model without a mask: prompts of the
    same width with padding (the same canvas shape) must not replay it, nor the other way round."""
    model = make("llada", layers=1)
    full = [[5, 7, 9, 11, 2, 3, 1], [8, 8, 4, 1, 2, 3, 4], [30, 31, 32, 33, 34, 35, 36]]
    kw = dict(gen_length=9, steps=9, sampler="llada", temperature=1.0)
    _each_equals_eager(monkeypatch, model, [dict(prompt=full, **kw), dict(prompt=PROMPTS, **kw),
                                            dict(prompt=full, **kw)])


def test_a_sedd_canvas_with_known_tokens_does_not_replay_an_unconditional_graph(monkeypatch):
    """SEDD's steps project known tokens back only when there are some: an infill (or prompt) of the
    canvas shape of an earlier unconditional call gets its own graphs and keeps its tokens."""
    # (on the absorbing graph a known token never moves: projecting it back changes nothing)
    model = score_model(Uniform(V), Geometric())
    infill = torch.full((2, 13), -1)
    infill[:, 4:7] = torch.tensor([4, 5, 6])
    kw = dict(gen_length=13, steps=6, sampler="sedd-analytic")
    _each_equals_eager(monkeypatch, model, [dict(prompt=torch.empty(2, 0, dtype=torch.int64), **kw),
                                            dict(infill=infill, **kw)])


# Each option a captured step reads as a Python value (or that picks its code): a later call of the
# same canvas shape with another value must capture its own graphs, not replay the first call's.
OPTION_CHANGES = [
    ("llada", "cfg_scale", (0.5, 3.0), dict(block_length=5)),
    ("llada", "sampler", ("llada", "llada:random"), {}),
    ("dream", "sampler", ("dream:entropy", "dream:maskgit_plus"), {}),
    ("dream", "alg_temp", (0.05, 5.0), {}),
    ("fast-dllm", "threshold", (0.0, 0.9), dict(block_length=5)),
    ("fast-dllm", "threshold", (0.0, 0.9), dict(block_length=5, cache="dual")),
    ("fast-dllm", "cache", (None, "dual"), dict(block_length=5, threshold=0.5)),
    ("mdlm", "temperature", (0.3, 3.0), {}),
    ("mdlm", "top_k", (2, 0), {}),
    ("mdlm", "top_p", (0.3, 1.0), {}),
]


@pytest.mark.parametrize("sampler, key, values, kw", OPTION_CHANGES,
                         ids=[f"{s}-{k}-{len(kw)}" for s, k, _, kw in OPTION_CHANGES])
def test_an_option_changed_between_calls_gets_new_graphs(monkeypatch, sampler, key, values, kw):
    model = make("llada", layers=1)
    base = dict(prompt=PROMPTS, gen_length=10, steps=10, sampler=sampler, temperature=1.0, **kw)
    _each_equals_eager(monkeypatch, model, [{**base, key: v} for v in (*values, values[0])])


def test_a_changed_scale_by_sigma_gets_new_graphs(monkeypatch):
    # a SEDD step reads model.graph.scale_by_sigma as it is captured
    model = score_model(Absorbing(V - 1), LogLinear())
    kw = dict(prompt=torch.randint(0, V - 1, (2, 3)), gen_length=9, steps=5, sampler="sedd-euler")
    eager = []
    for scale in (True, False):
        model.graph.scale_by_sigma = scale
        eager.append(dllm.generate(model, generator=torch.Generator().manual_seed(5), **kw).sequences)
    assert not torch.equal(*eager)
    replay_on_cpu(monkeypatch)
    g = torch.Generator()  # one object: the calls share the session keyed by everything else
    for scale, want in zip((True, False), eager):
        model.graph.scale_by_sigma = scale
        g.manual_seed(5)
        assert torch.equal(dllm.generate(model, generator=g, cuda_graph=True, **kw).sequences, want), scale


def test_clear_graphs_frees_every_configuration_of_the_model(monkeypatch):
    replay_on_cpu(monkeypatch)
    model, other = make("llada", layers=1), make("llada", layers=1)
    g = torch.Generator()
    kw = dict(prompt=PROMPTS, steps=4, sampler="mdlm", temperature=1.0, generator=g, cuda_graph=True)

    def captures_of(m):  # three configurations of m in a row: how many graphs they captured
        before = RecordedStep.captures
        for gen_length in (5, 7, 9):
            g.manual_seed(gen_length)  # the same draws, so the same steps, each time
            dllm.generate(m, gen_length=gen_length, **kw)
        return RecordedStep.captures - before

    first = captures_of(model)
    assert first >= 3 and captures_of(other) >= 3
    cuda_graph.clear_graphs(model)
    assert captures_of(other) == 0  # the other model keeps its graphs
    assert captures_of(model) == first  # every configuration of the model captures again
    cuda_graph.clear_graphs()
    assert captures_of(other) > 0


def test_a_model_whose_buffers_alone_were_replaced_gets_new_graphs(monkeypatch):
    # model.float() on a float32 model keeps the weights where they are but recomputes the rotary
    # frequencies into a new buffer, freeing the one the first call's graphs read
    replay_on_cpu(monkeypatch)
    model = make("llada", layers=1)
    g = torch.Generator()  # one object: a session is keyed by the generator too
    kw = dict(prompt=PROMPTS, gen_length=8, steps=4, sampler="llada", temperature=1.0, generator=g)
    dllm.generate(model, cuda_graph=True, **kw)
    weights = [p.data_ptr() for p in model.parameters()]
    model.float()
    assert [p.data_ptr() for p in model.parameters()] == weights
    g.manual_seed(2)
    replayed = dllm.generate(model, cuda_graph=True, **kw).sequences
    assert RecordedStep.captures == 2
    g.manual_seed(2)
    assert torch.equal(replayed, dllm.generate(model, **kw).sequences)


def test_a_changed_mask_id_gets_new_graphs(monkeypatch):
    # a captured step compares the canvas with the mask id it was captured with
    model = make("llada", layers=1)
    g = torch.Generator()  # one object: a session is keyed by the generator too
    kw = dict(prompt=PROMPTS, gen_length=8, steps=4, sampler="llada", temperature=1.0, generator=g)
    expected = []
    for mask_id in (MASK, MASK - 1):
        model.mask_id = mask_id
        g.manual_seed(0)
        expected.append(dllm.generate(model, **kw).sequences)
    replay_on_cpu(monkeypatch)
    for mask_id, eager in zip((MASK, MASK - 1), expected):
        model.mask_id = mask_id
        g.manual_seed(0)
        replayed = dllm.generate(model, cuda_graph=True, **kw).sequences
        assert torch.equal(replayed, eager) and not (replayed == mask_id).any()
    assert RecordedStep.captures == 2


def test_a_changed_sedd_graph_kind_gets_new_graphs(monkeypatch):
    # Absorbing(V - 1) and Uniform(V) have the same number of classes, and here the same
    # scale_by_sigma: a SEDD step captured with one graph's transition must not replay for the other
    absorbing, uniform = Absorbing(V - 1), Uniform(V)
    absorbing.scale_by_sigma = uniform.scale_by_sigma = False
    model = score_model(absorbing, LogLinear())
    kw = dict(prompt=torch.randint(0, V - 1, (2, 3)), gen_length=9, steps=5, sampler="sedd-euler")
    graphs = (absorbing, uniform)
    eager = []
    for graph in graphs:
        model.graph = graph
        eager.append(dllm.generate(model, generator=torch.Generator().manual_seed(5), **kw).sequences)
    assert not torch.equal(*eager)
    replay_on_cpu(monkeypatch)
    g = torch.Generator()  # one object: the calls share a session unless the key tells them apart
    for graph, want in zip(graphs, eager):
        model.graph = graph
        g.manual_seed(5)
        assert torch.equal(dllm.generate(model, generator=g, cuda_graph=True, **kw).sequences, want), graph.name


def test_autocast_calls_with_one_generator_each_capture_their_own_graphs(monkeypatch):
    # As test_autocast_gives_each_call_graphs_of_its_own, but with one generator object, as a server
    # keeps it: the calls' configurations are then equal, and only autocast may tell them apart.
    model = masked_model("llada")
    g = torch.Generator()
    kw = dict(prompt=PROMPTS, gen_length=8, steps=4, sampler="llada", temperature=1.0, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g.manual_seed(0)
        eager = dllm.generate(model, **kw).sequences
    replay_on_cpu(monkeypatch)
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            g.manual_seed(0)
            assert torch.equal(dllm.generate(model, cuda_graph=True, **kw).sequences, eager)
    assert RecordedStep.captures == 2
