"""Named bit-width scaling laws for per-MAC energy and MAC throughput tables.

A platform table gives a figure at a few bit-widths (``{8: 0.28, 4: 0.10, 2: 0.05}``); these
functions say what the figure is at a width the table lacks and for mixed weight/activation
widths. Each law is a function of one width; mixed widths combine by the geometric mean
``sqrt(f(b_w) * f(b_a))``, which is exact for the multiplier laws (energy ∝ b_w·b_a,
throughput ∝ 1/(b_w·b_a)).

- ``flat_container``: the hardware computes in containers (CMSIS-NN unpacks int4 to int8/16), so
  a width costs what its container costs: the table must hold every container width.
- ``quadratic``: ∝ b² beyond the anchors (multiplier energy, exponent ≈ 1.98, Horowitz 2014).
- ``linear``: ∝ b beyond the anchors (adders, exponent ≈ 0.87; serial datapaths).
- ``inverse_quadratic``: ∝ 1/b² (throughput of bit-composable arrays: Bit Fusion, ISCA 2018,
  64/(b_w·b_a) MACs per fusion unit for container widths).

Between two anchors every law interpolates as a power law through both of them (straight in
log-log), so measured anchors that deviate from the law never make the figure non-monotone
between them; the law's exponent extrapolates beyond the outermost anchors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from inag.arch import MAX_BITS, MIN_BITS

LAWS: dict[str, float] = {"quadratic": 2.0, "linear": 1.0, "inverse_quadratic": -2.0}
SCALING_LAWS = ("flat_container", *LAWS)


def per_width(table: Mapping[int, float], law: str, container: Callable[[int], int]) -> np.ndarray:
    """The figure for nominal widths 0..32 as a lookup array (index = nominal bits).

    A nominal width runs at its container width ``e`` (a 3-bit value on 2/4/8-bit bricks runs
    as 4-bit). The figure is ``table[e]`` where the table has it; otherwise ``flat_container``
    takes the nearest larger anchor; the other laws interpolate between the anchors around
    ``e`` as ``f(lo) * (e / lo) ** k`` with ``k`` fitted through both, and beyond the
    outermost anchor ``a`` scale it by the law: ``(e / a) ** exponent``.
    """
    if law not in SCALING_LAWS:
        raise ValueError(f"unknown scaling law {law!r}; known: {', '.join(SCALING_LAWS)}")
    if not table:
        raise ValueError("a scaling table needs at least one anchor width")
    anchors = sorted(table)
    if law == "flat_container":  # a container the table lacks would silently take a neighbour
        # every container a network's weights or inputs can live in (the 8-bit input too),
        # not only those up to the table's widest entry: {3: x} must not price 8-bit MACs
        needed = sorted({container(b) for b in range(MIN_BITS, MAX_BITS + 1)})
        missing = [c for c in needed if c not in table]
        if missing:
            raise ValueError(
                f"scaling flat_container needs an entry for every container width a network "
                f"uses ({MIN_BITS}..{MAX_BITS}-bit values live in {needed}); missing {missing} "
                f"(table has {anchors})"
            )
    out = np.zeros(33, dtype=np.float64)
    for b in range(1, 33):
        e = container(b)
        if e in table:
            out[b] = table[e]
        elif law == "flat_container":
            larger = [a for a in anchors if a >= e]
            out[b] = table[larger[0] if larger else anchors[-1]]
        else:
            lo = [a for a in anchors if a < e]
            hi = [a for a in anchors if a > e]
            if lo and hi:
                a0, a1 = lo[-1], hi[0]
                k = np.log(table[a1] / table[a0]) / np.log(a1 / a0)
                out[b] = table[a0] * (e / a0) ** k
            else:
                a = hi[0] if hi else lo[-1]
                out[b] = table[a] * (e / a) ** LAWS[law]
    return out


def mixed(
    lookup_w: np.ndarray, lookup_a: np.ndarray, w_bits: np.ndarray, a_bits: np.ndarray
) -> np.ndarray:
    """Figure for weight width ``w_bits`` times activation width ``a_bits`` (geometric mean)."""
    return np.sqrt(lookup_w[np.clip(w_bits, 0, 32)] * lookup_a[np.clip(a_bits, 0, 32)])
