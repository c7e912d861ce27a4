#!/usr/bin/env python3
"""Rewrite the u32 value of `<arch>.context_length` in a GGUF file, in place.

llama-convert-llama2c-to-ggml records a 128-token training context, which would cap every
slot at 128 tokens; the demo model needs a realistic one. Standard library only.
"""
import struct
import sys

SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY, UINT32 = 8, 9, 4


def skip_value(f, vtype):
    if vtype in SCALAR_SIZES:
        f.seek(SCALAR_SIZES[vtype], 1)
    elif vtype == STRING:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(n, 1)
    elif vtype == ARRAY:
        etype, count = struct.unpack("<IQ", f.read(12))
        if etype in SCALAR_SIZES:
            f.seek(SCALAR_SIZES[etype] * count, 1)
        else:
            for _ in range(count):
                skip_value(f, etype)
    else:
        raise ValueError(f"unknown GGUF value type {vtype}")


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: gguf_set_context_length.py FILE N", file=sys.stderr)
        return 2
    path, value = sys.argv[1], int(sys.argv[2])
    with open(path, "r+b") as f:
        magic, version, _tensors, kv_count = struct.unpack("<4sIQQ", f.read(24))
        if magic != b"GGUF" or version < 2:
            print(f"{path}: not a GGUF v2+ file", file=sys.stderr)
            return 1
        for _ in range(kv_count):
            (klen,) = struct.unpack("<Q", f.read(8))
            key = f.read(klen).decode("utf-8")
            (vtype,) = struct.unpack("<I", f.read(4))
            if key.endswith(".context_length") and vtype == UINT32:
                f.write(struct.pack("<I", value))
                print(f"{path}: {key} = {value}", file=sys.stderr)
                return 0
            skip_value(f, vtype)
    print(f"{path}: no u32 *.context_length key found", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
