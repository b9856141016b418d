"""The env adapter server: `python -m vw2_adapter.server --backend playtable|calvin|fake`.

Reads requests from stdin and writes replies to stdout, framed as in protocol.py.
Everything else a simulator prints (C libraries included) is sent to stderr: file
descriptor 1 is moved aside for the protocol before any backend is imported.
"""

import argparse
import os
import sys
import traceback

from . import PROTOCOL_VERSION


def _claim_stdout():
    """Returns a binary stream on the original stdout and points fd 1 at stderr."""
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.environ["VW2_ADAPTER_FD"] = str(proto_fd)
    return os.fdopen(proto_fd, "wb", buffering=0)


def make_backend(args):
    if args.backend == "fake":
        from . import fake

        return fake.make(args), fake.TASKS
    if args.backend == "playtable":
        from . import playtable_backend

        return playtable_backend.make(args)
    if args.backend == "calvin":
        from . import calvin_backend

        return calvin_backend.make(args)
    raise SystemExit(f"unknown backend {args.backend!r}: expected playtable, calvin or fake")


INFO_CACHE_SIZE = 64


def serve(env, tasks, backend, inp, out):
    from .protocol import encode_obs, from_wire, read_frame, to_wire, write_frame

    # `info` snapshots are kept here as the backend made them (numpy arrays and all),
    # so `task_success` hands the oracle the very object, not a wire copy.
    info_cache = {}
    next_token = 1
    while True:
        req = read_frame(inp)
        if req is None:
            return
        rid = req.get("id", 0)
        op = req.get("op")
        try:
            if op == "hello":
                rep = {"protocol": PROTOCOL_VERSION, "backend": backend, "tasks": list(tasks),
                       "control_hz": 30.0, "pid": os.getpid(),
                       "notes": [str(n) for n in getattr(env, "notes", [])]}
            elif op == "reset":
                rep = {"obs": encode_obs(env.reset(req.get("robot_obs"), req.get("scene_obs")))}
            elif op == "step":
                action = req["action"]
                if len(action) != 7:
                    raise ValueError(f"action: expected 7 values, found {len(action)}")
                rep = {"obs": encode_obs(env.step(action, bool(req.get("relative", True))))}
            elif op == "info":
                raw = env.get_info()
                token = next_token
                next_token += 1
                info_cache[token] = raw
                info_cache.pop(token - INFO_CACHE_SIZE, None)
                rep = {"info": {"token": token, "state": to_wire(raw)}}
            elif op == "task_success":
                start = req["start_info"]
                token = start.get("token") if isinstance(start, dict) else None
                if token in info_cache:
                    start = info_cache[token]
                elif isinstance(start, dict) and "state" in start:
                    start = from_wire(start["state"])
                else:
                    raise ValueError("start_info: expected a reply of 'info'")
                rep = {"completed": list(env.task_success(start, list(req["tasks"])))}
            elif op == "expert_action":
                if not hasattr(env, "expert_action"):
                    raise ValueError(f"backend {backend} has no scripted expert")
                rep = {"action": [float(v) for v in env.expert_action(req["task"])]}
            elif op == "sample_task":
                if not hasattr(env, "sample_task"):
                    raise ValueError(f"backend {backend} cannot propose tasks")
                rep = to_wire(env.sample_task(int(req.get("seed", 0)), list(req.get("tasks") or [])))
            elif op == "close":
                env.close()
                write_frame(out, {"id": rid, "ok": True})
                return
            else:
                raise ValueError(f"unknown op {op!r}")
            rep["id"] = rid
            rep["ok"] = True
        except Exception as e:  # reported to the client, the server keeps serving
            traceback.print_exc(file=sys.stderr)
            rep = {"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}"}
        write_frame(out, rep)


def main(argv=None):
    out = _claim_stdout()
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backend", default="playtable")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calvin-env", default=None, help="path of a calvin_env checkout")
    p.add_argument("--no-egl", action="store_true", help="calvin: same as --renderer tiny")
    p.add_argument("--renderer", default="auto", choices=["auto", "egl", "tiny"],
                   help="calvin: pybullet's EGL plugin or TinyRenderer (auto: EGL only on a GPU)")
    p.add_argument("--crash-after", dest="crash_after", default=None)
    p.add_argument("--hang-after", dest="hang_after", default=None)
    p.add_argument("--garbage-after", dest="garbage_after", default=None)
    p.add_argument("--refuse-reset-after", dest="refuse_reset_after", default=None)
    args = p.parse_args(argv)
    env, tasks = make_backend(args)
    serve(env, tasks, args.backend, sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
