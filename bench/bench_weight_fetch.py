"""What one engine's fetch of the published weights costs, torch tensors against the numpy form the
object-store transport publishes (`rl.weight_sync.to_shared`), with 1, 2 and 4 engines fetching at
once, side by side in one Ray instance.

    python bench/bench_weight_fetch.py [--model checkpoints/tiny-moe] [--repeats 8]

A publisher actor holds the checkpoint's state dict and returns it in either form; every engine
stand-in fetches the object (`ray.get`), turns it into tensors and touches them. Prints the median
over the repeats (the first two left out) of the slowest engine's seconds, and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "checkpoints" / "tiny-moe"))
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()

    import ray
    from safetensors.torch import load_file

    from rl.weight_sync import from_shared, to_shared

    state = load_file(str(Path(args.model) / "model.safetensors"))
    size = sum(t.numel() * t.element_size() for t in state.values()) / 1e6
    print(f"{args.model}: {len(state)} tensors, {size:.1f} MB")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)

    @ray.remote(num_cpus=0)
    class Publisher:
        def __init__(self, weights):
            self.weights = weights

        def publish(self, form):
            return self.weights if form == "torch" else to_shared(self.weights)

    @ray.remote(num_cpus=0)
    class Engine:
        def fetch(self, published, form):
            t0 = time.perf_counter()
            weights = ray.get(published[0])
            if form == "numpy":
                weights = from_shared(weights)
            touched = sum(float(t.reshape(-1)[0]) for t in weights.values() if t.numel())
            return time.perf_counter() - t0, touched

    publisher = Publisher.remote(state)
    rows = []
    for engines in (1, 2, 4):
        fleet = [Engine.remote() for _ in range(engines)]
        seconds = {}
        for form in ("torch", "numpy"):
            times = []
            for _ in range(args.repeats):
                ref = publisher.publish.remote(form)
                ray.wait([ref], fetch_local=False)
                times.append(max(t for t, _ in ray.get([e.fetch.remote([ref], form) for e in fleet])))
            seconds[form] = statistics.median(times[2:] or times)
        rows.append((engines, seconds["torch"], seconds["numpy"]))
    print("\n| engines | torch tensors, s | numpy (zero-copy), s | ratio |\n|---:|---:|---:|---:|")
    for engines, torch_s, numpy_s in rows:
        print(f"| {engines} | {torch_s:.4f} | {numpy_s:.4f} | {torch_s / numpy_s:.1f}x |")
    ray.shutdown()


if __name__ == "__main__":
    main()
