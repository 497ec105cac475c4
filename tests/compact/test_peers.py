"""compact/peers.py: other runtimes timed against the compact model (--against): the registry, a missing runtime
skipped with one line while the rest is still benchmarked, outputs checked against the compact model, a runtime
that cannot run a model reported as such, the DeepSparse worker's protocol, the benchmark JSON's keys."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import compact
from compact import peers
from compact.deepsparse_worker import DeepSparseServer
from compact.peers import PEERS, Peer, Runner, Timed, peer_names, refilled, register_peer
from options import parse_args
from tests.compact.conftest import small_c3d

SHAPE = (3, 8, 32, 32)


@pytest.fixture(scope="module")
def c3d():
    return small_c3d("c3d_kgrc_3.04x")


@pytest.fixture
def fake_registry(monkeypatch):
    """PEERS restored after the test, whatever it registers."""
    monkeypatch.setattr(peers, "PEERS", dict(PEERS))
    return peers.PEERS


def hide(monkeypatch, *modules: str) -> None:
    """Make `modules` look not installed to compact.peers."""
    real = importlib.util.find_spec
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name, *a: None if name in modules else real(name, *a))


def run_bench(model, masks, rules, against, **kw) -> dict:
    return compact.benchmark(model, masks, SHAPE, batch_size=2, threads=1, repeats=1, warmup=0, rules=rules,
                             per_layer=False, against=against, **kw)


def test_registry_names_and_parsing(fake_registry):
    assert {"onnxruntime", "openvino", "deepsparse"} <= set(PEERS)
    assert peer_names("OpenVINO, onnxruntime,openvino") == ["openvino", "onnxruntime"]
    with pytest.raises(ValueError, match="'tvm' is not a runtime; allowed: onnxruntime, openvino, deepsparse"):
        peer_names("onnxruntime,tvm")

    @register_peer
    class Mine(Peer):
        name, install = "mine", "pip install mine"

    assert peers.PEERS["mine"] is Mine and peer_names("mine") == ["mine"]


def test_options_refuse_unknown_runtime_in_one_line(capsys):
    assert parse_args(["--benchmark", "--against", "openvino,onnxruntime"]).against == "openvino,onnxruntime"
    with pytest.raises(SystemExit):
        parse_args(["--benchmark", "--against", "tensorrt"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--against: 'tensorrt' is not a runtime" in err
    with pytest.raises(SystemExit):
        parse_args(["--benchmark", "--deepsparse-python", "/no/such/python"])
    assert capsys.readouterr().err == "error: --deepsparse-python: '/no/such/python': no such file\n"


def test_missing_runtimes_skipped_with_one_line_and_the_rest_benchmarked(c3d, monkeypatch, fake_registry):
    hide(monkeypatch, "onnxruntime", "openvino", "deepsparse")
    monkeypatch.delenv(peers.DEEPSPARSE_PYTHON_ENV, raising=False)

    @register_peer
    class Echo(Peer):  # a runtime that is there: PyTorch on the exported model's weights, timing itself
        name, install = "echo", "-"

        def load(self, key, onnx_path, x):
            import onnx
            assert onnx.load(str(onnx_path)).graph.input[0].name == "clip"
            self.info["version"] = "0"
            ref = torch.from_numpy(x)
            return Runner(lambda: Timed(1.0), lambda: self.model(ref).numpy())

    lines: list[str] = []
    model, masks, rules = c3d
    Echo.model = compact.masked_dense_copy(model, masks)
    r = run_bench(model, masks, rules, ["onnxruntime", "openvino", "deepsparse", "echo"], say=lines.append)
    assert len(lines) == 3 and all("\n" not in ln and "skipped" in ln for ln in lines)
    assert "pip install onnxruntime" in lines[0] and "pip install openvino" in lines[1]
    assert "--deepsparse-python" in lines[2] and peers.DEEPSPARSE_PYTHON_ENV in lines[2]
    assert set(r["against_skipped"]) == {"onnxruntime", "openvino", "deepsparse"} and list(r["against"]) == ["echo"]
    echo = r["against"]["echo"]
    assert echo["pruned_ms"] == 1.0 and echo["dense_ms"] == 1.0  # its own timing, not the wall time
    assert echo["max_rel_err"] < 1e-5  # the masked dense model's output = the compact model's
    assert echo["dense_max_rel_err"] > 1e-3  # the dense export is another model (the pruned weights refilled)
    assert r["fastest_dense"] == {"name": "echo", "ms": 1.0}
    table = compact.format_table(r)
    assert "against other runtimes" in table and "skipped: onnxruntime: not installed" in table


def test_runtime_that_cannot_run_a_model_is_reported(c3d, fake_registry):
    @register_peer
    class Picky(Peer):
        name, install = "picky", "-"

        def load(self, key, onnx_path, x):
            if key == "dense":
                raise RuntimeError("Compile failed\nunsupported node Conv_12")
            return Runner(lambda: None, lambda: np.zeros((2, 10), np.float32))

    model, masks, rules = c3d
    r = run_bench(model, masks, rules, ["picky"], say=lambda s: None)
    p = r["against"]["picky"]
    assert p["dense_ms"] is None and p["pruned_ms"] > 0
    assert p["errors"] == {"dense": "RuntimeError: unsupported node Conv_12"}
    assert p["max_rel_err"] == pytest.approx(1.0)  # zeros against the real output: reported, not hidden
    assert r["fastest_dense"]["name"] == "pytorch"  # a runtime that did not run is no bar
    assert "picky dense: did not run (RuntimeError: unsupported node Conv_12)" in compact.format_table(r)


def test_benchmark_json_keys_without_against(c3d):
    model, masks, rules = c3d
    r = run_bench(model, masks, rules, [])
    json.dumps(r)
    for key in ("dense_ms", "sparse_ms", "speedup", "layers", "compact_ms", "against", "fastest_dense",
                "speedup_vs_fastest_dense"):
        assert key in r
    assert r["compact_ms"] == r["sparse_ms"] and r["against"] == {}
    assert r["fastest_dense"] == {"name": "pytorch", "ms": r["dense_ms"]}
    assert r["speedup_vs_fastest_dense"] == pytest.approx(r["speedup"])
    assert "against other runtimes" not in compact.format_table(r)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runtime_outputs_equal_compact(c3d, runtime):
    pytest.importorskip(runtime)
    model, masks, rules = c3d
    r = run_bench(model, masks, rules, [runtime])
    a = r["against"][runtime]
    assert a["max_rel_err"] < 1e-5 and a["dense_max_rel_err"] < 1e-4
    assert a["dense_ms"] > 0 and a["pruned_ms"] > 0 and a["version"]
    assert r["against_onnx"]["pruned"]["sha256"] != r["against_onnx"]["dense"]["sha256"]
    assert r["fastest_dense"]["ms"] == min(r["dense_ms"], a["dense_ms"])
    assert r["speedup_vs_fastest_dense"] == pytest.approx(r["fastest_dense"]["ms"] / r["compact_ms"])
    if runtime == "openvino":
        assert a["precision"] == "f32" and a["threads"] == 1


def test_refilled_keeps_kept_weights_and_fills_the_rest(c3d):
    model, masks, _ = c3d
    dense = refilled(model, masks, seed=1).requires_grad_(False)
    model = compact.masked_dense_copy(model, {}).requires_grad_(False)
    for name, mask in masks.items():
        w, w0 = dict(dense.named_parameters())[name], dict(model.named_parameters())[name]
        assert torch.equal(w[mask], w0[mask])
        if (~mask).any():
            filled = w[~mask]
            assert (filled != 0).all()
            assert 0.5 < float(filled.std() / w0[mask].std()) < 2  # the layer's scale
    assert torch.equal(dense.conv2.weight, refilled(model, masks, seed=1).conv2.weight)  # seeded


def test_deepsparse_worker_protocol_without_deepsparse(tmp_path, monkeypatch):
    """Through a real worker process (this interpreter, which lacks DeepSparse): one line, skipped; in-process the
    server answers every failure as one line too."""
    if importlib.util.find_spec("deepsparse") is not None:
        pytest.skip("deepsparse importable here: the worker would succeed")
    assert DeepSparseServer().handle({"op": "nope"}) == {"error": "unknown op 'nope'"}
    assert DeepSparseServer().handle({"op": "run", "key": "x"})["error"].startswith("KeyError")
    peer = PEERS["deepsparse"](1, {"deepsparse_python": sys.executable})
    assert peer.missing() is None
    with pytest.raises(peers.PeerUnavailable, match="cannot import it with .*ModuleNotFoundError.*skipped"):
        peer.start(tmp_path)
    assert peer.proc is None
    monkeypatch.setenv(peers.DEEPSPARSE_PYTHON_ENV, str(tmp_path / "nothing"))
    assert "is not an executable Python" in PEERS["deepsparse"](1).missing()


def test_deepsparse_venv_if_present(c3d):
    """Where the separate venv exists (the README's setup), DeepSparse runs and matches the compact output."""
    py = Path("/opt/deepsparse-venv/bin/python")
    if not py.exists():
        pytest.skip("no DeepSparse venv at /opt/deepsparse-venv")
    model, masks, rules = c3d
    r = run_bench(model, masks, rules, ["deepsparse"], peer_options={"deepsparse_python": str(py)})
    if "deepsparse" in r["against_skipped"]:
        pytest.skip(r["against_skipped"]["deepsparse"])
    a = r["against"]["deepsparse"]
    assert a["max_rel_err"] < 1e-4 and a["pruned_ms"] > 0


FAKE_WORKER = """
import json, sys
import numpy as np
out = sys.stdout
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "quit":
        break
    if req["op"] == "load" and req["key"] == "dense":
        print("Thread: 0x7f81\\nReceived signal: Segmentation fault\\nPlease email support", file=sys.stderr)
        sys.exit(139)
    if req["op"] == "output":
        np.save(req["path"], np.zeros((2, 10), np.float32))
    out.write(json.dumps({"version": "fake", "ms": 7.0} if req["op"] != "output" else {}) + "\\n")
    out.flush()
"""


def test_deepsparse_worker_crash_is_reported_and_the_next_model_gets_a_new_worker(c3d, tmp_path):
    """A worker that dies compiling the dense model (as DeepSparse 1.8 does on R(2+1)D): that variant reports the
    signal, the pruned one runs in a fresh worker and is timed by it."""
    (tmp_path / "worker.py").write_text(FAKE_WORKER)
    py = tmp_path / "python"
    py.write_text(f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'worker.py'}\n")
    py.chmod(0o755)
    model, masks, rules = c3d
    r = run_bench(model, masks, rules, ["deepsparse"], say=lambda s: None, peer_options={"deepsparse_python": str(py)})
    d = r["against"]["deepsparse"]
    assert d["errors"] == {"dense": "PeerError: the worker died (Received signal: Segmentation fault)"}
    assert d["dense_ms"] is None and d["pruned_ms"] == 7.0 and d["version"] == "fake"
