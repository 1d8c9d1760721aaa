"""`inag cost`: reading architectures (file, JSON lines, stdin, inline), the JSON record, the
budget exit code, and one-paragraph errors for bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from hwmodels import PlatformCoster
from inag.arch import ArchSpec
from inag.cli import main
from inag.platform import load_platform, resolve_platform_path
from inag.space import load_space

SPACE = load_space("mlp").bind((1,), 1)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def archs(n: int) -> list[ArchSpec]:
    return SPACE.sample_many(np.random.default_rng(3), n)


def test_json_lines_file_matches_the_batch_coster(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    two = archs(2)
    src = tmp_path / "bag.jsonl"
    src.write_text("\n".join(a.to_json() for a in two) + "\n\n")
    code, out, err = run(capsys, "cost", src, "--platform", "bitfusion", "--json")
    assert code == 0, err
    recs = [json.loads(line) for line in out.splitlines()]
    assert [r["arch_id"] for r in recs] == [a.arch_id for a in two]
    want = PlatformCoster(load_platform("bitfusion"), reference=lambda a: SPACE.largest()).cost(
        two
    )
    for i, r in enumerate(recs):
        for role, v in want.totals.items():
            assert r["totals"][role] == pytest.approx(float(v[i]), rel=1e-12)
        assert len(r["layers"]) == two[i].depth + 1  # hidden layers plus the head


def test_inline_json_and_stdin_give_the_same_record(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (a,) = archs(1)
    code, inline, err = run(capsys, "cost", a.to_json(), "--json")
    assert code == 0, err
    monkeypatch.setattr("sys.stdin", io.StringIO(a.to_json()))
    code, piped, err = run(capsys, "cost", "-", "--json")
    assert code == 0, err
    assert json.loads(inline) == json.loads(piped)


def test_a_failed_budget_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import yaml

    data = yaml.safe_load(resolve_platform_path("cortex_m").read_text())
    data["name"] = "tiny_flash"
    data["constraints"] = {**data.get("constraints", {}), "max_storage_bits": 64}
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(data, sort_keys=False))
    (a,) = archs(1)
    code, rec, _ = run(capsys, "cost", a.to_json(), "--platform", tiny, "--json")
    assert code == 0  # --json reports, the table run judges
    (check,) = [c for c in json.loads(rec)["checks"] if c["limit"] == "max_storage_bits"]
    assert check["max"] == 64 and not check["ok"]
    code, out, _ = run(capsys, "cost", a.to_json(), "--platform", tiny)
    assert code == 1 and a.summary() in out
    code, _, _ = run(capsys, "cost", a.to_json(), "--platform", "cortex_m")
    assert code == 0  # the same small net fits the real part


@pytest.mark.parametrize(
    "make, needles",
    [
        (
            lambda tmp: str(tmp / "missing.json"),
            ("no architecture file", "missing.json", "expected a JSON file, a JSON-lines file"),
        ),
        (
            lambda tmp: (tmp / "empty.json").write_text("\n \n") and str(tmp / "empty.json"),
            ("empty.json: no architecture found (empty input)",),
        ),
        (
            lambda tmp: (
                (tmp / "bad.jsonl").write_text(archs(1)[0].to_json() + '\n{"kind": "mlp"}\n')
                and str(tmp / "bad.jsonl")
            ),
            ("bad.jsonl, line 2: not an architecture",),
        ),
    ],
)
def test_bad_input_is_a_one_paragraph_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, make, needles
) -> None:
    code, _, err = run(capsys, "cost", make(tmp_path))
    assert code == 2
    text = err.strip()
    assert text.startswith("error: ") and "Traceback" not in err and "\n\n" not in text, err
    for n in needles:
        assert n in text, (n, err)


def test_export_reader_names_its_own_forms(tmp_path: Path) -> None:
    from export.errors import ExportError
    from inag.cli.export import read_arch

    with pytest.raises(ExportError, match="or SELECT.json#RANK"):
        read_arch(str(tmp_path / "nope.json"))
    two = tmp_path / "two.jsonl"
    two.write_text("\n".join(a.to_json() for a in archs(2)))
    with pytest.raises(ExportError, match="give exactly one architecture"):
        read_arch(str(two))


def test_graph_prints_the_lowered_graph_costed_per_node(
    capsys: pytest.CaptureFixture[str],
) -> None:
    arch = load_space("cnn").sample_many(np.random.default_rng(3), 1)[0]
    capsys.readouterr()
    assert main(["cost", arch.to_json(), "--platform", "cortex_m", "--graph"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "energy_j=" in ln]
    assert len(lines) == arch.depth + 1 and "L0.conv" in out and "head.dense" in out
    per_node = sum(float(ln.split("energy_j=")[1].split()[0]) for ln in lines)
    total = PlatformCoster(load_platform("cortex_m")).cost([arch]).totals["energy"][0]
    assert per_node == pytest.approx(total, rel=1e-3)  # printed to 4 significant digits
