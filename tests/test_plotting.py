import matplotlib.image
import numpy as np
import pytest
import torch

from inputiba.plotting import plot_saliency_map, to_display_image


def test_plot_writes_a_png_with_the_heatmap_over_the_image(tmp_path):
    path = tmp_path / "sub" / "heat.png"
    heat = torch.rand(20, 30)
    plot_saliency_map(heat, torch.randn(3, 20, 30), path=path, title="t")
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50
    assert [p.name for p in path.parent.iterdir()] == ["heat.png"]


def test_plot_rejects_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match="differ in size"):
        plot_saliency_map(torch.rand(8, 8), torch.rand(1, 9, 9), path=tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        plot_saliency_map(torch.rand(1, 8, 8), path=tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_display_image_layouts_and_range():
    chw = torch.randn(3, 5, 6)
    out = to_display_image(chw)
    assert out.shape == (5, 6, 3) and out.min() == 0.0 and out.max() == 1.0
    assert to_display_image(np.ones((1, 4, 4))).shape == (4, 4)
    assert to_display_image(np.ones((4, 4))).max() == 0.0


def test_figures_written_to_files_never_touch_pyplot(tmp_path):
    """A notebook's inline backend must survive: file figures are drawn without pyplot."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from inputiba.plotting import plot_panels, plot_saliency_map\n"
        f"plot_panels(torch.rand(1, 8, 8), {{'m': (torch.rand(8, 8), 'u')}}, r'{tmp_path / 'a.png'}', box=(1, 1, 4, 4))\n"
        f"plot_saliency_map(torch.rand(8, 8), path=r'{tmp_path / 'b.png'}')\n"
        "print('matplotlib.pyplot' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert (tmp_path / "a.png").stat().st_size > 500 and (tmp_path / "b.png").stat().st_size > 500
