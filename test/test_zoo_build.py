"""The zoo pipeline end to end on generated scenes: build, skip when done, resume after kill -9,
status of a partial build, stale inputs, bad configs, publish."""

import json
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from conftest import kill_when_logged

from hmseg_core.checkpoint import load_checkpoint
from hmseg_core.cli import main as cli_main
from hmseg_core.config import ConfigError
from hmseg_core.pipeline.build import BuildError, ZooBuild
from hmseg_core.pipeline.config import load_zoo_config, runs_dir
from hmseg_core.pipeline.markers import marker_path
from hmseg_core.runtime.zoo import ModelZoo

ROOT = Path(__file__).resolve().parents[1]
TRAIN_STEPS = 2 * 4  # 2 epochs of 8 generated images in batches of 2

TINY = {
    "name": "tiny",
    "lut": {"base": "mrms_tiny", "classes": 11, "input_size": [48, 64], "threads": 1, "warmup": 0, "repeats": 1,
            "passes": 1, "calibrate": 0},
    "search": {"config": str(ROOT / "config" / "search_camvid.yaml"), "budgets": [0.8, 1.2],
               "overrides": {"crop": [48, 64], "scale": [0.75, 1.25], "synthetic_train": 8, "batch_size": 2, "epochs": 1,
                             "warmup_epochs": 0, "threads": 1, "checkpoint_every": 1, "num_workers": 0}},
    "train": {"config": str(ROOT / "config" / "train_camvid.yaml"), "baselines": ["mrms", "mrms_tiny"], "teacher": "mrms",
              "overrides": {"crop": [48, 64], "scale": [0.75, 1.25], "batch_size": 2, "epochs": 2, "lr": 0.02, "warmup_steps": 0,
                            "synthetic_train": 8, "synthetic_val": 2, "num_workers": 0, "threads": 1, "eval_every": 1,
                            "checkpoint_every": 1, "distill_weight": 0.5}},
    "export": {"input_size": [48, 64], "onnx": False},
    "measure": {"backends": ["torch"], "runs": 3, "warmup": 1, "block": 3, "threads": 1},
}


