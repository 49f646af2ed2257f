"""TVM timer of the cost table: parts compile to what torch computes, and share kernels with the network."""

import numpy as np
import pytest
import torch

from hmseg_core.registry import get_genotype
from hmseg_core.search.lut import IDENTITY_FIELDS, decompose, random_inputs

pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm", reason="TVM not installed (pip install 'hmseg[tvm]')")

from hmseg_core.search.lut import TVMTimer  # noqa: E402

SIZE = (64, 96)


@pytest.fixture(scope="module")
def timer():
    return TVMTimer(threads=1)


@pytest.fixture(scope="module")
def parts():
    return decompose(get_genotype("mrms_tiny", 11), SIZE)


def test_fingerprint_names_the_compiled_target(timer):
    fp = timer.fingerprint()
    assert set(IDENTITY_FIELDS) <= set(fp) and fp["backend"] == "tvm" and fp["target"].startswith("llvm-")
    assert fp["threads"] == 1 and fp["versions"]["tvm"] == tvm.__version__


@pytest.mark.parametrize("kind", ["stem", "layer", "resize", "head"])
def test_compiled_parts_compute_what_torch_computes(timer, parts, kind):
    part = next(p for p in parts if p.kind == kind and (kind != "layer" or ":s2:" in p.key))
    torch.manual_seed(0)
    module = part.build().eval()
    inputs = random_inputs(part.inputs, seed=1)
    with torch.no_grad():
        expected = module(*inputs).numpy()
    np.testing.assert_allclose(timer.compile(module, inputs)().numpy(), expected, rtol=1e-4, atol=1e-5)
    assert timer.measure(module, inputs, warmup=1, repeats=2) > 0


def test_every_kernel_of_the_network_is_a_kernel_of_its_parts(parts):
    """So the records tuned while measuring the table serve the searched network's export."""
    from tvm_ffi import structural_hash

    from hmseg_core.deploy.export import export_program, to_relax
    from hmseg_core.deploy.fold import fold_batchnorm
    from hmseg_core.deploy.targets import host_target
    from hmseg_core.deploy.tuning import extract_tasks, lower
    from hmseg_core.model import build_model

    target = host_target(1)

    def kernels(module, inputs):
        with torch.no_grad():
            program = torch.export.export(module, tuple(inputs))
        return {structural_hash(t.dispatched[0]): t.task_name for t in extract_tasks(lower(to_relax(program), target), target)}

    g = get_genotype("mrms_tiny", 11)
    network = kernels(fold_batchnorm(build_model(g, boosting=False).eval()), [torch.zeros(1, 3, *SIZE)])
    from_parts = {}
    for p in parts:
        m = p.build().eval()
        m = fold_batchnorm(m) if any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules()) else m
        from_parts.update(kernels(m, random_inputs(p.inputs)))
    missing = sorted(network[h] for h in set(network) - set(from_parts))
    assert not missing, f"network kernels no part has: {missing}"


def test_cli_tvm_table_refuses_trials_without_a_records_directory(tmp_path, capsys):
    from hmseg_core.cli import main

    code = main(["lut", "build", "--backend", "tvm", "--trials-per-part", "4", "--input-size", "64x96", "--out", str(tmp_path / "t.json")])
    assert code == 2 and "--tuning-db" in capsys.readouterr().err
