"""Tests for metaat.models: every registered model, Normalize, and safetensors checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from metaat import models
from metaat.models import MODELS, CheckpointError, Normalize, count_parameters, create, load_model, save_model
from metaat.registry import UnknownNameError

# wrn-28-10 (36.5M parameters) is exercised at a small depth/width; its full size is checked separately.
SMALL_KWARGS: dict[str, dict[str, Any]] = {"wrn-28-10": {"depth": 10, "widen_factor": 2}}
SHAPES = [(1, 28), (3, 32)]


def build(name: str, in_channels: int = 1, image_size: int = 28, **kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    return create(name, in_channels=in_channels, image_size=image_size, **SMALL_KWARGS.get(name, {}), **kwargs)


def test_registry_has_the_models() -> None:
    assert {"mlp", "cnn-small", "lenet", "preact-resnet18", "wrn-28-10"} <= set(MODELS.available())


# metaat's own image models (a domain's models, e.g. 1-d nets for signals, are tested on their own
# inputs; models that other test modules register are theirs to test).
IMAGE_MODELS = [
    n
    for n in MODELS.available()
    if getattr(MODELS.get(n), "input_rank", 2) == 2 and MODELS.get(n).__module__.startswith("metaat.")
]


def test_unknown_model_lists_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="cnn-small"):
        create("resnet9000")


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize(("channels", "size"), SHAPES)
def test_forward_shape_and_gradients(name: str, channels: int, size: int) -> None:
    model = build(name, channels, size, num_classes=7)
    model.train()
    x = torch.rand(3, channels, size, size, requires_grad=True)
    out = model(x)
    assert out.shape == (3, 7) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, 7)


def test_cnn_small_parameter_count() -> None:
    n = count_parameters(create("cnn-small"))
    assert 380_000 <= n <= 450_000
    assert n == 413_782
    assert count_parameters(create("cnn-small", in_channels=3, image_size=32)) == 555_158


def test_full_size_architectures() -> None:
    wrn = create("wrn-28-10", in_channels=3, image_size=32)
    assert count_parameters(wrn) == 36_479_194
    assert count_parameters(create("preact-resnet18", in_channels=3, image_size=32)) == 11_172_170
    with torch.no_grad():
        assert wrn.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="6n"):
        create("wrn-28-10", depth=12)


def test_count_parameters_trainable_only() -> None:
    model = create("mlp")
    total = count_parameters(model)
    next(model.parameters()).requires_grad_(False)  # the first Linear weight (784 x 256)
    assert count_parameters(model, trainable_only=True) == total - 784 * 256


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create("mlp", num_classes=0)
    with pytest.raises(TypeError, match="bogus"):
        create("cnn-small", bogus=1)
    with pytest.raises(ValueError, match="normalize"):
        create("mlp", in_channels=3, normalize=((0.5, 0.5), (0.2, 0.2)))


def test_normalize_layer() -> None:
    layer = Normalize([0.5, 0.25, 0.0], [0.5, 0.5, 1.0])
    x = torch.rand(2, 3, 4, 4)
    mean = torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.5, 1.0]).view(1, 3, 1, 1)
    expected = (x - mean) / std
    assert torch.allclose(layer(x), expected)
    assert {k for k, _ in layer.named_buffers()} == {"mean", "std"}
    assert not list(layer.parameters())
    with pytest.raises(ValueError):
        Normalize([0.5], [0.0])
    with pytest.raises(ValueError):
        Normalize([0.5, 0.5], [0.5])


def test_create_with_normalize_matches_manual() -> None:
    torch.manual_seed(0)
    plain = create("lenet")
    torch.manual_seed(0)
    normed = create("lenet", normalize=((0.2860,), (0.3530,)))
    assert isinstance(normed, nn.Sequential) and isinstance(normed.normalize, Normalize)
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(normed(x), plain((x - 0.2860) / 0.3530), atol=1e-6)
    spec = models.get_spec(normed)
    assert spec["name"] == "lenet" and spec["normalize"] == [[0.2860], [0.3530]]


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_save_load_round_trip(tmp_path: Path, name: str) -> None:
    model = build(name, 3, 32, normalize=((0.49, 0.48, 0.45), (0.25, 0.24, 0.26)))
    model.train()
    model(torch.rand(4, 3, 32, 32))  # move BatchNorm running statistics away from their init
    model.eval()
    save_model(model, tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"model.safetensors", "model.json"}
    loaded = load_model(tmp_path / "ckpt")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.metaat_spec == model.metaat_spec  # type: ignore[attr-defined]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_save_to_safetensors_file(tmp_path: Path) -> None:
    model = build("cnn-small")
    weights = save_model(model, tmp_path / "best.safetensors")
    assert weights == tmp_path / "best.safetensors" and (tmp_path / "best.json").is_file()
    meta = json.loads((tmp_path / "best.json").read_text())
    assert meta["spec"]["name"] == "cnn-small" and meta["num_parameters"] == 413_782
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_model(weights)(x), model.eval()(x))
    save_model(model, weights)  # overwriting is fine


def test_save_needs_a_spec(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="metaat_spec"):
        save_model(nn.Linear(2, 2), tmp_path / "x")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)
    save_model(build("mlp"), tmp_path / "m")
    (tmp_path / "m" / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path / "m")


def test_a_file_that_is_not_a_model_is_named(tmp_path: Path) -> None:
    save_model(build("mlp"), tmp_path / "m")
    (tmp_path / "config.yaml").write_text("defense: standard\n")
    with pytest.raises(FileNotFoundError, match="config.yaml is a file, not a model"):
        load_model(tmp_path / "config.yaml")
    load_model(tmp_path / "m" / "model.safetensors")  # the weights file itself is fine


def test_truncated_checkpoint(tmp_path: Path) -> None:
    weights = save_model(build("mlp"), tmp_path / "m")
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path / "m")
    # with the truncated file's own checksum in the sidecar, safetensors itself must reject it
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["sha256"] = sha256_of(weights)
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path / "m")
    # without a checksum the sidecar is refused: a corrupt file would otherwise load silently
    for digest in (None, 5, "abc"):
        (tmp_path / "m" / "model.json").write_text(json.dumps({**meta, "sha256": digest}))
        with pytest.raises(CheckpointError, match="no valid sha256 of the weights"):
            load_model(tmp_path / "m")


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    weights = save_model(build("mlp"), tmp_path / "m")
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="model.json"):
        load_model(tmp_path / "m")


def test_mismatched_checkpoint_names_architecture_and_keys(tmp_path: Path) -> None:
    save_model(build("cnn-small"), tmp_path / "a")
    save_model(build("lenet"), tmp_path / "b")
    # pair lenet's weights with cnn-small's spec
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    meta = json.loads((tmp_path / "a" / "model.json").read_text())
    meta["sha256"] = sha256_of(tmp_path / "a" / "model.safetensors")
    (tmp_path / "a" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "a")
    msg = str(err.value)
    assert "cnn-small" in msg and "shape mismatches" in msg and "model.safetensors" in msg
    # a different num_classes in the spec: shapes of the head differ
    meta["spec"]["num_classes"] = 5
    (tmp_path / "b" / "model.json").write_text(json.dumps({**meta, "spec": {**meta["spec"], "name": "lenet"}}))
    with pytest.raises(CheckpointError, match=r"lenet.*num_classes=5.*11\.weight"):
        load_model(tmp_path / "b")


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    save_model(build("mlp", normalize=((0.5,), (0.5,))), tmp_path / "n")
    meta = json.loads((tmp_path / "n" / "model.json").read_text())
    meta["spec"]["normalize"] = None
    (tmp_path / "n" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"missing keys: 1\.bias.*unexpected keys: net\.1\.bias"):
        load_model(tmp_path / "n")


def test_unknown_architecture_in_spec(tmp_path: Path) -> None:
    save_model(build("mlp"), tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["spec"]["name"] = "no-such-model"
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="no-such-model"):
        load_model(tmp_path / "m")


def test_models_public_api() -> None:
    assert models.available() == MODELS.available()
    assert models.get_spec(create("mlp"))["name"] == "mlp"


@pytest.mark.parametrize(("key", "value"), [("normalize", [[0.5]]), ("name", 5), ("kwargs", [1]), ("image_size", "28")])
def test_a_damaged_spec_is_a_checkpoint_error(tmp_path: Path, key: str, value: Any) -> None:
    save_model(build("mlp"), tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["spec"][key] = value
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="model.json"):
        load_model(tmp_path / "m")


def test_identical_weights_save_to_identical_bytes_as_ordinary_files(tmp_path: Path) -> None:
    """Checksums compare runs: the same weights must give the same file, readable like any other."""
    model = build("mlp")
    digests = {sha256_of(save_model(model, tmp_path / f"m{i}")) for i in range(8)}
    assert len(digests) == 1
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m0" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
