"""rosbag2 drives: write (mcap and sqlite3) and read back frames, labels, stamps; the CLI."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="rosbag2 support needs the 'rosbags' package (pip install 'hmseg_ros[ros]')")

from hmseg_core.bag import BagError, Frame, dataset_drive, make_bag, read_drive, read_info, synthetic_drive  # noqa: E402
from hmseg_core.cli import main as cli_main  # noqa: E402
from hmseg_core.data.datasets import CITYSCAPES, IGNORE_INDEX, SegmentationDataset  # noqa: E402


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_synthetic_drive_round_trip(tmp_path, storage):
    frames = list(synthetic_drive(4, (48, 64), seed=5, speed=0.05))
    assert not np.array_equal(frames[0].image, frames[1].image)  # it moves
    values = set(np.unique(np.concatenate([f.labels.ravel() for f in frames])).tolist())
    assert values <= set(range(11)) | {IGNORE_INDEX}  # void (11) -> ignored
    summary = make_bag(tmp_path / "drive", frames, storage=storage, rate_hz=15.0)
    assert summary["frames"] == 4 and summary["size"] == [48, 64]
    back = list(read_drive(tmp_path / "drive"))
    assert len(back) == 4
    for a, b in zip(frames, back):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.labels, b.labels)
    gaps = np.diff([f.stamp_ns for f in back])
    assert (gaps == round(1e9 / 15.0)).all()
    info = read_info(tmp_path / "drive")
    assert info["frames"] == 4 and info["dataset"] == "camvid" and len(info["class_names"]) == 11


def test_cityscapes_layout_drive_uses_train_ids(tmp_path, cityscapes_fixture):
    spec, frames = dataset_drive(cityscapes_fixture, "val")
    make_bag(tmp_path / "cs", frames, spec, storage="sqlite3")
    ds = SegmentationDataset(cityscapes_fixture, "val")
    back = list(read_drive(tmp_path / "cs"))
    assert len(back) == len(ds) == 2
    for i, f in enumerate(back):
        np.testing.assert_array_equal(f.labels, ds[i][1])
    assert read_info(tmp_path / "cs")["class_names"] == list(CITYSCAPES.class_names)


def test_bag_errors(tmp_path):
    make_bag(tmp_path / "d", synthetic_drive(1, (32, 32)))
    with pytest.raises(FileExistsError):
        make_bag(tmp_path / "d", synthetic_drive(1, (32, 32)))
    with pytest.raises(BagError, match="no topic '/nope'"):
        list(read_drive(tmp_path / "d", "/nope"))
    with pytest.raises(BagError, match="not found"):
        list(read_drive(tmp_path / "missing"))
    bad = [Frame(np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4), np.uint8))]
    with pytest.raises(ValueError, match="differ in size"):
        make_bag(tmp_path / "bad", bad)
    assert not (tmp_path / "bad").exists()  # no half-written bag left behind
    with pytest.raises(ValueError, match="rate"):
        make_bag(tmp_path / "r", synthetic_drive(1, (32, 32)), rate_hz=0)


def test_cli_bag_make_from_camvid_layout(tmp_path, camvid_fixture, capsys):
    assert cli_main(["bag", "make", "--out", str(tmp_path / "b"), "--data-root", str(camvid_fixture), "--storage", "sqlite3", "--rate", "5"]) == 0
    assert '"frames": 3' in capsys.readouterr().out
    assert cli_main(["bag", "info", str(tmp_path / "b")]) == 0
    assert cli_main(["bag", "make", "--out", str(tmp_path / "b"), "--frames", "1", "--size", "32x32"]) == 2  # exists: clear error
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_and_foreign_bags_raise_one_clear_line(tmp_path, storage):
    make_bag(tmp_path / "d", synthetic_drive(3, (32, 32)), storage=storage)
    data = next(p for p in (tmp_path / "d").iterdir() if p.name != "metadata.yaml")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # a copy cut off half way
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("not a bag")
    (tmp_path / "file.mcap").write_bytes(b"\x00" * 64)
    for bag in (tmp_path / "d", tmp_path / "foreign", tmp_path / "file.mcap"):
        for read in (read_info, lambda b: list(read_drive(b))):
            with pytest.raises(BagError) as e:
                read(bag)
            msg = str(e.value)
            assert msg.startswith(f"{bag}: not a readable rosbag2 bag") and "\n" not in msg, msg


def test_a_bag_whose_image_topic_is_not_images_is_refused(tmp_path):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    String = ts.types["std_msgs/msg/String"]
    with Writer(tmp_path / "b", version=9) as w:
        conn = w.add_connection("/camera/image_raw", String.__msgtype__, typestore=ts)
        w.write(conn, 1, ts.serialize_cdr(String(data="hello"), String.__msgtype__))
    with pytest.raises(BagError, match="holds std_msgs/msg/String, not sensor_msgs/msg/Image"):
        list(read_drive(tmp_path / "b"))


def test_cli_bag_info_on_a_truncated_bag_is_one_line(tmp_path, capsys):
    make_bag(tmp_path / "d", synthetic_drive(2, (32, 32)))
    data = next((tmp_path / "d").glob("*.mcap"))
    data.write_bytes(data.read_bytes()[:100])
    assert cli_main(["bag", "info", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hmseg-core bag: error:") and "not a readable rosbag2 bag" in err, err
