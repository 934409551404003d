"""The long random-architecture search: `python tests/archgen.py --count N --seed S [--jobs J]`.

Each spec seed S..S+N-1 is drawn by tests/archgen.py and proven by tests/archcheck.py in a
worker process (`--jobs` of them). A failing spec is written, with the stage that failed, to
`archgen-failures/seedN.yaml`; `archcheck.shrink` reduces it to a named regression case.

A spec that runs past `--timeout` seconds (a check takes 1-10 s; a stall is a finding, not a
reason to hang the search) has its worker killed and is recorded as stage "stall" with its
YAML. Workers are replaced every `RECYCLE` specs, so compiled programs never pile up.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import random
import sys
import time
import traceback
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import yaml

RECYCLE = 50  # specs per worker process before a fresh one takes over


def _draw(seed: int, max_layers: int) -> tuple[str, list[str]]:
    from archgen import layer_types, random_spec

    spec = random_spec(random.Random(seed), max_layers)
    return yaml.safe_dump(spec, sort_keys=False), sorted(layer_types(spec))


def _worker(conn: Connection, max_layers: int, runtimes: tuple[str, ...] | None) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import archcheck

    for _ in range(RECYCLE):
        seed = conn.recv()
        if seed is None:
            break
        text, used = _draw(seed, max_layers)
        try:
            archcheck.prove(text, seed=seed, runtimes=runtimes)
            found = None
        except archcheck.Disproved as e:
            found = f"{e.stage}: {e}"
        except Exception:  # a crash is a finding too: record it, keep going
            found = f"crash: {traceback.format_exc(limit=3)}"
        conn.send((seed, found, used))
    conn.close()


class _Pool:
    """Worker processes, each proving one seed at a time; killed when past the timeout."""

    def __init__(self, jobs: int, args: argparse.Namespace, runtimes: tuple[str, ...] | None):
        # spawn, not fork: a forked process inherits XLA's threads in an undefined state.
        self.ctx, self.args, self.runtimes = mp.get_context("spawn"), args, runtimes
        self.workers: list[dict[str, Any]] = [self._start() for _ in range(jobs)]

    def _start(self) -> dict[str, Any]:
        mine, theirs = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(theirs, self.args.max_layers,
                                                      self.runtimes), daemon=True)
        proc.start()
        theirs.close()
        return {"proc": proc, "conn": mine, "seed": None, "since": 0.0, "done": 0}

    def replace(self, w: dict[str, Any]) -> None:
        w["proc"].kill()
        w["proc"].join()
        self.workers[self.workers.index(w)] = self._start()

    def idle(self) -> list[dict[str, Any]]:
        return [w for w in self.workers if w["seed"] is None]

    def give(self, w: dict[str, Any], seed: int) -> None:
        w["conn"].send(seed)
        w["seed"], w["since"] = seed, time.monotonic()

    def results(self, timeout: float) -> list[tuple[int, str | None, list[str]]]:
        """Finished seeds; a stalled or dead worker's seed comes back as a finding."""
        busy = [w for w in self.workers if w["seed"] is not None]
        ready = wait([w["conn"] for w in busy], timeout=timeout) if busy else []
        out = []
        for w in busy:
            seed, over = w["seed"], time.monotonic() - w["since"] > self.args.timeout
            if w["conn"] in ready:
                try:
                    out.append(w["conn"].recv())
                    w["seed"], w["done"] = None, w["done"] + 1
                    if w["done"] >= RECYCLE:
                        self.replace(w)
                    continue
                except EOFError:  # the worker died (out of memory, a segfault in a runtime)
                    code = w["proc"].exitcode
                    out.append((seed, f"crash: worker exited with {code}", []))
            elif over:
                out.append((seed, f"stall: no result after {self.args.timeout:g} s", []))
            else:
                continue
            self.replace(w)
        return out

    def close(self) -> None:
        for w in self.workers:
            w["proc"].kill()


def main(argv: list[str]) -> int:
    """Prove `--count` random specs from `--seed` on; exit 1 if any failed."""
    parser = argparse.ArgumentParser(prog="python tests/archgen.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200, help="specs to prove")
    parser.add_argument("--seed", type=int, default=1, help="first spec's seed")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--max-layers", type=int, default=10)
    parser.add_argument("--runtimes", default=None,
                        help="comma-separated (default: every installed runtime)")
    parser.add_argument("--minutes", type=float, default=math.inf, help="stop after this long")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds one spec may take before it counts as a stall")
    parser.add_argument("--failures", type=Path, default=Path("archgen-failures"),
                        help="folder for the YAML of each failing spec")
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    runtimes = tuple(args.runtimes.split(",")) if args.runtimes else None
    start, found, used, done = time.monotonic(), {}, set(), 0
    seeds = iter(range(args.seed, args.seed + args.count))
    pool, pending = _Pool(max(1, args.jobs), args, runtimes), True
    try:
        while True:
            for w in pool.idle():
                seed = next(seeds, None) if pending else None
                if seed is None or time.monotonic() - start > args.minutes * 60:
                    pending = False
                    break
                pool.give(w, seed)
            if not pending and len(pool.idle()) == len(pool.workers):
                break
            for seed, finding, types in pool.results(timeout=5.0):
                done += 1
                used |= set(types)
                if finding:
                    found[seed] = finding
                    args.failures.mkdir(parents=True, exist_ok=True)
                    note = "".join(f"# {line}\n" for line in finding.splitlines()[:8])
                    text, _ = _draw(seed, args.max_layers)
                    (args.failures / f"seed{seed}.yaml").write_text(note + text)
                    print(f"seed {seed}: {' / '.join(finding.splitlines()[:4])[:300]}",
                          flush=True)
                if done % 50 == 0:
                    print(f"... {done} specs, {len(found)} failing, "
                          f"{time.monotonic() - start:.0f} s", flush=True)
    finally:
        pool.close()
    print(f"{done} specs proven in {time.monotonic() - start:.0f} s over {len(used)} layer "
          f"types; {len(found)} failed" + (f" (YAML in {args.failures}/)" if found else ""))
    return 1 if found else 0
