"""Which CPU a benchmark ran on: model, microarchitecture family, ISA flags and cache sizes.

Read from Linux's ``/proc/cpuinfo`` and ``/sys/devices/system/cpu/cpu0/cache``; elsewhere the
fields stay empty. The family name comes from the vendor's family and model numbers, because a
virtual machine's model name often says only "AMD EPYC" or "Intel(R) Xeon(R) Processor", which
does not tell Zen 3 from Zen 5 or Ice Lake from Sapphire Rapids.

Example:
  >>> from flax_lstm.bench import cpu
  >>> info = cpu.cpu_info()
  >>> sorted(info)[:3]
  ['cpu_caches', 'cpu_family', 'cpu_family_number']
  >>> set(info["cpu_flags"]) <= set(cpu.ISA_FLAGS)
  True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["ISA_FLAGS", "cache_sizes", "cpu_info", "family_name", "parse_cpuinfo"]

# The instruction sets that decide which kernel path runs and what the peers can use: AVX2 and
# AVX-512 FMAs for float32, AVX512_BF16 dot products and AMX tiles for bfloat16.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")

# (vendor_id, family, first model, last model, name): the server families the project's and
# users' machines bring, from the vendors' family/model numbers (as Linux's arch/x86 uses them).
_FAMILIES = (
    ("AuthenticAMD", 0x17, 0x00, 0x2F, "AMD Zen / Zen+"),
    ("AuthenticAMD", 0x17, 0x30, 0xFF, "AMD Zen 2"),
    ("AuthenticAMD", 0x19, 0x00, 0x0F, "AMD Zen 3"),
    ("AuthenticAMD", 0x19, 0x10, 0x1F, "AMD Zen 4"),
    ("AuthenticAMD", 0x19, 0x20, 0x5F, "AMD Zen 3"),
    ("AuthenticAMD", 0x19, 0x60, 0xAF, "AMD Zen 4"),
    ("AuthenticAMD", 0x1A, 0x00, 0x2F, "AMD Zen 5"),
    ("AuthenticAMD", 0x1A, 0x40, 0x4F, "AMD Zen 5"),
    ("AuthenticAMD", 0x1A, 0x60, 0x7F, "AMD Zen 5"),
    ("GenuineIntel", 6, 0x55, 0x55, "Intel Skylake-SP / Cascade Lake"),
    ("GenuineIntel", 6, 0x6A, 0x6A, "Intel Ice Lake-SP"),
    ("GenuineIntel", 6, 0x6C, 0x6C, "Intel Ice Lake-SP"),
    ("GenuineIntel", 6, 0x8F, 0x8F, "Intel Sapphire Rapids"),
    ("GenuineIntel", 6, 0xCF, 0xCF, "Intel Emerald Rapids"),
    ("GenuineIntel", 6, 0xAD, 0xAE, "Intel Granite Rapids"),
)


def family_name(vendor: str, family: int | None, model: int | None) -> str:
    """The microarchitecture family of a CPU from its vendor id and family/model numbers, e.g.
    ``family_name("GenuineIntel", 6, 143) == "Intel Sapphire Rapids"``; for a CPU not in the
    table, the numbers themselves (``"AuthenticAMD family 0x1b model 0x1"``); "" without them."""
    if family is None or model is None:
        return ""
    for v, f, first, last, name in _FAMILIES:
        if (vendor, family) == (v, f) and first <= model <= last:
            return name
    return f"{vendor or 'unknown vendor'} family {family:#x} model {model:#x}"


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """The first processor's model name, vendor, family and model numbers and the `ISA_FLAGS`
    it has, from the text of ``/proc/cpuinfo``."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough: every core is the same model
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())

    def number(key: str) -> int | None:
        value = fields.get(key, "")
        return int(value) if value.isdigit() else None

    vendor, family, model = fields.get("vendor_id", ""), number("cpu family"), number("model")
    return {
        "cpu_model": fields.get("model name", ""),
        "cpu_vendor": vendor,
        "cpu_family_number": family,
        "cpu_model_number": model,
        "cpu_family": family_name(vendor, family, model),
        "cpu_flags": [f for f in ISA_FLAGS if f in flags],
    }


def cache_sizes(root: str | Path = "/sys/devices/system/cpu/cpu0/cache") -> dict[str, int]:
    """Bytes of each cache level that core 0 sees, ``{"L1d": ..., "L1i": ..., "L2": ...,
    "L3": ...}`` (a shared cache counted once, as sysfs lists it); {} where sysfs lacks it."""
    out: dict[str, int] = {}
    for index in sorted(Path(root).glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        multiplier = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        digits = size.rstrip("KMG")
        if digits.isdigit():
            out[f"L{level}{suffix}"] = int(digits) * multiplier
    return out


def cpu_info() -> dict[str, Any]:
    """`parse_cpuinfo` of this machine's ``/proc/cpuinfo`` and its `cache_sizes`
    (``cpu_caches``); empty fields where they cannot be read (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return {**parse_cpuinfo(text), "cpu_caches": cache_sizes()}
