"""Relax rewrites applied before lowering: graph changes that TVM's passes do not make.

* :func:`clip_as_min_max`: ReLU6 as two binary ops, so that ``ConvertLayout`` carries a
  channels-last layout through it;
* :func:`upsampling_into_argmax`: the whole frame's final upsampling computed inside its argmax,
  from the TOPI computations :func:`upsample_rows`, :func:`blend_rows_argmax` and
  :func:`upsample_argmax`.

Each takes a module and returns a new one; the caller's module stays as it is. Importing this
module does not import TVM.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

# bilinear coordinate modes whose TOPI computation needs neither the ROI nor integer division
SEPARABLE_MODES = ("half_pixel", "align_corners", "pytorch_half_pixel")


def _is_op(expr: Any, name: str) -> bool:
    import tvm
    from tvm import relax

    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name


def _rewrite_functions(mod: Any, mutator_class: type) -> Tuple[Any, List[str]]:
    """``mod`` with every Relax function passed through ``mutator_class`` (a ``PyExprMutator``);
    the caller's module stays as it is. Kernels the mutator adds with ``call_te`` come along.
    Returns the new module and the names of its Relax functions."""
    import tvm
    from tvm import relax

    rewrite = mutator_class(tvm.IRModule(dict(mod.functions), attrs=mod.attrs))
    functions = [(gv, f) for gv, f in mod.functions.items() if isinstance(f, relax.Function)]
    for gv, func in functions:
        rewrite.builder_.update_func(gv, rewrite.visit_expr(func))
    return rewrite.builder_.finalize(), [gv.name_hint for gv, _ in functions]


def clip_as_min_max(mod: Any) -> Any:
    """``clip(x, lo, hi)`` (ReLU6) -> ``minimum(maximum(x, lo), hi)``.

    ``ConvertLayout`` has no layout rule for ``clip`` (its bounds are prim values): it would
    put a transpose before and after every ReLU6. The binary ops carry the layout through, and
    legalization fuses them into the convolution's epilogue exactly as it fused ``clip``."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class Rewrite(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not _is_op(call, "relax.clip"):
                return call
            x, lo, hi = call.args
            dtype = str(getattr(x, "dtype", "float32"))
            return relax.op.minimum(relax.op.maximum(x, relax.const(float(lo.value), dtype)), relax.const(float(hi.value), dtype))

    return _rewrite_functions(mod, Rewrite)[0]


# ---------------------------------------------------------------------------- TOPI computations
def _lerp_weight(out_index: Any, in_size: Any, out_size: Any, mode: str) -> Tuple[Any, Any]:
    """The input index below output position ``out_index`` and the weight of the one above it."""
    from tvm import te
    from tvm.topi.image.resize import get_inx

    position = get_inx(out_index, in_size, out_size, mode)
    below = te.floor(position).astype("int32")
    return below, position - below


def upsample_rows(x: Any, size: Sequence[Any], mode: str) -> Any:
    """NCHW ``x`` interpolated along the width to ``size[1]`` (TOPI's first pass), at its own height."""
    from tvm import te
    from tvm.topi.image.resize import _lerp, get_2d_pixel

    n, c, h, w = x.shape

    def blend(b, k, row, col):
        left, t = _lerp_weight(col, w, size[1], mode)
        pixel = lambda i: get_2d_pixel(x, "NCHW", h, w, b, k, row, i, None, 0, 0)
        return _lerp(pixel(left), pixel(left + 1), t)

    return te.compute((n, c, h, size[1]), blend, name="upsample_rows")


def blend_rows_argmax(rows: Any, size: Sequence[Any], mode: str, axis: Any, keepdims: Any, dtype: str) -> Any:
    """The argmax over classes of :func:`upsample_rows`' output interpolated along the height to
    ``size[0]``, each class score blended from two rows where it is reduced."""
    from tvm import te, topi
    from tvm.topi.image.resize import _lerp, get_2d_pixel

    n, c, h, width = rows.shape

    def blend(b, k, row, col):
        top, t = _lerp_weight(row, h, size[0], mode)
        pixel = lambda j: get_2d_pixel(rows, "NCHW", h, width, b, k, j, col, None, 0, 0)
        return _lerp(pixel(top), pixel(top + 1), t)

    scores = te.compute((n, c, size[0], width), blend, name="upsample_cols")
    return topi.cast(topi.argmax(scores, axis, keepdims), dtype)


def upsample_argmax(x: Any, size: Sequence[Any], resize: Any, axis: Any, keepdims: Any, dtype: str) -> Any:
    """TOPI's ``resize2d`` (with the attributes ``resize`` of the replaced call) inlined into the argmax:
    the one-kernel form, for the modes that are not separable."""
    from tvm import topi

    scores = topi.image.resize2d(
        x, roi=resize.roi, size=size, layout=resize.layout, method=resize.method,
        coordinate_transformation_mode=resize.coordinate_transformation_mode,
        rounding_method=resize.rounding_method, bicubic_alpha=resize.cubic_alpha,
        bicubic_exclude=resize.cubic_exclude, extrapolation_value=resize.extrapolation_value,
    )
    return topi.cast(topi.argmax(scores, axis, keepdims), dtype)


def upsampling_into_argmax(mod: Any) -> Any:
    """``astype(argmax(resize2d(logits)))`` -> kernels that interpolate each pixel's class
    scores where they are reduced.

    The whole-frame function ends by upsampling the logits to the input size and taking the
    argmax over the classes. Fused by operator pattern, these stay two kernels (an injective
    operator does not fuse into a reduction): the first writes every class score at full size
    (7.6 MB for 11 x 360 x 480) for the second to read back, and was the slowest kernel of the
    tuned ``mrms_tiny`` frame (11 %) with a design space MetaSchedule exhausted in 2 candidates.
    The replacement is built from the TOPI computations the two operators legalize to, so its
    arithmetic is theirs.

    Bilinear upsampling is separable, and TOPI interpolates along the width first: it blends
    two input rows that were each blended along the width. For the usual NCHW bilinear modes
    the width pass runs as a kernel of its own at the input's height (11 x 45 x 480 for a
    360 x 480 frame), and the argmax kernel blends two of its rows per class score: two
    contiguous loads instead of four gathers, the same operations in the same order. Other
    modes get one kernel, TOPI's interpolation inlined into its argmax."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class Rewrite(PyExprMutator):
        def bound(self, expr, name):
            value = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
            return value if _is_op(value, name) else None

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not _is_op(call, "relax.astype"):
                return call
            argmax = self.bound(call.args[0], "relax.argmax")
            resize = None if argmax is None else self.bound(argmax.args[0], "relax.image.resize2d")
            if resize is None:
                return call
            x, size, attrs = resize.args[0], resize.args[1], resize.attrs
            reduce = (argmax.attrs.axis, argmax.attrs.keepdims, call.attrs.dtype)
            if not (attrs.layout == "NCHW" and attrs.method == "linear" and attrs.coordinate_transformation_mode in SEPARABLE_MODES):
                return self.builder_.call_te(upsample_argmax, x, size, attrs, *reduce, primfunc_name_hint="upsample_argmax")
            mode = attrs.coordinate_transformation_mode
            rows = self.builder_.emit(self.builder_.call_te(upsample_rows, x, size, mode, primfunc_name_hint="upsample_rows"))
            return self.builder_.call_te(blend_rows_argmax, rows, size, mode, *reduce, primfunc_name_hint="upsample_argmax")

    mod, functions = _rewrite_functions(mod, Rewrite)
    return relax.transform.DeadCodeElimination(functions)(mod)  # the argmax and upsampling it replaced are unused now
