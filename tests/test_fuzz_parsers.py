"""Property-based fuzzing of what parses user text and files: threat specs (every norm, the sensor
domain's ``spike:k,a`` and ``drift:b``), ``--option key=value`` pairs, run configs, evaluation state
files, saved adversarial sets, model files, checkpoints and the sensor ``.ts`` reader. Whatever the
input, each either returns a sound value or raises its one documented ``ValueError`` subclass —
never anything else (a ``TypeError``, ``IndexError`` or ``UnicodeDecodeError`` would reach the user
as a traceback).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metaat.domains.sensors  # noqa: F401  (registers spike and drift)
from metaat.attacks.transfer import load_adversarial
from metaat.cli import parse_options
from metaat.domains.sensors.tsformat import TsFormatError, parse_ts
from metaat.eval.state import read_state
from metaat.models import load_model
from metaat.threats import ThreatModel
from metaat.train.checkpoint import read_checkpoint
from metaat.train.config import TrainConfig

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KINDS = ["linf", "l2", "l1", "spike", "drift", "syn", "typo", "nbr", "emb", "l0", "", "LINF", "l2 "]
NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["", "-", ".", "1e", "0x10", "1_000", "nan", "inf", "½", "1,", ",1", "1,,2"]),
)
THREAT_TEXT = st.one_of(
    st.text(max_size=30),
    st.builds(lambda k, a: f"{k}:{a}", st.sampled_from(KINDS), NUMBER),
    st.builds(lambda k, a, b: f"{k}:{a},{b}", st.sampled_from(KINDS), NUMBER, NUMBER),
)


@FUZZ
@given(THREAT_TEXT)
def test_a_threat_spec_parses_to_a_threat_that_prints_back_or_is_a_value_error(text: str) -> None:
    try:
        threat = ThreatModel.parse(text)
    except ValueError as err:  # UnknownNameError is a ValueError too
        assert str(err).strip() and "\n" not in str(err).strip()
        return
    assert ThreatModel.parse(str(threat)) == threat
    if threat.is_lp:
        assert math.isfinite(threat.eps) and threat.eps > 0


@FUZZ
@given(st.builds(lambda k, a: f"spike:{k},{a}", st.integers(-3, 10**6), NUMBER) | st.builds("drift:{}".format, NUMBER))
def test_the_sensor_threats_take_only_a_positive_count_and_finite_positive_sizes(text: str) -> None:
    try:
        threat = ThreatModel.parse(text)
    except ValueError:
        return
    assert ThreatModel.parse(str(threat)) == threat
    assert all(math.isfinite(float(v)) for v in (threat.eps, *getattr(threat, "args", ())))


@FUZZ
@given(st.lists(st.text(max_size=20), max_size=4))
def test_option_pairs_parse_to_keyed_values_or_a_one_line_value_error(items: list[str]) -> None:
    try:
        out = parse_options(items)
    except ValueError as err:
        assert "\n" not in str(err)
        return
    assert all(isinstance(k, str) and k == k.strip() and k for k in out)
    assert not any(isinstance(v, dict | list) for v in out.values())


def _bytes_or_text() -> st.SearchStrategy[bytes]:
    token = st.sampled_from(list("abc:[]{}-,'\"\n #&*!|>%@`0.15") + ["epochs: ", "lr: ", "data: ", "\n  - "])
    yaml_like = st.lists(token, max_size=30).map("".join)
    return st.one_of(st.binary(max_size=200), yaml_like.map(lambda s: s.encode()))


@FUZZ
@given(_bytes_or_text())
def test_a_config_file_reads_as_a_config_or_a_value_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(raw)
    try:
        TrainConfig.from_yaml(path)
    except ValueError as err:
        assert str(path) in str(err) or "config" in str(err) or "key" in str(err)


def _json_like() -> st.SearchStrategy[bytes]:
    leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8))
    tree = st.recursive(
        leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3)
    )
    keyed = st.fixed_dictionaries(
        {"format": st.sampled_from(["metaat.eval-state", "x"]), "version": st.integers(0, 2)},
        optional={"clean": tree, "threats": tree, "sections": tree, "fingerprint": tree, "sha256": tree},
    )
    return st.one_of(
        st.binary(max_size=100), tree.map(lambda v: json.dumps(v).encode()), keyed.map(lambda v: json.dumps(v).encode())
    )


@FUZZ
@given(_json_like())
def test_an_evaluation_state_file_reads_or_is_a_value_error_naming_it(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(raw)
    try:
        read_state(path)
    except ValueError as err:
        assert str(path) in str(err)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["", "safetensors-header"]))
def test_saved_sets_and_model_files_of_any_bytes_are_refused_with_the_file_named(
    tmp_path: Path, raw: bytes, prefix: str
) -> None:
    if prefix:  # a plausible safetensors header length followed by junk
        raw = len(raw).to_bytes(8, "little") + raw
    path = tmp_path / "x.safetensors"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=r"x\.safetensors"):
        load_adversarial(path)
    (tmp_path / "x.json").write_text(json.dumps({"name": "mlp", "num_classes": 10, "in_channels": 1, "image_size": 12}))
    with pytest.raises(ValueError, match=r"x\.(safetensors|json)"):  # CheckpointError, naming the file
        load_model(path)


@FUZZ
@given(_json_like())
def test_a_checkpoint_with_any_state_json_is_a_value_error(tmp_path: Path, raw: bytes) -> None:
    folder = tmp_path / "checkpoint"
    folder.mkdir(exist_ok=True)
    (folder / "state.json").write_bytes(raw)
    with pytest.raises(ValueError):
        read_checkpoint(folder)


TS_LINES = st.sampled_from(
    [
        "@problemName x",
        "@timeStamps false",
        "@missing false",
        "@univariate true",
        "@univariate false",
        "@dimensions 2",
        "@equalLength true",
        "@seriesLength 3",
        "@classLabel true a b",
        "@classLabel false",
        "@data",
        "1,2,3:a",
        "1,2,3:4,5,6:b",
        "1,2:a",
        "?,2,3:a",
        "nan,inf,1:b",
        "1,2,3",
        ":a",
        "# comment",
        "",
    ]
)


@FUZZ
@given(st.lists(TS_LINES | st.text(max_size=20), max_size=12))
def test_the_sensor_ts_reader_parses_or_raises_its_format_error(lines: list[str]) -> None:
    try:
        parse_ts("\n".join(lines), "f.ts")
    except TsFormatError as err:
        assert "f.ts" in str(err)
