"""Argument and input-shape checks shared by the layers: one wording for every error."""

import numbers


def check_fraction(layer: str, name: str, value: object) -> float:
    """Returns `value` as a float, or raises a ValueError unless it is a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"{layer}: {name} must be a number in [0, 1], got {value!r}.")
    return float(value)


def check_int(layer: str, name: str, value: object, minimum: int) -> int:
    """Returns `value` as an int, or raises a ValueError unless it is an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{layer}: {name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_rank(layer: str, input_shape: tuple, rank: int, layout: str) -> None:
    """Raises a ValueError unless the input has `rank` dimensions (batch included)."""
    if input_shape is None or len(input_shape) != rank:
        shape = None if input_shape is None else tuple(input_shape)
        raise ValueError(
            f"{layer}: expected a rank-{rank} input {layout}, got shape {shape} "
            f"(rank {None if shape is None else len(shape)})."
        )


def check_known(layer: str, input_shape: tuple, axes: dict[int, str]) -> None:
    """Raises a ValueError when one of the named axes is unknown (None) at build time."""
    for axis, name in axes.items():
        if input_shape[axis] is None:
            raise ValueError(
                f"{layer}: the {name} axis of the input must be known when the layer is built, "
                f"got shape {tuple(input_shape)}."
            )
