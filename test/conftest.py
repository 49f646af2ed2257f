import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def camvid_fixture(tmp_path_factory):
    """A tiny generated data set in the CamVid layout (64x96 frames)."""
    from hmseg_core.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("camvid"), "camvid", {"train": 8, "val": 3}, size=(64, 96), seed=1)


@pytest.fixture(scope="session")
def cityscapes_fixture(tmp_path_factory):
    from hmseg_core.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("cityscapes"), "cityscapes", {"train": 4, "val": 2}, size=(64, 128), seed=2)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env
