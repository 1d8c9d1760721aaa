"""`inag train`, `inag generate`, `inag evaluate` and `inag select` end to end, in process through
``inag.cli.main`` (the same entry point as the console script), on the tiny real dataset."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from nagan_fixtures import (  # noqa: F401 - pytest fixtures
    fixture_one_thread,
    fixture_tiny_dataset,
    fixture_tiny_model,
    fixture_tiny_model_path,
)

from inag.arch import ArchSpec
from inag.cli import main
from inag.nagan import Nagan

pytestmark = pytest.mark.usefixtures("one_thread")

PNG = b"\x89PNG\r\n\x1a\n"
CORTEX_M = Path(__file__).resolve().parents[1] / "inag" / "platforms" / "cortex_m.yaml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_paragraph_error(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    text = err.strip()
    assert text.startswith("error: "), err
    assert "\n\n" not in text, err
    for n in needles:
        assert n in text, (n, err)


def platform_yaml(tmp_path: Path, name: str, **constraints: float) -> Path:
    data = yaml.safe_load(CORTEX_M.read_text())
    data["name"] = name
    data["constraints"] = {**data.get("constraints", {}), **constraints}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---------------------------------------------------------------------------- train
def test_train_writes_an_artifact_and_prints_r2(
    capsys: pytest.CaptureFixture[str],
    tiny_dataset,
    tmp_path: Path,
) -> None:
    out = tmp_path / "m" / "cli.nagan"
    code, stdout, _ = run(
        capsys,
        "train",
        "--db",
        tiny_dataset.db,
        "--out",
        out,
        "--gan-steps",
        "20",
        "--enc-epochs",
        "3",
        "--seed",
        "1",
    )
    assert code == 0
    m = re.search(r"encoder: held-out R2 (-?\d+\.\d+), Kendall tau (-?\d+\.\d+)", stdout)
    assert m, stdout
    assert f"wrote {out}" in stdout
    model = Nagan.load(out, expect_space=tiny_dataset.space)
    assert float(m.group(1)) == pytest.approx(model.meta["encoder"]["r2"], abs=1e-4)
    assert model.config.gan_steps == 20 and model.config.enc_epochs == 3
    assert model.config.seed == 1
    assert model.meta["dataset"] == str(tiny_dataset.db)
    assert model.meta["dataset_size"] == len(tiny_dataset.archs)
    assert model.meta["trainer"] == tiny_dataset.meta["trainer"]
    assert model.task == "data_a" and model.task_kind == "regression"
    assert model.p_min == pytest.approx(tiny_dataset.perf.min())


def test_train_bar_and_report_name_the_same_r2(
    capsys: pytest.CaptureFixture[str], tiny_dataset, tmp_path: Path
) -> None:
    """The progress bar's last state and the final line speak of the same held-out split: the
    bar's best_held_out_r2 is the R2 reported (the epoch kept), and the report also gives the
    last epoch's held-out R2, which is what the bar's held_out_r2 ends on."""
    argv = ["--out", tmp_path / "m.nagan", "--gan-steps", "5", "--enc-epochs", "12"]
    code, stdout, stderr = run(capsys, "train", "--db", tiny_dataset.db, *argv)
    assert code == 0, stderr
    m = re.search(
        r"held-out R2 (-?\d+\.\d+).*epoch (\d+)/12, the bar's best_held_out_r2; the last "
        r"epoch's was (-?\d+\.\d+)\)",
        stdout,
    )
    assert m, stdout
    bar = re.findall(r"held_out_r2=(-?\d+\.\d+) best_held_out_r2=(-?\d+\.\d+)", stderr)
    assert bar, stderr
    last, best = bar[-1]
    assert best == m.group(1) and last == m.group(3)


def test_train_encoder_report_is_the_best_epoch_on_the_held_out_split(tiny_dataset) -> None:
    from inag.nagan import Encoder, NaganConfig, train_encoder

    cfg = NaganConfig(seed=0, enc_epochs=10)
    x = tiny_dataset.space.encode_many(tiny_dataset.archs).astype(np.float32)
    p = tiny_dataset.perf
    c = ((p - p.min()) / (p.max() - p.min())).astype(np.float32)
    seen: list[dict[str, float]] = []
    rep = train_encoder(Encoder(x.shape[1], cfg.enc_hidden), x, c, cfg, tiny_dataset.space,
                        lambda stage, i, n, stats: seen.append(stats))  # fmt: skip
    r2s = [s["held_out_r2"] for s in seen]
    assert rep.r2 == pytest.approx(max(r2s), abs=1e-6)
    assert rep.r2 == pytest.approx(seen[-1]["best_held_out_r2"], abs=1e-6)
    assert rep.last_r2 == r2s[-1] and r2s[rep.best_epoch - 1] == max(r2s)
    assert rep.epochs == 10


def test_train_on_a_missing_dataset_is_a_clean_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(
        capsys, "train", "--db", tmp_path / "none.sqlite", "--out", tmp_path / "x.nagan"
    )
    assert code == 2
    assert "Traceback" not in err and err.startswith("error: ")
    assert not (tmp_path / "x.nagan").exists()


# ---------------------------------------------------------------------------- generate
def _lines(stdout: str) -> list[dict]:
    return [json.loads(ln) for ln in stdout.splitlines() if ln.strip()]


def test_generate_prints_json_lines_with_dist_f(
    capsys: pytest.CaptureFixture[str], tiny_model: Nagan, tiny_model_path: Path
) -> None:
    code, out, err = run(
        capsys, "generate", "--model", tiny_model_path, "--condition", "0.5", "-n", "50"
    )
    assert code == 0
    recs = _lines(out)
    assert len(recs) == 50
    for r in recs:
        arch = ArchSpec.from_dict(r["arch"])
        assert arch.arch_id == r["arch_id"]
        assert tiny_model.space.contains(arch)
        assert r["condition"] == 0.5
        assert r["dist_f"] == pytest.approx(abs(r["estimate_c"] - 0.5))
        assert r["estimate_perf"] == pytest.approx(
            tiny_model.p_min + r["estimate_c"] * tiny_model.p_range
        )
    # the same bag as the library's
    assert [r["arch_id"] for r in recs] == [a.arch_id for a in tiny_model.generate(0.5, 50)]
    uniq = len({r["arch_id"] for r in recs})
    assert f"50 generated, {uniq} unique" in err


def test_generate_perf_is_normalized(
    capsys: pytest.CaptureFixture[str], tiny_model: Nagan, tiny_model_path: Path
) -> None:
    raw = tiny_model.p_min + 0.75 * tiny_model.p_range
    code, out, _ = run(capsys, "generate", "--model", tiny_model_path, "--perf", raw, "-n", "20")
    assert code == 0
    recs = _lines(out)
    assert len(recs) == 20
    assert recs[0]["condition"] == pytest.approx(0.75)
    code, out2, _ = run(
        capsys, "generate", "--model", tiny_model_path, "--condition", "0.75", "-n", "20"
    )
    assert [r["arch_id"] for r in _lines(out2)] == [r["arch_id"] for r in recs]


def test_generate_refine_zero_is_the_papers_generator(
    capsys: pytest.CaptureFixture[str], tiny_model_path: Path
) -> None:
    """The default bag is refined (closer to c by the encoder); `--refine 0` is the paper's."""
    args = ("generate", "--model", tiny_model_path, "--condition", "0.5", "-n", "200")
    bags = {}
    for refine in ("0", None):
        code, out, err = run(capsys, *args, *(("--refine", refine) if refine else ()))
        assert code == 0, err
        bags[refine] = _lines(out)
    mean = {k: sum(r["dist_f"] for r in v) / len(v) for k, v in bags.items()}
    assert mean[None] < mean["0"]


