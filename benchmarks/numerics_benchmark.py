"""What pinned CPU numerics (mmkd.numerics) cost and whether they hold: a small torch MLP trained in a fresh process
under each setting, interleaved, printing the kernels torch used, seconds, and a hash of the final weights.

    python benchmarks/numerics_benchmark.py [--runs 3]

Settings: ``pinned`` (pin_cpu_numerics, avx2 and 2 threads), ``hand`` (the same variables set by hand, no mmkd) and
``none`` (2 threads, the libraries' own kernels). Pinned and hand should give the same hash on any x86-64 CPU with
AVX2; ``none`` differs wherever the CPU offers more (AVX-512). docs/performance.md#pinned-cpu-numerics.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import time

HAND = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
THREADS = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}


def train(setting: str) -> None:
    """One run, in this process: pin first if asked, then train and print one line."""
    if setting == "pinned":
        from mmkd.numerics import pin_cpu_numerics

        pin_cpu_numerics({"isa": "avx2", "threads": 2}, stage="numerics_benchmark")
    import torch

    torch.manual_seed(0)
    layers = [torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 512), torch.nn.GELU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(512, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    x, y = torch.randn(4096, 256), torch.randint(0, 2, (4096,))
    start = time.perf_counter()
    for step in range(300):
        i = (step * 64) % 4096
        loss = torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()[:12]
    print(f"{setting:7s} {torch.backends.cpu.get_cpu_capability():7s} {seconds:7.2f} s  weights {digest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each setting, interleaved")
    parser.add_argument("--one", choices=("pinned", "hand", "none"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        train(args.one)
        return
    clean = {k: v for k, v in os.environ.items() if k not in {*HAND, *THREADS}}
    envs = {"pinned": clean, "hand": clean | HAND | THREADS, "none": clean | THREADS}
    for _ in range(args.runs):
        for setting, env in envs.items():
            subprocess.run([sys.executable, __file__, "--one", setting], env=env, check=True)


if __name__ == "__main__":
    main()
