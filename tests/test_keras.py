"""Keras 3 models (PyTorch backend) through metaat: the same CNN in Keras and in PyTorch, with the
same weights, gives the same logits, the same PGD examples and the same robust accuracy; training
through metaat's loop changes the Keras weights (BatchNorm statistics included); a run reloads.

Tolerance: logits agree within 1e-5 (float32, the two frameworks' convolutions sum in different
orders); the PGD examples within 1e-4 and the robust accuracies exactly."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

if importlib.util.find_spec("keras") is None:
    pytest.skip("the keras extra is not installed (pip install 'metaat[keras]')", allow_module_level=True)

from metaat.models.keras_model import KerasError, import_keras, load_keras, wrap  # noqa: E402

pytestmark = pytest.mark.integration  # imports Keras / runs the ONNX exporters: tens of seconds
LOGIT_TOL = 1e-5
SIZE, CLASSES = 12, 10  # the synthetic dataset: 1x12x12 images, 10 classes


def keras_cnn(seed: int = 0) -> Any:
    """conv 3x3 (4) -> BatchNorm -> ReLU -> flatten -> dense (10), channels last."""
    keras = import_keras()
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 1)),
            layers.Conv2D(4, 3, name="conv"),
            layers.BatchNormalization(name="bn"),
            layers.ReLU(),
            layers.Flatten(),
            layers.Dense(CLASSES, name="dense"),
        ],
        name="cnn",
    )


def torch_twin(net: Any) -> nn.Module:
    """The same CNN in PyTorch, with ``net``'s weights."""
    w = {v.path.split("/", 1)[1]: v.value.detach().clone() for v in net.variables}
    side = SIZE - 2
    # Keras: HWIO kernels, and Dense reads the (H, W, C)-flattened features; PyTorch: OIHW, (C, H, W)
    dense = w["dense/kernel"].reshape(side, side, 4, CLASSES).permute(2, 0, 1, 3).reshape(-1, CLASSES)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4, eps=1e-3, momentum=0.01),  # Keras's epsilon and (1 - 0.99) momentum
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * side * side, CLASSES),
    )
    model.load_state_dict(
        {
            "0.weight": w["conv/kernel"].permute(3, 2, 0, 1),
            "0.bias": w["conv/bias"],
            "1.weight": w["bn/gamma"],
            "1.bias": w["bn/beta"],
            "1.running_mean": w["bn/moving_mean"],
            "1.running_var": w["bn/moving_variance"],
            "1.num_batches_tracked": torch.tensor(0),
            "4.weight": dense.T,
            "4.bias": w["dense/bias"],
        }
    )
    return model.eval()


def non_trivial_bn(net: Any) -> None:
    """Moving statistics away from (0, 1), so that a mode mix-up changes the logits."""
    for v in net.variables:
        if v.path.endswith("moving_mean"):
            v.assign(torch.tensor([0.1, -0.2, 0.3, 0.05]))
        if v.path.endswith("moving_variance"):
            v.assign(torch.tensor([0.5, 2.0, 1.5, 0.8]))


@pytest.fixture(scope="module")
def pair() -> tuple[nn.Module, nn.Module]:
    net = keras_cnn()
    non_trivial_bn(net)
    return wrap(net).eval(), torch_twin(net)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    import metaat.data as data

    return data.load("synthetic", "test", n=64)


def test_parameters_are_each_keras_variable_once_and_state_dict_is_flat(pair: Any) -> None:
    model, _ = pair
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == len(set(names)) == 8  # conv 2, bn 4 (2 trainable, 2 moving statistics), dense 2
    assert {n: p.requires_grad for n, p in model.named_parameters()}["bn/moving_mean"] is False
    assert set(model.state_dict()) == set(names)
    assert model.metaat_spec["input_shape"] == [1, SIZE, SIZE] and model.metaat_spec["num_classes"] == CLASSES


def test_same_weights_same_logits_in_eval_and_train_mode(pair: Any, batch: Any) -> None:
    model, twin = pair
    x, _ = batch
    with torch.no_grad():
        assert (model(x) - twin(x)).abs().max().item() < LOGIT_TOL
        twin.train(), model.train()
        try:  # batch statistics in training mode (no statistics update is compared here)
            assert (model(x) - twin(x)).abs().max().item() < LOGIT_TOL
        finally:
            twin.eval(), model.eval()
    with torch.no_grad():
        assert (model(x) - twin(x)).abs().max().item() < LOGIT_TOL  # moving statistics kept their meaning


