import torch, time, sys
import torch.nn.functional as F
from dllm.objectives import next_token_nll
def old(logits, targets):
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    return nll.view(targets.shape).sum(-1)
torch.set_num_threads(int(sys.argv[1]))
B,L,V=16,129,4096
dtype=getattr(torch, sys.argv[2])
x=torch.randn(B,L,V).to(dtype); t=torch.randint(0,V,(B,L))
for name,f in [("old",old),("new",next_token_nll)]*2:
    ts=[]
    for _ in range(15):
        a=x.clone().requires_grad_()
        t0=time.perf_counter(); f(a,t).sum().backward(); ts.append(time.perf_counter()-t0)
    ts.sort(); print(name, sys.argv[1], sys.argv[2], "median ms %.2f min %.2f"%(ts[7]*1e3, ts[0]*1e3))