def _config(tmp: Path, **changes) -> Path:
    doc = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        section, _, name = key.partition(".")
        doc[section][name] = value
    path = tmp / "zoo_tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _build(config: Path, runs: Path, lines: list) -> ZooBuild:
    return ZooBuild(load_zoo_config(config), runs, log=lines.append)


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A whole tiny build (``done``), and a copy of it taken after its search stage (``after_search``)."""
    tmp = tmp_path_factory.mktemp("zoo")
    config = _config(tmp)
    done, lines = tmp / "done", []
    _build(config, done, lines).build(("lut", "search"))
    after_search = tmp / "after_search"
    shutil.copytree(done, after_search)
    _build(config, done, lines).build()
    return config, done, after_search, lines


def test_build_end_to_end_writes_a_loadable_zoo(built):
    config, runs, _, lines = built
    zoo = ModelZoo.load(runs / "zoo.yaml")
    names = [v.name for v in zoo.variants]
    assert names == ["mrms", "mrms_tiny", "search_0.8x", "search_1.2x"]  # the teacher trains first
    for v in zoo.variants:
        assert 0 <= v.miou <= 1 and v.checkpoint == runs / "packages" / v.name
        assert v.extra["params"] > 0 and v.extra["macs"] > 0 and v.extra["latency_ms"] > 0 and "torch" in v.extra["latency"]
        assert "=" in v.extra["genotype"]
        assert v.extra["distilled_from"] == (None if v.name == "mrms" else "mrms")
    assert zoo.class_names()[0] == "sky"
    for b in ("0.8x", "1.2x"):
        genotype = (runs / "search" / b / "genotype_budget.txt").read_text().strip()
        assert zoo.get(f"search_{b}").extra["genotype"] == genotype
    for v in names:
        folder = runs / "train" / v
        assert all((folder / f).is_file() for f in ("last.pt", "best.pt", "log.jsonl", "config.yaml", "curves.png", "val.json"))
    assert (runs / "pareto.png").is_file() and (runs / "lut" / "table.json").is_file()
    # distilled students log the KD term and record the teacher they learnt from
    student = load_checkpoint(runs / "train" / "mrms_tiny" / "last.pt")["config"]
    assert student["teacher_digest"] and Path(student["teacher"]) == (runs / "train" / "mrms" / "best.pt").resolve()
    assert all("kd" in json.loads(l) for l in (runs / "train" / "mrms_tiny" / "log.jsonl").read_text().splitlines() if '"loss"' in l)
    assert any(l.startswith("run train search_0.8x") for l in lines)


def test_a_finished_build_skips_every_stage(built, capsys):
    config, runs, _, _ = built
    markers = sorted((runs / "stages").glob("*.json"))
    assert len(markers) == 1 + 2 + 4 * 3 + 2
    before = {m: m.stat().st_mtime_ns for m in markers}
    rc = cli_main(["zoo", "build", "--config", str(config), "--runs", str(runs)])
    assert rc == 0
    err = capsys.readouterr().err
    assert err.count("zoo: skip ") == len(markers) and "zoo: run " not in err
    assert {m: m.stat().st_mtime_ns for m in markers} == before


def test_killed_build_resumes_and_equals_the_uninterrupted_one(built, tmp_path):
    config, reference, runs, _ = built
    args = [sys.executable, "-m", "hmseg_core.cli", "zoo", "build", "--config", str(config), "--runs", str(runs)]
    log = runs / "train" / "mrms_tiny" / "log.jsonl"  # the second variant: the kill lands after a finished stage
    kill_when_logged(args, log, 3, tmp_path / "build.err")
    killed_at = load_checkpoint(runs / "train" / "mrms_tiny" / "last.pt")["step"]
    assert 0 < killed_at < TRAIN_STEPS and not marker_path(runs, "train", "mrms_tiny").exists()

    # status of the partial build: what is done, what runs, how far
    rc = cli_main(["zoo", "status", "--config", str(config), "--runs", str(runs), "--json", "--plots", str(tmp_path / "plots")])
    assert rc == 0 and sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["mrms_curves.png", "mrms_tiny_curves.png"]
    partial = ZooBuild(load_zoo_config(config), runs, log=lambda s: None)
    from hmseg_core.pipeline.status import format_status, status

    rows = {(r["stage"], r["item"]): r for r in status(partial)}
    assert rows[("lut", "")]["state"] == "done" and rows[("search", "0.8x")]["state"] == "done"
    assert rows[("train", "mrms")]["state"] == "done" and rows[("train", "mrms")]["epochs_done"] == 2
    tiny = rows[("train", "mrms_tiny")]
    assert tiny["state"] == "partial" and tiny["step"] == killed_at and tiny["total_steps"] == TRAIN_STEPS
    assert tiny["epochs_total"] == 2 and tiny["epochs_done"] == killed_at / 4 and tiny["s_per_step"] > 0 and tiny["eta_s"] > 0
    assert rows[("train", "search_0.8x")]["state"] == "ready" and rows[("eval", "mrms_tiny")]["state"] == "waiting"
    assert rows[("index", "")]["state"] == "waiting"
    table = format_status(partial, list(rows.values()))
    assert "| train | mrms_tiny | partial |" in table and f"({killed_at}/{TRAIN_STEPS} steps)" in table

    lines = []
    _build(config, runs, lines).build()
    assert any(l.startswith("resume train mrms_tiny") for l in lines) and any(l.startswith("skip train mrms") for l in lines)
    ref, res = ModelZoo.load(reference / "zoo.yaml"), ModelZoo.load(runs / "zoo.yaml")
    for a, b in zip(ref.variants, res.variants):
        assert (a.name, a.miou, a.extra["genotype"], a.extra["params"]) == (b.name, b.miou, b.extra["genotype"], b.extra["params"])
        wa, wb = _weights(reference / "train" / a.name / "last.pt"), _weights(runs / "train" / b.name / "last.pt")
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{a.name} differs after the resumed build"
    steps = [json.loads(l)["step"] for l in log.read_text().splitlines() if '"loss"' in l]
    assert steps == list(range(1, TRAIN_STEPS + 1))


def test_changed_inputs_are_reported_not_reused(built, tmp_path, capsys):
    config, reference, _, _ = built
    runs = tmp_path / "runs"
    shutil.copytree(reference, runs)
    edited = _config(tmp_path, **{"train.overrides": {**TINY["train"]["overrides"], "epochs": 3}})
    lines = []
    with pytest.raises(BuildError, match=r"train mrms: inputs changed: train\.epochs \(2 -> 3\).*--redo train:mrms"):
        _build(edited, runs, lines).build()
    from hmseg_core.pipeline.status import status

    row = next(r for r in status(_build(edited, runs, [])) if (r["stage"], r["item"]) == ("train", "mrms"))
    assert row["state"] == "stale" and "eta_s" not in row, "a stale step does not run: no ETA"
    rc = cli_main(["zoo", "build", "--config", str(edited), "--runs", str(runs), "--dry-run"])
    assert rc == 0 and "stop train mrms: inputs changed: train.epochs (2 -> 3)" in capsys.readouterr().err
    # a cheap stage whose input changed runs again on its own
    marker = marker_path(runs, "measure")
    doc = json.loads(marker.read_text())
    doc["inputs"]["measure"]["runs"] = 99
    marker.write_text(json.dumps(doc))
    lines = []
    _build(config, runs, lines).build(("measure",))
    assert lines[0] == "redo measure: inputs changed: measure.runs (99 -> 3)"


def test_only_networks_smaller_than_the_teacher_distil(built, tmp_path):
    """teacher mrms: every other variant is smaller and distils; teacher mrms_tiny: mrms, the larger, does not,
    and a searched variant distils exactly when it has fewer MACs than mrms_tiny."""
    config, _, after_search, _ = built
    from hmseg_core.profile import count_macs
    from hmseg_core.registry import create_model

    build = _build(config, after_search, [])
    assert [build.teacher_of(v) for v in ("mrms", "mrms_tiny", "search_0.8x", "search_1.2x")] == ["", "mrms", "mrms", "mrms"]
    tiny = _build(_config(tmp_path, **{"train.teacher": "mrms_tiny"}), after_search, [])
    assert tiny.teacher_of("mrms") == "" and tiny.teacher_of("mrms_tiny") == ""
    macs = {v: count_macs(create_model(tiny.model(v), 11, boosting=False), (48, 64)) for v in tiny.cfg.variants()}
    for v in ("search_0.8x", "search_1.2x"):
        assert tiny.teacher_of(v) == ("mrms_tiny" if macs[v] < macs["mrms_tiny"] else "")
    assert macs["mrms"] > macs["mrms_tiny"]


def test_a_recipe_key_added_later_keeps_finished_steps_done(built, tmp_path):
    """Markers written before a recipe key existed: the key at its default changes nothing; set, it does."""
    config, reference, _, _ = built
    runs = tmp_path / "runs"
    shutil.copytree(reference, runs)
    for stage, item, key in (("train", "mrms_tiny", "distill_temperature"), ("search", "0.8x", "arch_weight_decay")):
        marker = marker_path(runs, stage, item)
        doc = json.loads(marker.read_text())
        doc["inputs"][stage].pop(key)  # as an older hmseg wrote it
        marker.write_text(json.dumps(doc))
    assert {s.state for s in _build(config, runs, []).build(dry_run=True)} == {"done"}
    doc = json.loads(marker_path(runs, "train", "mrms_tiny").read_text())
    doc["inputs"]["train"]["distill_temperature"] = 3.0
    marker_path(runs, "train", "mrms_tiny").write_text(json.dumps(doc))
    state = _build(config, runs, []).state("train", "mrms_tiny")
    assert state.state == "stale" and state.detail == "inputs changed: train.distill_temperature (3.0 -> 1.0)"


def test_threads_and_loader_workers_leave_every_step_done(built, tmp_path):
    """They change the speed, not what is learned: a machine with more cores runs the same build."""
    config, reference, _, _ = built
    runs = tmp_path / "runs"
    shutil.copytree(reference, runs)
    faster = {"threads": 2, "num_workers": 1}
    edited = _config(tmp_path, **{"train.overrides": {**TINY["train"]["overrides"], **faster},
                                  "search.overrides": {**TINY["search"]["overrides"], **faster}})
    assert {s.state for s in _build(edited, runs, []).build(dry_run=True)} == {"done"}
    assert load_zoo_config(edited).train_recipe().threads == 2  # and the runs it starts use them


def test_bad_config_is_one_error_line_naming_file_and_key(tmp_path, capsys):
    runs = tmp_path / "runs"
    cases = {
        "train.overrides": ({**TINY["train"]["overrides"], "epochz": 1}, "train.overrides: unknown key 'epochz'"),
        "search.budgets": ([], "search.budgets: must be one or more multiples > 0"),
        "measure.backends": (["onnxruntime"], "measure.backends: onnxruntime runs the ONNX export"),
        "train.teacher": ("resnet", "train.teacher: must be empty or one of train.baselines"),
        "lut.threads": ("two", "lut.threads: 'two' is not a valid int"),
        "lut.treads": (2, "lut.treads: unknown key"),
    }
    for key, (value, message) in cases.items():
        config = _config(tmp_path, **{key: value})
        assert cli_main(["zoo", "build", "--config", str(config), "--runs", str(runs)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"hmseg-core zoo: error: {config}: {message}"), err
        assert not runs.exists()
    with pytest.raises(ConfigError, match="zoo config file not found"):
        load_zoo_config(tmp_path / "missing.yaml")


def test_runs_folder_flag_then_environment_then_cache(tmp_path, monkeypatch):
    cfg = load_zoo_config(_config(tmp_path))
    monkeypatch.setenv("HMSEG_RUNS", str(tmp_path / "env"))
    assert runs_dir(cfg, str(tmp_path / "flag")) == tmp_path / "flag" and runs_dir(cfg) == tmp_path / "env"
    monkeypatch.delenv("HMSEG_RUNS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert runs_dir(cfg) == tmp_path / "cache" / "hmseg" / "zoo" / "tiny"


def test_shipped_zoo_config_adopts_the_baseline_recipe():
    """config/zoo_camvid.yaml trains the baselines exactly as
    ``hmseg-core train --config config/train_camvid.yaml -o model=mrms -o epochs=200 -o eval_every=10
    -o channels_last=true -o precision=bf16`` does, so such a run folder resumes as the zoo's mrms."""
    from hmseg_core.config import load_config

    cfg = load_zoo_config(ROOT / "config" / "zoo_camvid.yaml", data_root="/data/camvid")
    lead = load_config(str(ROOT / "config" / "train_camvid.yaml"),
                       ["model=mrms", "epochs=200", "eval_every=10", "channels_last=true", "precision=bf16"], data_root="/data/camvid")
    build = ZooBuild(cfg, Path("/nonexistent/runs"), log=lambda s: None)
    planned = build.train_config("mrms").to_dict()
    assert {k: v for k, v in planned.items() if k != "out_dir"} == {k: v for k, v in lead.to_dict().items() if k != "out_dir"}
    assert cfg.variants() == ["mrms_tiny", "mrms", "search_0.5x", "search_1x", "search_1.5x"]  # the teacher first


