import sys, time, torch
from dllm.training.trainer import train
torch.set_num_threads(2)
t0 = time.time()
try:
    r = train(objective="mdlm", model="small", tokenizer="byte", seq_len=257, batch_size=16, lr=1e-3,
              schedule="constant", warmup=50, ema=0.99, steps=int(sys.argv[1]), eval_every=0, eval_batches=1,
              ckpt_every=0, out_dir="/tmp/nan/mdlm", device="cpu", seed=0, log_every=1)
    print("done", r)
except Exception as e:
    print("FAILED", repr(e))
print("seconds", time.time() - t0)
