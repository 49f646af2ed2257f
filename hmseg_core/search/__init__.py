"""Machine-driven architecture optimisation (paper §3.2).

* :mod:`.space`     the search space derived from a base genotype (operators, depth, resolution)
* :mod:`.lut`       the cost lookup table measured on the target (latency, MACs, params)
* :mod:`.supernet`  the supernet: one module per candidate, straight-through Gumbel-softmax paths
* :mod:`.cost`      expected cost under the architecture distribution and the cost loss (Eq. 4)
* :mod:`.searcher`  the alternating weight / architecture optimisation (Eq. 3), resumable, DDP

The ``hmseg-core lut`` and ``hmseg-core search`` subcommands are in :mod:`hmseg_core.cli.search`.
Nothing is imported here so that ``hmseg-core --help`` stays fast; import the submodules.
"""
