"""Inference load client (Triton KServe v2 / TF Serving) and `ratls inspect`."""
