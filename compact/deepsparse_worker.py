"""DeepSparse behind a pipe: run as a script by another interpreter (DeepSparse 1.8 pins numpy<2 and onnx 1.14, so it
lives in a venv of its own), or imported in-process where `deepsparse` is importable.

    /opt/deepsparse-venv/bin/python compact/deepsparse_worker.py

Requests are JSON lines on stdin, answers JSON lines on the stdout the process started with (fd 1 is pointed at
stderr first, so whatever DeepSparse prints cannot corrupt the answers). Arrays travel as .npy files, whose format
does not depend on the numpy version. Each `run` is timed here, so the pipe's round trip is not counted:

    {"op": "version"}                                                                -> {"version": "1.8.0"}
    {"op": "load", "key": "dense", "model": "m.onnx", "input": "x.npy", "threads": 2} -> {"version": "1.8.0"}
    {"op": "run", "key": "dense"}                                                    -> {"ms": 123.4}
    {"op": "output", "key": "dense", "path": "y.npy"}                                -> {}
    {"op": "quit"}
A failure is {"error": "<one line>"}. This file imports only numpy and deepsparse (never torch or prune3d).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1][:300] if lines else ''}"


class DeepSparseServer:
    """Holds one compiled engine and its input per key."""

    def __init__(self) -> None:
        self.engines: dict[str, Any] = {}
        self.inputs: dict[str, Any] = {}

    def handle(self, req: dict) -> dict:
        import numpy as np

        op, key = req.get("op"), req.get("key")
        try:
            if op == "version":
                import deepsparse

                return {"version": deepsparse.__version__}
            if op == "load":
                import deepsparse

                x = np.ascontiguousarray(np.load(req["input"]), dtype=np.float32)
                self.engines[key] = deepsparse.Engine(model=req["model"], batch_size=int(x.shape[0]),
                                                      num_cores=int(req["threads"]))
                self.inputs[key] = [x]
                return {"version": deepsparse.__version__}
            if op == "run":
                t0 = time.perf_counter()
                self.engines[key].run(self.inputs[key])
                return {"ms": (time.perf_counter() - t0) * 1e3}
            if op == "output":
                np.save(req["path"], self.engines[key].run(self.inputs[key])[0])
                return {}
            return {"error": f"unknown op {op!r}"}
        except Exception as e:  # noqa: BLE001 - any failure goes back as one line, the worker stays up
            return {"error": _one_line(e)}


def main() -> int:
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints go to stderr
    server = DeepSparseServer()
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("op") == "quit":
            break
        answers.write(json.dumps(server.handle(req)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
