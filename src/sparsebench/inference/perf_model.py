"""Performance model: the density below which the sparse kernel beats dense, per layer shape.

This is the "sweet spot" of Park et al. (2017, "Faster CNNs with direct sparse convolutions and
guided pruning", arXiv:1608.01409): sparse time grows with the nonzeros while dense time does
not, so for a shape, batch and thread count there is a break-even density. We measure rather
than model the hardware: a short calibration times dense ``F.linear`` and the sparse kernel for
the layer's shape on random weights at a few densities (interleaved, medians), interpolates the
sparse time piecewise-linearly in density, and caches the result as JSON in a file keyed by
CPU model, thread count, torch version, kernel path and kernel source, so it is paid once per
machine and kernel build.

The block size is an input (issue 10): a BSR calibration times the kernel for ``bh x bw``
blocks, and its density axis is the fraction of nonzero *blocks*. Convolutions are calibrated
per (shape, stride, padding, dilation, input size) against dense ``F.conv2d``.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from sparsebench.inference import _extension
from sparsebench.inference.sparse_linear import SparseLinear
from sparsebench.inference.timing import interleaved_medians, interleaved_rounds

log = logging.getLogger(__name__)

#: Densities timed by a calibration. Dense-ish points matter too: they place the break-even.
DEFAULT_DENSITIES: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)
#: A calibration measured at or above this 1-minute load average per core was taken beside
#: other work; it is measured again when looked up on a machine below QUIET_LOAD_PER_CORE, so a
#: decision made on a busy machine does not outlive the neighbour that caused it.
BUSY_LOAD_PER_CORE = 0.75
QUIET_LOAD_PER_CORE = 0.25


def last_level_cache_bytes() -> int | None:
    """Return the largest CPU cache's size in bytes (Linux sysfs), or None where unknown."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes) if sizes else None


@functools.cache
def stream_bandwidth() -> float:
    """Return the bytes per second one thread reads from memory, measured once per process:
    a copy of a buffer four times the largest cache (at least 64 MB), best of three, read
    bytes only (the copy also writes as many)."""
    size = max(4 * (last_level_cache_bytes() or 0), 64 << 20)
    src = torch.ones(size // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return size / best


def default_thread_counts() -> tuple[int, ...]:
    """Return the thread counts a layer is judged at: this process's, and one.

    A machine shared with other work may give the model fewer cores than it asked for, and
    the sparse kernel and dense matmul lose unequally: a 4096x1024 layer at 30% sparsity,
    batch 1, calibrated at 2 threads on a quiet 2-core machine, went sparse and ran at 0.84x
    dense once a competing process took a core (issue 23); calibrated at 1 thread it stays
    dense. Sparse is chosen only where it wins at both ends.
    """
    threads = torch.get_num_threads()
    return (threads,) if threads == 1 else (threads, 1)


class _Threads:
    """Run a block with ``torch.set_num_threads(n)``, restoring the previous count after."""

    def __init__(self, n: int) -> None:
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self) -> None:
        if self.n != self.before:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        if torch.get_num_threads() != self.before:
            torch.set_num_threads(self.before)


