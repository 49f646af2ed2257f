import numpy as np
import pytest
import torch
from PIL import Image

from hmseg_core.data.datasets import (
    CAMVID, CITYSCAPES, IGNORE_INDEX, DatasetError, SegmentationDataset, detect_layout, enet_class_weights,
)
from hmseg_core.data.synthetic import write_dataset
from hmseg_core.data.transforms import EpochBatchSampler, EvalTransform, TrainTransform, TrainView, seeded_generator


def test_camvid_layout(camvid_fixture):
    ds = SegmentationDataset(camvid_fixture, "train")
    assert ds.layout == "camvid" and len(ds) == 8 and ds.spec is CAMVID
    img, lbl = ds[0]
    assert img.shape == (64, 96, 3) and img.dtype == np.uint8
    assert lbl.shape == (64, 96)
    assert set(np.unique(lbl)) <= set(range(11)) | {IGNORE_INDEX}


def test_cityscapes_layout_maps_label_ids_to_train_ids(cityscapes_fixture):
    ds = SegmentationDataset(cityscapes_fixture, "train")
    assert ds.layout == "cityscapes" and len(ds) == 4 and ds.spec.num_classes == 19
    raw = np.asarray(Image.open(ds.pairs[0][1]))
    _, lbl = ds[0]
    # road (labelId 7) -> 0, sky (23) -> 10, car (26) -> 13, unlabeled (0) -> ignore
    for raw_id, train_id in [(7, 0), (23, 10), (26, 13), (0, IGNORE_INDEX)]:
        if (raw == raw_id).any():
            assert (lbl[raw == raw_id] == train_id).all()
    assert (raw == 7).any()


def test_lut_maps_everything_else_to_ignore():
    lut = CITYSCAPES.lut()
    assert lut[7] == 0 and lut[33] == 18 and lut[1] == IGNORE_INDEX and lut[255] == IGNORE_INDEX
    assert CAMVID.lut()[11] == IGNORE_INDEX


def test_detect_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match="not a dataset root"):
        detect_layout(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        SegmentationDataset(tmp_path / "nope", "train")


def test_missing_label_named(tmp_path):
    root = write_dataset(tmp_path, "camvid", {"train": 2}, size=(32, 48))
    victim = sorted((root / "trainannot").glob("*.png"))[1]
    victim.unlink()
    with pytest.raises(DatasetError) as err:
        SegmentationDataset(root, "train")
    assert str(victim) in str(err.value) and "missing label" in str(err.value)


def test_missing_split_folder_named(tmp_path):
    root = write_dataset(tmp_path, "camvid", {"train": 1}, size=(32, 48))
    with pytest.raises(DatasetError, match=r"valannot|val.*missing"):
        SegmentationDataset(root, "val", "camvid")


def test_malformed_files_named(tmp_path):
    root = write_dataset(tmp_path, "camvid", {"train": 3}, size=(32, 48))
    names = sorted((root / "train").glob("*.png"))
    names[0].write_bytes(b"not a png")
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(root / "trainannot" / names[1].name)  # RGB label
    Image.fromarray(np.zeros((16, 48), np.uint8)).save(root / "trainannot" / names[2].name)  # wrong size
    ds = SegmentationDataset(root, "train")
    with pytest.raises(DatasetError, match=f"{names[0].name}.*cannot read image"):
        ds[0]
    with pytest.raises(DatasetError, match="single-channel"):
        ds[1]
    with pytest.raises(DatasetError, match="differs from its image"):
        ds[2]


def test_split_listing_file(tmp_path):
    root = write_dataset(tmp_path, "camvid", {"train": 3}, size=(32, 48))
    names = sorted(p.name for p in (root / "train").glob("*.png"))
    (root / "train.txt").write_text(f"/SegNet/CamVid/train/{names[2]} /SegNet/CamVid/trainannot/{names[2]}\n")
    ds = SegmentationDataset(root, "train")
    assert len(ds) == 1 and ds.pairs[0][0].name == names[2]
    (root / "train.txt").write_text("/x/train/ghost.png /x/trainannot/ghost.png\n")
    with pytest.raises(DatasetError, match="ghost.png"):
        SegmentationDataset(root, "train")


def test_train_transform_is_seeded_and_shaped(camvid_fixture):
    ds = SegmentationDataset(camvid_fixture, "train")
    view = TrainView(ds, TrainTransform(crop=(48, 64), scale=(0.5, 2.0)), seed=3)
    a, b, c = view[(1, 0)], view[(1, 0)], view[(1, 1)]
    assert a[0].shape == (3, 48, 64) and a[1].shape == (48, 64) and a[1].dtype == torch.long
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    labels = set(torch.unique(a[1]).tolist())
    assert labels <= set(range(11)) | {IGNORE_INDEX}


def test_padding_uses_ignore_label():
    img = np.full((10, 10, 3), 128, np.uint8)
    lbl = np.zeros((10, 10), np.uint8)
    x, y = TrainTransform(crop=(32, 32), scale=(1.0, 1.0), flip=False, jitter=0.0)(img, lbl, seeded_generator(0))
    assert (y == IGNORE_INDEX).sum() == 32 * 32 - 100 and (y == 0).sum() == 100


def test_eval_transform_is_deterministic(camvid_fixture):
    ds = SegmentationDataset(camvid_fixture, "val")
    x, y = EvalTransform()(*ds[0])
    assert x.shape == (3, 64, 96) and torch.equal(y, torch.from_numpy(ds[0][1]).long())


def test_sampler_shards_and_resumes():
    full = list(EpochBatchSampler(20, 2, epoch=4, seed=0, rank=0, world_size=2)) + []
    r1 = list(EpochBatchSampler(20, 2, epoch=4, seed=0, rank=1, world_size=2))
    assert len(full) == len(r1) == 5
    seen = {i for b in full + r1 for i, _ in b}
    assert len(seen) == 20  # disjoint shards covering the epoch
    resumed = list(EpochBatchSampler(20, 2, epoch=4, seed=0, rank=0, world_size=2, start_step=3))
    assert resumed == full[3:]
    assert list(EpochBatchSampler(20, 2, 5, 0)) != list(EpochBatchSampler(20, 2, 4, 0))


def test_enet_weights_favour_rare_classes():
    w = enet_class_weights([0.5, 0.01])
    assert w[1] > w[0] > 0
