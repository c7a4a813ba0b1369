"""Time TRL's chunked log-prob kernel against ``cpu_speedups.logprob_head: full``
(mmkd.training.cpu_speedups.logprob_head) on this machine.

Forward + backward of the per-token log-probabilities (with entropy and top-1, as TRL's SFT asks for) for one
batch of hidden states, at the demo's shape by default (32 sequences x 120 tokens, hidden 128, 512 words) or any
other. Prints a table of milliseconds per call.

    python benchmarks/logprob_head_benchmark.py
    python benchmarks/logprob_head_benchmark.py --tokens 8192 --hidden 4096 --vocab 32064 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import torch
from trl.kernels import ChunkedLogProbFunction

from mmkd.training.cpu_speedups.logprob_head import FullLogitsLogProb

OUTPUTS = ("log_probs", "entropy", "is_top1")  # what TRL's SFT trainer requests


def time_ms(fn, hidden, weight, targets, repeats: int) -> float:
    def once():
        h, w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
        fn.apply(h, w, None, targets, 1.0, 32768, None, 1.0, OUTPUTS)[0].sum().backward()

    once()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        once()
    return 1000 * (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32 * 120)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    hidden, weight = torch.randn(args.tokens, args.hidden), torch.randn(args.vocab, args.hidden)
    targets = torch.randint(0, args.vocab, (args.tokens,))
    print(f"tokens {args.tokens}, hidden {args.hidden}, vocab {args.vocab}, {torch.get_num_threads()} threads")
    print(f"{'logprob_head':<14}{'ms per forward+backward':>25}")
    for name, fn in (("chunked", ChunkedLogProbFunction), ("full", FullLogitsLogProb)):
        print(f"{name:<14}{time_ms(fn, hidden, weight, targets, args.repeats):>25.1f}")


if __name__ == "__main__":
    main()
