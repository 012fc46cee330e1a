"""The benchmark's shapes: `Shape`, the sets of ``--set`` (`SETS`: cpu, small, gpu), and the
``--shape`` and ``--lengths`` syntax."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

__all__ = [
    "CPU_SET",
    "GPU_SET",
    "LENGTHS_SYNTAX",
    "SETS",
    "SHAPE_SYNTAX",
    "SMALL_SET",
    "Shape",
    "parse_lengths",
    "parse_shape",
]


@dataclasses.dataclass(frozen=True)
class Shape:
    """One benchmark shape: batch, seq_len, hidden, layers, bidirectional, input size, dtype,
    and for a ragged batch the distribution of its sequence lengths (``lengths``, in the
    ``--lengths`` syntax, e.g. ``"uniform:16:512"``; None: every sequence is ``seq_len`` long)."""

    batch: int
    seq_len: int
    hidden: int
    layers: int = 1
    bidirectional: bool = False
    input_size: int | None = None  # None: = hidden
    dtype: str = "float32"
    lengths: str | None = None

    def __post_init__(self) -> None:
        if self.lengths is not None:
            low, high = self._length_bounds()
            if max(low, high) > self.seq_len:
                raise ValueError(
                    f"--lengths {self.lengths}: lengths up to {max(low, high)} do not fit the "
                    f"sequence length of {self._dims()} (T = {self.seq_len})"
                )

    @property
    def in_size(self) -> int:
        return self.input_size or self.hidden

    def _length_bounds(self) -> tuple[int, int]:
        return _length_bounds(self.lengths or "", self.seq_len)

    def _dims(self) -> str:
        return f"B{self.batch} T{self.seq_len} H{self.hidden} L{self.layers}"

    def label(self) -> str:
        s = self._dims()
        if self.input_size and self.input_size != self.hidden:
            s += f" I{self.input_size}"
        if self.bidirectional:
            s += " bi"
        if self.dtype != "float32":
            s += f" {self.dtype}"
        if self.lengths is not None:
            low, high = self._length_bounds()
            s += f" len U[{low},{high}]"
        return s

    def seq_lengths(self) -> np.ndarray | None:
        """The sequence lengths of a ragged shape, (batch,) int32, the same at every call (drawn
        with a fixed seed); None without ``lengths``."""
        if self.lengths is None:
            return None
        low, high = self._length_bounds()
        rng = np.random.default_rng(17)
        return rng.integers(low, high + 1, size=self.batch).astype(np.int32)

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
# Small batches and hidden sizes (B1-B16, H128-H512, one layer, I = H), where the kernel's
# per-call costs weigh most against torch's: issue 23's small shapes and their neighbours.
SMALL_SET = (
    Shape(1, 128, 128, 1),
    Shape(1, 128, 512, 1),
    Shape(4, 128, 256, 1),
    Shape(8, 128, 256, 1),
    Shape(16, 128, 512, 1),
)
GPU_SET = (
    Shape(16, 512, 256, 1),
    Shape(64, 256, 512, 2),
    Shape(64, 256, 512, 2, True),
    Shape(256, 128, 1024, 2),
    Shape(16, 1024, 768, 1, dtype="bfloat16"),
)

SETS = {"cpu": CPU_SET, "small": SMALL_SET, "gpu": GPU_SET}
"""The shape sets of ``flax-lstm bench --set``."""

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


LENGTHS_SYNTAX = "uniform:MIN[:MAX]"
"""What ``--lengths`` takes: sequence lengths drawn uniformly from [MIN, MAX] (integers,
1 <= MIN <= MAX <= T; MAX defaults to each shape's T), e.g. ``uniform:16:512``."""


def parse_lengths(text: str) -> str:
    """``--lengths``: a lengths distribution in `LENGTHS_SYNTAX`, checked (argparse's error
    otherwise); whether MAX fits a shape's T is checked by `Shape`."""
    try:
        _length_bounds(text)
    except ValueError as e:  # argparse names the flag itself
        raise argparse.ArgumentTypeError(str(e).removeprefix("--lengths ")) from None
    return text.strip()


def _length_bounds(text: str, seq_len: int = 0) -> tuple[int, int]:
    """``(MIN, MAX)`` of ``uniform:MIN[:MAX]`` (ValueError if it is not that); MAX is
    ``seq_len`` where it is left out."""
    parts = text.strip().split(":")
    try:
        if parts[0] != "uniform" or len(parts) not in (2, 3):
            raise ValueError
        low = int(parts[1])
        high = int(parts[2]) if len(parts) == 3 else None
        if low < 1 or (high is not None and high < low):
            raise ValueError
    except ValueError:
        raise ValueError(
            f"--lengths must look like {LENGTHS_SYNTAX} with integers 1 <= MIN <= MAX (sequence "
            f"lengths drawn uniformly from [MIN, MAX]; MAX defaults to each shape's T), e.g. "
            f"uniform:16:512; got {text!r}"
        ) from None
    return low, seq_len if high is None else high
