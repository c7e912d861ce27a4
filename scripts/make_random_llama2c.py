#!/usr/bin/env python3
"""Write a llama2.c-format checkpoint filled with small random floats.

The result is converted to GGUF by llama.cpp's llama-convert-llama2c-to-ggml. The model
writes gibberish, but it loads and generates at a real model's pace, which is what the
pool's tests and benchmarks need. Standard library only, so it runs on a bare machine.
"""
import argparse
import array
import random
import struct
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dim", type=int, default=288)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    if args.dim % args.heads:
        print(f"--dim {args.dim} must be a multiple of --heads {args.heads}", file=sys.stderr)
        return 2
    # llama2.c's convention for the feed-forward width.
    hidden = (int(2 * 4 * args.dim / 3) + 31) // 32 * 32
    head_size = args.dim // args.heads
    rng = random.Random(args.seed)

    # Layout read by the converter: a header of seven int32, then float32 tensors in this
    # order; a positive vocab size means the output layer shares the embedding table.
    sizes = [
        args.vocab * args.dim,                # token embeddings
        args.layers * args.dim,               # attention rmsnorm
        args.layers * args.dim * args.dim,    # wq
        args.layers * args.dim * args.dim,    # wk
        args.layers * args.dim * args.dim,    # wv
        args.layers * args.dim * args.dim,    # wo
        args.layers * args.dim,               # ffn rmsnorm
        args.layers * hidden * args.dim,      # w1
        args.layers * args.dim * hidden,      # w2
        args.layers * hidden * args.dim,      # w3
        args.dim,                             # final rmsnorm
        args.seq_len * head_size,             # RoPE tables (skipped by the converter)
    ]
    # A pool of random values reused cyclically keeps generation fast in pure Python
    # while still giving every weight a non-degenerate value.
    pool = array.array("f", (rng.uniform(-0.08, 0.08) for _ in range(1 << 16)))
    with open(args.out, "wb") as out:
        out.write(struct.pack("<7i", args.dim, hidden, args.layers, args.heads, args.heads,
                              args.vocab, args.seq_len))
        for n in sizes:
            full, rest = divmod(n, len(pool))
            rotation = rng.randrange(len(pool))
            rotated = pool[rotation:] + pool[:rotation]
            for _ in range(full):
                rotated.tofile(out)
            rotated[:rest].tofile(out)
    print(f"wrote {args.out}: dim={args.dim} layers={args.layers} hidden={hidden} vocab={args.vocab}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
