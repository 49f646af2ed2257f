"""Training: checkpoints, exact resume after kill -9, DDP replicas, CLI train/eval."""

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import cli_overrides, kill_when_logged, run_cli_under_torchrun
from hmseg_core.checkpoint import CheckpointError, atomic_save, load_checkpoint, model_from_checkpoint
from hmseg_core.cli import main as cli_main
from hmseg_core.config import ConfigError, TrainConfig, load_config
from hmseg_core.data.datasets import SegmentationDataset
from hmseg_core.io import digest
from hmseg_core.losses import distillation_loss
from hmseg_core.train import poly_lr, train, train_view

TINY = dict(
    model="mrms_tiny", crop=(48, 64), scale=(0.75, 1.25), batch_size=2, epochs=3, lr=0.02,
    synthetic_train=8, synthetic_val=2, num_workers=0, threads=1, eval_every=0, checkpoint_every=1,
)


def tiny_config(out: Path, **kw) -> TrainConfig:
    return load_config(None, [], **{**TINY, "out_dir": str(out), **kw})


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def _kill_training_mid_run(out: Path, overrides: dict, total: int, lines: int = 5) -> int:
    """``hmseg-core train --out OUT -oKEY=VALUE...`` in a subprocess, SIGKILLed once its log has
    ``lines`` lines; returns the step of the ``last.pt`` it left (checked to be mid-run)."""
    args = [sys.executable, "-m", "hmseg_core.cli", "train", "--out", str(out), *cli_overrides(overrides)]
    kill_when_logged(args, out / "log.jsonl", lines, out.with_name(out.name + ".err"), timeout=120)
    killed_at = load_checkpoint(out / "last.pt")["step"]
    assert 0 < killed_at < total, "the kill must land mid-run for this test to mean anything"
    return killed_at


def test_poly_schedule():
    cfg = TrainConfig(lr=0.1, warmup_steps=10, poly_power=0.9)
    assert poly_lr(cfg, 0, 100) == pytest.approx(0.01)
    assert poly_lr(cfg, 9, 100) == pytest.approx(0.1)
    assert poly_lr(cfg, 50, 100) == pytest.approx(0.1 * 0.5**0.9)
    assert 0 < poly_lr(cfg, 99, 100) < poly_lr(cfg, 98, 100)


def test_train_writes_self_describing_checkpoints(tmp_path):
    summary = train(tiny_config(tmp_path / "run", epochs=2, eval_every=1), progress=False)
    assert summary["steps"] == 8
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["class_names"][0] == "sky" and len(ckpt["palette"]) == 11
    assert ckpt["config"]["model"] == "mrms_tiny" and ckpt["step"] >= 4
    assert "val" in ckpt and 0 <= ckpt["val"]["miou"] <= 1
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["step"] == 8 and last["optimizer"]["state"]
    model, _ = model_from_checkpoint(tmp_path / "run" / "last.pt")
    assert model.boost is None and not model.training
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "curves.png").is_file()
    # a second run into the same folder must not silently overwrite it
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(tmp_path / "run"), progress=False)


