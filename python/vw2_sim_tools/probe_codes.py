"""Probes what a trained dLDM's codes carry: codebook usage and an inverse-dynamics probe.

Reads the AR stage's code cache (``code_cache.safetensors`` + ``code_cache.json``, written
by ``vw2 train ar`` / ``vw2 train all`` in ``RUN/train/ar``), the CALVIN-format dataset it
was encoded from and the bundle's ``split.json``, and reports:

* codebook usage: distinct FSQ codes over every cached latent step, overall and per query;
* the IDM probe: how much of the mean xyz ``rel_actions`` of latent step k (the s control
  steps from frame ``start + s·k``) the observed codes of step k+1 explain, as R² on the
  held-out (validation) episodes, for a ridge-regularized linear map on the one-hot codes
  and for a small MLP (one hidden layer, tanh, Adam) on the same input. The codes of step
  k+1 are what the head is trained on (teacher forcing), so this bounds what the codes
  alone can tell the head about the motion.

Needs numpy only (the safetensors file is parsed directly)::

    python -m vw2_sim_tools.probe_codes --cache RUN/train/ar/code_cache.safetensors \\
        --dataset DATASET --split RUN/split.json [--steps-per-latent 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "U32": np.uint32, "I64": np.int64, "F64": np.float64,
           "I32": np.int32, "U8": np.uint8}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, as numpy arrays."""
    raw = Path(path).read_bytes()
    if len(raw) < 8:
        raise ValueError(f"{path}: not a safetensors file (only {len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = _DTYPES.get(info["dtype"])
        if dt is None:
            raise ValueError(f"{path}: tensor {name!r}: unsupported dtype {info['dtype']}")
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(raw[base + a:base + b], dtype=dt).reshape(info["shape"])
    return out


def load_cache(cache: Path) -> list[dict]:
    """The cached segments: episode, start, end, instruction, steps and codes [steps, N]."""
    meta_path = Path(cache).with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    if "segments" not in meta:
        raise ValueError(f"{meta_path}: expected a 'segments' list, found keys {list(meta)}")
    tensors = read_safetensors(cache)
    segs = []
    for i, (seg, steps) in enumerate(meta["segments"]):
        key = f"{i}.codes"
        if key not in tensors:
            raise ValueError(f"{cache}: missing tensor {key!r} for segment {i}")
        codes = tensors[key].astype(np.int64)
        if steps == 0 or codes.size % steps:
            raise ValueError(f"{cache}: {key}: {codes.size} codes for {steps} steps")
        segs.append(dict(seg, steps=steps, codes=codes.reshape(steps, -1)))
    return segs


def codebook_usage(segs: list[dict]) -> dict:
    """Distinct codes over every cached step, overall and per query position."""
    allc = np.concatenate([s["codes"] for s in segs])
    return {"latent_steps": int(allc.shape[0]),
            "distinct_codes": int(np.unique(allc).size),
            "distinct_per_query": [int(np.unique(allc[:, q]).size) for q in range(allc.shape[1])]}


def one_hot(codes: np.ndarray, vocab: int) -> np.ndarray:
    """[B, N] codes → [B, N·vocab] one-hot rows."""
    b, n = codes.shape
    x = np.zeros((b, n * vocab), np.float32)
    rows = np.repeat(np.arange(b), n)
    cols = (np.arange(n)[None, :] * vocab + codes).reshape(-1)
    x[rows, cols] = 1.0
    return x


def r2(y: np.ndarray, pred: np.ndarray, ref_mean: np.ndarray) -> float:
    """Coefficient of determination over all output dimensions together."""
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - ref_mean) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def ridge_fit(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Least squares with an L2 penalty (intercept not penalized)."""
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = x - xm, y - ym
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1], dtype=np.float64), xc.T @ yc)
    return w, ym - xm @ w


def mlp_fit(x, y, hidden=64, steps=3000, lr=3e-3, wd=1e-4, seed=0):
    """A one-hidden-layer tanh MLP trained full-batch with Adam; returns a predictor."""
    rng = np.random.default_rng(seed)
    ym, ys = y.mean(0), y.std(0) + 1e-8
    t = (y - ym) / ys
    p = [rng.normal(0, 1 / np.sqrt(x.shape[1]), (x.shape[1], hidden)), np.zeros(hidden),
         rng.normal(0, 1 / np.sqrt(hidden), (hidden, y.shape[1])), np.zeros(y.shape[1])]
    m = [np.zeros_like(q) for q in p]
    v = [np.zeros_like(q) for q in p]
    for it in range(1, steps + 1):
        h = np.tanh(x @ p[0] + p[1])
        out = h @ p[2] + p[3]
        g_out = 2 * (out - t) / len(x)
        g = [None] * 4
        g[2] = h.T @ g_out + wd * p[2]
        g[3] = g_out.sum(0)
        g_h = (g_out @ p[2].T) * (1 - h ** 2)
        g[0] = x.T @ g_h + wd * p[0]
        g[1] = g_h.sum(0)
        for i in range(4):
            m[i] = 0.9 * m[i] + 0.1 * g[i]
            v[i] = 0.999 * v[i] + 0.001 * g[i] ** 2
            p[i] -= lr * (m[i] / (1 - 0.9 ** it)) / (np.sqrt(v[i] / (1 - 0.999 ** it)) + 1e-8)
    return lambda xx: (np.tanh(xx @ p[0] + p[1]) @ p[2] + p[3]) * ys + ym


def probe_rows(segs, dataset: Path, s: int, episodes: set[int] | None):
    """(codes of step k+1, mean xyz rel_action of step k, episode) over the segments."""
    codes, ys, eps = [], [], []
    for seg in segs:
        if episodes is not None and seg["episode"] not in episodes:
            continue
        for k in range(seg["steps"]):
            frames = range(seg["start"] + s * k, seg["start"] + s * k + s)
            if frames[-1] > seg["end"]:
                break
            acts = [np.load(dataset / f"episode_{f:07d}.npz")["rel_actions"][:3] for f in frames]
            codes.append(seg["codes"][k])
            ys.append(np.mean(acts, 0))
            eps.append(seg["episode"])
    if not codes:
        return np.zeros((0, 0), np.int64), np.zeros((0, 3)), np.zeros(0, np.int64)
    return np.array(codes), np.array(ys, np.float64), np.array(eps)


def idm_probe(train, val, vocab: int, lam: float = 1.0, mlp_steps: int = 3000) -> dict:
    """R² on `val` of a ridge and an MLP probe fitted on `train` ((codes, y) pairs)."""
    xtr, xva = one_hot(train[0], vocab).astype(np.float64), one_hot(val[0], vocab)
    # Drop one-hot columns no training row uses: they carry no information.
    used = xtr.any(0)
    xtr, xva = xtr[:, used], xva[:, used].astype(np.float64)
    w, b = ridge_fit(xtr, train[1], lam)
    ref = train[1].mean(0)
    out = {"train_rows": int(len(xtr)), "val_rows": int(len(xva)),
           "linear_r2": r2(val[1], xva @ w + b, ref)}
    f = mlp_fit(xtr, train[1], steps=mlp_steps)
    out["mlp_r2"] = r2(val[1], f(xva), ref)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True,
                    help="split.json: val_episodes are held out, the rest fit the probe")
    ap.add_argument("--steps-per-latent", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--mlp-steps", type=int, default=3000)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    split = json.loads(a.split.read_text())
    if "val_episodes" not in split:
        print(f"{a.split}: expected key 'val_episodes', found {list(split)}", file=sys.stderr)
        return 2
    segs = load_cache(a.cache)
    val_eps = set(split["val_episodes"])
    all_eps = {s["episode"] for s in segs}
    train = probe_rows(segs, a.dataset, a.steps_per_latent, all_eps - val_eps)
    val = probe_rows(segs, a.dataset, a.steps_per_latent, val_eps)
    report = {"codebook": codebook_usage(segs),
              "idm_probe_xyz": idm_probe(train[:2], val[:2], a.vocab, mlp_steps=a.mlp_steps)}
    text = json.dumps(report, indent=2)
    print(text)
    if a.json:
        tmp = a.json.with_suffix(a.json.suffix + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
