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
    assert peer_names("openvino,openvino-bf16,openvino-int8,onnxruntime-int8") == [
        "openvino", "openvino-bf16", "openvino-int8", "onnxruntime-int8"]
    assert {n: PEERS[n].dtype for n in PEERS} == {
        "onnxruntime": "f32", "onnxruntime-int8": "int8", "openvino": "f32", "openvino-bf16": "bf16",
        "openvino-int8": "int8", "deepsparse": "f32"}
    with pytest.raises(ValueError, match="'tvm' is not a runtime; allowed: onnxruntime, onnxruntime-int8, openvino, "
                                         "openvino-bf16, openvino-int8, deepsparse$"):
        peer_names("onnxruntime,tvm")

    @register_peer
    class Mine(Peer):
        name, install = "mine", "pip install mine"

    assert peers.PEERS["mine"] is Mine and peer_names("mine") == ["mine"]


def test_options_refuse_unknown_runtime_in_one_line(capsys):
    assert parse_args(["--benchmark", "--against", "openvino,onnxruntime"]).against == "openvino,onnxruntime"
    assert parse_args(["--benchmark", "--against", "openvino,OpenVINO-bf16,openvino-int8,onnxruntime-int8"]
                      ).against == "openvino,openvino-bf16,openvino-int8,onnxruntime-int8"
    with pytest.raises(SystemExit):
        parse_args(["--benchmark", "--against", "tensorrt"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--against: 'tensorrt' is not a runtime" in err
    with pytest.raises(SystemExit):
        parse_args(["--benchmark", "--against", "openvino,openvino-fp16"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--against: 'openvino-fp16' is not a runtime" in err and "openvino-int8" in err
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


def specs(monkeypatch, *, absent=(), present=()) -> None:
    """Make `absent` look not installed and `present` installed to compact.peers."""
    real = importlib.util.find_spec
    monkeypatch.setattr(peers.importlib.util, "find_spec",
                        lambda name, *a: None if name in absent else object() if name in present else real(name, *a))


def test_quantizing_peer_names_what_is_missing(monkeypatch):
    specs(monkeypatch, absent=("nncf",), present=("openvino", "onnxruntime"))
    assert PEERS["openvino-int8"](1).missing() == "openvino-int8: nncf not installed, skipped (pip install nncf)"
    assert PEERS["openvino-bf16"](1).missing() is None and PEERS["onnxruntime-int8"](1).missing() is None
    specs(monkeypatch, absent=("nncf", "openvino", "onnxruntime"))
    assert PEERS["openvino-int8"](1).missing() == "openvino-int8: not installed, skipped (pip install openvino nncf)"
    assert PEERS["openvino-bf16"](1).missing() == "openvino-bf16: not installed, skipped (pip install openvino)"
    assert PEERS["onnxruntime-int8"](1).missing() == \
        "onnxruntime-int8: not installed, skipped (pip install onnxruntime)"


def test_reduced_precision_peers_missing_skipped_and_kept_out_of_the_fp32_bar(c3d, monkeypatch, fake_registry):
    """Missing reduced-precision runtimes: one line each, the rest benchmarked; a runtime's notes are said once
    and kept in its row; a faster int8 runtime is reported but is not the bar (the fastest dense fp32 runtime)."""
    hide(monkeypatch, "nncf", "openvino", "onnxruntime")
    model, masks, rules = c3d
    dense = compact.masked_dense_copy(model, masks)

    class Echo(Peer):
        name, install = "echo", "-"
        ms = 1.0

        def load(self, key, onnx_path, x):
            self.info["version"] = "0"
            ref = torch.from_numpy(x)
            return Runner(lambda: Timed(self.ms), lambda: dense(ref).numpy())

    @register_peer
    class EchoInt8(Echo):
        name, dtype, ms = "echo-int8", "int8", 0.5

        def load(self, key, onnx_path, x):
            self.note("echo-int8: ran in f32, not int8")
            return super().load(key, onnx_path, x)

    register_peer(Echo)
    lines: list[str] = []
    r = run_bench(model, masks, rules, ["openvino-bf16", "openvino-int8", "onnxruntime-int8", "echo", "echo-int8"],
                  say=lines.append)
    assert lines == ["openvino-bf16: not installed, skipped (pip install openvino)",
                     "openvino-int8: not installed, skipped (pip install openvino nncf)",
                     "onnxruntime-int8: not installed, skipped (pip install onnxruntime)",
                     "echo-int8: ran in f32, not int8"]
    assert list(r["against"]) == ["echo", "echo-int8"] and len(r["against_skipped"]) == 3
    e, q = r["against"]["echo"], r["against"]["echo-int8"]
    assert e["dtype"] == "f32" and "notes" not in e and e["dense_ms"] == 1.0
    assert q["dtype"] == "int8" and q["notes"] == ["echo-int8: ran in f32, not int8"] and q["dense_ms"] == 0.5
    assert r["fastest_dense"] == {"name": "echo", "ms": 1.0}
    assert "  echo-int8: ran in f32, not int8" in compact.format_table(r).splitlines()


def test_calibration_clips(tmp_path):
    x = np.zeros((2, *SHAPE), np.float32)
    peer = PEERS["onnxruntime-int8"](1)
    clips = peer.calibration(x)
    assert len(clips) == 32 and all(c.shape == (1, *SHAPE) and c.dtype == np.float32 for c in clips)
    assert 0.9 < float(np.std(clips)) < 1.1  # the benchmark input's distribution
    assert np.array_equal(np.concatenate(clips), np.concatenate(PEERS["openvino-int8"](1).calibration(x)))  # seeded
    assert peer.info["calibration"]["clips"] == 32 and "seed 0" in peer.info["calibration"]["source"]
    assert len(PEERS["openvino-int8"](1, {"calibration_clips": 3}).calibration(x)) == 3
    with pytest.raises(ValueError, match="calibration_clips must be at least 1, not 0"):
        PEERS["openvino-int8"](1, {"calibration_clips": 0}).calibration(x)
    real = torch.rand(5, *SHAPE)
    given = PEERS["openvino-int8"](1, {"calibration": real, "calibration_clips": 4})
    assert np.array_equal(np.concatenate(given.calibration(x)), real[:4].numpy())
    assert given.info["calibration"]["source"].startswith("given (5 clips, the first 4 used)")
    np.save(tmp_path / "clips.npy", real.numpy())
    assert len(PEERS["onnxruntime-int8"](1, {"calibration": str(tmp_path / "clips.npy")}).calibration(x)) == 5
    with pytest.raises(ValueError, match=r"calibration clips of shape \(5, 3, 8, 16, 16\) do not fit the input"):
        PEERS["openvino-int8"](1, {"calibration": torch.rand(5, 3, 8, 16, 16)}).calibration(x)


def test_openvino_bf16_and_int8_run(c3d):
    """Where OpenVINO and NNCF are installed (not in CI): both reduced-precision peers give timings, the precision
    OpenVINO reports and what its convolutions ran in; the error against the compact fp32 output is recorded."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    model, masks, rules = c3d
    r = run_bench(model, masks, rules, ["openvino-bf16", "openvino-int8"], say=lambda s: None,
                  peer_options={"calibration_clips": 4})
    b, q = r["against"]["openvino-bf16"], r["against"]["openvino-int8"]
    for a in (b, q):
        assert a["dense_ms"] > 0 and a["pruned_ms"] > 0 and a["threads"] == 1 and "errors" not in a
        assert 0 < a["max_rel_err"] < 0.5 and set(a["layer_precisions"]) == {"dense", "pruned"}
    convs = b["layer_precisions"]["pruned"]["Convolution"]
    if "BF16" in b["cpu_capabilities"]:
        assert b["precision"] == "bf16" and set(convs) == {"bf16"} and "notes" not in b
    else:  # OpenVINO falls back to f32: said, and kept in the row
        assert b["notes"] and "not bf16" in b["notes"][0]
    assert q["precision"] == "f32" and q["dtype"] == "int8" and "notes" not in q  # f32: what stays float
    assert set(q["layer_precisions"]["pruned"]["Convolution"]) <= {"u8", "i8"}
    assert q["calibration"]["clips"] == 4 and q["quantization"]["tool"].startswith("nncf ")
    assert r["fastest_dense"]["name"] == "pytorch"  # no reduced-precision runtime is the fp32 bar


def test_onnxruntime_int8_runs(c3d):
    pytest.importorskip("onnxruntime")
    model, masks, rules = c3d
    r = run_bench(model, masks, rules, ["onnxruntime-int8"], peer_options={"calibration_clips": 4})
    a = r["against"]["onnxruntime-int8"]
    assert a["dense_ms"] > 0 and a["pruned_ms"] > 0 and "errors" not in a and a["intra_op_threads"] == 1
    assert 0 < a["max_rel_err"] < 0.5 and a["quantization"]["format"] == "QDQ" and a["calibration"]["clips"] == 4
    assert a["layer_precisions"]["pruned"] == {"Conv": {"int8": 8, "f32": 0}} and "notes" not in a
    assert r["fastest_dense"]["name"] == "pytorch"


def test_onnxruntime_int8_quantizes_convs_whose_bias_the_exporter_shares(tmp_path):
    """Equal biases (C3D's zero init) reach ONNX as one initializer and Identity nodes; every conv is still int8."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv3d(8, 8, 3, padding=1), torch.nn.ReLU()).eval()
    for m in model:
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.zeros_(m.bias)
    path = compact.export_onnx(model, {}, tmp_path / "m.onnx", (3, 4, 8, 8))
    import onnx
    assert "Identity" in {n.op_type for n in onnx.load(str(path)).graph.node}
    peer = PEERS["onnxruntime-int8"](1, {"calibration_clips": 2})
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 8, 8), dtype=np.float32)
    runner = peer.load("pruned", path, x)
    assert peer.info["layer_precisions"]["pruned"] == {"Conv": {"int8": 2, "f32": 0}} and not peer.notes
    assert runner.output().shape == (1, 8, 4, 8, 8)


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


def test_runtime_that_fails_during_the_timing_is_said_once_and_left_out(c3d, fake_registry):
    """A worker that dies after loading (DeepSparse did, mid-timing) or an inference that raises: one line, that
    variant's times left out, the other variants and runtimes still timed in paired rounds."""
    @register_peer
    class Flaky(Peer):
        name, install = "flaky", "-"

        def load(self, key, onnx_path, x):
            calls = [0]
            out = compact.masked_dense_copy(*c3d[:2])(torch.from_numpy(x)).detach().numpy()

            def run():
                calls[0] += 1
                if key == "pruned" and calls[0] > 2:
                    raise peers.PeerError("the worker died (Received signal 11)")
                return Timed(2.0)
            return Runner(run, lambda: out)

    model, masks, rules = c3d
    lines: list[str] = []
    r = compact.benchmark(model, masks, SHAPE, batch_size=2, threads=1, repeats=4, warmup=0, rules=rules,
                          per_layer=False, against=["flaky"], say=lines.append)
    f = r["against"]["flaky"]
    assert f["pruned_ms"] is None and f["dense_ms"] == 2.0 and f["speedup_vs_dense_paired"] > 0
    assert f["errors"] == {"pruned": "stopped during the timing: PeerError: the worker died (Received signal 11)"}
    said = [ln for ln in lines if "flaky" in ln]
    assert len(said) == 1 and "its times are left out" in said[0] and "\n" not in said[0]
    assert r["fastest_dense"]["name"] == "flaky" and r["compact_ms"] > 0
    assert "flaky pruned: did not run (stopped during the timing" in compact.format_table(r)


def test_a_model_that_does_not_export_skips_the_runtimes_in_one_line_each(c3d, monkeypatch, fake_registry):
    """No ONNX file, nothing for the runtimes to run: each is skipped with one line, PyTorch and compact still
    timed (before, the exporter's traceback ended the benchmark)."""
    @register_peer
    class Echo(Peer):
        name, install = "echo", "-"

        def load(self, key, onnx_path, x):
            raise AssertionError("not reached")

    def no_export(*a, **k):
        raise RuntimeError("Failed to export a node '%399' because it is not constant\nmore")

    monkeypatch.setattr(peers, "export_onnx", no_export)
    model, masks, rules = c3d
    lines: list[str] = []
    r = run_bench(model, masks, rules, ["echo"], say=lines.append)
    assert lines == ["echo: skipped, the model did not export to ONNX (RuntimeError: Failed to export a node '%399' "
                     "because it is not constant)"]
    assert r["against"] == {} and "echo" in r["against_skipped"] and r["compact_ms"] > 0
    assert r["fastest_dense"]["name"] == "pytorch"
