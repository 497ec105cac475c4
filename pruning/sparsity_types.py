"""The one table of structured sparsity types: what a unit is, which ratios a rule carries, the default kernel
group, where units compete, and the spellings the original scripts use. Projections, the reweighting penalty,
the profile parser, the profile search and the compact engine read it (docs/algorithms.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SparsityType:
    name: str
    unit: str  # what one pruned unit is
    components: tuple[str, ...]  # the ratios a rule of this type carries (kgrc: a kgr and a kgc ratio)
    group_size: tuple[int, int] | None  # default kernel group (gM filters x gN channels); None: no groups
    ranking: str  # where units compete for survival: "layer" or "group"
    aliases: tuple[str, ...] = ()  # RT3D / TCAD spellings

    @property
    def grouped(self) -> bool:
        """Defined on kernel groups (the compact engine runs these as group-sparse kernels)."""
        return self.group_size is not None

    def even_ratios(self, removed: float) -> dict[str, float]:
        """Ratios that remove `removed` of the layer's weights; kgrc splits the density evenly between its rows
        and columns ((1 - r)^2 = 1 - removed)."""
        if len(self.components) == 2:
            r = 1 - math.sqrt(1 - removed)
            return {c: round(r, 4) for c in self.components}
        return {self.name: round(removed, 4)}


TYPES: dict[str, SparsityType] = {t.name: t for t in (
    SparsityType("irregular", "one weight", ("irregular",), None, "layer"),
    SparsityType("filter", "an output filter", ("filter",), None, "layer"),
    SparsityType("channel", "an input channel", ("channel",), None, "layer"),
    SparsityType("blk-vanilla", "a whole kernel group", ("blk-vanilla",), (8, 4), "layer",
                 ("vanilla", "blk_vanilla")),
    SparsityType("kgs", "one kernel position in every kernel of a group", ("kgs",), (8, 4), "layer",
                 ("blk-kgs", "kgs-blk")),
    SparsityType("kgr", "a row of a group: one filter on the group's channels", ("kgr",), (8, 8), "group"),
    SparsityType("kgc", "a column of a group: one spatial position with its temporal taps", ("kgc",), (8, 8),
                 "group"),
    SparsityType("kgrc", "a weight whose KGR row or KGC column is removed", ("kgr", "kgc"), (8, 8), "group"),
)}
ALIASES = {alias: t.name for t in TYPES.values() for alias in t.aliases}


def canonical_type(name: str) -> str:
    """The canonical sparsity type for a name or alias; ValueError on an unknown one."""
    key = ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in TYPES:
        raise ValueError(f"unknown sparsity type {name!r}; known: {', '.join(TYPES)}")
    return key


def default_group_size(name: str) -> tuple[int, int]:
    return TYPES[canonical_type(name)].group_size or (8, 8)