def test_publish_keeps_a_better_shipped_variant(built, tmp_path):
    config, runs, _, _ = built
    build = ZooBuild(load_zoo_config(config), runs, log=lambda s: None)
    shipped = tmp_path / "zoo"
    shipped.mkdir()
    shutil.copy(ROOT / "hmseg_core" / "zoo" / "camvid_mrms_tiny.pt", shipped / "tiny_mrms_tiny.pt")
    (shipped / "zoo.yaml").write_text("# shipped variants\nvariants:\n  - {name: mrms_tiny, checkpoint: tiny_mrms_tiny.pt, miou: 0.99}\n")
    with pytest.raises(BuildError, match="--allow-synthetic"):
        from hmseg_core.pipeline.publish import publish

        publish(build, shipped, log=lambda s: None)
    before = (shipped / "tiny_mrms_tiny.pt").read_bytes()
    report = {r.get("variant") or "search " + r["search"]: r["action"]
              for r in publish(build, shipped, allow_synthetic=True, log=lambda s: None)}
    assert report == {"mrms": "published", "mrms_tiny": "kept shipped", "search_0.8x": "published", "search_1.2x": "published",
                      "search 0.8x": "published", "search 1.2x": "published"}
    searches = yaml.safe_load((shipped / "searches.yaml").read_text())["searches"]
    assert searches["0.8x"]["result"]["genotype"] == build.result("search", "0.8x")["genotype"]
    assert "data_root" not in searches["0.8x"]["settings"]  # a path of the machine that searched
    assert (shipped / "tiny_mrms_tiny.pt").read_bytes() == before
    zoo = ModelZoo.load(shipped / "zoo.yaml")
    assert [v.name for v in zoo.variants] == ["mrms_tiny", "mrms", "search_0.8x", "search_1.2x"]
    assert zoo.get("mrms_tiny").miou == 0.99 and (shipped / "zoo.yaml").read_text().startswith("# shipped variants\n")
    assert "latency" not in zoo.get("mrms_tiny").extra  # no genotype in its entry: not known to be the network measured
    slim = load_checkpoint(shipped / "tiny_mrms.pt")
    assert "optimizer" not in slim and not any(k.startswith("boost.") for k in slim["model"])
    assert zoo.get("mrms").extra["latency_ms"] > 0 and zoo.get("search_0.8x").extra["distilled_from"] == "mrms"
    assert os.path.getsize(shipped / "tiny_mrms.pt") < os.path.getsize(runs / "train" / "mrms" / "best.pt")

    # the same network shipped (its genotype in the entry): kept, with the latencies of this build's run
    kept = replace(zoo.get("mrms_tiny"), extra={"genotype": build.result("train", "mrms_tiny")["genotype"]})
    ModelZoo([kept] + zoo.variants[1:]).save(shipped / "zoo.yaml")
    again = [r for r in publish(build, shipped, allow_synthetic=True, log=lambda s: None) if r.get("variant") == "mrms_tiny"]
    assert again == [{"variant": "mrms_tiny", "action": "kept shipped", "shipped_miou": 0.99,
                      "built_miou": again[0]["built_miou"], "latencies": "measured"}]
    refreshed = ModelZoo.load(shipped / "zoo.yaml").get("mrms_tiny")
    assert refreshed.miou == 0.99 and refreshed.extra["latency_ms"] > 0 and refreshed.extra["genotype"] == kept.extra["genotype"]
    assert (shipped / "tiny_mrms_tiny.pt").read_bytes() == before