@pytest.mark.parametrize(
    "command, args",
    [("generate", ("--condition", "0.5", "--refine", "-1")), ("select", ("--refine", "x"))],
)
def test_bad_refine_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tiny_model_path: Path, command: str, args: tuple
) -> None:
    code, out, err = run(capsys, command, "--model", tiny_model_path, "-n", "5", *args)
    assert code == 2 and out == ""
    assert "Traceback" not in err and "Invalid value for '--refine'" in err


def test_a_weak_encoder_generates_plainly_and_says_so(
    capsys: pytest.CaptureFixture[str], tiny_model: Nagan, tmp_path: Path
) -> None:
    from dataclasses import replace

    meta = {**tiny_model.meta, "encoder": {**tiny_model.meta["encoder"], "r2": 0.5}}
    path = replace(tiny_model, meta=meta).save(tmp_path / "weak.nagan")
    args = ("generate", "--model", path, "--condition", "0.5", "-n", "50")
    code, out, err = run(capsys, *args)
    assert code == 0 and "the paper's plain generator" in err and "R2 is 0.50" in err
    code, out0, _ = run(capsys, *args, "--refine", "0")
    assert out == out0
    code, _, err = run(capsys, *args, "--refine", "50")
    assert code == 0 and "plain generator" not in err


def test_generate_to_a_file(
    capsys: pytest.CaptureFixture[str], tiny_model_path: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "bags" / "bag.jsonl"
    code, out, _ = run(
        capsys,
        "generate",
        "--model",
        tiny_model_path,
        "--condition",
        "0.9",
        "-n",
        "30",
        "--out",
        dest,
        "--seed",
        "4",
    )
    assert code == 0 and out == ""
    assert len(_lines(dest.read_text())) == 30


@pytest.mark.parametrize(
    "command, args, needle",
    [
        ("generate", (), "give exactly one of --condition"),
        ("generate", ("--condition", "0.5", "--perf", "0.3"), "give exactly one of --condition"),
        ("generate", ("--condition", "7"), "far outside the model's range"),
        ("select", ("--perf", "0.3", "--condition", "0.5"), "give at most one of --perf"),
        ("select", ("--rank-by", "size"), "unknown ranking 'size'"),
        ("select", ("--platform", "no_such_platform"), "no platform 'no_such_platform'"),
    ],
)
def test_generate_and_select_argument_errors(
    capsys: pytest.CaptureFixture[str],
    tiny_model_path: Path,
    command: str,
    args: tuple,
    needle: str,
) -> None:
    code, out, err = run(capsys, command, "--model", tiny_model_path, "-n", "5", *args)
    assert code == 2
    assert out == ""
    assert_one_paragraph_error(err, needle)


def test_generate_with_a_bad_artifact(
    capsys: pytest.CaptureFixture[str], tiny_model_path: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.nagan"
    bad.write_bytes(tiny_model_path.read_bytes()[:-100])
    code, _, err = run(capsys, "generate", "--model", bad, "--condition", "0.5")
    assert code == 2
    assert_one_paragraph_error(err, "not a readable NAGAN artifact")
    code, _, err = run(capsys, "generate", "--model", tmp_path / "no.nagan", "--condition", "0.5")
    assert code == 2
    assert_one_paragraph_error(err, "no NAGAN artifact at")


# ---------------------------------------------------------------------------- evaluate
def test_evaluate_writes_report(
    capsys: pytest.CaptureFixture[str], tiny_model_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    code, stdout, _ = run(
        capsys,
        "evaluate",
        "--model",
        tiny_model_path,
        "--real",
        "1",
        "-n",
        "50",
        "--noise",
        "2",
        "--out",
        out,
    )
    assert code == 0, stdout
    for method in ("nagan", "rejection", "dataset_nearest"):
        m = re.search(
            rf"^{method}\s+mDist_f\s+(\S+) % \(trained\s+(\S+) %\)\s+mDist_r\s+(\S+) %",
            stdout,
            re.M,
        )
        assert m, stdout
        assert all(np.isfinite(float(g)) for g in m.groups())
    assert "noise floor" in stdout
    assert (out / "report.md").is_file()
    assert (out / "achieved_vs_requested.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--threshold", "nan"), ("--threshold", "non-negative", "found nan")),
        (("--threshold", "-1"), ("--threshold", "non-negative", "found -1")),
        (("--noise", "-1"), ("--noise", "found -1")),
        (("--noise", "1000000000000"), ("--noise", "at most the 2000 rows", "1000000000000")),
        (("--real", "3"), ("--real", "bag size -n 2", "found 3")),
        (("--real", "1000000000000"), ("--real", "at most", "found 1000000000000")),
        (("--real", "3000", "-n", "5000"), ("--real", "at most the 2000 rows", "found 3000")),
        (("--train-sizes", "1"), ("--train-sizes", "between 20", "2000 rows", "found 1")),
        (("--train-sizes", "20,1000000000000"), ("--train-sizes", "2000 rows", "1000000000000")),
    ],
)
def test_evaluate_refuses_bad_options_before_training(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: tuple, needles: tuple
) -> None:
    base = ("--model", "data_a", "--real", "1", "-n", "2", "--noise", "0", "--refine", "0")
    code, out, err = run(capsys, "evaluate", *base, "--out", tmp_path / "r", *args)
    assert code == 2
    assert out == ""
    assert_one_paragraph_error(err, *needles)
    assert not (tmp_path / "r" / "report.md").exists()


