"""compact/layout.py: where the kernel writes each computed position."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.mark.parametrize("case", [((4, 7, 9), (4, 5, 7), None, (0, 0, 0)), ((3, 30, 30), (3, 28, 28), None, (0, 0, 0)),
                                  ((2, 9, 9), (2, 8, 8), (4, 9, 9), (1, 0, 0)),
                                  ((5, 17, 65), (5, 16, 64), (5, 17, 65), (0, 1, 1))])
def test_output_runs_write_what_the_scatter_index_says(case):
    """Brute force: expanding the runs gives back the per-position index, and no run crosses a tile."""
    from compact.layout import output_runs, scatter_index
    from compact.plan import TILE

    grid, outd, dest_grid, offset = case
    q = (outd[0] - 1) * grid[1] * grid[2] + (outd[1] - 1) * grid[2] + outd[2]
    oidx = scatter_index(q, grid, outd, dest_grid, offset).numpy()
    runs, tile_runs = (t.numpy() for t in output_runs(torch.from_numpy(oidx)))
    expanded = np.full(q, -1)
    for tile in range(len(tile_runs) - 1):
        for p0, n, d in runs[tile_runs[tile]:tile_runs[tile + 1]]:
            assert n > 0 and tile * TILE <= p0 and p0 + n <= (tile + 1) * TILE
            assert (expanded[p0:p0 + n] == -1).all()
            expanded[p0:p0 + n] = np.arange(d, d + n)
    assert tile_runs[-1] == len(runs) and (expanded == oidx).all()
