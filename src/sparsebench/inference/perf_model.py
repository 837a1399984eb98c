"""Performance model: the density below which the sparse kernel beats dense, per layer shape.

This is the "sweet spot" of Park et al. (2017, "Faster CNNs with direct sparse convolutions and
guided pruning", arXiv:1608.01409): sparse time grows with the nonzeros while dense time does
not, so for a shape, batch and thread count there is a break-even density. We measure rather
than model the hardware: a short calibration times dense ``F.linear`` and the sparse kernel for
the layer's shape on random weights at a few densities (interleaved, medians), interpolates the
sparse time piecewise-linearly in density, and caches the result as JSON in a file keyed by
CPU model, thread count, torch version and kernel path, so it is paid once per machine.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from sparsebench.inference import _extension
from sparsebench.inference.sparse_linear import SparseLinear
from sparsebench.inference.timing import interleaved_medians

log = logging.getLogger(__name__)

#: Densities timed by a calibration. Dense-ish points matter too: they place the break-even.
DEFAULT_DENSITIES: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Calibration:
    """Measured dense and sparse times for one ``(out, in, batch)`` on this machine.

    ``sparse_s[k]`` is the median time of the sparse kernel at density ``densities[k]``.
    """

    out_features: int
    in_features: int
    batch: int
    dense_s: float
    densities: tuple[float, ...]
    sparse_s: tuple[float, ...]

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


def _random_sparse_weight(out_f: int, in_f: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    return w * (torch.rand(out_f, in_f, generator=g) < density)


class PerformanceModel:
    """Calibrates and caches dense-vs-sparse timings per layer shape and batch.

    Args:
        cache_path: JSON file for the calibrations; ``None`` means the default file in the
            sparsebench cache directory, keyed by CPU, threads, torch version and kernel path.
        densities: densities timed per calibration.
        budget_s: rough wall-clock limit of the timing of one calibration.
        persist: write new calibrations to ``cache_path``.
    """

    def __init__(
        self,
        cache_path: str | os.PathLike[str] | None = None,
        *,
        densities: tuple[float, ...] = DEFAULT_DENSITIES,
        budget_s: float = 1.0,
        persist: bool = True,
    ) -> None:
        if not densities or any(not 0 < d <= 1 for d in densities):
            raise ValueError(f"densities must be non-empty values in (0, 1], got {densities}")
        self.densities = tuple(sorted(densities))
        self.budget_s = budget_s
        self.persist = persist
        self.cache_path = Path(cache_path) if cache_path is not None else self.default_cache_path()
        self._entries: dict[str, Calibration] = self._read()

    @staticmethod
    def machine_key() -> dict[str, str]:
        """Return what a calibration depends on: CPU, threads, torch version, kernel path."""
        model, flags = _extension.cpu_description()
        return {
            "cpu": model,
            "cpu_flags": flags,
            "threads": str(torch.get_num_threads()),
            "torch": torch.__version__,
            "kernels": _extension.kernel_path(),
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
                    **{**v, "densities": tuple(v["densities"]), "sparse_s": tuple(v["sparse_s"])}
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
    def _key(out_f: int, in_f: int, batch: int, densities: tuple[float, ...]) -> str:
        return f"linear:{out_f}x{in_f}:b{batch}:d{','.join(f'{d:g}' for d in densities)}"

    def calibrate(self, out_features: int, in_features: int, batch: int) -> Calibration:
        """Return the calibration for a Linear shape and batch, measuring it if not cached."""
        key = self._key(out_features, in_features, batch, self.densities)
        if key in self._entries:
            return self._entries[key]
        x = torch.randn(batch, in_features)
        dense_w = _random_sparse_weight(out_features, in_features, 1.0, 0)
        layers = {
            d: SparseLinear.from_dense(_random_sparse_weight(out_features, in_features, d, i))
            for i, d in enumerate(self.densities)
        }
        candidates = {"dense": lambda: F.linear(x, dense_w)}
        for d, layer in layers.items():
            candidates[f"{d}"] = lambda layer=layer: layer(x)
        # One probe round sizes the repeats so a calibration costs about budget_s.
        probe = interleaved_medians(candidates, repeats=1, warmup=1)
        rounds = int(self.budget_s / max(sum(probe.values()), 1e-6))
        # The 20th percentile, not the median: on a shared 2-core machine a neighbour's job
        # stalls a 2-thread parallel region for a whole time slice (measured: 12 ms for a
        # 60 us product), and the decision should reflect the layer, not the neighbour.
        times = interleaved_medians(
            candidates, repeats=min(max(rounds, 5), 51), warmup=0, quantile=0.2
        )
        cal = Calibration(
            out_features,
            in_features,
            batch,
            times["dense"],
            self.densities,
            tuple(times[f"{d}"] for d in self.densities),
        )
        log.info(
            "calibrated Linear %dx%d batch %d: break-even density %.3f",
            out_features,
            in_features,
            batch,
            cal.break_even_density(),
        )
        self._entries[key] = cal
        if self.persist:
            self._write()
        return cal

    def record(self, cal: Calibration) -> None:
        """Store a calibration (measured elsewhere, or made up in a test) in the cache."""
        key = self._key(cal.out_features, cal.in_features, cal.batch, self.densities)
        self._entries[key] = cal
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
