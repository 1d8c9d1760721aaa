"""Named bit-width scaling laws for per-MAC energy and MAC throughput tables.

A platform table gives a figure at a few bit-widths (``{8: 0.28, 4: 0.10, 2: 0.05}``); these
functions say what the figure is at a width the table lacks and for mixed weight/activation
widths. Each law is a function of one width; mixed widths combine by the geometric mean
``sqrt(f(b_w) * f(b_a))``, which is exact for the multiplier laws (energy ∝ b_w·b_a,
throughput ∝ 1/(b_w·b_a)).

- ``flat_container``: the hardware computes in containers (CMSIS-NN unpacks int4 to int8/16), so
  a width costs what its container costs: the table must hold every container width.
- ``quadratic``: ∝ b² from the nearest anchor (multiplier energy, exponent ≈ 1.98, Horowitz 2014).
- ``linear``: ∝ b from the nearest anchor (adders, exponent ≈ 0.87; serial datapaths).
- ``inverse_quadratic``: ∝ 1/b² (throughput of bit-composable arrays: Bit Fusion, ISCA 2018,
  64/(b_w·b_a) MACs per fusion unit for container widths).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

LAWS: dict[str, float] = {"quadratic": 2.0, "linear": 1.0, "inverse_quadratic": -2.0}
SCALING_LAWS = ("flat_container", *LAWS)


def per_width(table: Mapping[int, float], law: str, container: Callable[[int], int]) -> np.ndarray:
    """The figure for nominal widths 0..32 as a lookup array (index = nominal bits).

    A nominal width runs at its container width ``e`` (a 3-bit value on 2/4/8-bit bricks runs
    as 4-bit). The figure is ``table[e]`` where the table has it; otherwise ``flat_container``
    takes the nearest larger anchor, and the other laws scale the nearest anchor ``a`` (ties
    to the larger) by ``(e / a) ** exponent``.
    """
    if law not in SCALING_LAWS:
        raise ValueError(f"unknown scaling law {law!r}; known: {', '.join(SCALING_LAWS)}")
    if not table:
        raise ValueError("a scaling table needs at least one anchor width")
    anchors = sorted(table)
    out = np.zeros(33, dtype=np.float64)
    for b in range(1, 33):
        e = container(b)
        if e in table:
            out[b] = table[e]
        elif law == "flat_container":
            larger = [a for a in anchors if a >= e]
            out[b] = table[larger[0] if larger else anchors[-1]]
        else:
            a = min(anchors, key=lambda x: (abs(x - e), -x))
            out[b] = table[a] * (e / a) ** LAWS[law]
    return out


def mixed(
    lookup_w: np.ndarray, lookup_a: np.ndarray, w_bits: np.ndarray, a_bits: np.ndarray
) -> np.ndarray:
    """Figure for weight width ``w_bits`` times activation width ``a_bits`` (geometric mean)."""
    return np.sqrt(lookup_w[np.clip(w_bits, 0, 32)] * lookup_a[np.clip(a_bits, 0, 32)])
