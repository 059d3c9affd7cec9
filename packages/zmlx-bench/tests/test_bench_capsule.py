"""The capsule schema: round trip, evolution rules, one clear error per malformed file, committed capsules."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from zmlx.bench.capsule import SCHEMA_TAG, Capsule, CapsuleError, json_schema, load_capsule, save_capsule
from zmlx.bench.cli import main

REPO = Path(__file__).resolve().parents[3]


def test_round_trip_is_exact(tmp_path, capsule_factory):
    cap = capsule_factory()
    path = tmp_path / "c.json"
    save_capsule(path, cap)
    raw = json.loads(path.read_text())
    assert raw["schema"] == SCHEMA_TAG == "zmlx.capsule/1"
    assert load_capsule(path) == cap
    # Raw per-run lists are in the file itself, not only the medians.
    assert raw["results"][0]["baseline"]["decode_tps"] == cap.results[0].baseline.decode_tps
    assert len(raw["results"][0]["patched"]["runs"]) == 5
    assert not list(tmp_path.glob(".*.tmp"))


def test_newer_writer_fields_are_skipped_and_defaults_fill_in(tmp_path, capsule_factory):
    raw = json.loads(msgspec.json.encode(capsule_factory()))
    raw["field_from_the_future"] = {"x": 1}
    raw["results"][0]["another_new_field"] = [1, 2]
    del raw["kernels"], raw["note"]  # optional fields (added with defaults) may be absent
    del raw["environment"]["mlx_env"], raw["results"][0]["fidelity"]["baseline_runs"]
    p = tmp_path / "future.json"
    p.write_text(json.dumps(raw))
    cap = load_capsule(p)
    assert cap.kernels is None and cap.note == ""
    assert cap.environment.mlx_env == {} and cap.results[0].fidelity.baseline_runs == []


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.json"
    p.write_text(text)
    return p


def _mutated(capsule_factory, fn) -> str:
    raw = json.loads(msgspec.json.encode(capsule_factory()))
    fn(raw)
    return json.dumps(raw)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda tmp, cf: tmp / "missing.json", "no such file"),
        (lambda tmp, cf: tmp, "is a directory"),
        (lambda tmp, cf: _write(tmp, '{"schema": "zmlx.capsule/1", '), "not valid JSON"),
        (lambda tmp, cf: _write(tmp, "[1, 2]"), "top level is a JSON list"),
        (lambda tmp, cf: _write(tmp, '{"results": []}'), 'no "schema" field'),
        (lambda tmp, cf: _write(tmp, _mutated(cf, lambda r: r.update(schema="zmlx.capsule/2"))),
         'unsupported capsule schema version "zmlx.capsule/2"'),
        (lambda tmp, cf: _write(tmp, _mutated(cf, lambda r: r.update(schema="zmlx.validate/1"))),
         "not a zmlx capsule: schema is 'zmlx.validate/1'"),
        (lambda tmp, cf: _write(tmp, _mutated(cf, lambda r: r.pop("environment"))),
         "missing required field `environment`"),
        (lambda tmp, cf: _write(tmp, _mutated(cf, lambda r: r["results"][0]["summary"].pop("decode_speedup"))),
         "`$.results[0].summary`"),
        (lambda tmp, cf: _write(tmp, _mutated(
            cf, lambda r: r["results"][1]["baseline"].update(decode_tps="fast"))),
         "Expected `array`, got `str` - at `$.results[1].baseline.decode_tps`"),
    ],
    ids=["missing-file", "directory", "invalid-json", "not-object", "no-schema", "newer-version", "other-schema",
         "missing-field", "missing-nested-field", "wrong-type"],
)
def test_malformed_capsules_fail_with_one_clear_line_and_exit_2(tmp_path, capsule_factory, capsys, make, needle):
    path = make(tmp_path, capsule_factory)
    with pytest.raises(CapsuleError, match=None) as exc:
        load_capsule(path)
    assert needle in str(exc.value)
    assert str(path) in str(exc.value)
    for argv in (["report", str(path)], ["compare", str(path), str(path)], ["report", "--markdown", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and needle in err
        assert "Traceback" not in err


def test_schema_command_writes_the_published_schema(tmp_path, capsys):
    out = tmp_path / "docs" / "capsule.schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written == json.loads(msgspec.json.encode(json_schema()))
    assert written["$defs"]["Capsule"]["properties"]["schema"] == {"enum": [SCHEMA_TAG]}
    for name in ("Environment", "Methodology", "ModelResult", "Summary", "SideResult", "Fidelity", "RunStats"):
        assert name in written["$defs"]
    capsys.readouterr()
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == written


def test_committed_schema_is_current():
    """docs/capsule.schema.json, once committed, must be what ``zmlx-bench schema`` writes today."""
    committed = REPO / "docs" / "capsule.schema.json"
    if not committed.exists():
        pytest.skip("docs/capsule.schema.json not committed yet (zmlx-bench schema --out docs/capsule.schema.json)")
    assert json.loads(committed.read_text()) == json.loads(msgspec.json.encode(json_schema())), (
        "docs/capsule.schema.json is stale: run `uv run zmlx-bench schema --out docs/capsule.schema.json`")


def test_every_committed_capsule_parses():
    """A capsule under capsules/ that no longer parses through the schema fails CI."""
    committed = sorted((REPO / "capsules").glob("*.json"))
    problems = []
    for path in committed:
        try:
            cap = load_capsule(path)
        except CapsuleError as e:
            problems.append(str(e))
            continue
        assert isinstance(cap, Capsule)
        for r in cap.results:
            # Raw runs must be present and consistent with what the summary was computed from.
            assert len(r.baseline.decode_tps) == len(r.patched.decode_tps) >= 1, path
            lo, hi = r.summary.decode_speedup_ci95
            assert lo <= hi, path
    assert not problems, "\n".join(problems)
