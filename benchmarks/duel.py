"""A short side-by-side of two or more training contenders of suite.py, for checking one change
under the timing lock without the whole suite (it writes nothing):

    python benchmarks/duel.py [ROUNDS] [MODEL] [CONTENDERS]    # default: 3 cnn nnspec,torch

Each run is `_suite_train.py CONTENDER MODEL --n 4096 --epochs 3` in its own process, with
suite.py's environment (nnspec's allocator and XLA settings for every contender); rounds
rotate who goes first; the ratio is the median of per-round ratios first/other.
"""
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import suite  # noqa: E402


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv else 3
    model = argv[1] if len(argv) > 1 else "cnn"
    contenders = argv[2].split(",") if len(argv) > 2 else ["nnspec", "torch"]
    env = suite.environment()
    res: dict[str, list[float]] = {c: [] for c in contenders}
    for r in range(rounds):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        for c in order:
            got = suite.worker("_suite_train.py", [c, model, "--n", "4096", "--epochs", "3"],
                               env, 600)
            res[c].append(got.get("samples_per_second", float("nan")))
            print(f"round {r + 1} {c}: {res[c][-1]:,.0f} {got.get('route', '')} "
                  f"{got.get('error', '')[-300:]}", flush=True)
    base = contenders[0]
    for c in contenders[1:]:
        ratios = [a / b for a, b in zip(res[base], res[c])]
        print(f"{base}/{c}: median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-"
              f"{max(ratios):.3f}); {base} median {statistics.median(res[base]):,.0f}, "
              f"{c} median {statistics.median(res[c]):,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
