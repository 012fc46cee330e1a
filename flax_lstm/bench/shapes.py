"""The benchmark's shapes: `Shape`, the CPU and GPU sets, and the ``--shape`` syntax."""

from __future__ import annotations

import argparse
import dataclasses

__all__ = ["CPU_SET", "GPU_SET", "SHAPE_SYNTAX", "Shape", "parse_shape"]


@dataclasses.dataclass(frozen=True)
class Shape:
    """One benchmark shape: batch, seq_len, hidden, layers, bidirectional, input size, dtype."""

    batch: int
    seq_len: int
    hidden: int
    layers: int = 1
    bidirectional: bool = False
    input_size: int | None = None  # None: = hidden
    dtype: str = "float32"

    @property
    def in_size(self) -> int:
        return self.input_size or self.hidden

    def label(self) -> str:
        s = f"B{self.batch} T{self.seq_len} H{self.hidden} L{self.layers}"
        if self.input_size and self.input_size != self.hidden:
            s += f" I{self.input_size}"
        if self.bidirectional:
            s += " bi"
        if self.dtype != "float32":
            s += f" {self.dtype}"
        return s

    def flops(self) -> float:
        """Forward FLOPs (multiply-adds × 2) of the GEMMs; fwd+bwd is about 3×."""
        d, h = 2 if self.bidirectional else 1, self.hidden
        total = 0
        for k in range(self.layers):
            in_k = self.in_size if k == 0 else d * h
            total += 2 * self.seq_len * self.batch * d * 4 * h * (in_k + h)
        return float(total)


CPU_SET = (
    Shape(1, 256, 128, 1, input_size=64),
    Shape(32, 128, 256, 2, input_size=128),
    Shape(32, 128, 256, 2, True, input_size=128),
    Shape(64, 64, 512, 2),
)
GPU_SET = (
    Shape(16, 512, 256, 1),
    Shape(64, 256, 512, 2),
    Shape(64, 256, 512, 2, True),
    Shape(256, 128, 1024, 2),
    Shape(16, 1024, 768, 1, dtype="bfloat16"),
)

SHAPE_SYNTAX = "B,T,H[,L][,bi][,in=I][,bf16]"
"""What ``--shape`` takes, e.g. ``32,128,256,2,bi``."""


def parse_shape(text: str) -> Shape:
    """A `Shape` from ``B,T,H[,L][,bi][,in=I][,bf16]``, e.g. ``32,128,256,2,bi``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        nums = [int(p) for p in parts if p.isdigit()]
        b, t, h = nums[:3]
        layers = nums[3] if len(nums) > 3 else 1
        in_size = next((int(p[3:]) for p in parts if p.startswith("in=")), None)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--shape must look like {SHAPE_SYNTAX}: {text!r}") from e
    dtype = "bfloat16" if any(p in ("bf16", "bfloat16") for p in parts) else "float32"
    return Shape(b, t, h, layers, "bi" in parts, in_size, dtype)
