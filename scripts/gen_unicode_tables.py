#!/usr/bin/env python3
"""Generate csrc/unicode_tables.h: general categories (two-stage table) and NFC data.

Why: the C++ pre-tokenizer regex needs \\p{L}, \\p{N}, ... for every code point without linking ICU.
The tables are built at development time and committed; nothing is downloaded at build or run time.
Each follows the Unicode version of the reference it must reproduce (docs/design.md, "Unicode"):

* General categories: Unicode 16.0.0, from the PyPI package unicodedata2 16.0.0. tiktoken 0.14 (Rust
  regex-syntax 0.8.11) and tokenizers 0.23 (Oniguruma) both classify every code point as Unicode
  16.0 does; tests/test_tokenizer.py (test_unicode_classes_*) checks all of them against both.
* NFC (only HF tokenizer.json files with an NFC normalizer use it): Python 3.11's unicodedata,
  Unicode 14.0.0. tokenizers' NFC tables are Unicode 9.0; 14.0 differs from them the least of the
  versions at hand (newer versions add compositions tokenizers does not make).

Run: `pip install unicodedata2==16.0.0 && python3.11 scripts/gen_unicode_tables.py`.
"""

from __future__ import annotations

import pathlib
import unicodedata

CATEGORY_UNICODE = "16.0.0"
NFC_UNICODE = "14.0.0"

# Order defines the numeric category codes used in C++ (kCat* constants); Cn (unassigned) is 0.
CATEGORIES = [
    "Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps", "Pe",
    "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co",
]
BLOCK = 128
MAX_CP = 0x110000


def _array(ctype: str, name: str, values: list[int], per_line: int = 16) -> list[str]:
    out = [f"inline constexpr {ctype} {name}[{max(len(values), 1)}] = {{"]
    for i in range(0, len(values), per_line):
        out.append("  " + ",".join(f"0x{v:X}" for v in values[i : i + per_line]) + ",")
    if not values:
        out.append("  0,")
    out.append("};")
    return out


def nfc_tables() -> list[str]:
    """Canonical combining classes, full canonical decompositions, primary composites, and the
    code points that can make a string change under NFC (quick check not Yes, or ccc != 0)."""
    if unicodedata.unidata_version != NFC_UNICODE:
        raise SystemExit(f"this Python's unicodedata has Unicode {unicodedata.unidata_version}, the NFC tables "
                         f"follow {NFC_UNICODE}: run with Python 3.11")
    ccc = [(cp, unicodedata.combining(chr(cp))) for cp in range(MAX_CP) if unicodedata.combining(chr(cp))]
    decomp_keys, decomp_offsets, pool = [], [], []
    pairs = []
    seconds = set()
    for cp in range(MAX_CP):
        if 0xAC00 <= cp <= 0xD7A3:
            continue  # Hangul syllables are algorithmic
        raw = unicodedata.decomposition(chr(cp))
        if not raw or raw.startswith("<"):
            continue
        full = unicodedata.normalize("NFD", chr(cp))
        decomp_keys.append(cp)
        decomp_offsets.append(len(pool) | (len(full) << 24))
        pool.extend(ord(c) for c in full)
        parts = [int(x, 16) for x in raw.split()]
        if len(parts) == 2 and unicodedata.normalize("NFC", chr(cp)) == chr(cp):
            pairs.append(((parts[0] << 21) | parts[1], cp))
            seconds.add(parts[1])
    pairs.sort()
    seconds |= set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))
    needs = sorted(
        cp for cp in range(0x80, MAX_CP)
        if unicodedata.combining(chr(cp)) or cp in seconds
        or (not 0xD800 <= cp <= 0xDFFF and unicodedata.normalize("NFC", chr(cp)) != chr(cp))
    )
    ranges = []
    for cp in needs:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    lines = ["", "// ---- NFC ----"]
    lines += _array("uint32_t", "kCccKeys", [c for c, _ in ccc])
    lines += _array("uint8_t", "kCccValues", [v for _, v in ccc])
    lines += _array("uint32_t", "kDecompKeys", decomp_keys)
    lines += _array("uint32_t", "kDecompRefs", decomp_offsets)  # offset | (length << 24)
    lines += _array("uint32_t", "kDecompPool", pool)
    lines += _array("uint64_t", "kComposeKeys", [k for k, _ in pairs])  # first << 21 | second
    lines += _array("uint32_t", "kComposeValues", [v for _, v in pairs])
    lines += _array("uint32_t", "kNfcCheckStarts", [a for a, _ in ranges])
    lines += _array("uint32_t", "kNfcCheckEnds", [b for _, b in ranges])
    return lines


def category_data():
    """The unicodedata module with the general categories the references use."""
    try:
        import unicodedata2
    except ImportError:
        raise SystemExit(f"needs unicodedata2 (pip install unicodedata2=={CATEGORY_UNICODE})") from None
    if unicodedata2.unidata_version != CATEGORY_UNICODE:
        raise SystemExit(f"unicodedata2 has Unicode {unicodedata2.unidata_version}; "
                         f"pip install unicodedata2=={CATEGORY_UNICODE}")
    return unicodedata2


def main() -> None:
    code = {name: i for i, name in enumerate(CATEGORIES)}
    ucd = category_data()
    cats = bytes(code[ucd.category(chr(cp))] for cp in range(MAX_CP))
    blocks: dict[bytes, int] = {}
    stage1 = []
    for start in range(0, MAX_CP, BLOCK):
        block = cats[start : start + BLOCK]
        stage1.append(blocks.setdefault(block, len(blocks)))
    stage2 = b"".join(sorted(blocks, key=blocks.get))
    out = pathlib.Path(__file__).resolve().parent.parent / "csrc" / "unicode_tables.h"
    lines = [
        f"// GENERATED by scripts/gen_unicode_tables.py: general categories of Unicode {CATEGORY_UNICODE} "
        f"(unicodedata2), NFC of Unicode {NFC_UNICODE} (Python's unicodedata). Do not edit.",
        "#pragma once",
        "#include <cstdint>",
        "",
        "namespace nextlong::unicode {",
        "",
        f"inline constexpr const char* kCategoryUnicodeVersion = \"{CATEGORY_UNICODE}\";",
        f"inline constexpr const char* kNfcUnicodeVersion = \"{NFC_UNICODE}\";",
        f"inline constexpr int kCategoryBlock = {BLOCK};",
        f"inline constexpr int kNumCategories = {len(CATEGORIES)};",
        "enum Category : uint8_t {",
        "  " + ", ".join(f"kCat{name} = {i}" for i, name in enumerate(CATEGORIES)),
        "};",
        "inline constexpr const char* kCategoryNames[] = {"
        + ", ".join(f'"{n}"' for n in CATEGORIES)
        + "};",
        "",
        f"inline constexpr uint16_t kCategoryStage1[{len(stage1)}] = {{",
    ]
    for i in range(0, len(stage1), 24):
        lines.append("  " + ",".join(str(v) for v in stage1[i : i + 24]) + ",")
    lines.append("};")
    lines.append(f"inline constexpr uint8_t kCategoryStage2[{len(stage2)}] = {{")
    for i in range(0, len(stage2), 48):
        lines.append("  " + ",".join(str(v) for v in stage2[i : i + 48]) + ",")
    lines.append("};")
    lines += nfc_tables()
    lines += ["", "}  // namespace nextlong::unicode", ""]
    out.write_text("\n".join(lines))
    print(f"wrote {out} ({len(blocks)} blocks of {BLOCK}, {len(stage2)} bytes)")


if __name__ == "__main__":
    main()
