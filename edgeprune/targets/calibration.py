"""Per-target calibration of the cost model from measured runs.

Each measurement adds a sample (the cost model's features of the measured GGUF and what the
device did). `fit` turns samples into Factors: with one sample the prior is scaled to match it;
with several, theta is a least-squares fit of relative error, pulled gently towards the scaled
prior (ridge) so two nearly collinear samples cannot produce a wild slope.

Stored as JSON in ~/.cache/edgeprune/calibration/<target>[.<runner>].json ($EDGEPRUNE_CALIBRATION
overrides the folder). A sample from another machine fingerprint (CPU, threads, host) resets
the file: efficiency factors do not transfer between devices.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from edgeprune.paths import cache_dir
from edgeprune.targets.costmodel import Factors

MAX_SAMPLES = 24
RIDGE = 0.003  # small: three exact samples recover a line within ~5 %; two collinear ones stay physical


def calibration_dir() -> Path:
    env = os.environ.get("EDGEPRUNE_CALIBRATION")
    d = Path(env) if env else cache_dir() / "calibration"
    d.mkdir(parents=True, exist_ok=True)
    return d


def calibration_path(target_name: str, runner: str) -> Path:
    suffix = "" if runner == "local" else f".{runner}"
    return calibration_dir() / f"{target_name}{suffix}.json"


def fingerprint(target, host: dict | None) -> dict:
    d = target.device
    return {"runner": d.runner, "threads": d.threads, "ssh_host": d.ssh_host,
            "cpu_model": (host or {}).get("cpu_model")}


def load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) and isinstance(data.get("samples"), list) else {"samples": []}
    except (OSError, ValueError):
        return {"samples": []}


def add_sample(path: Path, fp: dict, sample: dict) -> dict:
    """Append a measured sample (atomically); a changed fingerprint starts the file afresh."""
    data = load(path)
    if data.get("fingerprint") not in (None, fp):
        data = {"samples": [], "reset": f"fingerprint changed from {data.get('fingerprint')}"}
    data["fingerprint"] = fp
    # A measurement counts once: a rerun or a resumed run re-reads its cached benchmarks, and
    # appending them again would reweight the fit, so a resumed plan could decide differently
    # from an uninterrupted one.
    same = json.loads(json.dumps(sample, default=str))
    kept = [s for s in data["samples"] if {k: v for k, v in s.items() if k != "time"} != same]
    data["samples"] = (kept + [{**sample, "time": time.time()}])[-MAX_SAMPLES:]
    data["factors"] = factors_dict(fit(data["samples"]))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return data


def factors_dict(f: Factors) -> dict:
    return {"decode": list(f.decode), "prefill": list(f.prefill), "ram_overhead": f.ram_overhead,
            "samples": f.samples}


def fit_theta(xs: list[tuple[float, float]], ys: list[float], prior: tuple[float, float]) -> tuple[float, float]:
    """theta minimising sum((theta.x - y)/y)^2 + RIDGE * sum((theta - s*prior)/(s*prior))^2,
    s being the single scale that best matches the samples."""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    p = np.asarray(prior, dtype=float)
    base = x @ p
    scale = float(np.exp(np.mean(np.log(y / base))))  # geometric mean of measured/prior
    anchor = scale * p
    if len(ys) < 2:
        return tuple(anchor)
    a = x / y[:, None]
    reg = np.diag(RIDGE / anchor**2)
    theta = np.linalg.solve(a.T @ a + reg, a.T @ np.ones(len(y)) + reg @ anchor)
    if (theta <= 0).any():  # an unphysical negative cost: keep the scaled prior
        return tuple(anchor)
    return tuple(float(t) for t in theta)


def fit(samples: list[dict], prior: Factors | None = None) -> Factors:
    prior = prior or Factors()
    if not samples:
        return prior
    dec = fit_theta([tuple(s["features"]["decode"]) for s in samples], [1.0 / s["tg_tps"] for s in samples],
                    prior.decode)
    pre = fit_theta([tuple(s["features"]["prefill"]) for s in samples], [1.0 / s["pp_tps"] for s in samples],
                    prior.prefill)
    resid = [s["peak_rss_bytes"] - s["ram_static"] for s in samples if s.get("peak_rss_bytes")]
    overhead = statistics.median(resid) if resid else prior.ram_overhead
    return Factors(decode=dec, prefill=pre, ram_overhead=max(0.0, overhead), samples=len(samples))


def current_factors(path: Path, fp: dict | None = None) -> Factors:
    data = load(path)
    if fp is not None and data.get("fingerprint") not in (None, fp):
        return Factors()
    return fit(data["samples"])


def sample_from(pred, bench: dict, label: str, runner: str) -> dict:
    """What to keep of one measurement: the features it was predicted from and what was measured."""
    return {"label": label, "runner": runner, "features": pred.features,
            "tg_tps": bench["tg_tps"]["median"], "pp_tps": bench["pp_tps"]["median"],
            "peak_rss_bytes": bench.get("peak_rss_bytes"), "file_bytes": bench.get("model_bytes"),
            "ram_static": pred.ram_static}