def test_evaluate_train_sizes_minimum_is_fit_nagans() -> None:
    from inag.nagan import MIN_TRAIN_ROWS, ModelError, fit_nagan, load_model

    m = load_model("data_a")
    archs = m.space.sample_many(np.random.default_rng(0), MIN_TRAIN_ROWS - 1)
    perf = np.linspace(0, 1, len(archs))
    with pytest.raises(ModelError, match=f"at least {MIN_TRAIN_ROWS} "):
        fit_nagan(m.space, archs, perf, m.task, m.task_kind, m.config)


# ---------------------------------------------------------------------------- select
def test_select_json_and_plot(
    capsys: pytest.CaptureFixture[str], tiny_model: Nagan, tiny_model_path: Path, tmp_path: Path
) -> None:
    js, png = tmp_path / "out" / "sel.json", tmp_path / "out" / "pareto.png"
    code, out, err = run(
        capsys,
        "select",
        "--model",
        tiny_model_path,
        "--platform",
        CORTEX_M,
        "--condition",
        "0.7",
        "-n",
        "1000",
        "--top",
        "3",
        "--max-storage",
        "0.21",
        "--max-energy",
        "0.21",
        "--json",
        js,
        "--plot",
        png,
    )
    assert code == 0, err
    assert "cortex_m funnel: generated" in out
    assert "confidence" in out and "storage" in out and "memory fit" in out
    data = json.loads(js.read_text())
    assert data["task"] == "data_a" and data["condition"] == 0.7 and data["bag"] == 1000
    sel = data["selected"]
    assert 1 <= len(sel) <= 3
    assert [r["rank"] for r in sel] == list(range(1, len(sel) + 1))
    for r in sel:
        arch = ArchSpec.from_dict(r["arch"])
        assert arch.arch_id == r["arch_id"]
        assert tiny_model.space.contains(arch)
        assert r["storage_norm"] <= 0.21 and r["energy_norm"] <= 0.21
        assert r["dist_f"] <= 0.05
    (plat,) = data["platforms"]
    assert plat["platform"] == "cortex_m" and plat["selected"] == sel
    assert [f["stage"] for f in plat["funnel"]][:2] == ["confidence", "bits"]
    assert png.read_bytes()[:8] == PNG


