"""Deployment: BN folding, export to TVM and ONNX, tuning, model packages, side-by-side benchmarks.

The backends that run a package live in :mod:`hmseg_core.runtime.backends`. Importing this
package imports neither TVM nor ONNX Runtime.
"""
