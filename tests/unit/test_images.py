import numpy as np
import torch

from gandist.reporting.grids import make_grid, save_grid


def test_float_and_uint8_inputs_map_to_the_same_pixels():
    u8 = torch.tensor([0, 64, 255], dtype=torch.uint8).reshape(3, 1, 1, 1)
    floats = u8.float() / 127.5 - 1
    a, b = make_grid(u8, rows=1, pad=0), make_grid(floats, rows=1, pad=0)
    assert a.tolist() == [[0, 64, 255]] and np.array_equal(a, b)


def test_grid_layout_and_rgb(tmp_path):
    images = torch.zeros(5, 3, 4, 4)
    images[4] = 1.0
    grid = make_grid(images, rows=2, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)  # 2 rows x 3 columns of 4 px with 1 px padding
    assert grid[6:10, 6:10].min() == 255 and grid[1:5, 1:5].max() == 128
    path = save_grid(images, tmp_path / "g.png")
    assert path.is_file() and not list(tmp_path.glob(".*tmp*"))
