"""Example inference backends (real Triton via nvidia-pytriton, a TF Serving API server)."""