def test_channels_last_bf16_training_learns_in_fp32_weights(tmp_path):
    cfg = tiny_config(tmp_path / "run", epochs=2, channels_last=True, precision="bf16")
    summary = train(cfg, progress=False)
    assert summary["steps"] == 8
    weights = _weights(tmp_path / "run" / "last.pt")
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())
    losses = [json.loads(l)["loss"] for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(map(lambda v: v == v and v < 1e3, losses)) and losses[-1] < losses[0]
    with pytest.raises(ConfigError, match="precision"):
        tiny_config(tmp_path / "bad", precision="fp16").validate()


def test_resume_says_when_there_is_nothing_to_resume_and_clears_stale_temporaries(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".last.pt.abc123.tmp"  # what a kill during a checkpoint write leaves
    stale.write_bytes(b"half a checkpoint")
    summary = train(tiny_config(out, epochs=1), resume=True, progress=False)
    assert summary["steps"] == 4 and "nothing to resume" in capsys.readouterr().err
    assert not stale.exists() and (out / "last.pt").is_file()


@pytest.mark.parametrize("recipe", [{}, {"early_crop": (32, 48), "early_epochs": 2}, {"ema_decay": 0.9}],
                         ids=["crop", "early_crop", "ema"])
def test_resume_after_kill_equals_uninterrupted(tmp_path, recipe):
    """Killed at step 5 of 12: with ``early_crop`` for 2 epochs of 4 steps, the resumed run crosses to full crops;
    with ``ema_decay`` the weight average resumes too."""
    total = 3 * 4
    reference = tmp_path / "reference"
    train(tiny_config(reference, **recipe), progress=False)

    victim = tmp_path / "victim"
    killed_at = _kill_training_mid_run(victim, {**TINY, **recipe}, total)
    log = victim / "log.jsonl"

    summary = train(tiny_config(victim, **recipe), resume=True, progress=False)
    assert summary["steps"] == total
    ref, res = _weights(reference / "last.pt"), _weights(victim / "last.pt")
    assert ref.keys() == res.keys()
    for k in ref:
        assert torch.equal(ref[k], res[k]), f"{k} differs after resume from step {killed_at}"
    if recipe.get("ema_decay"):
        ref, res = load_checkpoint(reference / "last.pt")["ema"], load_checkpoint(victim / "last.pt")["ema"]
        assert ref.keys() == res.keys() and all(torch.equal(ref[k], res[k]) for k in ref), "the average differs after resume"
    steps = [json.loads(l)["step"] for l in log.read_text().splitlines()]
    assert steps == list(range(1, total + 1))  # no duplicated or missing log lines


def test_weight_average_moves_by_the_warmed_up_decay():
    from hmseg_core.train import update_average

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    average = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model(torch.randn(2, 3, 8, 8))  # running statistics and the batch counter move
    before = {k: v.clone() for k, v in average.state_dict().items()}
    update_average(average, model, decay=0.999, step=0)  # d = min(0.999, 1/10)
    for k, v in average.state_dict().items():
        m = model.state_dict()[k]
        expected = 0.1 * before[k] + 0.9 * m if v.is_floating_point() else m
        assert torch.allclose(v, expected, atol=1e-6), k
    before = {k: v.clone() for k, v in average.state_dict().items()}
    update_average(average, model, decay=0.5, step=1000)  # past the warm-up: d = decay
    w = average.state_dict()["0.weight"]
    assert torch.allclose(w, 0.5 * before["0.weight"] + 0.5 * model.state_dict()["0.weight"], atol=1e-6)


def test_the_weight_average_is_validated_and_shipped(tmp_path):
    """ema_decay: validation measures the average (the trained weights beside it as val_raw), best.pt holds the
    average that validated best, last.pt the trained weights and the average; a bad decay is one clear error."""
    from hmseg_core.evaluate import evaluate_checkpoint

    out = tmp_path / "run"
    train(tiny_config(out, ema_decay=0.9, eval_every=1), progress=False)
    vals = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "val" in r]
    assert len(vals) == 3 and all(0 <= r["val_raw"]["miou"] <= 1 for r in vals)
    last = load_checkpoint(out / "last.pt")
    assert any(not torch.equal(last["model"][k], last["ema"][k]) for k in last["model"] if last["model"][k].is_floating_point())
    best = max(vals, key=lambda r: r["val"]["miou"])
    report = evaluate_checkpoint(out / "best.pt", out / "synthetic", "val", None)
    assert report["miou"] == pytest.approx(best["val"]["miou"], abs=1e-9)
    if best is vals[-1]:
        assert all(torch.equal(v, last["ema"][k]) for k, v in _weights(out / "best.pt").items())
    train(tiny_config(tmp_path / "noval", ema_decay=0.9), progress=False)  # no validation: the final average ships
    last = load_checkpoint(tmp_path / "noval" / "last.pt")
    assert all(torch.equal(v, last["ema"][k]) for k, v in _weights(tmp_path / "noval" / "best.pt").items())
    with pytest.raises(ConfigError, match="ema_decay: must be in"):
        tiny_config(tmp_path / "bad", ema_decay=1.0).validate()


def test_distillation_from_a_teacher_learns_logs_kd_and_resumes_exactly(tmp_path):
    train(tiny_config(tmp_path / "teacher", epochs=1), progress=False)
    teacher = tmp_path / "teacher" / "last.pt"
    distil = dict(TINY, teacher=str(teacher), distill_weight=0.5, distill_temperature=2.0, channels_last=True, precision="bf16")
    total = 3 * 4
    reference = tmp_path / "reference"
    summary = train(load_config(None, [], **{**distil, "out_dir": str(reference)}), progress=False)
    assert summary["steps"] == total
    records = [json.loads(l) for l in (reference / "log.jsonl").read_text().splitlines()]
    kd = [r["kd"] for r in records]
    losses = [r["loss"] for r in records]
    assert all(0 <= v < 1e3 for v in kd) and all(v == v and v < 1e3 for v in losses) and losses[-1] < losses[0]
    config = load_checkpoint(reference / "last.pt")["config"]
    assert config["teacher"] == str(teacher.resolve()) and config["teacher_digest"] == digest(teacher)

    victim = tmp_path / "victim"
    _kill_training_mid_run(victim, distil, total)
    train(load_config(None, [], **{**distil, "out_dir": str(victim)}), resume=True, progress=False)
    ref, res = _weights(reference / "last.pt"), _weights(victim / "last.pt")
    assert all(torch.equal(ref[k], res[k]) for k in ref)
    assert [json.loads(l)["kd"] for l in (victim / "log.jsonl").read_text().splitlines()] == kd

    # another teacher (or none) cannot continue the run; a teacher of another class list is refused
    with pytest.raises(ConfigError, match="teacher digest"):
        train(tiny_config(victim), resume=True, progress=False)
    ckpt = load_checkpoint(teacher)
    ckpt["class_names"] = [f"class{i}" for i in range(11)]
    atomic_save(ckpt, tmp_path / "foreign_teacher.pt")
    with pytest.raises(ConfigError, match="foreign_teacher.pt: teacher predicts"):
        train(tiny_config(tmp_path / "foreign", teacher=str(tmp_path / "foreign_teacher.pt")), progress=False)


def test_distillation_loss_ignores_void_pixels_and_is_zero_for_equal_logits():
    student = torch.randn(2, 11, 4, 5)
    target = torch.randint(0, 11, (2, 4, 5))
    assert float(distillation_loss(student, student.clone(), target, 2.0)) == pytest.approx(0.0, abs=1e-6)
    teacher = torch.randn(2, 11, 4, 5)
    void = target.clone()
    void[0] = 255  # the first image is unlabelled (void): only the second counts
    assert float(distillation_loss(student, teacher, void)) == pytest.approx(float(distillation_loss(student[1:], teacher[1:], target[1:])), rel=1e-5)
    assert float(distillation_loss(student, teacher, torch.full_like(target, 255))) == 0.0


def test_ddp_two_processes_keep_replicas_identical(tmp_path):
    out = tmp_path / "ddp"
    run_cli_under_torchrun(["train", "--out", str(out)], TINY)
    summary = json.loads((out / "summary.json").read_text())
    prints = summary["replica_fingerprints"]
    assert len(prints) == 2 and prints[0] == prints[1]
    # 8 images, batch 2 per process x 2 processes -> 2 steps per epoch
    assert summary["steps"] == 6
    assert load_checkpoint(out / "last.pt")["world_size"] == 2


def test_corrupt_and_foreign_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    train(tiny_config(tmp_path / "run", epochs=1), progress=False)
    good = (tmp_path / "run" / "last.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "trunc.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(tmp_path / "garbage.pt")
    atomic_save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an hmseg checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    ckpt["genotype"] = ckpt["genotype"].replace("width=0.5", "width=1.0")
    with pytest.raises(CheckpointError, match="do not match its genotype"):
        model_from_checkpoint(ckpt)
    # resume refuses a corrupt last.pt instead of starting over
    (tmp_path / "run" / "last.pt").write_bytes(good[:100])
    with pytest.raises(CheckpointError):
        train(tiny_config(tmp_path / "run"), resume=True, progress=False)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        load_config(None, ["lrr=0.1"])
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(None, ["batch_size=0"])
    with pytest.raises(ConfigError, match="crop"):
        load_config(None, ["crop=12x12"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    for bad in (["early_epochs=2"], ["early_crop=192x256"], ["early_crop=192x256", "early_epochs=5", "epochs=5"]):
        with pytest.raises(ConfigError, match=r"early_epochs: must be in \[0, epochs\), and > 0 exactly when early_crop"):
            load_config(None, bad)
    with pytest.raises(ConfigError, match="early_crop: must be empty or two sizes >= 16"):
        load_config(None, ["early_crop=8x8", "early_epochs=1"])
    cfg = load_config("config/train_camvid.yaml", ["epochs=3", "ohem_thresh=0.7"])
    assert cfg.epochs == 3 and cfg.ohem_thresh == 0.7 and cfg.crop == (288, 384) and cfg.class_weighting == "enet"


def test_early_crop_for_the_first_epochs_then_the_recipe_crop(tmp_path, camvid_fixture):
    ds = SegmentationDataset(camvid_fixture, "train")
    view = train_view(tiny_config(tmp_path, crop=(48, 64), early_crop=(32, 32), early_epochs=2), ds)
    assert [tuple(view[(0, epoch)][0].shape[-2:]) for epoch in range(4)] == [(32, 32), (32, 32), (48, 64), (48, 64)]
    assert view[(0, 2)][1].shape == (48, 64)
    plain = train_view(tiny_config(tmp_path, crop=(48, 64)), ds)
    assert plain.early is None and torch.equal(plain[(1, 2)][0], view[(1, 2)][0])  # same samples once early ends


def test_cli_eval_report(tmp_path, camvid_fixture, capsys):
    train(tiny_config(tmp_path / "run", epochs=1, data_root=str(camvid_fixture)), progress=False)
    report = tmp_path / "report.json"
    rc = cli_main([
        "eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--data-root", str(camvid_fixture),
        "--report", str(report), "--save-images", str(tmp_path / "pred"),
    ])
    assert rc == 0
    data = json.loads(report.read_text())
    assert data["images"] == 3 and len(data["per_class_iou"]) == 11
    assert sum(map(sum, data["confusion_matrix"])) == data["pixels"] > 0
    assert len(list((tmp_path / "pred").glob("*.png"))) == 3
    assert "| **mean** |" in capsys.readouterr().out
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "nope.pt"), "--data-root", str(camvid_fixture)]) == 2


def test_validations_over_time_adds_sessions_and_drops_pauses():
    from hmseg_core.pipeline.status import validations_over_time

    def steps(*pairs):
        return [{"step": s, "loss": 1.0, "time": t} for s, t in pairs]

    def val(step, miou):
        return {"step": step, "val": {"miou": miou}}

    # session 1: 1 s steps; a 3 s validation after step 2 (gap 4 s); a kill after step 5's validation
    first = steps((1, 5.0), (2, 6.0)) + [val(2, 0.3)] + steps((3, 10.0), (4, 11.0), (5, 12.0)) + [val(5, 0.4)]
    # session 2 (a resume: its clock starts again, 4 s of set-up), then a 1000 s SIGSTOP pause before step 7
    second = steps((6, 4.0), (7, 1005.0), (8, 1006.0)) + [val(8, 0.5)]
    out = validations_over_time(first + second)
    assert [(step, miou) for _, step, miou in out] == [(2, 0.3), (5, 0.4), (8, 0.5)]
    assert [t for t, _, _ in out] == [9.0, 12.0 + 3.0, 12.0 + 4.0 + 1001.0 + 1.0 + 3.0]
    assert validations_over_time(first + second, pause_gap=100)[-1][0] == 12.0 + 4.0 + 1.0 + 1.0 + 3.0


def test_time_to_accuracy_benchmark_reads_run_folders(tmp_path):
    import runpy

    run = tmp_path / "tiny"
    train(tiny_config(run, epochs=2, eval_every=1), progress=False)
    script = str(Path(__file__).resolve().parents[1] / "benchmarks" / "time_to_accuracy.py")
    bench = runpy.run_path(script)
    row = bench["run_summary"](run, target=0.0)
    assert len(row["validations"]) == 2 and row["step_at_target"] == 4 and 0 < row["hours_to_target"] <= row["hours"]
    assert bench["run_summary"](run, target=101.0)["hours_to_target"] is None
    assert bench["main"]([str(run), str(run), "--target", "0", "--plot", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 0
    assert bench["main"]([str(tmp_path / "nothing")]) == 2
