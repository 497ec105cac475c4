"""RT3D's own S3D, torchvision's Kinetics-400 weights from the hub cache, foreign state-dict layouts, the
normalisation of each weight source, and RT3D's v1-v5 profile aliases."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torchvision.models.video import R2Plus1D_18_Weights, S3D_Weights, r2plus1d_18, s3d

from models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    KINETICS_MEAN,
    KINETICS_STD,
    build_model,
    convert_state_dict,
    default_norm,
    normalization,
)
from pruning import ProfileError, load_profile
from pruning.errors import UserError
from pruning.profile import PROFILES_DIR, load_aliases

# sha256 of "name:shape" lines (state_dict order) of RT3D's network/s3d.py, S3D(num_classes=101,
# without_t_stride=True), computed from the original code: our module must reproduce every name and shape.
RT3D_S3D_KEYS_SHA256 = "bb52abdcca59e617c3c6ee086f3fde49fd608069ae4c9030c10f32d64aa68fcf"


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------------------------------------ RT3D's S3D
@pytest.mark.parametrize("arch", ["s3d-rt3d", "s3d-rt3d-ts"])
def test_rt3d_s3d_has_the_originals_names_and_shapes(arch):
    sd = build_model(arch, 101).state_dict()
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items())
    assert hashlib.sha256(lines.encode()).hexdigest() == RT3D_S3D_KEYS_SHA256
    assert sd["conv1.conv.weight"].shape == (64, 3, 3, 7, 7)  # the (3,7,7) stem
    assert sd["inception3a.branch2.1.conv_t.weight"].shape == (128, 128, 3, 1, 1)


@pytest.mark.parametrize("arch,shape,frames_at_head", [("s3d-rt3d", (2, 3, 8, 112, 112), 7),
                                                       ("s3d-rt3d", (1, 3, 4, 64, 64), 3),
                                                       ("s3d-rt3d-ts", (1, 3, 16, 64, 64), 2)])
def test_rt3d_s3d_runs_a_clip(arch, shape, frames_at_head):
    model = build_model(arch, 7).eval()
    seen = {}
    model.fc.register_forward_hook(lambda m, i, o: seen.update(rows=o.shape[0]))
    with torch.no_grad():
        out = model(torch.randn(*shape))
    assert out.shape == (shape[0], 7)
    # no temporal stride: the last pool's 2-frame window leaves T-1 frames; with it, 16 frames end as 2
    assert seen["rows"] == shape[0] * frames_at_head


def test_rt3d_s3d_checkpoint_in_the_originals_layout_loads():
    """RT3D saved DataParallel models: {'state_dict': {'module.conv1.conv.weight': ...}}."""
    torch.manual_seed(1)
    source = build_model("s3d-rt3d", 11).eval()
    for p in source.parameters():
        p.data.normal_(0, 0.05)
    ckpt = {"epoch": 20, "state_dict": {f"module.{k}": v.clone() for k, v in source.state_dict().items()}}
    target = build_model("s3d-rt3d", 11).eval()
    target.load_state_dict(convert_state_dict(ckpt, "s3d-rt3d"))
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_rt3d_s3d_profile_loads_unchanged_and_resolves_per_arch(capsys):
    shipped = (PROFILES_DIR / load_aliases()["s3d_2.09x"]["file"]).read_text()
    original = shipped[shipped.index("prune_ratios:"):]  # RT3D's file: no type, `module.` keys, comments
    assert "sparsity" not in original and "module.conv1.conv.weight" in original
    model = build_model("s3d-rt3d", 101)
    legacy = load_profile(_write(original), sparsity="blk-kgs")
    rules = legacy.resolve(model)
    assert len(rules) == 13 and rules["conv1.conv.weight"].ratios == {"kgs": 0.2}
    assert rules["inception4e.branch2.1.conv_t.weight"].ratios == {"kgs": 0.7}
    via_alias = load_profile("s3d_2.09x", arch="s3d-rt3d")
    assert via_alias.resolve(model) == rules and via_alias.group_size == (8, 4)
    assert capsys.readouterr().err == ""
    tv = load_profile("s3d_2.09x", arch="s3d")  # torchvision's S3D: the 1.84x file, with a note
    assert Path(tv.source).name == "s3d_kgs_1.84x.yaml"
    tv.resolve(build_model("s3d", 101))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "note: s3d_2.09x" in err and "s3d_kgs_1.84x.yaml" in err
    with pytest.raises(ProfileError) as e:
        load_profile("s3d_2.09x", arch="c3d")
    assert "s3d-rt3d" in one_line(e)


def _write(text: str) -> str:
    import tempfile

    fd, path = tempfile.mkstemp(suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


# ------------------------------------------------------------------------------------------------ --pretrained
@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache under a temporary TORCH_HOME, and no network: a download attempt fails."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def offline(url, *a, **k):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "hub" / "checkpoints"


def _cache(hub: Path, url: str, model: torch.nn.Module) -> dict:
    torch.manual_seed(3)
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    hub.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), hub / os.path.basename(url))  # the name torchvision looks for
    return model.state_dict()


def test_pretrained_r2plus1d_loads_from_the_hub_cache(hub):
    saved = _cache(hub, R2Plus1D_18_Weights.KINETICS400_V1.url, r2plus1d_18(weights=None))
    assert (hub / "r2plus1d_18-91a641e6.pth").is_file()
    same = build_model("r2+1d", 400, pretrained=True).state_dict()
    assert all(torch.equal(same[k], v) for k, v in saved.items())  # classifier kept at 400 classes
    for model in (build_model("r2+1d", 101, pretrained=True), build_model("r2+1d-pretrained", 101)):
        sd = model.state_dict()
        assert sd["fc.weight"].shape == (101, 512)
        assert all(torch.equal(sd[k], v) for k, v in saved.items() if not k.startswith("fc."))
    fresh = build_model("r2+1d", 101).state_dict()  # without pretrained nothing is read
    assert not torch.equal(fresh["stem.0.weight"], saved["stem.0.weight"])


def test_pretrained_s3d_loads_from_the_hub_cache(hub):
    saved = _cache(hub, S3D_Weights.KINETICS400_V1.url, s3d(weights=None))
    sd = build_model("s3d", 101, pretrained=True).state_dict()
    assert sd["classifier.1.weight"].shape == (101, 1024, 1, 1, 1)
    assert all(torch.equal(sd[k], v) for k, v in saved.items() if not k.startswith("classifier.1."))


def test_pretrained_offline_and_not_cached_is_one_line(hub):
    with pytest.raises(UserError) as e:
        build_model("r2+1d-pretrained", 101)
    msg = one_line(e)
    assert str(hub / "r2plus1d_18-91a641e6.pth") in msg and "place it" in msg and "name resolution" in msg


def test_pretrained_refused_where_torchvision_has_no_weights():
    with pytest.raises(UserError) as e:
        build_model("c3d", 101, pretrained=True)
    assert "Sports-1M" in one_line(e) and "--load-path" in str(e.value)
    with pytest.raises(UserError):
        build_model("s3d-rt3d", 101, pretrained=True)


# ------------------------------------------------------------------------------------------------ layouts
def _small_c3d(seed: int, classes: int = 101) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("c3d", classes, width_mult=0.25, clip_len=8, crop_size=32)


def test_sports1m_c3d_layout_converts_and_loads():
    """The Sports-1M C3D release as TCAD reads it: features.N convs, classifier.0/3/6 = fc6/fc7/fc8 (487-way)."""
    names = {"conv1": "features.0", "conv2": "features.3", "conv3a": "features.6", "conv3b": "features.8",
             "conv4a": "features.11", "conv4b": "features.13", "conv5a": "features.16", "conv5b": "features.18",
             "fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"}
    source = _small_c3d(1, classes=487)
    release = {f"{names[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in source.state_dict().items()}
    target = _small_c3d(2)
    own_fc8 = target.fc8.weight.detach().clone()
    target.load_state_dict(convert_state_dict({f"module.{k}": v for k, v in release.items()}, "c3d", target))
    sd = target.state_dict()
    assert torch.equal(sd["conv5b.weight"], source.conv5b.weight) and torch.equal(sd["fc7.bias"], source.fc7.bias)
    assert torch.equal(sd["fc8.weight"], own_fc8)  # 487 Sports-1M classes: left at the new init
    without_fc8 = {k: v for k, v in release.items() if not k.startswith("classifier.6")}  # TCAD's file
    assert "fc8.weight" in convert_state_dict(without_fc8, "c3d", target)
    assert "fc8.weight" not in convert_state_dict(without_fc8, "c3d")  # no model given: left out


def test_our_layout_passes_through_and_unknown_layouts_are_one_line():
    model = _small_c3d(1)
    ours = model.state_dict()
    assert convert_state_dict({"model": ours}, "c3d", model).keys() == ours.keys()
    with pytest.raises(UserError) as e:
        convert_state_dict({"encoder.layer0.weight": torch.zeros(1)}, "c3d", model)
    assert "not recognised" in one_line(e) and "encoder.layer0.weight" in str(e.value)
    with pytest.raises(UserError) as e:  # another arch's weights
        convert_state_dict(build_model("r2+1d", 5).state_dict(), "s3d-rt3d")
    one_line(e)


# ------------------------------------------------------------------------------------------------ normalisation
def test_normalisation_table_and_defaults():
    assert normalization("imagenet") == (IMAGENET_MEAN, IMAGENET_STD) == ((0.485, 0.456, 0.406),
                                                                         (0.229, 0.224, 0.225))
    assert normalization("kinetics") == (KINETICS_MEAN, KINETICS_STD)
    assert KINETICS_MEAN == tuple(R2Plus1D_18_Weights.KINETICS400_V1.transforms().mean)
    with pytest.raises(UserError) as e:
        normalization("sports1m")
    assert "imagenet" in one_line(e)
    assert default_norm("r2+1d-pretrained") == default_norm("s3d", pretrained=True) == "kinetics"
    assert default_norm("s3d-rt3d") == "imagenet"


# ------------------------------------------------------------------------------------------------ v1-v5, blk-vanilla
def test_rt3d_v1_to_v5_aliases_resolve():
    model = build_model("r2+1d", 101)
    want = {"v1": load_profile("r2+1d-pretrained_3.20x").rules, "v5": load_profile("r2+1d-pretrained_2.56x").rules}
    for v in ("v1", "v2", "v3", "v4", "v5"):
        prof = load_profile(f"r2+1d-pretrained_3.20x_{v}", arch="r2+1d")
        rules = prof.resolve(model)
        assert len(rules) == 16 and prof.sparsity == "kgs"
        if v in want:
            assert prof.rules == want[v]
        else:  # all 0.8 / 0.7 / 0.9
            assert {r.ratio for r in rules.values()} == {{"v2": 0.8, "v3": 0.7, "v4": 0.9}[v]}


def test_blk_vanilla_with_a_published_alias():
    prof = load_profile("r2+1d-pretrained_3.20x_v2", sparsity="blk-vanilla")
    assert prof.sparsity == "blk-vanilla" and prof.group_size == (8, 4)
    assert {r.sparsity for r in prof.rules.values()} == {"blk-vanilla"}
    assert load_profile("c3d_3.57x", sparsity="vanilla").sparsity == "blk-vanilla"
    with pytest.raises(ProfileError) as e:  # kgr/kgc pairs per layer cannot become one type
        load_profile("c3d_3.04x", sparsity="kgs")
    one_line(e)
