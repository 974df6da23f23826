"""Ship the decoded cache to another node through Ray's object store, or decode it there?

Measured 2026-11-26, `python tests/cluster/ship_vs_decode.py --repeat 3`, on a 2-core AMD EPYC
VM (CPU only; shared: the load average was near 2.5 with other engineers' jobs), Ray 2.60.0,
medians of 3 (two earlier runs: ship 0.54 / 0.57 s, decode 5.02 / 4.26 s for the photos):
  dataset               arrays     put    ship   decode
  digits 32 px          5.6 MB   0.01 s  0.02 s  0.52 s   shipping 22x faster
  2,000 photos 227 px   309 MB   0.21 s  0.48 s  4.33 s   shipping 9.1x faster (650 MB/s)
Shipping wins, so the design stays: decode once on the head, one transfer per node. Between
machines the transfer is bound by the network instead: 309 MB take about 0.3 s at 10 Gbit/s
and 2.5 s at 1 Gbit/s, while decoding on a node also needs the JPEGs there (169 MB through
NFS) and its cores: one core takes 7.85 s (bench_data), so 8 cores need at least 1 s.

hpsearch builds the cache once on the driver (the head node); trials on a node that has the
cache file memory-map it, and a trial on another node fetches the arrays once through Ray's
object store from the driver's image server (`search.images`), on first use (a node that
joins late too). The alternative is to decode the image folder on every node.
This script starts a local two-node cluster (the drills' `LocalCluster`: `ray start` head and
worker on this machine; the transfer runs through Ray's object managers over loopback TCP, as
between machines, without a real network's bandwidth limit) and times, per dataset:
  put      ray.put of the arrays on the head (what the image server does on first request)
  ship     the first ray.get of them in a (warm) process on the worker node
  decode   what that node would do instead: data_pipeline.prepare from the image folder
           (scan, split, decode in parallel shards into a fresh cache) plus reading the arrays,
           with all of the worker's cores
Datasets: scikit-learn's digits at 32 px (the demo) and 2,000 photo-like 640x480 JPEGs at
227 px (the benchmark folder of `python -m benchmarks bench_data`, generated if missing).

Run from the repository root: `python tests/cluster/ship_vs_decode.py [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def _local_cluster_class():
    spec = importlib.util.spec_from_file_location("cluster_conftest", HERE / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LocalCluster


def _datasets(work: Path) -> list[tuple[str, Path, int]]:
    from benchmarks.bench_data import generate
    from hpsearch.data_pipeline import default_cache_root
    from hpsearch.search.driver.demo import write_digits

    digits = write_digits(work / "digits")
    photos = generate(
        default_cache_root() / "bench_data" / "photos-2000-640x480",
        images=2000,
        classes=10,
        width=640,
        height=480,
        workers=os.cpu_count() or 1,
    )
    return [("digits 32 px", digits, 32), ("2,000 photos 227 px", photos, 227)]


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _experiment(folder: Path, size: int, cache: Path):
    from hpsearch.search.experiment.schema import Experiment

    return Experiment.model_validate(
        {"name": "ship", "data": {"folder": str(folder), "image_size": size, "cache": str(cache)}}
    )


def _measure(cluster, work: Path, repeat: int) -> list[tuple]:
    import numpy as np
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from hpsearch.data_pipeline import prepare
    from hpsearch.search.trial.inputs import load_data

    cores = os.cpu_count() or 1
    datasets = _datasets(work)
    cluster.start(workers=1, num_cpus=cores)
    ray.init(address=cluster.address, log_to_driver=False)
    here = ray.get_runtime_context().get_node_id()
    (other,) = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != here]
    on_worker = NodeAffinitySchedulingStrategy(other, soft=False)

    @ray.remote(num_cpus=0, scheduling_strategy=on_worker)
    def fetch(box: list) -> tuple[float, int, str]:
        t0 = time.perf_counter()
        data = ray.get(box[0])
        nbytes = sum(v.nbytes for v in data.values())
        return time.perf_counter() - t0, nbytes, ray.get_runtime_context().get_node_id()

    @ray.remote(num_cpus=cores, scheduling_strategy=on_worker)
    def decode(folder: str, size: int, cache: str) -> float:
        t0 = time.perf_counter()
        cache_, _ = prepare(folder, image_size=size, cache_root=cache, progress=False)
        np.ascontiguousarray(cache_.images).sum()  # read it, as load_data does
        return time.perf_counter() - t0

    # Start the worker node's processes and their imports, which a search pays anyway.
    ray.get(fetch.remote([ray.put({})]))
    ray.get(decode.remote(str(datasets[0][1]), 8, str(work / "warm-up")))
    rows = []
    for label, folder, size in datasets:
        data = load_data(_experiment(folder, size, work / "cache"), progress=False)
        puts, ships = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            ref = ray.put({"images": np.ascontiguousarray(data.images), "labels": data.labels})
            puts.append(time.perf_counter() - t0)
            seconds, nbytes, node = ray.get(fetch.remote([ref]))
            assert node == other
            ships.append(seconds)
            del ref
        decodes = [
            ray.get(decode.remote(str(folder), size, str(work / f"decode-{i}")))
            for i in range(repeat)
        ]
        rows.append((label, nbytes, puts, ships, decodes))
    ray.shutdown()
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3, help="measurements per figure (median)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    cluster = _local_cluster_class()(object_store_mb=1500)
    # This process joins the cluster too: its token settings, before Ray reads them on import.
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        os.environ[key] = cluster.env[key]
    work = Path(tempfile.mkdtemp(prefix="hpsearch-ship-"))
    try:
        with cluster:
            rows = _measure(cluster, work, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import ray

    print(
        f"{time.strftime('%Y-%m-%d')}, {_cpu()}, "
        f"{os.cpu_count()} cores, Ray {ray.__version__}; medians of {args.repeat}"
    )
    print(f"{'dataset':<22}{'arrays':>10}{'put':>9}{'ship':>9}{'decode':>9}  ship vs decode")
    for label, nbytes, puts, ships, decodes in rows:
        put, ship, dec = (statistics.median(v) for v in (puts, ships, decodes))
        print(
            f"{label:<22}{nbytes / 1e6:>8.1f}MB{put:>8.2f}s{ship:>8.2f}s{dec:>8.2f}s"
            f"  {dec / ship:.1f}x faster to ship ({nbytes / 1e6 / ship:,.0f} MB/s)"
        )


if __name__ == "__main__":
    main()
