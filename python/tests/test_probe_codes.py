"""The code probe measures what it says: usage counts and R² that separate informative
codes from noise, on a safetensors cache written the way `vw2 train ar` writes it."""

import json
import struct

import numpy as np

from vw2_sim_tools import probe_codes as pc


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        b = arr.tobytes()
        dt = {np.dtype(np.uint32): "U32", np.dtype(np.float32): "F32"}[arr.dtype]
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def make_run(tmp_path, informative: bool, episodes=40, steps=6, s=4, seed=0):
    """A dataset whose xyz actions follow code 0 of the next step (or not) and its cache."""
    rng = np.random.default_rng(seed)
    ds = tmp_path / "ds"
    ds.mkdir()
    segs, tensors, frame = [], {}, 0
    for e in range(episodes):
        codes = rng.integers(0, 5, (steps, 4)).astype(np.uint32)
        start = frame
        for k in range(steps):
            direction = np.array([codes[k, 0] - 2.0, 0.5 * (codes[k, 0] % 2), 0.0])
            for _ in range(s):
                y = direction if informative else rng.normal(0, 1, 3)
                rel = np.concatenate([y + rng.normal(0, 0.05, 3), np.zeros(4)])
                np.savez(ds / f"episode_{frame:07d}.npz", rel_actions=rel)
                frame += 1
        segs.append([{"episode": e, "start": start, "end": frame - 1, "instruction": ""}, steps])
        tensors[f"{e}.codes"] = codes.reshape(-1)
        tensors[f"{e}.pooled"] = np.zeros(3, np.float32)
    cache = tmp_path / "code_cache.safetensors"
    write_safetensors(cache, tensors)
    cache.with_suffix(".json").write_text(json.dumps({"key": "k", "segments": segs}))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"val_episodes": list(range(episodes - 10, episodes))}))
    return cache, ds, split


def test_safetensors_round_trip(tmp_path):
    p = tmp_path / "t.safetensors"
    a = np.arange(6, dtype=np.uint32).reshape(2, 3)
    write_safetensors(p, {"a": a, "b": np.ones(2, np.float32)})
    t = pc.read_safetensors(p)
    assert (t["a"] == a).all() and t["b"].dtype == np.float32


def test_informative_codes_score_high_and_noise_scores_near_zero(tmp_path):
    out = {}
    for informative in (True, False):
        d = tmp_path / str(informative)
        d.mkdir()
        cache, ds, split = make_run(d, informative)
        report_path = d / "r.json"
        assert pc.main(["--cache", str(cache), "--dataset", str(ds), "--split", str(split),
                        "--vocab", "5", "--mlp-steps", "500", "--json", str(report_path)]) == 0
        out[informative] = json.loads(report_path.read_text())
    good, noise = out[True]["idm_probe_xyz"], out[False]["idm_probe_xyz"]
    assert good["val_rows"] == 60 and good["train_rows"] == 180
    assert good["linear_r2"] > 0.95 and good["mlp_r2"] > 0.9, good
    assert noise["linear_r2"] < 0.2 and noise["mlp_r2"] < 0.2, noise
    usage = out[True]["codebook"]
    assert usage["latent_steps"] == 240 and usage["distinct_codes"] == 5
    assert usage["distinct_per_query"] == [5, 5, 5, 5]


def test_a_cache_without_segments_is_named_in_the_error(tmp_path):
    cache = tmp_path / "c.safetensors"
    write_safetensors(cache, {"0.codes": np.zeros(4, np.uint32)})
    cache.with_suffix(".json").write_text(json.dumps({"key": "k"}))
    try:
        pc.load_cache(cache)
    except ValueError as e:
        assert "c.json" in str(e) and "segments" in str(e)
    else:
        raise AssertionError("expected a ValueError")
