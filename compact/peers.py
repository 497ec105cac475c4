"""Other inference runtimes a user would pick, run on the same exported model and input as the compact one.

Each runtime is a small `Peer` class in the `PEERS` registry (`@register_peer`): it says why it cannot run here
(`missing`, one line with how to install it), starts, loads an ONNX file for a fixed input and hands back a
`Runner` (one timed call on that input, and its output). `Against` exports the model twice with
`export.export_onnx` (the pruned weights, and dense weights: the pruned positions refilled at random with the
layer's scale, since a checkpoint holds zeros there and a runtime may skip zeros), loads both into every runtime
asked for, checks their outputs, and gives `compact.bench.benchmark` the callables to time in its rounds.

Settings, so that each runtime runs fp32 with `threads` threads and nothing left running between calls:
ONNX Runtime: intra-op threads = threads, inter-op 1, sequential, spinning off (spinning threads would take the
cores from whatever runs next in the round); OpenVINO: INFERENCE_NUM_THREADS = threads,
INFERENCE_PRECISION_HINT = f32 (its default on CPUs with AVX512_BF16 or AMX is bf16), latency hint, the model
reshaped to the input's static shape; DeepSparse: num_cores = threads. DeepSparse 1.8 (deprecated; its licence
allows evaluation use, never shipping it) pins numpy<2 and onnx 1.14, so it usually lives in a venv of its own
and is driven through `deepsparse_worker.py` under that interpreter (`--deepsparse-python`, or the environment
variable PRUNE3D_DEEPSPARSE_PYTHON); the worker times each call itself.

Reduced precision (`dtype` of the class; the rows say it, and `bench.benchmark` keeps them out of its fp32 bar, the
fastest dense runtime): `openvino-bf16` is the OpenVINO peer with INFERENCE_PRECISION_HINT bf16; `openvino-int8`
quantizes the model read from the ONNX file with NNCF (`nncf.quantize`, its defaults) and compiles it with the
hint f32 for what stays float; `onnxruntime-int8` quantizes the ONNX file with ONNX Runtime's `quantize_static` (QDQ,
per-channel int8 weights, int8 activations, MinMax) and runs it with the ONNX Runtime peer's settings. Both
quantizers calibrate on the same clips (`Calibrated`): `calibration_clips` of them (peer option, default 32), real
clips when the caller passes `calibration` (an array or tensor N x C x T x H x W, or an .npy file of one), else
random normal clips of the input's shape (the benchmark input's distribution, seed `calibration_seed`, default 0).
Each OpenVINO peer records the precision OpenVINO reports and what its Convolution and FullyConnected layers ran in
(the runtime model's `runtimePrecision`); a peer whose convolutions did not run in its precision (bf16 on a CPU
without it: OpenVINO falls back to f32 silently) says so in one line and keeps its row, with that in `notes`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .export import export_onnx
from .surgery import masked_dense_copy

DEEPSPARSE_PYTHON_ENV = "PRUNE3D_DEEPSPARSE_PYTHON"
VARIANTS = ("dense", "pruned")


class Timed(float):
    """A call's own measurement of its duration in ms: `bench.interleaved` takes it instead of the wall time
    around the call (a worker process times its runtime without the pipe's round trip)."""


class Stopped:
    """What a runtime's timed call returns once it has failed during the timing (`Against.fns`): `bench.interleaved`
    drops that callable's times, so the others' rounds stay paired."""


STOPPED = Stopped()


def _said(e: BaseException, first: bool = False) -> str:
    """An exception in one line: its type and its last line (runtimes end with the cause), or `first` (the
    exporter starts with it)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {(lines[0][:200] if first else lines[-1][:300]) if lines else ''}"


class PeerUnavailable(Exception):
    """The runtime cannot run here; the message is one line saying how to get it."""


class PeerError(Exception):
    """The runtime could not load or run one model; the message is one line."""


@dataclass
class Runner:
    run: Callable[[], object]  # one inference on the loaded input (returns a `Timed` when it times itself)
    output: Callable[[], np.ndarray]  # the first output of one inference


class Peer:
    """One runtime. Subclasses set `name` and `install` and implement `load`; `missing` and `start` are optional."""

    name: ClassVar[str]
    install: ClassVar[str]  # how a user gets it, one line
    # the import(s) that must be found for it to run in-process (each also the name pip installs)
    module: ClassVar[str | tuple[str, ...]] = ""
    dtype: ClassVar[str] = "f32"  # the precision it is asked to compute in: f32, bf16 or int8

    def __init__(self, threads: int, options: Mapping[str, Any] | None = None) -> None:
        self.threads = threads
        self.options = dict(options or {})
        self.info: dict[str, Any] = {}  # version and settings, reported in the JSON
        self.notes: list[str] = []  # one line each, said once after loading and kept in the JSON

    def missing(self) -> str | None:
        """Why it cannot run here (one line, with how to install it), or None."""
        modules = (self.module,) if isinstance(self.module, str) else self.module
        absent = [m for m in modules if m and importlib.util.find_spec(m) is None]
        if not absent:
            return None
        if len(absent) == len([m for m in modules if m]):
            return f"{self.name}: not installed, skipped ({self.install})"
        return f"{self.name}: {' and '.join(absent)} not installed, skipped (pip install {' '.join(absent)})"

    def note(self, line: str) -> None:
        if line not in self.notes:
            self.notes.append(line)

    def start(self, workdir: Path) -> None:
        """Anything to do once before loading models (may raise PeerUnavailable)."""

    def load(self, key: str, onnx_path: Path, x: np.ndarray) -> Runner:
        raise NotImplementedError

    def close(self) -> None:
        """Release what `start` and `load` hold."""


PEERS: dict[str, type[Peer]] = {}


def register_peer(cls: type[Peer]) -> type[Peer]:
    """Class decorator: make a runtime available to `--against` under `cls.name`."""
    PEERS[cls.name] = cls
    return cls


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


class Calibrated:
    """The calibration clips of a post-training quantizer, from the peer options (see the module's docstring); the
    same for every quantizing peer of a run, so that they quantize alike."""

    CLIPS = 32
    options: dict[str, Any]
    info: dict[str, Any]

    def calibration(self, x: np.ndarray) -> list[np.ndarray]:
        """Single clips (1, C, T, H, W), float32, for the input `x` (N, C, T, H, W)."""
        n = self.options.get("calibration_clips")
        n = self.CLIPS if n is None else int(n)
        if n < 1:
            raise ValueError(f"calibration_clips must be at least 1, not {n}")
        given = self.options.get("calibration")
        if given is not None:
            clips = np.load(given) if isinstance(given, (str, Path)) else given
            clips = clips.detach().cpu().numpy() if isinstance(clips, torch.Tensor) else np.asarray(clips)
            if clips.ndim != x.ndim or clips.shape[1:] != x.shape[1:]:
                raise ValueError(f"calibration clips of shape {tuple(clips.shape)} do not fit the input "
                                 f"{tuple(x.shape)}")
            clips, source = clips[:n], f"given ({len(clips)} clips, the first {min(n, len(clips))} used)"
        else:
            seed = int(self.options.get("calibration_seed") or 0)
            clips = np.random.default_rng(seed).standard_normal((n, *x.shape[1:]), dtype=np.float32)
            source = f"random normal (the benchmark input's distribution), seed {seed}"
        self.info["calibration"] = {"clips": len(clips), "source": source}
        return [np.ascontiguousarray(c[None], dtype=np.float32) for c in clips]


@register_peer
class OnnxRuntimePeer(Peer):
    name = "onnxruntime"
    install = "pip install onnxruntime"
    module = "onnxruntime"

    def model_path(self, key: str, onnx_path: Path, x: np.ndarray) -> Path:
        """The file the session runs (the quantizing peer writes another)."""
        return onnx_path

    def load(self, key: str, onnx_path: Path, x: np.ndarray) -> Runner:
        import onnxruntime as ort

        path = self.model_path(key, onnx_path, x)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        self.info.update(version=ort.__version__, intra_op_threads=self.threads, inter_op_threads=1,
                         spinning=False)
        return Runner(lambda: sess.run(None, feed), lambda: sess.run(None, feed)[0])


def _qdq_convs(path: Path) -> dict[str, int]:
    """How many Conv nodes of a QDQ model ONNX Runtime can run in int8 (input, weight and bias dequantized, the
    pattern its CPU provider fuses into a QLinearConv) and how many stay float."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    out = {"int8": 0, "f32": 0}
    for n in graph.node:
        if n.op_type == "Conv":
            out["int8" if all(i in dq for i in n.input if i) else "f32"] += 1
    return out


@register_peer
class OnnxRuntimeInt8Peer(Calibrated, OnnxRuntimePeer):
    """ONNX Runtime on the ONNX file quantized by its own `quantize_static`: QDQ (its CPU provider fuses each
    DequantizeLinear -> Conv -> QuantizeLinear into an int8 QLinearConv), per-channel weights, after its
    `quant_pre_process` (shape inference and constant folding: the exporter shares equal biases, e.g. C3D's zero
    ones, through Identity nodes, and a conv whose bias is no initializer stays float)."""

    name = "onnxruntime-int8"
    dtype = "int8"

    def model_path(self, key: str, onnx_path: Path, x: np.ndarray) -> Path:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        clips = self.calibration(x)
        name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
        pre = onnx_path.with_name(f"{onnx_path.stem}_{self.name}_pre.onnx")
        quant_pre_process(str(onnx_path), str(pre))

        class Clips(CalibrationDataReader):
            def __init__(self) -> None:
                self.left = iter(clips)

            def get_next(self) -> dict[str, np.ndarray] | None:
                clip = next(self.left, None)
                return None if clip is None else {name: clip}

        out = onnx_path.with_name(f"{onnx_path.stem}_{self.name}.onnx")
        # it keeps every clip's intermediate outputs until the end (C3D at 16x112x112: ~0.2 GB a clip); its
        # CalibMaxIntermediateOutputs would bound that, but ONNX Runtime 1.32 drops each full chunk unused
        quantize_static(str(pre), str(out), Clips(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        self.info["quantization"] = {"tool": "onnxruntime.quantization.quantize_static", "pre_process": True,
                                     "format": "QDQ", "per_channel": True, "activations": "QInt8",
                                     "weights": "QInt8", "calibrate_method": "MinMax"}
        convs = _qdq_convs(out)
        self.info.setdefault("layer_precisions", {})[key] = {"Conv": convs}
        if convs["f32"]:
            self.note(f"{self.name}: {convs['f32']} of {sum(convs.values())} convolutions stay float after "
                      "quantize_static")
        return out


def _type_name(t: Any) -> str:
    """OpenVINO's element type as it spells it ("f32"), whatever the binding returns."""
    return t.get_type_name() if hasattr(t, "get_type_name") else str(t)


def _layer_precisions(compiled: Any) -> dict[str, dict[str, int]]:
    """How many Convolution and FullyConnected layers of a compiled OpenVINO model run in each precision (its
    runtime model's `runtimePrecision`): what it ran, whatever was asked."""
    out: dict[str, dict[str, int]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        kind = rt["layerType"].astype(str) if "layerType" in rt else ""
        if kind in ("Convolution", "FullyConnected"):
            prec = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"
            out.setdefault(kind, {})
            out[kind][prec] = out[kind].get(prec, 0) + 1
    return out


RAN_AS = {"f32": ("f32",), "bf16": ("bf16",), "int8": ("i8", "u8")}  # runtimePrecision that counts as dtype


@register_peer
class OpenVinoPeer(Peer):
    name = "openvino"
    install = "pip install openvino"
    module = "openvino"
    hint = "f32"  # INFERENCE_PRECISION_HINT: what its float layers compute in

    def model(self, core: Any, key: str, onnx_path: Path, x: np.ndarray) -> Any:
        """The model to compile (the quantizing peer quantizes it)."""
        return core.read_model(str(onnx_path))

    def load(self, key: str, onnx_path: Path, x: np.ndarray) -> Runner:
        import openvino as ov

        core = ov.Core()
        model = self.model(core, key, onnx_path, x)
        model.reshape({model.inputs[0].get_any_name(): list(x.shape)})  # static batch
        config = {"INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": self.hint,
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        precision = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        layers = _layer_precisions(compiled)
        self.info.update(version=ov.__version__, precision=precision,
                         threads=int(compiled.get_property("INFERENCE_NUM_THREADS")))
        if self.dtype != "f32":
            self.info.setdefault("layer_precisions", {})[key] = layers
            self.info["cpu_capabilities"] = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            convs = layers.get("Convolution", {})
            if not any(p in convs for p in RAN_AS[self.dtype]):
                self.note(f"{self.name}: OpenVINO ran its convolutions in {'/'.join(convs) or '?'}, not "
                          f"{self.dtype} (it reports precision {precision}; CPU capabilities "
                          f"{','.join(self.info['cpu_capabilities'])}): the times are not {self.dtype}'s")

        def output() -> np.ndarray:
            request.infer({0: x})
            return np.array(request.get_output_tensor(0).data, copy=True)

        return Runner(lambda: request.infer({0: x}), output)


@register_peer
class OpenVinoBf16Peer(OpenVinoPeer):
    """OpenVINO with its float layers in bf16 (its own default on CPUs with AVX512_BF16 or AMX)."""

    name = "openvino-bf16"
    dtype = hint = "bf16"


@register_peer
class OpenVinoInt8Peer(Calibrated, OpenVinoPeer):
    """OpenVINO on the model quantized by NNCF's post-training quantization; what stays float runs f32."""

    name = "openvino-int8"
    install = "pip install openvino nncf"
    module = ("openvino", "nncf")
    dtype = "int8"

    def model(self, core: Any, key: str, onnx_path: Path, x: np.ndarray) -> Any:
        import nncf

        clips = self.calibration(x)
        quantized = nncf.quantize(super().model(core, key, onnx_path, x), nncf.Dataset(clips),
                                  subset_size=len(clips))
        self.info["quantization"] = {"tool": f"nncf {nncf.__version__} nncf.quantize",
                                     "preset": "nncf default (performance: symmetric)", "subset_size": len(clips)}
        return quantized


@register_peer
class DeepSparsePeer(Peer):
    name = "deepsparse"
    install = ("pip install deepsparse==1.8.0 in a venv of its own (it needs numpy<2), then pass "
               f"--deepsparse-python VENV/bin/python or set {DEEPSPARSE_PYTHON_ENV}")
    module = "deepsparse"
    WORKER = Path(__file__).resolve().parent / "deepsparse_worker.py"

    def __init__(self, threads: int, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(threads, options)
        self.proc: subprocess.Popen | None = None
        self.server: Any = None
        self.log: Path | None = None
        self.workdir: Path | None = None

    def python(self) -> str | None:
        """The interpreter to run the worker with: None to import DeepSparse in-process."""
        if importlib.util.find_spec("deepsparse") is not None:
            return None
        return self.options.get("deepsparse_python") or os.environ.get(DEEPSPARSE_PYTHON_ENV) or ""

    def missing(self) -> str | None:
        py = self.python()
        if py == "":
            return f"{self.name}: not installed, skipped ({self.install})"
        if py is not None and not (os.path.isfile(py) and os.access(py, os.X_OK)):
            return f"{self.name}: {py} is not an executable Python, skipped ({self.install})"
        return None

    def start(self, workdir: Path) -> None:
        self.workdir = workdir
        py = self.python()
        if py is None:
            from .deepsparse_worker import DeepSparseServer

            self.server = DeepSparseServer()
            self.info["python"] = sys.executable
        else:
            self.starts = getattr(self, "starts", 0) + 1
            self.log = workdir / f"deepsparse_worker{self.starts}.log"
            env = {**os.environ, "NM_DISABLE_ANALYTICS": "1"}  # no usage reports from the worker
            with open(self.log, "w") as log:
                self.proc = subprocess.Popen([py, str(self.WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=log, text=True, bufsize=1, env=env)
            self.info["python"] = py
        hello = self._call({"op": "version"})
        if "error" in hello:
            self.close()
            raise PeerUnavailable(f"{self.name}: cannot import it with {py or sys.executable} "
                                  f"({hello['error']}), skipped ({self.install})")
        self.info.update(version=hello["version"], num_cores=self.threads)

    def _call(self, req: dict) -> dict:
        if self.server is not None:
            return self.server.handle(req)
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.proc.wait()
            self.proc = None
            return {"error": f"the worker died ({self._cause()})"}
        return json.loads(line)

    def _cause(self) -> str:
        """The line of the worker's log that says why it died (DeepSparse prints a crash report ending with a
        support address; the signal is the line that matters)."""
        lines = [ln.strip() for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()] \
            if self.log else []
        for key in ("Received signal", "Assertion", "Error", "error", "terminate"):
            hit = next((ln for ln in lines if key in ln), None)
            if hit:
                return hit[:200]
        return lines[-1][:200] if lines else "no message"

    def _checked(self, req: dict) -> dict:
        answer = self._call(req)
        if "error" in answer:
            raise PeerError(answer["error"])
        return answer

    def load(self, key: str, onnx_path: Path, x: np.ndarray) -> Runner:
        assert self.workdir is not None
        if self.server is None and self.proc is None:  # the worker died on the previous model: a fresh one
            self.start(self.workdir)
        xin = self.workdir / f"deepsparse_{key}_input.npy"
        np.save(xin, x)
        self._checked({"op": "load", "key": key, "model": str(onnx_path), "input": str(xin),
                       "threads": self.threads})
        out = self.workdir / f"deepsparse_{key}_output.npy"

        def output() -> np.ndarray:
            self._checked({"op": "output", "key": key, "path": str(out)})
            return np.load(out)

        return Runner(lambda: Timed(self._checked({"op": "run", "key": key})["ms"]), output)

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        self.server = None


def peer_names(text: str) -> list[str]:
    """`--against` parsed: comma-separated registry names, in order, each once (ValueError names a wrong one)."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"no runtime named; allowed: {', '.join(PEERS)}")
    for n in names:
        if n not in PEERS:
            raise ValueError(f"{n!r} is not a runtime; allowed: {', '.join(PEERS)}")
    return list(dict.fromkeys(names))


@torch.no_grad()
def refilled(model: nn.Module, masks: Mapping[str, torch.Tensor], seed: int = 0) -> nn.Module:
    """A float copy of `model` whose pruned weights are random again: normal, with the std of the layer's kept
    weights (a dense model of the same scale, for runtimes that would otherwise skip the zeros)."""
    dense = masked_dense_copy(model, {})
    params = dict(dense.named_parameters())
    gen = torch.Generator().manual_seed(seed)
    for name, mask in masks.items():
        w, keep = params[name], mask.to(torch.bool)
        kept = w[keep]
        scale = float(kept.std()) if kept.numel() > 1 else 0.0
        if not math.isfinite(scale) or scale == 0.0:
            scale = 1.0 / math.sqrt(max(w[0].numel(), 1))  # nothing kept: the usual init scale
        w.copy_(torch.where(keep, w, torch.randn(w.shape, generator=gen) * scale))
    return dense


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Against:
    """The runtimes `names` on the pruned and dense-weight exports of one model and one input.

        with Against(["onnxruntime", "openvino"], threads=2) as peers:
            peers.prepare(model, masks, x, compact_out)
            ms = interleaved({**mine, **peers.fns()}, repeats, warmup, raw=rounds)
            result["against"] = peers.summary(ms, rounds, best, compact_key="compact")

    A runtime that is missing is skipped with one line (`say`); one that cannot load or run a variant keeps the
    other and reports the error."""

    def __init__(self, names: Sequence[str], threads: int, *, options: Mapping[str, Any] | None = None,
                 workdir: str | Path | None = None, say: Callable[[str], None] = print, seed: int = 0) -> None:
        self.threads, self.say, self.seed = threads, say, seed
        self.own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="prune3d_against_")) if workdir is None else Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.peers: dict[str, Peer] = {}
        self.skipped: dict[str, str] = {}
        self.runners: dict[tuple[str, str], Runner] = {}
        self.errors: dict[str, dict[str, str]] = {}
        self.checks: dict[str, dict[str, float]] = {}
        self.onnx: dict[str, dict] = {}
        for name in names:
            peer = PEERS[name](threads, options)
            why = peer.missing()
            if why:
                self._skip(name, why)
            else:
                self.peers[name] = peer

    def _skip(self, name: str, why: str) -> None:
        self.skipped[name] = why
        self.say(why)

    def __enter__(self) -> Against:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for peer in self.peers.values():
            peer.close()
        self.runners.clear()
        if self.own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def prepare(self, model: nn.Module, masks: Mapping[str, torch.Tensor], x: torch.Tensor,
                compact_out: torch.Tensor) -> None:
        """Export both variants, load them into each runtime, and check outputs: the pruned export's against the
        compact model's output, the dense export's against PyTorch on the same dense weights."""
        if not self.peers:
            return
        shape = tuple(x.shape[1:])
        dense = refilled(model, masks, self.seed)
        try:
            paths = {"pruned": export_onnx(model, dict(masks), self.workdir / "pruned.onnx", shape),
                     "dense": export_onnx(dense, {}, self.workdir / "dense.onnx", shape)}
        except Exception as e:  # noqa: BLE001 - no ONNX model, no runtime to compare: said, the rest benchmarked
            why = _said(e, first=True)
            for name in list(self.peers):
                del self.peers[name]
                self._skip(name, f"{name}: skipped, the model did not export to ONNX ({why})")
            return
        for v, p in paths.items():
            self.onnx[v] = {"file": p.name, "sha256": _sha256(p), "bytes": p.stat().st_size, "opset": 17,
                            "exporter": f"torch {torch.__version__} torch.onnx.export (compact.export_onnx)"}
        self.onnx["dense"]["refill_seed"] = self.seed
        refs = {"pruned": compact_out.float().numpy(), "dense": dense(x).float().numpy()}
        xn = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        for name in list(self.peers):
            peer = self.peers[name]
            try:
                peer.start(self.workdir)
            except PeerUnavailable as e:
                del self.peers[name]
                self._skip(name, str(e))
                continue
            for v in VARIANTS:
                try:
                    runner = peer.load(v, paths[v], xn)
                    err = _rel_err(runner.output(), refs[v])
                except Exception as e:  # noqa: BLE001 - a runtime's failure is a result of the comparison
                    self.errors.setdefault(name, {})[v] = _said(e)
                    self.say(f"{name}: the {v} model did not run ({self.errors[name][v]})")
                    continue
                self.runners[(name, v)] = runner
                self.checks.setdefault(name, {})[v] = err
            for line in peer.notes:
                self.say(line)

    def fns(self) -> dict[str, Callable[[], object]]:
        """Callables for `interleaved`, keyed "runtime:variant". A runtime that fails during the timing (a worker
        that dies, an inference that raises) is said in one line and returns `STOPPED` from then on: its times are
        left out, the rest is timed on."""
        return {f"{n}:{v}": self._guarded(n, v, r.run) for (n, v), r in self.runners.items()}

    def _guarded(self, name: str, variant: str, run: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            if variant in self.errors.get(name, {}):
                return STOPPED
            try:
                return run()
            except Exception as e:  # noqa: BLE001 - a runtime's failure is a result of the comparison
                self.errors.setdefault(name, {})[variant] = f"stopped during the timing: {_said(e)}"
                self.say(f"{name}: the {variant} model {self.errors[name][variant]}; its times are left out")
                return STOPPED
        return call

    def summary(self, ms: Mapping[str, float], rounds: Mapping[str, list[float]], best: Mapping[str, float],
                compact_key: str) -> dict[str, dict]:
        """`against` of the benchmark JSON: per runtime its median ms per variant (None: did not run), fastest
        repeats, output errors, settings, and the compact model's speedup over each variant."""
        out: dict[str, dict] = {}
        cms = ms[compact_key]
        for name, peer in self.peers.items():
            row: dict[str, Any] = {"dtype": peer.dtype, **peer.info}
            for v in VARIANTS:
                key = f"{name}:{v}"
                row[f"{v}_ms"] = ms.get(key)
                row[f"{v}_min_ms"] = best.get(key)
                row[f"speedup_vs_{v}"] = ms[key] / cms if key in ms else None
                if key in rounds:
                    row[f"speedup_vs_{v}_paired"] = float(np.median(
                        [a / c for a, c in zip(rounds[key], rounds[compact_key])]))
            row["max_rel_err"] = self.checks.get(name, {}).get("pruned")  # pruned export vs the compact output
            row["dense_max_rel_err"] = self.checks.get(name, {}).get("dense")  # vs PyTorch on the dense weights
            if name in self.errors:
                row["errors"] = self.errors[name]
            if peer.notes:
                row["notes"] = list(peer.notes)
            out[name] = row
        return out
