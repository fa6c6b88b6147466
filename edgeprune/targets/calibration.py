"""Per-target calibration of the cost model from measured runs.

Each measurement adds a sample (the cost model's features of the measured GGUF and what the
device did). `fit` turns samples into Factors: with one sample the prior is scaled to match it;
with several, theta is a least-squares fit of relative error, pulled gently towards the scaled
prior (ridge) so two nearly collinear samples cannot produce a wild slope. The bandwidth (decode)
and compute (prefill) terms are fitted per quant type, the dispatch terms shared; a type never
measured on the target gets the samples' average efficiency (`fit_per_quant`). `relevel` carries
per-type efficiencies from earlier runs into a run measured under another load. A sample measured
paired with the run's baseline is stored at the run's speed level (`normalized`), so one run's
samples are fitted as if taken in the same minute, and samples of several runs are put on the
latest run's level through the baseline every run measures (`common_level`).

Stored as JSON in ~/.cache/edgeprune/calibration/<target>[.<runner>].json ($EDGEPRUNE_CALIBRATION
overrides the folder). A sample from another machine fingerprint (CPU, threads, host) resets
the file: efficiency factors do not transfer between devices.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np

from edgeprune import registry
from edgeprune.atomic import atomic_write_text
from edgeprune.paths import cache_dir
from edgeprune.targets.costmodel import Factors

MAX_SAMPLES = 24
RIDGE = 0.003  # small: three exact samples recover a line within ~5 %; two collinear ones stay physical


def calibration_dir() -> Path:
    env = os.environ.get("EDGEPRUNE_CALIBRATION")
    d = Path(env) if env else cache_dir() / "calibration"
    d.mkdir(parents=True, exist_ok=True)
    return d


def shape_key(shape) -> str:
    """A model shape as a file-name part: efficiencies fitted on one shape (a 135M model whose
    GGUF sits in the CPU cache) must not predict another (an 8B one read from DRAM)."""
    return (f"L{shape.layers}-h{shape.hidden}-q{shape.heads}-kv{shape.kv_heads}-d{shape.head_dim}"
            f"-f{shape.ffn}-v{shape.vocab}{'-tied' if shape.tied else ''}")


def calibration_path(target_name: str, runner: str, model: str | None = None) -> Path:
    """The file for a (target, model shape); quant types are keyed inside it, per sample. The names
    are checked again here (a Target built with model_copy skips the validator), so no name can put
    the file outside calibration_dir(). `model`: shape_key(...); None only for tools that read the
    target's files as a whole."""
    from edgeprune.config.target import TARGET_NAME
    from edgeprune.errors import ConfigError

    for part, what in ((target_name, "name"), (runner, "device.runner")):
        if not TARGET_NAME.fullmatch(part or ""):
            raise ConfigError(f"target {what} {part!r} cannot name a calibration file", where=f"target {what}",
                              fix="use letters, digits, '.', '_' or '-', starting with a letter or digit")
    suffix = "" if registry.get("runner", runner, where="device.runner").untagged_files else f".{runner}"
    if model is not None:
        if not TARGET_NAME.fullmatch(model):
            raise ConfigError(f"model key {model!r} cannot name a calibration file", where="model shape",
                              fix="report a bug: shape keys are letters, digits and '-'")
        suffix += f".{model}"
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
    data["factors"] = factors_dict(fit(common_level(data["samples"])))
    atomic_write_text(path, json.dumps(data, indent=2))
    return data


def factors_dict(f: Factors) -> dict:
    return {"decode": list(f.decode), "prefill": list(f.prefill), "ram_overhead": f.ram_overhead,
            "samples": f.samples, "decode_quant": dict(f.decode_quant), "prefill_quant": dict(f.prefill_quant),
            "decode_type": dict(f.decode_type)}


def fit_theta(xs: list[tuple[float, ...]], ys: list[float], prior: tuple[float, ...]) -> tuple[float, ...]:
    """theta minimising sum((theta.x - y)/y)^2 + RIDGE * sum((theta - s*prior)/(s*prior))^2,
    s being the single scale that best matches the samples."""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    p = np.asarray(prior, dtype=float)
    base = x @ p
    scale = float(np.exp(np.mean(np.log(y / base))))  # geometric mean of measured/prior
    anchor = scale * p
    if len(ys) < 2:
        return tuple(float(a) for a in anchor)
    a = x / y[:, None]
    reg = np.diag(RIDGE / anchor**2)
    theta = np.linalg.solve(a.T @ a + reg, a.T @ np.ones(len(y)) + reg @ anchor)
    if (theta <= 0).any():  # an unphysical negative cost: keep the scaled prior
        return tuple(float(a) for a in anchor)
    return tuple(float(t) for t in theta)