def load_per_core() -> float | None:
    """Return the 1-minute load average divided by the cores (None where the OS has none)."""
    if not hasattr(os, "getloadavg"):
        return None
    return os.getloadavg()[0] / max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Calibration:
    """Measured dense and sparse times for one ``(out, in, batch)`` on this machine.

    ``sparse_s[k]`` is the median time of the sparse kernel at density ``densities[k]``
    (for a block size other than 1x1, the density of nonzero blocks), ``dense_s`` the dense
    layer's 20th percentile (see :func:`calibration_times`). For a convolution
    ``in_features`` is in·kh·kw and ``batch`` the number of images.
    """

    out_features: int
    in_features: int
    batch: int
    dense_s: float
    densities: tuple[float, ...]
    sparse_s: tuple[float, ...]
    kind: str = "linear"
    block: tuple[int, int] = (1, 1)
    #: 1-minute load average per core when measured (None: unknown, e.g. an older cache).
    load_per_core: float | None = None
    #: Threads the layers ran with (None: the cache file's, i.e. the process's own).
    threads: int | None = None

    def sparse_time(self, density: float) -> float:
        """Return the predicted sparse time (s) at ``density``, interpolated piecewise-linearly.

        Outside the measured densities the nearest segment is extrapolated.
        """
        d, t = self.densities, self.sparse_s
        if len(d) == 1:
            return t[0]
        k = min(max(bisect.bisect_left(d, density), 1), len(d) - 1)
        d0, d1, t0, t1 = d[k - 1], d[k], t[k - 1], t[k]
        return max(t0 + (t1 - t0) * (density - d0) / (d1 - d0), 1e-9)

    def speedup(self, density: float) -> float:
        """Return predicted dense time / sparse time at ``density``."""
        return self.dense_s / self.sparse_time(density)

    def break_even_density(self, min_speedup: float = 1.0) -> float:
        """Return the largest density (0..1) at which sparse is ``min_speedup``x faster.

        Returns 0.0 when sparse never wins by that margin and 1.0 when it always does.
        """
        target = self.dense_s / min_speedup
        if self.sparse_time(0.0) > target:
            return 0.0
        lo, hi = 0.0, 1.0
        if self.sparse_time(hi) <= target:
            return 1.0
        for _ in range(40):  # sparse time is monotone in density up to noise; bisect
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.sparse_time(mid) <= target else (lo, mid)
        return lo


#: Which of its timed rounds stands for each side (see :func:`calibration_times`).
DENSE_QUANTILE, SPARSE_QUANTILE = 0.2, 0.5


def _order_statistic(samples: list[float], quantile: float) -> float:
    return sorted(samples)[round(quantile * (len(samples) - 1))]


def calibration_times(dense_rounds: list[float], sparse_rounds: list[list[float]]
                      ) -> tuple[float, tuple[float, ...]]:
    """Returns the dense time and each density's sparse time a calibration keeps.

    Dense counts at its 20th percentile: on a shared 2-core machine a neighbour's job stalls a
    2-thread parallel region for a whole time slice (measured: 12 ms for a 60 us product), and
    the dense layer's time should be the layer's, not the neighbour's. The sparse kernel counts
    at its median, so it must beat the dense layer by the noise of the rounds as well: on a
    quiet machine the two quantiles lie within a few percent, on a busy one a layer near its
    break-even density stays dense (issue 23: a layer chosen sparse must never run slower).
    """
    return (_order_statistic(dense_rounds, DENSE_QUANTILE),
            tuple(_order_statistic(r, SPARSE_QUANTILE) for r in sparse_rounds))


