"""Declaring a node's parameter table: descriptors, integers accepted for floats, refusals in words.

Every node keeps its parameters in one table, ``name -> (default, ParameterDescriptor)``, listed
again in ``config/<node>.yaml`` (a test checks both agree). :func:`declare_parameters` declares
the table and keeps these promises, at start-up (``-p``, a params file, ``parameter_overrides``)
and at run time (``ros2 param set``, ``set_parameters``) alike:

* a parameter whose default is a float also takes an integer (``latency_budget_ms:=50``,
  ``latency_budget_ms: 30`` in YAML, ``ros2 param set ... latency_budget_ms 5``) and stores it
  as a float, so the node always reads a float and the descriptor's range still applies;
* a value of another type is refused with a reason in words ("expects a number ..."), not
  rclpy's ``Wrong parameter type, expected '3' got '2'``;
* a start-up value that is refused raises :class:`ParameterError` (a ``ValueError``) naming the
  parameter, so the node's ``main()`` prints one line instead of a traceback.

rclpy checks a statically typed parameter's type before any callback sees it, and at start-up
takes an override as it comes; so the table's parameters are declared with
``dynamic_typing=True``, an integer override is turned into a float before declaration, a
pre-set callback does the same at run time, and the one on-set callback checks types (in words)
and the node's own rules. Ranges stay in the descriptors, where rclpy enforces them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter

#: name -> (default, descriptor)
Table = Mapping[str, Tuple[Any, ParameterDescriptor]]
#: a node's own rule: (name, value already of the declared type) -> reason to refuse, or None
Check = Callable[[str, Any], Optional[str]]

T = Parameter.Type
_WORDS = {
    T.BOOL: "true or false",
    T.INTEGER: "an integer",
    T.DOUBLE: "a number (an integer such as 5 is taken as 5.0)",
    T.STRING: "a string",
    T.BYTE_ARRAY: "a list of bytes",
    T.BOOL_ARRAY: "a list of true/false values",
    T.INTEGER_ARRAY: "a list of integers",
    T.DOUBLE_ARRAY: "a list of numbers",
    T.STRING_ARRAY: "a list of strings",
}
_GOT = {
    T.NOT_SET: "no value", T.BOOL: "a boolean", T.INTEGER: "an integer", T.DOUBLE: "a floating-point number",
    T.STRING: "a string", T.BYTE_ARRAY: "a byte list", T.BOOL_ARRAY: "a boolean list", T.INTEGER_ARRAY: "an integer list",
    T.DOUBLE_ARRAY: "a list of floating-point numbers", T.STRING_ARRAY: "a string list",
}


class ParameterError(ValueError):
    """A parameter value given at start-up that the node refuses; the message names it and says why."""


def descriptor(text: str, read_only: bool = False, lo: Optional[float] = None, hi: Optional[float] = None,
               step: Optional[int] = None) -> ParameterDescriptor:
    """A descriptor with a description, read-only flag and range (float bounds: a floating-point
    range; int bounds: an integer range with ``step``, default 1)."""
    d = ParameterDescriptor(description=text, read_only=read_only)
    if isinstance(lo, float) or isinstance(hi, float):
        d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    elif isinstance(lo, int):
        d.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=step or 1)]
    return d


def _type_of(value: Any) -> Parameter.Type:
    return Parameter.Type.from_parameter_value(value)


def as_declared(param: Parameter, declared: Parameter.Type) -> Parameter:
    """``param`` with an integer value turned into a float where a float is declared (else unchanged)."""
    if declared == T.DOUBLE and param.type_ == T.INTEGER:
        return Parameter(param.name, T.DOUBLE, float(param.value))
    return param


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def refusal(name: str, param: Parameter, declared: Parameter.Type, desc: ParameterDescriptor,
            check: Optional[Check] = None) -> Optional[str]:
    """Why ``param`` (already :func:`as_declared`) cannot be the value of ``name``, in words; None if it can."""
    if param.type_ != declared:
        return f"'{name}' expects {_WORDS.get(declared, declared.name)}, got {_GOT.get(param.type_, param.type_.name)} ({_shown(param.value)})"
    v = param.value
    if declared == T.DOUBLE and desc.floating_point_range:
        r = desc.floating_point_range[0]
        if not (math.isfinite(v) and r.from_value <= v <= r.to_value):
            return f"'{name}' must be a number from {r.from_value:g} to {r.to_value:g}, got {v:g}"
    if declared == T.INTEGER and desc.integer_range:
        r = desc.integer_range[0]
        if not r.from_value <= v <= r.to_value:
            return f"'{name}' must be an integer from {r.from_value} to {r.to_value}, got {v}"
    return check(name, v) if check is not None else None


def declare_parameters(node: Node, table: Table, check: Optional[Check] = None) -> Dict[str, Any]:
    """Declare every parameter of ``table`` on ``node`` (see the module docstring); returns their values.

    ``check(name, value)`` adds the node's own rules (a reason to refuse, or None); it runs at
    start-up and on every change. Raises :class:`ParameterError` for a refused start-up value."""
    declared = {name: _type_of(default) for name, (default, _) in table.items()}

    def pre_set(params: List[Parameter]) -> List[Parameter]:
        return [as_declared(p, declared[p.name]) if p.name in declared else p for p in params]

    def on_set(params: List[Parameter]) -> SetParametersResult:
        for p in params:
            if p.name not in declared:
                continue
            reason = refusal(p.name, p, declared[p.name], table[p.name][1], check)
            if reason is not None:
                # rclpy already wrote the refused value's type into the (dynamically typed)
                # descriptor; put the declared type back so `ros2 param describe` stays right
                if node.has_parameter(p.name):
                    node.describe_parameter(p.name).type = declared[p.name].value
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    # Start-up values (command line, params files, parameter_overrides) are applied by
    # declare_parameter as they come, without the pre-set callback: convert and check them here.
    # rclpy keeps them in Node._parameter_overrides (rclpy has no public accessor for them).
    overrides = getattr(node, "_parameter_overrides", None)
    if isinstance(overrides, dict):
        for name, (_, desc) in table.items():
            if name in overrides:
                given = as_declared(overrides[name], declared[name])
                reason = refusal(name, given, declared[name], desc, check)
                if reason is not None:
                    raise ParameterError(f"parameter {reason}")
                overrides[name] = given

    node.add_pre_set_parameters_callback(pre_set)
    node.add_on_set_parameters_callback(on_set)
    for name, (default, desc) in table.items():
        dyn = ParameterDescriptor()
        dyn.name, dyn.description, dyn.read_only = desc.name, desc.description, desc.read_only
        dyn.floating_point_range, dyn.integer_range = list(desc.floating_point_range), list(desc.integer_range)
        dyn.additional_constraints, dyn.dynamic_typing = desc.additional_constraints, True
        try:
            node.declare_parameter(name, default, dyn)
        except ParameterException as e:  # what rclpy itself refuses (checked above, so rare)
            raise ParameterError(f"parameter '{name}': {e}") from None
        node.describe_parameter(name).type = declared[name].value
    return {name: node.get_parameter(name).value for name in table}


__all__ = ["Check", "ParameterError", "Table", "as_declared", "declare_parameters", "descriptor", "refusal"]
