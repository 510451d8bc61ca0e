"""Benchmarks behind `dllm bench` (each module: add_arguments(parser), run(ns))."""
