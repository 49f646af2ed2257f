"""The model zoo as one resumable pipeline (``hmseg-core zoo build|status|publish``).

Stages, in order (:data:`STAGES`): the latency table of this machine -> a search per budget ->
training of every derived genotype and of the baselines -> validation mIoU -> model packages ->
latency of every variant side by side -> the zoo index (and its Pareto plot). Each stage writes a
marker with its inputs and its result when it finishes; a finished stage is skipped, a killed one
resumes (training and search from their ``last.pt``), and one whose inputs changed is reported.

* :mod:`.config`: :class:`ZooConfig`, the YAML file (``config/zoo_camvid.yaml``) and the run folder;
* :mod:`.markers`: the marker files (atomic JSON) and the comparison of inputs;
* :mod:`.steps`: what each stage does, over the library (lut, search, train, evaluate, export, bench);
* :mod:`.build`: :class:`ZooBuild`, the plan, each step's state, the build loop;
* :mod:`.status`: progress of every stage and variant (``zoo status``), the curves;
* :mod:`.publish`: finished variants copied into the shipped zoo as weights only.

This module imports only the standard library: the command's parser reads :data:`STAGES`.
"""

from __future__ import annotations

#: the stages of a zoo build, in the order they run
STAGES = ("lut", "search", "train", "eval", "export", "measure", "index")

#: stages whose work is long and stateful: when their inputs change they are reported and the build
#: stops (``--redo`` sets the old run aside); the others are cheap and simply run again
COSTLY = ("lut", "search", "train")
