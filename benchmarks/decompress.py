"""Decompress + verify speed of the model store against the `zstd` command line tool.

Builds a real GGUF of at least --size-mb MB (the demo llama architecture, widened and deepened),
compresses it as the demo set is (.gguf.zst, level 10), then decompresses it repeatedly with
  store: models.store.decompress_verified (streaming zstd + SHA-256 + fsync + rename into place)
  cli:   /usr/bin/zstd -d -q -f SRC -o DST
  cli+fsync: the same, then fsync of the output (a reference row: the store is durable, the CLI not)
alternating the order of the methods. MB/s is decompressed bytes (10^6) over wall time; the page cache
is flushed to disk (os.sync) before every run, outside the timing. Needs the `zstd` binary.

    .venv/bin/python benchmarks/decompress.py [--size-mb 256] [--repeats 3] [--level 10]

The last line printed is a JSON object: decompress_vs_cli (store/cli, medians), store_mb_s,
cli_mb_s, cli_fsync_mb_s, file_mb.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from models.demo import DemoSpec, compress, sha256_file, write_model  # noqa: E402
from models.store import decompress_verified  # noqa: E402

ZSTD = "/usr/bin/zstd"


def build_gguf(path: Path, size_mb: int) -> DemoSpec:
    """Write a GGUF of at least size_mb MB; adds layers until it is big enough."""
    spec = replace(DemoSpec(), n_embd=1024, n_ff=2816, draft_layers=2, extra_layers=1)
    e, f, kv = spec.n_embd, spec.n_ff, spec.n_embd // spec.n_head * spec.n_head_kv
    per_layer = 2 * (2 * e * e + 2 * kv * e + 3 * e * f)  # float16 weights of one block
    spec = replace(spec, extra_layers=max(1, -(-size_mb * 10**6 // per_layer) - spec.draft_layers))
    while True:
        write_model(path, spec, "base")
        if path.stat().st_size >= size_mb * 10**6:
            return spec
        spec = replace(spec, extra_layers=spec.extra_layers + 1)


def run_store(src: Path, dst: Path, sha: str, size: int) -> float:
    start = time.perf_counter()
    decompress_verified(src, dst, sha, size, progress=False)
    return time.perf_counter() - start


def run_cli(src: Path, dst: Path, fsync: bool = False) -> float:
    start = time.perf_counter()
    subprocess.run([ZSTD, "-d", "-q", "-f", str(src), "-o", str(dst)], check=True)
    if fsync:  # reference only: the store fsyncs before its rename, the CLI does not
        fd = os.open(dst, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=256, help="minimum GGUF size in MB (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method (default 3)")
    parser.add_argument("--level", type=int, default=10, help="zstd level used to compress (default 10, as the demo set)")
    args = parser.parse_args()
    if not Path(ZSTD).is_file():
        print(f"{ZSTD} not found: install the zstd command line tool (apt-get install zstd) and rerun.")
        return 1

    with tempfile.TemporaryDirectory(prefix="cogumi-bench-") as tmp:
        tmp = Path(tmp)
        gguf, zst = tmp / "big.gguf", tmp / "big.gguf.zst"
        t0 = time.perf_counter()
        spec = build_gguf(gguf, args.size_mb)
        size, sha = gguf.stat().st_size, sha256_file(gguf)
        compress(gguf, zst, level=args.level)
        print(f"GGUF: {size / 1e6:.1f} MB ({spec.draft_layers + spec.extra_layers} layers, n_embd {spec.n_embd}, "
              f"n_ff {spec.n_ff}); .zst {zst.stat().st_size / 1e6:.1f} MB at level {args.level} "
              f"(ratio {size / zst.stat().st_size:.2f}); built in {time.perf_counter() - t0:.1f} s; "
              f"1-min load average {os.getloadavg()[0]:.2f}")

        out_store, out_cli = tmp / "store" / "big.gguf", tmp / "cli" / "big.gguf"
        out_cli.parent.mkdir()
        methods = {"store": lambda: run_store(zst, out_store, sha, size), "cli": lambda: run_cli(zst, out_cli),
                   "cli+fsync": lambda: run_cli(zst, out_cli, fsync=True)}
        times: dict[str, list[float]] = {name: [] for name in methods}
        sizes_ok, cli_sha_ok = True, None
        for i in range(args.repeats):
            order = list(methods) if i % 2 == 0 else list(methods)[::-1]
            for name in order:
                for old in (out_store, out_cli):
                    old.unlink(missing_ok=True)
                os.sync()  # the previous run's dirty pages must not be written back during this one
                seconds = methods[name]()
                out = out_store if name == "store" else out_cli
                sizes_ok &= out.stat().st_size == size
                if name != "store" and cli_sha_ok is None:  # once, outside the timing
                    cli_sha_ok = sha256_file(out_cli) == sha
                times[name].append(seconds)
                print(f"  run {i + 1} {name:9s} {seconds:6.2f} s  {size / 1e6 / seconds:7.1f} MB/s")

    mb = size / 1e6
    rows = {name: (mb / min(t), mb / statistics.median(t)) for name, t in times.items()}
    print(f"\n{'method':10s} {'best MB/s':>10s} {'median MB/s':>12s}   (on {mb:.1f} MB decompressed, {args.repeats} runs)")
    for name, (best, median) in rows.items():
        print(f"{name:10s} {best:10.1f} {median:12.1f}")
    ratio = rows["store"][1] / rows["cli"][1]
    print(f"store / cli (median): {ratio:.2f}   store / cli+fsync (median): {rows['store'][1] / rows['cli+fsync'][1]:.2f}")
    print(f"output sizes equal to the source GGUF: {'yes' if sizes_ok else 'NO'}; "
          f"cli output sha256 matches: {'yes' if cli_sha_ok else 'NO'} (the store checks its own)")
    print(json.dumps({"decompress_vs_cli": round(ratio, 3), "store_mb_s": round(rows["store"][1], 1),
                      "cli_mb_s": round(rows["cli"][1], 1), "cli_fsync_mb_s": round(rows["cli+fsync"][1], 1),
                      "file_mb": round(mb, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
