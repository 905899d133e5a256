"""Benchmark suite: the ratls sidecar and proxy pair against nginx, HAProxy and tinyproxy, in one run.

Every scenario measures its baselines in the same run, under the same load generator and the same
backend, so the ratios are what matter on a small, shared machine. `bench/run.py` is the entry point.
"""