def sample_quant(s: dict) -> str:
    """A sample's quant type; samples stored before it was recorded carry it as their label's last word."""
    return s.get("quant") or (str(s.get("label") or "").split() or ["?"])[-1]


def fit_per_quant(samples: list[dict], kind: str, rate: str, prior: tuple[float, float]
                  ) -> tuple[dict[str, float], float, float]:
    """One bandwidth (or compute) theta per quant type, one shared dispatch theta.

    The columns are the throughput feature split by quant type (zero for other types) and the
    dispatch feature; the ridge holds a type with a single sample at the scaled prior's dispatch
    share, so its theta absorbs what the type does differently. Returns ({quant: theta}, the
    dispatch theta, the theta for unmeasured types): the geometric mean of the measured types',
    weighted by samples, i.e. what a device-wide efficiency fitted on the same samples would say.
    """
    quants = sorted({sample_quant(s) for s in samples})
    xs = [tuple(s["features"][kind][0] if sample_quant(s) == q else 0.0 for q in quants)
          + (s["features"][kind][1],) for s in samples]
    theta = fit_theta(xs, [1.0 / s[rate] for s in samples], tuple(prior[0] for _ in quants) + (prior[1],))
    per = dict(zip(quants, theta[:-1]))
    n = {q: sum(sample_quant(s) == q for s in samples) for q in quants}
    default = math.exp(sum(n[q] * math.log(per[q]) for q in quants) / len(samples))
    return per, theta[-1], default


DOMINANT = 0.5  # a tensor type is fitted only from samples where it is at least half the bytes read


def fit_per_tensor_type(samples: list[dict], default: float, dispatch: float) -> dict[str, float]:
    """One decode theta per ggml tensor type, for the types that make up at least half of some
    sample's bytes (a pure probe, or the bulk type of a file); the other bytes of every sample are
    read at `default`, the dispatch term is held at `dispatch`. Least squares of relative error,
    ridged towards `default` as fit_theta is. Samples stored without "decode_types" are skipped."""
    usable = [s for s in samples if s["features"].get("decode_types")]
    types = sorted({t for s in usable for t, x in s["features"]["decode_types"].items()
                    if x >= DOMINANT * s["features"]["decode"][0]})
    if not types:
        return {}
    y = np.array([1.0 / s["tg_tps"] for s in usable])
    a = np.array([[s["features"]["decode_types"].get(t, 0.0) for t in types] for s in usable]) / y[:, None]
    rest = np.array([sum(x for t, x in s["features"]["decode_types"].items() if t not in types) * default
                     + s["features"]["decode"][1] * dispatch for s in usable])
    b = 1.0 - rest / y
    reg = RIDGE / default**2 * np.eye(len(types))
    theta = np.linalg.solve(a.T @ a + reg, a.T @ b + reg @ np.full(len(types), default))
    return {t: float(v) for t, v in zip(types, theta) if v > 0}


def fit(samples: list[dict], prior: Factors | None = None, per_tensor_type: bool = False) -> Factors:
    """Factors from measured samples. `per_tensor_type`: also fit decode efficiency per ggml tensor
    type (fit_per_tensor_type); worth it when the samples include files whose bulk is one type each,
    e.g. pure-type probes of the model at hand (bench/scale_cost.py)."""
    prior = prior or Factors()
    if not samples:
        return prior
    dec, dec_d, dec_default = fit_per_quant(samples, "decode", "tg_tps", prior.decode)
    pre, pre_d, pre_default = fit_per_quant(samples, "prefill", "pp_tps", prior.prefill)
    resid = [s["peak_rss_bytes"] - s["ram_static"] for s in samples if s.get("peak_rss_bytes")]
    overhead = statistics.median(resid) if resid else prior.ram_overhead
    by_type = fit_per_tensor_type(samples, dec_default, dec_d) if per_tensor_type else {}
    return Factors(decode=(dec_default, dec_d), prefill=(pre_default, pre_d), ram_overhead=max(0.0, overhead),
                   samples=len(samples), decode_quant=dec, prefill_quant=pre, decode_type=by_type)


