"""Tune one task of a network twice with the same trial budget: as exported (weights in their own
layout) and with MetaSchedule's CPU weight pre-packing (``AttachAttrLayoutFreeBuffers``: the
schedule may also choose the weights' layout, the repacking then runs once at load). Prints
the best measured latency of each. Evidence for whether pre-packing is worth a full tuning run.

    python benchmarks/tune_one_task.py --checkpoint hmseg_core/zoo/camvid_mrms_tiny.pt \\
        --task fused_conv2d4_add3_tir_clip2 --trials 32
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="hmseg_core/zoo/camvid_mrms_tiny.pt")
    p.add_argument("--input-size", default="360x480")
    p.add_argument("--task", required=True, help="task name as `hmseg-core profile` lists the kernel")
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--work-dir", type=Path, default=Path("runs/tune_one_task"))
    args = p.parse_args(argv)

    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from hmseg_core.checkpoint import load_checkpoint
    from hmseg_core.deploy.export import deploy_network, export_program, to_relax
    from hmseg_core.deploy.targets import host_target
    from hmseg_core.deploy.tuning import extract_tasks, lower

    h, w = (int(v) for v in args.input_size.split("x"))
    mod = to_relax(export_program(deploy_network(load_checkpoint(args.checkpoint)), (h, w)))
    target = host_target()
    tvm_target = tvm.target.Target(target)
    with tvm_target:
        prepack = tvm.transform.Sequential([
            relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings(),
            relax.pipeline.zero_pipeline(), relax.transform.AttachAttrLayoutFreeBuffers(),
        ])(mod)
    plain_tasks = {t.task_name: t for t in extract_tasks(lower(mod, target), target)}
    # the pre-packing module is fused before the bias reshapes are lifted: its kernels carry a suffix
    packed_tasks = {t.task_name: t for t in ms.relax_integration.extract_tasks(prepack, tvm_target)}
    if args.task not in plain_tasks or args.task + "1" not in packed_tasks:
        raise SystemExit(f"no task {args.task!r}; tasks: {', '.join(sorted(plain_tasks))}")
    for label, task in (("as exported", plain_tasks[args.task]), ("weight pre-packing", packed_tasks[args.task + "1"])):
        work_dir = args.work_dir / label.replace(" ", "_")
        shutil.rmtree(work_dir, ignore_errors=True)
        start = time.time()
        db = ms.tir_integration.tune_tir(task.dispatched[0], tvm_target, str(work_dir), max_trials_global=args.trials,
                                         num_trials_per_iter=8, builder=ms.builder.LocalBuilder(timeout_sec=120),
                                         num_tuning_cores=int(target["num-cores"]))
        runs = [sum(float(s) for s in r.run_secs) / len(r.run_secs) for r in db.get_all_tuning_records() if r.run_secs]
        print(f"{args.task} {label}: best {1e3 * min(runs):.3f} ms of {len(runs)} measured candidates, "
              f"{time.time() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