def test_a_better_retrained_network_keeps_its_shipped_latencies_until_measured(built, tmp_path):
    """The shipped entry's latencies carry over to a better run of the same genotype when the build has
    not measured it (a distilled retrain); a different network's do not."""
    from hmseg_core.pipeline.publish import publish

    config, reference, _, _ = built
    runs = tmp_path / "runs"
    shutil.copytree(reference, runs)
    marker_path(runs, "measure").unlink()
    build = ZooBuild(load_zoo_config(config), runs, log=lambda s: None)
    shipped = tmp_path / "zoo"
    shipped.mkdir()
    lat = {"latency_ms": 7.5, "latency": {"onnxruntime": {"p50_ms": 5.0, "p95_ms": 7.5}}, "measured_on": "a CPU, 2 threads"}
    same, other = build.result("train", "search_0.8x")["genotype"], build.result("train", "search_1.2x")["genotype"]
    doc = {"variants": [{"name": "search_0.8x", "checkpoint": "a.pt", "miou": 0.0, "genotype": same, **lat},
                        {"name": "search_1.2x", "checkpoint": "b.pt", "miou": 0.0, "genotype": other + ";lge=0", **lat}]}
    for f in ("a.pt", "b.pt"):
        shutil.copy(ROOT / "hmseg_core" / "zoo" / "camvid_mrms_tiny.pt", shipped / f)
    (shipped / "zoo.yaml").write_text(yaml.safe_dump(doc))
    publish(build, shipped, allow_synthetic=True, log=lambda s: None)
    zoo = ModelZoo.load(shipped / "zoo.yaml")
    kept, replaced = zoo.get("search_0.8x").extra, zoo.get("search_1.2x").extra
    assert zoo.get("search_0.8x").miou > 0 and {k: kept[k] for k in lat} == lat
    assert not set(lat) & set(replaced) and replaced["genotype"] == other