def test_same_pgd_examples_and_robust_accuracy(pair: Any, batch: Any) -> None:
    import metaat
    from metaat.attacks import create

    model, twin = pair
    x, y = batch
    attack = create("pgd", "linf:0.1", steps=5, seed=0)
    adv_k, adv_t = attack(model, x, y), attack(twin, x, y)
    assert (adv_k - adv_t).abs().max().item() < 1e-4
    assert not model.training and all(
        p.requires_grad == (not n.endswith(("moving_mean", "moving_variance"))) for n, p in model.named_parameters()
    )
    kw: dict[str, Any] = {"suite": "quick", "checks": False, "seed": 0}
    rk, rt = (
        metaat.evaluate(model, x, y, ["linf:0.1", "l2:1.0"], **kw),
        metaat.evaluate(twin, x, y, ["linf:0.1", "l2:1.0"], **kw),
    )
    assert rk.clean == rt.clean and rk.robust == rt.robust and rk.union == rt.union
    assert torch.equal(rk.flags["union"], rt.flags["union"])


def test_functional_call_sees_substituted_weights(pair: Any, batch: Any) -> None:
    from torch.func import functional_call

    model, _ = pair
    x, _ = batch
    params = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    params["bn/moving_variance"] = torch.ones(4)
    out = functional_call(model, params, (x[:4],))
    assert torch.equal(out, torch.zeros_like(out))
    assert model(x[:4]).abs().sum() > 0  # the Keras variables are back


def test_training_through_metaat_loop_changes_keras_weights_and_the_run_reloads(tmp_path: Path) -> None:
    import metaat.data as data
    import metaat.defenses as defenses
    import metaat.models as models
    from metaat.train import TrainConfig, fit

    path = tmp_path / "cnn.keras"
    keras_cnn(seed=1).save(path)
    model = models.create(str(path), CLASSES, 1, SIZE)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = TrainConfig(data="synthetic", model=str(path), defense="pgd", epochs=1, batch_size=32, eval_n=16)
    x, y = data.load("synthetic", "train", n=64)
    result = fit(
        model,
        defenses.create("pgd", "linf:0.1"),
        x,
        y,
        config,
        tmp_path / "run",
        *data.load("synthetic", "test", n=16),
        quiet=True,
    )
    assert result.status == "completed"
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {"conv/kernel", "dense/kernel", "bn/gamma", "bn/moving_mean"} <= changed
    spec = json.loads((tmp_path / "run" / "final" / "model.json").read_text())["spec"]
    assert spec["name"] == "keras" and "path" not in spec["kwargs"]  # the architecture, not the file
    path.unlink()  # the run reloads without the .keras file
    again = models.load_model(tmp_path / "run" / "final")
    x_test = data.load("synthetic", "test", n=8)[0]
    with torch.no_grad():
        assert torch.equal(again(x_test), model.eval()(x_test))


def test_keras_file_loads_directly_and_errors_are_one_line(tmp_path: Path) -> None:
    import metaat.models as models

    net = keras_cnn(seed=2)
    net.save(tmp_path / "m.keras")
    model = models.load_model(tmp_path / "m.keras")
    x = torch.rand(3, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(model(x), wrap(net).eval()(x))
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with pytest.raises(KerasError, match=r"bad.keras: not a readable Keras model"):
        load_keras(tmp_path / "bad.keras")
    with pytest.raises(ValueError, match=r"takes input \[1, 12, 12\] .* but the data has 3 channel"):
        models.create(str(tmp_path / "m.keras"), CLASSES, 3, SIZE)


def test_keras_imported_with_another_backend_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    keras = import_keras()
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")  # as if imported with KERAS_BACKEND=jax
    with pytest.raises(KerasError, match="keras was imported with the jax backend.*set KERAS_BACKEND=torch"):
        import_keras()


def test_installing_the_extras_kept_the_pinned_torch() -> None:
    constraints = Path(sys.prefix) / "constraints.txt"
    if not constraints.is_file():
        pytest.skip(f"no {constraints}: this environment was not set up by the Makefile")
    pinned = constraints.read_text().strip().split("==", 1)[1]
    assert torch.__version__ == pinned