def _level(now: dict, then: dict) -> float | None:
    """How much slower (>1) the device runs now than when `then` was fitted, over the types both know."""
    common = [q for q in now if q in then]
    if not common:
        return None
    return math.exp(sum(math.log(now[q] / then[q]) for q in common) / len(common))


def relevel(history: Factors, run: Factors) -> Factors:
    """This run's fit, completed with the per-type efficiencies earlier runs measured.

    Absolute speed drifts with the machine's load between runs, but the ratio between two quant
    types' kernels is a property of the device. So a type this run has not measured takes its
    historical theta times the run's level (run / history theta over the types both measured),
    not the device-wide prior; the types the run measured keep the run's own numbers.
    """
    if not history.samples or not run.samples:
        return run if run.samples else history
    out = {}
    for kind in ("decode", "prefill"):
        now, then = getattr(run, f"{kind}_quant"), getattr(history, f"{kind}_quant")
        level = _level(now, then) or getattr(run, kind)[0] / getattr(history, kind)[0]
        merged = {q: t * level for q, t in then.items()} | now
        default = math.exp(sum(math.log(t) for t in merged.values()) / len(merged))
        out[kind] = (default, getattr(run, kind)[1])
        out[f"{kind}_quant"] = merged
    return Factors(ram_overhead=run.ram_overhead, samples=run.samples + history.samples, **out)


def current_factors(path: Path, fp: dict | None = None) -> Factors:
    data = load(path)
    if fp is not None and data.get("fingerprint") not in (None, fp):
        return Factors()
    return fit(common_level(data["samples"]))


def sample_from(pred, bench: dict, label: str, runner: str, quant: str | None = None) -> dict:
    """What to keep of one measurement: the features it was predicted from and what was measured."""
    return {"label": label, "runner": runner, "quant": quant or label.split()[-1], "features": pred.features,
            "tg_tps": bench["tg_tps"]["median"], "pp_tps": bench["pp_tps"]["median"],
            "peak_rss_bytes": bench.get("peak_rss_bytes"), "file_bytes": bench.get("model_bytes"),
            "ram_static": pred.ram_static}


def normalized(sample: dict, drift: dict, level: dict | None = None) -> dict:
    """The sample at the run's speed level: measured speed / the machine's drift in its minute
    (planner/drift.py). Fitting measured speeds instead would read a 20 % slower minute as a 20 %
    less efficient quant type. The measured numbers and the drift stay in the sample, for the record.
    `level`: {"baseline": its GGUF key, "tg_tps", "pp_tps"}, the run's level, kept so that samples
    of several runs can be put on one level later (`common_level`)."""
    out = dict(sample) if level is None else {**sample, "level": dict(level)}
    if all(v == 1.0 for v in drift.values()):
        return out
    return {**out, "tg_tps": sample["tg_tps"] / drift["tg_tps"], "pp_tps": sample["pp_tps"] / drift["pp_tps"],
            "measured_tg_tps": sample["tg_tps"], "measured_pp_tps": sample["pp_tps"], "drift": dict(drift)}


def common_level(samples: list[dict]) -> list[dict]:
    """Samples of several runs, each stored at its own run's level, rescaled to the level of the
    latest run that measured the same baseline GGUF. Every run measures its baseline, so the ratio of
    two runs' levels is a measured number, not a guess; without this, a run's per-type efficiencies
    would mix with another run's minute (a 20 % slower run pulls the types it measured 20 % down).
    Samples without a level (older files, other baselines' runs with no link) stay as they are."""
    latest: dict[str, dict] = {}
    for smp in samples:
        if smp.get("level"):
            latest[smp["level"]["baseline"]] = smp["level"]
    out = []
    for smp in samples:
        lv = smp.get("level")
        if not lv:
            out.append(smp)
            continue
        to = latest[lv["baseline"]]
        out.append({**smp, "tg_tps": smp["tg_tps"] * to["tg_tps"] / lv["tg_tps"],
                    "pp_tps": smp["pp_tps"] * to["pp_tps"] / lv["pp_tps"]})
    return out
