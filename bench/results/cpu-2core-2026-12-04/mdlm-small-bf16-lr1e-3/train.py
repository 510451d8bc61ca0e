import sys, time, torch
import dllm.training.trainer as T
torch.set_num_threads(2)
_init = T.Trainer.__init__
def init(self, *a, **k):
    _init(self, *a, **k)
    self.amp = torch.autocast("cpu", dtype=torch.bfloat16)   # the H200 run's bf16 autocast, on the CPU
T.Trainer.__init__ = init
t0 = time.time()
try:
    r = T.train(objective="mdlm", model="small", tokenizer="byte", seq_len=257, batch_size=16, lr=1e-3,
                schedule="constant", warmup=50, ema=0.99, steps=int(sys.argv[1]), eval_every=0, eval_batches=1,
                ckpt_every=0, out_dir="/tmp/nanbf16/mdlm", device="cpu", seed=0, log_every=1)
    print("done", r)
except Exception as e:
    print("FAILED", repr(e))
print("seconds", time.time() - t0)
