"""The first tokens each model writes after three prompts: a lone end-of-text (what `dllm bench e2e`
gave both models until 2026-12-06) and the last 4 or 16 tokens of a held-out file before it. 32
held-out files of more than 200 characters, 64 tokens, temperature 1, MDLM with 64 steps; quality as
the e2e report judges it (dllm.benchmarks.e2e._judged). Then the autoregressive model's most likely
next tokens after a lone end-of-text and after a held-out file's end and one. With the two model
folders that README.md's commands train (OUT/mdlm/model, OUT/ar/model; the weights are not kept here):
    python prompt_check.py MDLM_MODEL_DIR AR_MODEL_DIR > prompt_check.txt
"""

import sys

import torch

from dllm import generate
from dllm.benchmarks import e2e
from dllm.data.corpus import load_corpus
from dllm.sampling.pretrained import load_for_sampling

md, tok, _ = load_for_sampling(sys.argv[1], "cpu")
ar, _, _ = load_for_sampling(sys.argv[2], "cpu")
files = [t for _, t in load_corpus(None, val_fraction=0.05).val if len(t) > 200][:32]
eot, length = tok.eos_id, 64
for k in (0, 4, 16):
    prompts = (torch.tensor([[int(i) for i in tok.encode(t)[-k:]] + [eot] for t in files]) if k
               else torch.full((len(files), 1), eot))
    seq = ar.generate(prompts, length, temperature=1.0, generator=torch.Generator().manual_seed(0))
    a = e2e._judged(seq[:, prompts.shape[1]:].tolist(), tok)
    out = generate(md, prompts, gen_length=length, temperature=1.0, generator=torch.Generator().manual_seed(0),
                   sampler="mdlm", steps=length)
    m = e2e._judged(out.sequences[:, prompts.shape[1]:].tolist(), tok)
    print(f"prompt: {k:2d} tokens of a file + end-of-text | AR: parse {a['parse_rate']:.2f}, parseable prefix "
          f"{a['parse_prefix']:.2f} ± {a['parse_prefix_se']:.2f}, entropy {a['entropy']:.2f} bits | MDLM: parse "
          f"{m['parse_rate']:.2f}, parseable prefix {m['parse_prefix']:.2f} ± {m['parse_prefix_se']:.2f}, entropy "
          f"{m['entropy']:.2f} bits")
    print(f"  AR's first sample: {a['example'][:100]!r}")
    print(f"  MDLM's first sample: {m['example'][:100]!r}")

# the autoregressive model's next token after a lone end-of-text, and after a held-out file's end and one
for name, prompt in (("a lone end-of-text", [eot]), ("a file's last 100 tokens + end-of-text",
                                                      [int(i) for i in tok.encode(files[0])[-100:]] + [eot])):
    with torch.no_grad():
        p = torch.softmax(ar(torch.tensor([prompt]))[0, -1].float(), -1)
    top = torch.topk(p, 6)
    print(f"AR's next token after {name}: " +
          ", ".join(f"{tok.decode([int(i)])!r} {float(v):.3f}" for v, i in zip(top.values, top.indices)))