def test_select_multi_platform_and_reconditioning(
    capsys: pytest.CaptureFixture[str], tiny_model: Nagan, tiny_model_path: Path, tmp_path: Path
) -> None:
    from inag.platform import load_platform
    from inag.select import select

    loose = platform_yaml(tmp_path, "loose_m")
    (alone,), _ = select(tiny_model, [load_platform(loose)], 0.9, n=2000)
    # half the storage of the loose platform's best pick: the first bag cannot meet it
    limit = float(alone.bag.costs.normalized("storage")[alone.chosen[0]]) / 2
    tight = platform_yaml(tmp_path, "tight_m", max_storage_norm=limit)
    js = tmp_path / "multi.json"
    code, out, err = run(
        capsys,
        "select",
        "--model",
        tiny_model_path,
        "-p",
        loose,
        "-p",
        tight,
        "--condition",
        "0.9",
        "-n",
        "2000",
        "--json",
        js,
    )
    assert code == 0, err
    data = json.loads(js.read_text())
    lo, ti = data["platforms"]
    assert (lo["platform"], ti["platform"]) == ("loose_m", "tight_m")
    assert lo["selected"][0]["arch_id"] != ti["selected"][0]["arch_id"]
    assert all(r["storage_norm"] <= limit for r in ti["selected"])
    assert len(lo["tries"]) == 1
    assert len(ti["tries"]) > 1 and ti["tries"][-1]["survivors"] > 0
    assert all(t["survivors"] == 0 for t in ti["tries"][:-1])
    assert "tight_m: re-conditioned" in out
    assert data["selected"] == lo["selected"]


def test_select_is_deterministic(
    capsys: pytest.CaptureFixture[str], tiny_model_path: Path, tmp_path: Path
) -> None:
    outs = []
    for i in range(2):
        js = tmp_path / f"s{i}.json"
        code, _, _ = run(
            capsys, "select", "--model", tiny_model_path, "--condition", "0.6", "-n", "800",
            "--rank-by", "storage", "--top", "10", "--json", js, "--seed", "2",
        )  # fmt: skip
        assert code == 0
        data = json.loads(js.read_text())
        outs.append([(r["arch_id"], r["storage_bits"]) for r in data["selected"]])
    assert outs[0] == outs[1]
    storage = [s for _, s in outs[0]]
    assert storage == sorted(storage)