def test_a_variant_trained_with_the_recipe_is_adopted_not_trained_again(tmp_path):
    """A build publishes mrms_tiny; a build elsewhere (new run folder, other threads) adopts it from that zoo
    instead of training; a changed recipe or ``train.adopt: ""`` trains."""
    from hmseg_core.data.synthetic import write_dataset
    from hmseg_core.pipeline.publish import publish

    data = tmp_path / "data"
    write_dataset(data, "camvid", {"train": 8, "val": 2}, size=(48, 64), seed=0)
    train = {**TINY["train"], "baselines": ["mrms_tiny"], "teacher": "", "adopt": ""}
    def config(section):
        return _config(tmp_path, **{f"train.{k}": v for k, v in section.items()})

    first = load_zoo_config(config(train), data_root=str(data))
    built = ZooBuild(first, tmp_path / "first", log=lambda s: None)
    built.build(("train", "eval"))
    zoo = tmp_path / "zoo"
    publish(built, zoo, log=lambda s: None)

    def elsewhere(name, **changes):
        cfg = load_zoo_config(config({**train, "adopt": str(zoo / "zoo.yaml"), **changes}), data_root=str(data))
        lines = []
        return ZooBuild(cfg, tmp_path / name, log=lines.append), lines

    again, lines = elsewhere("again", overrides={**train["overrides"], "threads": 2})
    assert again.state("train", "mrms_tiny").detail == f"adopts {zoo / 'tiny_mrms_tiny.pt'} (trained with this recipe)"
    again.build(("train", "eval"))
    assert lines[0] == f"adopt train mrms_tiny: {zoo / 'tiny_mrms_tiny.pt'} (trained with this recipe)"
    assert not (tmp_path / "again" / "train" / "mrms_tiny" / "log.jsonl").exists()  # nothing was trained
    assert again.result("eval", "mrms_tiny")["miou"] == built.result("eval", "mrms_tiny")["miou"]
    a, b = _weights(zoo / "tiny_mrms_tiny.pt"), _weights(tmp_path / "again" / "train" / "mrms_tiny" / "best.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    from hmseg_core.pipeline.status import format_status, status

    assert "adopted " in format_status(again, status(again))
    row = next(r for r in status(again) if (r["stage"], r["item"]) == ("train", "mrms_tiny"))
    assert "step" not in row and "epochs_done" not in row, "an adopted variant was not trained here: no progress"
    assert row["best_miou"] == load_checkpoint(zoo / "tiny_mrms_tiny.pt")["best_miou"]

    changed, _ = elsewhere("changed", overrides={**train["overrides"], "epochs": 3})
    assert changed.state("train", "mrms_tiny").detail == ""
    off = load_zoo_config(config(train), data_root=str(data))
    assert ZooBuild(off, tmp_path / "off", log=lambda s: None).state("train", "mrms_tiny").detail == ""


def test_a_search_with_the_recipe_is_adopted_not_searched_again(tmp_path):
    """A build publishes its search; a build on a fresh run folder (other threads) adopts the genotype
    from the searches file instead of searching, and trains that genotype; a changed recipe searches."""
    from hmseg_core.data.synthetic import write_dataset
    from hmseg_core.pipeline.publish import publish_searches

    data = tmp_path / "data"
    write_dataset(data, "camvid", {"train": 8, "val": 2}, size=(48, 64), seed=0)
    search = {**TINY["search"], "budgets": [0.8], "adopt": ""}

    def build(name, **section):
        keys = {"train.teacher": "", **{f"search.{k}": v for k, v in {**search, **section}.items()}}
        cfg = load_zoo_config(_config(tmp_path, **keys), data_root=str(data))
        lines = []
        return ZooBuild(cfg, tmp_path / name, log=lines.append), lines

    first, _ = build("first")
    first.build(("lut", "search"))
    searches = tmp_path / "zoo" / "searches.yaml"
    assert [r["action"] for r in publish_searches(first, searches, log=lambda s: None)] == ["published"]
    assert [r["action"] for r in publish_searches(first, searches, log=lambda s: None)] == ["kept shipped"]

    again, lines = build("again", adopt=str(searches), overrides={**search["overrides"], "threads": 2})
    again.build(("lut", "search"))
    assert f"adopt search 0.8x: {searches} 0.8x (searched with this recipe)" in lines
    assert not (tmp_path / "again" / "search" / "0.8x" / "search_log.jsonl").exists()  # nothing was searched
    assert again.result("search", "0.8x")["genotype"] == first.result("search", "0.8x")["genotype"]
    assert again.train_config("search_0.8x").model == first.result("search", "0.8x")["genotype"]
    from hmseg_core.pipeline.status import format_status, status

    assert f"adopted {searches} 0.8x" in format_status(again, status(again))
    row = next(r for r in status(again) if (r["stage"], r["item"]) == ("search", "0.8x"))
    assert "step" not in row and "epochs_done" not in row

    changed, _ = build("changed", adopt=str(searches), overrides={**search["overrides"], "epochs": 2})
    changed.build(("lut",))
    assert changed.state("search", "0.8x").adopt is None and changed.state("search", "0.8x").state == "ready"


def test_entries_the_build_does_not_make_are_measured_beside_its_variants(tmp_path):
    """``measure.published``: an entry of the index the build publishes into that the build does not make is
    timed in the build's measure run, and ``zoo publish`` gives it those latencies; once its weights change,
    the measure stage is stale and publish leaves the entry alone."""
    from hmseg_core.data.synthetic import write_dataset
    from hmseg_core.pipeline.publish import publish

    data = tmp_path / "data"
    write_dataset(data, "camvid", {"train": 8, "val": 2}, size=(48, 64), seed=0)
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    shutil.copy(ROOT / "hmseg_core" / "zoo" / "camvid_search_0.5x.pt", zoo / "other.pt")
    old = {"latency_ms": 99.0, "latency": {"torch": {"p50_ms": 90.0, "p95_ms": 99.0}}, "measured_on": "another CPU, 2 threads"}
    (zoo / "zoo.yaml").write_text(yaml.safe_dump({"variants": [{"name": "other", "checkpoint": "other.pt", "miou": 0.7, **old}]}))
    keys = {"search.budgets": [0.8], "search.adopt": "", "train.baselines": ["mrms_tiny"], "train.teacher": "",
            "train.adopt": "", "measure.published": str(zoo / "zoo.yaml")}
    build = ZooBuild(load_zoo_config(_config(tmp_path, **keys), data_root=str(data)), tmp_path / "runs", log=lambda s: None)
    assert list(build.kept()) == ["other"]
    build.build(("lut", "search", "train", "eval", "export"))
    assert build.state("measure").detail == f"also other of {zoo / 'zoo.yaml'} (not built here)"
    build.build()
    measured = build.result("measure")
    assert set(measured["latency"]) == {"mrms_tiny", "search_0.8x", "other"} and list(measured["kept"]) == ["other"]

    report = publish(build, zoo, log=lambda s: None)
    assert {"variant": "other", "action": "kept shipped", "latencies": "measured"} in report
    index = ModelZoo.load(zoo / "zoo.yaml")
    assert [v.name for v in index.variants] == ["other", "mrms_tiny", "search_0.8x"]
    other = index.get("other").extra
    assert other["latency"]["torch"]["p95_ms"] == measured["latency"]["other"]["torch"]["total_p95_ms"] != 99.0
    assert other["measured_on"] == index.get("mrms_tiny").extra["measured_on"] and index.get("other").miou == 0.7

    shutil.copy(ROOT / "hmseg_core" / "zoo" / "camvid_mrms_tiny.pt", zoo / "other.pt")  # new weights: not what was timed
    again = ZooBuild(build.cfg, build.runs, log=lambda s: None)
    assert again.state("measure").state == "stale" and "kept" in again.state("measure").detail
    assert not [r for r in publish(again, zoo, log=lambda s: None) if r.get("variant") == "other"]