def _random_sparse_weight(
    out_f: int, in_f: int, density: float, seed: int, block: tuple[int, int] = (1, 1)
) -> torch.Tensor:
    """Return a random ``(out_f, in_f)`` weight whose nonzero ``block``s have this density."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    bh, bw = block
    keep = torch.rand(-(-out_f // bh), -(-in_f // bw), generator=g) < density
    keep = keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:out_f, :in_f]
    return w * keep


class PerformanceModel:
    """Calibrates and caches dense-vs-sparse timings per layer shape and batch.

    Args:
        cache_path: JSON file for the calibrations; ``None`` means the default file in the
            sparsebench cache directory, keyed by CPU, threads, torch version and kernels.
        densities: densities timed per calibration.
        budget_s: rough wall-clock limit of the timing of one calibration.
        persist: write new calibrations to ``cache_path``.
        recalibrate: measure every shape again once in this model's life instead of using
            the cache (the new measurements replace the cached ones). Without it, a cached
            calibration taken on a busy machine is measured again when the machine is quiet
            (see :data:`BUSY_LOAD_PER_CORE`).
        thread_counts: the thread counts ``calibrations`` measures each layer at (default
            :func:`default_thread_counts`: this process's and one); pass ``(n,)`` on a
            machine whose cores are the model's alone.
    """

    def __init__(
        self,
        cache_path: str | os.PathLike[str] | None = None,
        *,
        densities: tuple[float, ...] = DEFAULT_DENSITIES,
        budget_s: float = 1.0,
        persist: bool = True,
        recalibrate: bool = False,
        thread_counts: tuple[int, ...] | None = None,
    ) -> None:
        if not densities or any(not 0 < d <= 1 for d in densities):
            raise ValueError(f"densities must be non-empty values in (0, 1], got {densities}")
        counts = default_thread_counts() if thread_counts is None else tuple(thread_counts)
        if not counts or any(not isinstance(t, int) or t < 1 for t in counts):
            raise ValueError(f"thread_counts must be positive integers, got {thread_counts!r}")
        self.thread_counts = tuple(dict.fromkeys(counts))
        self.densities = tuple(sorted(densities))
        self.budget_s = budget_s
        self.persist = persist
        self.cache_path = Path(cache_path) if cache_path is not None else self.default_cache_path()
        self._entries: dict[str, Calibration] = self._read()
        self._fresh: set[str] = set() if recalibrate else set(self._entries)

    def _cached(self, key: str) -> Calibration | None:
        """Return the cached calibration for ``key`` unless it must be measured again: with
        ``recalibrate`` until measured in this model's life, or when it was taken on a busy
        machine and this one is quiet now."""
        cal = self._entries.get(key)
        if cal is None or key not in self._fresh:
            return None
        now = load_per_core()
        if (cal.load_per_core is not None and now is not None
                and cal.load_per_core >= BUSY_LOAD_PER_CORE and now < QUIET_LOAD_PER_CORE):
            log.info("calibration %s was measured at load %.2f per core, now %.2f: measuring "
                     "again", key, cal.load_per_core, now)
            return None
        return cal

    @staticmethod
    def machine_key() -> dict[str, str]:
        """Return what a calibration depends on: CPU, threads, torch version, kernel path
        and the kernels' source (a faster kernel must not be judged by the old one's times)."""
        model, flags = _extension.cpu_description()
        return {
            "cpu": model,
            "cpu_flags": flags,
            "threads": str(torch.get_num_threads()),
            "torch": torch.__version__,
            "kernels": _extension.kernel_path(),
            "kernel_source": _extension.kernel_version(),
            # How rounds become times: a cache made under another rule is not reused.
            "rule": f"pairs, dense q{DENSE_QUANTILE:g} sparse q{SPARSE_QUANTILE:g}",
        }

    @classmethod
    def default_cache_path(cls) -> Path:
        """Return the default calibration file for this machine key."""
        key = json.dumps(cls.machine_key(), sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return _extension.cache_dir() / "perf_model" / f"calibration-{digest}.json"

    def _read(self) -> dict[str, Calibration]:
        try:
            data = json.loads(self.cache_path.read_text())
            return {
                k: Calibration(
                    **{
                        **v,
                        "densities": tuple(v["densities"]),
                        "sparse_s": tuple(v["sparse_s"]),
                        "block": tuple(v.get("block", (1, 1))),
                        "threads": v.get("threads"),
                    }
                )
                for k, v in data.get("calibrations", {}).items()
            }
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("ignoring unreadable calibration cache %s: %s", self.cache_path, exc)
            return {}

    def _write(self) -> None:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": self.machine_key(),
            "calibrations": {k: asdict(v) for k, v in sorted(self._entries.items())},
        }
        tmp = self.cache_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, self.cache_path)  # atomic: a concurrent reader sees old or new

    @staticmethod
    def _key(
        out_f: int,
        in_f: int,
        batch: int,
        densities: tuple[float, ...],
        block: tuple[int, int] = (1, 1),
        kind: str = "linear",
        extra: str = "",
        threads: int | None = None,
    ) -> str:
        blk = "" if block == (1, 1) else f":blk{block[0]}x{block[1]}"
        dens = ",".join(f"{d:g}" for d in densities)
        # The process's own thread count is the cache file's (machine_key); others are named.
        thr = "" if threads in (None, torch.get_num_threads()) else f":t{threads}"
        return f"{kind}:{out_f}x{in_f}{extra}:b{batch}{blk}:d{dens}{thr}"

    def calibrations(
        self, out_features: int, in_features: int, batch: int, block: tuple[int, int] = (1, 1)
    ) -> list[Calibration]:
        """Return a Linear layer's calibration at each of ``thread_counts``."""
        return [self.calibrate(out_features, in_features, batch, block, threads=t)
                for t in self.thread_counts]

    def conv_calibrations(
        self, conv: torch.nn.Conv2d, input_hw: tuple[int, int], batch: int,
        block: tuple[int, int] = (1, 1),
    ) -> list[Calibration]:
        """Return a Conv2d's calibration at each of ``thread_counts``."""
        return [self.calibrate_conv(conv, input_hw, batch, block, threads=t)
                for t in self.thread_counts]

    def calibrate(
        self, out_features: int, in_features: int, batch: int, block: tuple[int, int] = (1, 1),
        *, threads: int | None = None,
    ) -> Calibration:
        """Return the calibration for a Linear shape, batch and block size (measured if new),
        at ``threads`` (default: the process's own)."""
        key = self._key(out_features, in_features, batch, self.densities, block, threads=threads)
        cached = self._cached(key)
        if cached is not None:
            return cached
        x = torch.randn(batch, in_features)
        dense_w = _random_sparse_weight(out_features, in_features, 1.0, 0)
        layers = {
            d: SparseLinear.from_dense(
                _random_sparse_weight(out_features, in_features, d, i, block), block=block
            )
            for i, d in enumerate(self.densities)
        }
        sparse = {d: (lambda layer=layer: layer(x)) for d, layer in layers.items()}
        return self._measure(
            key,
            lambda: F.linear(x, dense_w),
            sparse,
            (out_features, in_features, batch, "linear", block),
            threads,
        )

    def calibrate_conv(
        self,
        conv: torch.nn.Conv2d,
        input_hw: tuple[int, int],
        batch: int,
        block: tuple[int, int] = (1, 1),
        *,
        threads: int | None = None,
    ) -> Calibration:
        """Return the calibration for a Conv2d's geometry on ``batch`` images of ``input_hw``,
        at ``threads`` (default: the process's own)."""
        from sparsebench.inference.sparse_conv import SparseConv2d

        kh, kw = conv.kernel_size
        cols = conv.in_channels * kh * kw
        extra = (
            f"x{kh}x{kw}:s{conv.stride}:p{conv.padding}:d{conv.dilation}:"
            f"{input_hw[0]}x{input_hw[1]}"
        ).replace(" ", "")
        key = self._key(
            conv.out_channels, cols, batch, self.densities, block, kind="conv", extra=extra,
            threads=threads,
        )
        cached = self._cached(key)
        if cached is not None:
            return cached
        x = torch.randn(batch, conv.in_channels, *input_hw)
        geometry = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
        dense_w = torch.randn(conv.out_channels, conv.in_channels, kh, kw)
        sparse = {}
        for i, d in enumerate(self.densities):
            probe = torch.nn.Conv2d(
                conv.in_channels, conv.out_channels, (kh, kw), bias=False, **geometry
            )
            with torch.no_grad():
                w = _random_sparse_weight(conv.out_channels, cols, d, i, block)
                probe.weight.copy_(w.reshape_as(probe.weight))
            layer = SparseConv2d.from_conv(probe, block)
            sparse[d] = lambda layer=layer: layer(x)
        return self._measure(
            key,
            lambda: F.conv2d(x, dense_w, None, **geometry),
            sparse,
            (conv.out_channels, cols, batch, "conv", block),
            threads,
        )

    def _measure(  # noqa: ANN001
        self, key, dense_fn, sparse_fns, meta, threads: int | None = None
    ) -> Calibration:
        """Time ``dense_fn`` and each density's sparse callable at ``threads`` (default: the
        process's own); cache and return the result."""
        with _Threads(threads or torch.get_num_threads()):
            cal = self._time_pairs(dense_fn, sparse_fns, meta, threads)
        log.info(
            "calibrated %s %dx%d batch %d block %dx%d at %d thread(s): break-even density %.3f",
            cal.kind, cal.out_features, cal.in_features, cal.batch, *cal.block,
            threads or torch.get_num_threads(), cal.break_even_density(),
        )
        self._entries[key] = cal
        self._fresh.add(key)
        if self.persist:
            self._write()
        return cal

    def _time_pairs(self, dense_fn, sparse_fns, meta, threads) -> Calibration:  # noqa: ANN001
        """Times dense against each density's sparse kernel, in pairs (at the threads set)."""
        out_f, in_f, batch, kind, block = meta
        load_before = load_per_core()
        # Each density is timed against dense in rounds of its own: interleaving every
        # density in one round evicted the dense weight from the cache between its calls, and
        # a 1024x1024 layer at batch 1 predicted to win at 50% sparsity ran at 0.43x dense
        # beside its dense original (issue 23). Each pair's ratio is kept, on the median dense
        # time of all pairs.
        per_pair = self.budget_s / len(self.densities)
        dense_times, speedups = [], []
        for d in self.densities:
            pair = {"dense": dense_fn, "sparse": sparse_fns[d]}
            # One probe round sizes the repeats so a calibration costs about budget_s.
            probe = interleaved_medians(pair, repeats=1, warmup=1)
            repeats = int(per_pair / max(sum(probe.values()), 1e-6))
            rounds = interleaved_rounds(pair, repeats=min(max(repeats, 5), 51), warmup=1)
            dense_d, (sparse_d,) = calibration_times(rounds["dense"], [rounds["sparse"]])
            dense_times.append(dense_d)
            speedups.append(dense_d / max(sparse_d, 1e-12))
        dense_s = statistics.median(dense_times)
        sparse_s = tuple(dense_s / speedup for speedup in speedups)
        cal = Calibration(
            out_f,
            in_f,
            batch,
            dense_s,
            self.densities,
            sparse_s,
            kind,
            block,
            # The busier of before and after: a neighbour that started meanwhile counts too.
            None if load_before is None else max(load_before, load_per_core() or 0.0),
            threads,
        )
        return cal

    def record(self, cal: Calibration) -> None:
        """Store a calibration (measured elsewhere, or made up in a test) in the cache, for
        ``cal.threads``, or for every one of ``thread_counts`` when it names none."""
        if cal.kind != "linear":
            raise ValueError("record() takes Linear calibrations; convs are keyed by geometry")
        for threads in (self.thread_counts if cal.threads is None else (cal.threads,)):
            key = self._key(cal.out_features, cal.in_features, cal.batch, self.densities,
                            cal.block, threads=threads)
            self._entries[key] = cal
            self._fresh.add(key)
        if self.persist:
            self._write()

    def predict_speedup(
        self, out_features: int, in_features: int, batch: int, density: float
    ) -> float:
        """Return predicted dense time / sparse time for a layer at ``density``."""
        return self.calibrate(out_features, in_features, batch).speedup(density)

    def break_even_density(
        self, out_features: int, in_features: int, batch: int, min_speedup: float = 1.0
    ) -> float:
        """Return the largest density at which sparse is ``min_speedup``x faster than dense."""
        return self.calibrate(out_features, in_features, batch).break_even_density(min_speedup)
