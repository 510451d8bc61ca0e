"""A tiny DiT's forward and a dllm.generate step under no_grad, with dllm.ops calling its ops below their
Python autograd kernels (new) and as they are (old: dllm.ops._call patched back to the previous
dispatch, where only predict_masked went below autograd). Old and new alternate call by call in one
process, so that the load of a shared machine falls on both alike. Times: wall and the thread's CPU time."""
import statistics, sys, time
import torch, dllm
from dllm import ops
from dllm.models import DiffusionTransformer, model_config

new_call = ops._call
def old_call(op, *args, **kwargs):
    return new_call(op, *args, **kwargs) if op is torch.ops.dllm.predict_masked else op(*args, **kwargs)
VARIANTS = {"old": old_call, "new": new_call}

def clocks():
    return time.perf_counter(), time.thread_time()

def compare(what, run, reps):
    """run() returns a list of (wall, cpu) seconds; reps calls of it per variant, alternating."""
    ts = {v: [] for v in VARIANTS}
    for i in range(reps):
        for v in (("old", "new") if i % 2 else ("new", "old")):
            ops._call = VARIANTS[v]
            ts[v].append(run())
    ops._call = new_call
    per = {v: [t for call in ts[v] for t in call] for v in VARIANTS}
    for v in VARIANTS:
        wall, cpu = (statistics.median(t[i] for t in per[v]) * 1e6 for i in (0, 1))
        low = min(t[0] for t in per[v]) * 1e6
        print(f"{what:34s} {v} median us wall {wall:9.1f} cpu {cpu:9.1f}, min wall {low:9.1f} (n {len(per[v])})")
    saved = statistics.median(o[1] - n[1] for o, n in zip(per["old"], per["new"])) * 1e6
    print(f"{what:34s} old - new, paired, median us cpu {saved:.1f}")

def python_autograd_kernels(fn) -> int:
    """The Python autograd kernels (torch.library's autograd_impl) that fn() enters."""
    calls = []
    sys.setprofile(lambda frame, event, arg: calls.append(1) if event == "call" and
                   frame.f_code.co_name == "autograd_impl" else None)
    fn()
    sys.setprofile(None)
    return len(calls)

def timed(fn):
    def run():
        w, c = clocks(); fn(); w2, c2 = clocks()
        return [(w2 - w, c2 - c)]
    return run

torch.set_num_threads(1)
torch.manual_seed(0)
model = DiffusionTransformer(model_config("tiny")).eval()
model.mask_id = model.config.vocab_size - 1
L = 128
with torch.no_grad():
    x, cos, sin = torch.randn(1, 16, 4, 32), torch.randn(16, 16), torch.randn(16, 16)
    h, w, s = torch.randn(1, 16, 128), torch.randn(128), torch.randn(1, 128)
    compare("rotary [1, 16, 4, 32]", timed(lambda: ops.rotary(x, cos, sin)), 5000)
    compare("adaln [1, 16, 128]", timed(lambda: ops.adaln(h, w, s, s)), 5000)
    compare("adaln_residual [1, 16, 128]", timed(lambda: ops.adaln_residual(h, h, s, w, s, s)), 5000)
    compare("attention [1, 16, 4, 32]", timed(lambda: ops.attention(x, x, x)), 5000)
    for B, S, reps in ((1, L, 300), (8, L, 60), (1, 16, 1500)):  # S 16: a short forward, bound by the host
        tokens = torch.randint(0, model.mask_id, (B, S))
        for _ in range(10):
            model(tokens)
        for v in VARIANTS:
            ops._call = VARIANTS[v]
            print(f"forward B {B} L {S}: {v} enters {python_autograd_kernels(lambda: model(tokens))} Python autograd kernels")
        ops._call = new_call
        compare(f"forward B {B} L {S}", timed(lambda: model(tokens)), reps)

def generate_steps(B):
    """The steps of one dllm.generate call, callback to callback (forward, predict_masked, commit_tokens)."""
    def run():
        marks = []
        dllm.generate(model, torch.empty(B, 0, dtype=torch.int64), gen_length=L, steps=64, sampler="llada",
                      callback=lambda step, x, logits: marks.append(clocks()))
        return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]
    return run

for B, reps in ((1, 8), (8, 3)):
    compare(f"generate llada step B {B} L {L}", generate_steps(B), reps)
