"""Plain-Python references and seeded tensors shared by the method tests."""

import math

import torch


def rand(*shape, seed=0):
    """A seeded standard-normal tensor."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def ref_norm(v):
    return math.sqrt(sum(x * x for x in v))


def ref_cos(a, b):
    """Cosine of two sequences of numbers; 0 when either is the zero vector."""
    na, nb = ref_norm(a), ref_norm(b)
    return 0.0 if na == 0 or nb == 0 else sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)
