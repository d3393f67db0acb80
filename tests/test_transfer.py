"""Saved adversarial examples (``metaat attack --save``) and transfer attacks (``--transfer``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_mlp
from test_cli import assert_one_line_error, invoke

import metaat.data as data
import metaat.models as models
from metaat.attacks.transfer import (
    AdversarialFileError,
    check_against,
    clean_points,
    load_adversarial,
    save_adversarial,
    transfer_flags,
)

META = {"data": "synthetic", "split": "test", "threat": "linf:0.1", "within_threat": True, "attack": "hand-made"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny MLPs trained from different seeds: ``source`` and ``target``."""
    root = tmp_path_factory.mktemp("transfer")
    models.save_model(tiny_mlp(seed=0), root / "source")
    models.save_model(tiny_mlp(seed=1), root / "target")
    return root


@pytest.fixture(scope="module")
def saved(models_dir: Path) -> Path:
    """PGD examples against ``source`` on synthetic test points 5..44, saved with ``--save``."""
    path = models_dir / "pgd.safetensors"
    result = invoke(
        "attack",
        "--model",
        str(models_dir / "source"),
        "--data",
        "synthetic",
        "--n",
        "40",
        "--start",
        "5",
        "-o",
        "steps=5",
        "--save",
        str(path),
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["saved"] == str(path) and report["within_threat"] is True
    return path


def hand_made(n: int = 8, shift: float = 0.05) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = data.load("synthetic", "test", n=n)
    return (x + shift).clamp(0, 1), y, torch.arange(n)


# ---------------------------------------------------------------------------------------------------
# the file


def test_round_trip_keeps_tensors_flags_and_metadata(tmp_path: Path) -> None:
    x_adv, y, index = hand_made()
    robust = torch.tensor([1, 0, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    path = save_adversarial(tmp_path / "a.safetensors", x_adv, y, index, meta={**META, "note": 3}, source_robust=robust)
    adv = load_adversarial(path)
    assert torch.equal(adv.x_adv, x_adv) and torch.equal(adv.y, y) and torch.equal(adv.index, index)
    assert torch.equal(adv.source_robust, robust) and not adv.source_clean.any()
    assert adv.meta["note"] == 3 and adv.meta["format"] == "metaat.adversarial" and len(adv) == 8
    x, yc = clean_points(adv)
    check_against(adv, x, yc)  # a 0.05 shift lies inside L∞ 0.1


def test_a_flipped_bit_a_truncation_and_a_foreign_file_are_one_clear_error(tmp_path: Path) -> None:
    x_adv, y, index = hand_made()
    path = save_adversarial(tmp_path / "a.safetensors", x_adv, y, index, meta=META)
    raw = bytearray(path.read_bytes())
    flipped = tmp_path / "flipped.safetensors"
    raw[-10] ^= 0x01  # inside the last tensor's bytes
    flipped.write_bytes(bytes(raw))
    with pytest.raises(AdversarialFileError, match="checksum mismatch"):
        load_adversarial(flipped)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(AdversarialFileError, match="corrupt or truncated"):
        load_adversarial(truncated)
    model_file = models.save_model(tiny_mlp(), tmp_path / "m.safetensors")
    with pytest.raises(AdversarialFileError, match="not a metaat adversarial set"):
        load_adversarial(model_file)
    with pytest.raises(FileNotFoundError, match="no adversarial set"):
        load_adversarial(tmp_path / "missing.safetensors")


def test_an_edited_header_is_caught_like_an_edited_image(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = save_adversarial(tmp_path / "a.safetensors", *hand_made(), meta=META)
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["metaat_adversarial"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for key, value in (("threat", "linf:0.5"), ("within_threat", False), ("data", "mnist")):
        edited = tmp_path / f"edited-{key}.safetensors"
        save_file(tensors, str(edited), metadata={"metaat_adversarial": json.dumps({**header, key: value})})
        with pytest.raises(AdversarialFileError, match="checksum mismatch"):
            load_adversarial(edited)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({**META, "within_threat": "false"}, "'within_threat' must be true or false"),
        ({**META, "data": 5}, "'data' must be a string"),
        ({**META, "threat": "linf:-1"}, "eps"),
        ({k: v for k, v in META.items() if k != "attack"}, "meta lacks attack"),
    ],
)
def test_bad_metadata_is_refused_on_save(tmp_path: Path, meta: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=message):
        save_adversarial(tmp_path / "a.safetensors", *hand_made(), meta=meta)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, y, i: (x[:0], y[:0], i[:0]), "holds no examples"),
        (lambda x, y, i: (x.masked_fill(x > 0.5, float("nan")), y, i), "NaN"),
        (lambda x, y, i: (x + 2, y, i), "pixels must lie in [0, 1]"),
        (lambda x, y, i: (x, y, torch.zeros_like(i)), "index repeats a point"),
        (lambda x, y, i: (x, y[:3], i), "labels but x has"),
    ],
)
def test_saving_bad_examples_is_refused(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    x_adv, y, index = change(*hand_made())
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        save_adversarial(tmp_path / "a.safetensors", x_adv, y, index, meta=META)
    with pytest.raises(ValueError, match="saved as a .safetensors file"):
        save_adversarial(tmp_path / "a.pt", *hand_made(), meta=META)


def test_the_clean_points_decide_labels_and_the_threat_ball(tmp_path: Path) -> None:
    x_adv, y, index = hand_made(shift=0.3)  # outside L∞ 0.1 wherever the clamp left room
    outside = load_adversarial(save_adversarial(tmp_path / "o.safetensors", x_adv, y, index, meta=META))
    x, yc = clean_points(outside)
    with pytest.raises(ValueError, match=r"lie outside linf:0.1 .* though the file says they lie inside"):
        check_against(outside, x, yc)
    unbounded = load_adversarial(
        save_adversarial(tmp_path / "u.safetensors", x_adv, y, index, meta={**META, "within_threat": False})
    )
    check_against(unbounded, x, yc)  # spatial/patch-like sets make no ball claim
    relabelled = load_adversarial(save_adversarial(tmp_path / "r.safetensors", x_adv, (y + 1) % 10, index, meta=META))
    with pytest.raises(ValueError, match="8 of the 8 saved labels differ"):
        check_against(relabelled, *clean_points(relabelled))


def test_transfer_flags_count_a_point_only_when_clean_and_adversarial_are_right(tmp_path: Path) -> None:
    net = tiny_mlp()
    x, y = data.load("synthetic", "test", n=50)
    adv = load_adversarial(save_adversarial(tmp_path / "c.safetensors", x, y, torch.arange(50), meta=META))
    clean, robust = transfer_flags(net, adv, x, chunk=7)
    with torch.no_grad():
        expect = net(x).argmax(1) == y
    assert torch.equal(clean, expect) and torch.equal(robust, expect)  # unperturbed: robust == clean


# ---------------------------------------------------------------------------------------------------
# the command


def test_transfer_to_the_source_itself_reproduces_its_robust_accuracy(models_dir: Path, saved: Path) -> None:
    adv = load_adversarial(saved)
    assert adv.index.tolist() == list(range(5, 45)) and "steps=5" in adv.meta["attack"]
    assert adv.meta["source_sha256"] == json.loads((models_dir / "source" / "model.json").read_text())["sha256"]
    result = invoke("attack", "--model", str(models_dir / "source"), "--transfer", str(saved), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["robust"] == pytest.approx(adv.source_robust.float().mean().item())
    assert report["clean"] == pytest.approx(adv.source_clean.float().mean().item())
    assert report["n"] == 40 and report["start"] == 5 and report["threat"] == "linf:0.1"


def test_transfer_to_another_model_scores_it_on_the_saved_examples(models_dir: Path, saved: Path) -> None:
    result = invoke("attack", "--model", str(models_dir / "target"), "--transfer", str(saved))
    assert result.exit_code == 0, result.output
    assert "transfer of linf:0.1 examples from" in result.stdout and "the source model: robust" in result.stdout
    target = models.load_model(models_dir / "target")
    adv = load_adversarial(saved)
    x, _ = clean_points(adv)
    _, robust = transfer_flags(target, adv, x)
    assert f"robust {100 * robust.float().mean().item():.2f} %" in result.stdout


def test_transfer_command_errors_are_one_line(models_dir: Path, saved: Path, tmp_path: Path) -> None:
    target = str(models_dir / "target")
    clash = invoke("attack", "--model", target, "--transfer", str(saved), "--attack", "fgsm", "-o", "steps=2")
    assert_one_line_error(clash, "it takes no --attack, --option (the file fixes them)")
    assert_one_line_error(
        invoke("attack", "--model", target, "--transfer", str(saved), "--data", "fashion-mnist"),
        "holds synthetic examples, not fashion-mnist",
    )
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(saved.read_bytes()[:200])
    assert_one_line_error(invoke("attack", "--model", target, "--transfer", str(broken)), "corrupt or truncated")
    outside = save_adversarial(tmp_path / "outside.safetensors", *hand_made(shift=0.3), meta=META)
    assert_one_line_error(invoke("attack", "--model", target, "--transfer", str(outside)), "lie outside linf:0.1")
    assert_one_line_error(
        invoke("attack", "--model", target, "--data", "synthetic", "--n", "4", "--save", str(tmp_path / "x.pt")),
        "--save writes a .safetensors file",
    )


# ---------------------------------------------------------------------------------------------------
# the transfer check of `metaat eval --transfer`


class ZeroGradient(torch.nn.Module):
    """The same outputs as ``inner``, but an input gradient of exactly zero: masked gradients."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x * 0 + x.detach())


def test_the_transfer_check_flags_masked_gradients_and_passes_an_honest_model() -> None:
    from metaat.attacks import create
    from metaat.eval.checks import check_transfer

    net = tiny_mlp(seed=0)
    x, y = data.load("synthetic", "test", n=100)
    pgd = create("pgd", threat="linf:0.1", steps=10)
    surrogate = pgd(tiny_mlp(seed=1), x, y)  # another model's examples

    def white_flags(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return (model(pgd(model, x, y)).argmax(1) == y) & (model(x).argmax(1) == y)

    masked = ZeroGradient(net)
    masked_white = white_flags(masked)
    with torch.no_grad():
        assert int(masked_white.sum()) > int((net(pgd(net, x, y)).argmax(1) == y).sum()) + 10  # the mask works
    flagged = check_transfer(masked, x, pgd(net, x, y), y, masked_white, "linf:0.1", "an unmasked copy")
    assert flagged.status == "flagged" and "gradient masking" in flagged.explanation
    assert flagged.values["transfer_only"] > 0.1
    honest = check_transfer(net, x, surrogate, y, white_flags(net), "linf:0.1", "tiny_mlp seed 1")
    assert honest.status == "passed", honest.explanation
    assert honest.values["transfer_only"] * 100 <= 1


def test_eval_transfer_checks_each_set_at_its_points_and_refuses_sets_that_do_not_fit(
    models_dir: Path, saved: Path, tmp_path: Path
) -> None:
    import metaat

    target = str(models_dir / "target")
    # an L2 set on points 10-19 from the source, to sit inside the evaluated slice 0-59 at an offset
    l2_set = tmp_path / "l2.safetensors"
    made = invoke(
        "attack",
        "--model",
        str(models_dir / "source"),
        "--data",
        "synthetic",
        "--threat",
        "l2:1",
        "--start",
        "10",
        "--n",
        "10",
        "-o",
        "steps=5",
        "--save",
        str(l2_set),
    )
    assert made.exit_code == 0, made.output
    fast = ["--data", "synthetic", "--suite", "quick", "--no-unseen", "--no-checks", "--union-only"]
    two = [*fast, "--threat", "linf:0.1", "--threat", "l2:1", "--start", "0", "--n", "60", "--out", str(tmp_path)]
    result = invoke("eval", target, *two, "--transfer", str(saved), "--transfer", str(l2_set), "--json")
    assert result.exit_code == 0, result.output
    linf, l2 = json.loads(result.stdout)["checks"]
    assert (linf["name"], linf["threat"], l2["name"], l2["threat"]) == ("transfer", "linf:0.1", "transfer", "l2:1")
    # the same evaluation in Python (the quick suite's starts are per point): the expected flags
    net = models.load_model(models_dir / "target")
    x, y = data.load("synthetic", "test", n=60)
    res = metaat.evaluate(net, x, y, ["linf:0.1", "l2:1"], suite="quick", union_only=True, checks=False)
    clean = res.flags["clean"]
    # L∞ comes first, so its flags are exact: compared with them at points 5-44
    assert linf["values"]["white_box_accuracy"] == pytest.approx(
        float((res.flags["linf:0.1"] & clean)[5:45].float().mean())
    )
    # union-only leaves L2's flags an upper bound: compared with the union's, at points 10-19, and said so
    assert "white_box_accuracy" not in l2["values"] and "union of the evaluation's attacks" in l2["explanation"]
    assert l2["values"]["union_accuracy"] == pytest.approx(float(res.flags["union"][10:20].float().mean()))
    for adv_path in (saved, l2_set):
        adv = load_adversarial(adv_path)
        _, robust = transfer_flags(net, adv, clean_points(adv)[0])
        check = linf if adv.meta["threat"] == "linf:0.1" else l2
        assert check["values"]["transfer_accuracy"] == pytest.approx(robust.float().mean().item())

    one = [*fast, "--threat", "linf:0.1", "--out", str(tmp_path)]
    assert_one_line_error(
        invoke("eval", target, *one, "--start", "0", "--n", "20", "--transfer", str(saved)),
        "covers test points 5-44, outside this evaluation's 0-19",
    )
    assert_one_line_error(
        invoke("eval", target, *one, "--start", "0", "--n", "60", "--transfer", str(l2_set)),
        "holds l2:1 examples; evaluated threats: linf:0.1",
    )
    loose = save_adversarial(tmp_path / "loose.safetensors", *hand_made(), meta={**META, "within_threat": False})
    assert_one_line_error(
        invoke("eval", target, *one, "--start", "0", "--n", "60", "--transfer", str(loose)),
        "do not all lie in linf:0.1",
    )
