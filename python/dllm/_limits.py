"""The largest values the ops' int64 and float32 arguments hold, shared by the ops' checks and
dllm.generate's (which refuses what an op would, before the first network call)."""

INT64_MAX = 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38