def test_select_nothing_fits_is_a_one_paragraph_error(
    capsys: pytest.CaptureFixture[str], tiny_model_path: Path, tmp_path: Path
) -> None:
    imp = platform_yaml(tmp_path, "impossible", max_storage_bits=8.0)
    js = tmp_path / "never.json"
    code, out, err = run(
        capsys,
        "select",
        "--model",
        tiny_model_path,
        "--platform",
        imp,
        "--condition",
        "0.5",
        "-n",
        "300",
        "--threshold",
        "1.0",
        "--json",
        js,
    )
    assert code == 2
    assert_one_paragraph_error(
        err,
        "nothing fits impossible",
        "re-conditioning from c=0.50 down to c=0.05",
        "stage 'storage'",
        "max_storage_bits",
        "% over",
    )
    assert len(err.strip().splitlines()) == 1
    assert not js.exists()


def test_select_one_impossible_platform_does_not_hide_the_others(
    capsys: pytest.CaptureFixture[str], tiny_model_path: Path, tmp_path: Path
) -> None:
    imp = platform_yaml(tmp_path, "impossible", max_storage_bits=8.0)
    ok = platform_yaml(tmp_path, "loose_m")
    js = tmp_path / "partial.json"
    code, out, err = run(
        capsys, "select", "--model", tiny_model_path, "-p", imp, "-p", ok, "--condition",
        "0.5", "-n", "300", "--threshold", "1.0", "--floor", "0.4", "--json", js,
    )  # fmt: skip
    assert code == 2
    assert_one_paragraph_error(err, "nothing fits impossible", "other platforms")
    data = json.loads(js.read_text())
    bad, good = data["platforms"]
    assert bad["selected"] == [] and "stage 'storage'" in bad["failure"]
    assert good["selected"] and "failure" not in good
    assert data["selected"] == good["selected"]
    assert "loose_m" in out and "impossible: nothing fits" in out


def test_select_with_an_artifact_from_a_tampered_file(
    capsys: pytest.CaptureFixture[str], tiny_model_path: Path, tmp_path: Path
) -> None:
    data = bytearray(tiny_model_path.read_bytes())
    data[-10] ^= 0xFF
    bad = tmp_path / "tampered.nagan"
    bad.write_bytes(bytes(data))
    code, _, err = run(capsys, "select", "--model", bad, "-n", "100")
    assert code == 2
    assert_one_paragraph_error(err, "content hash")


def test_the_package_ships_data_a_and_digits_generators() -> None:
    from inag.cli.selection import default_model_path
    from inag.nagan import bundled_models, load_model

    assert set(bundled_models()) >= {"data_a", "digits"}
    assert default_model_path() == bundled_models()["data_a"]
    assert Nagan.load(bundled_models()["digits"]).task == "digits"
    assert load_model("digits").meta == Nagan.load(bundled_models()["digits"]).meta


@pytest.mark.parametrize("name", [None, "digits"])
def test_select_with_a_bundled_generator(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str | None
) -> None:
    """The README's main command (no --model: the shipped data_a generator), and a bundled
    generator picked by name."""
    js = tmp_path / "bundled.json"
    extra = () if name is None else ("--model", name)
    code, out, err = run(
        capsys, "select", "--platform", "cortex_m", "-n", "1000", "--json", js, *extra
    )
    assert code == 0, err
    data = json.loads(js.read_text())
    assert data["task"] == (name or "data_a") and data["selected"]
    for r in data["selected"]:
        assert ArchSpec.from_dict(r["arch"]).arch_id == r["arch_id"]


def test_an_unknown_bundled_name_lists_the_bundled_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, "generate", "--model", "cifar_big", "--condition", "0.5")
    assert code == 2
    assert_one_paragraph_error(err, "no NAGAN artifact at cifar_big", "bundled: data_a, digits")


def test_cli_ranking_defaults_are_the_libraries() -> None:
    """The CLI spells the default ranking without importing torch; it must be the library's."""
    import inspect

    from inag.cli.selection import select as select_cmd
    from inag.cli.sweep import sweep as sweep_cmd
    from inag.select import DEFAULT_RANK, RANK_KEYS
    from inag.select.sweep import run_sweep

    for fn in (select_cmd, sweep_cmd, run_sweep):
        assert inspect.signature(fn).parameters["rank_by"].default == DEFAULT_RANK in RANK_KEYS
