import math
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

import odam.viz.overlays
from odam._image import to_uint8
from odam.structures import TARGETS, Detections, Explanation
from odam.viz import colors
from odam.viz.overlays import overlay, overview, panel, save_overlay, save_overview, save_panel

GREEN = [0, 255, 0]


def outline(h: int, w: int, rows: tuple[int, int], cols: tuple[int, int], thickness: int = 2) -> np.ndarray:
    """Reference: a ``thickness``-px outline of the pixel block rows[0]..rows[1]-1 x cols[0]..cols[1]-1, by slicing."""
    mask = np.zeros((h + 20, w + 20), dtype=bool)  # padded so blocks past the border can be drawn, then cut
    (r1, r2), (c1, c2) = (r + 10 for r in rows), (c + 10 for c in cols)
    mask[r1:r2, c1:c2] = True
    t = thickness
    mask[r1 + t : r2 - t, c1 + t : c2 - t] = False
    return mask[10 : 10 + h, 10 : 10 + w]


@pytest.fixture
def image() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(3, 10, 12)


# --- overlay -------------------------------------------------------------------------------------------


def test_alpha_zero_returns_the_image(image):
    out = overlay(image, torch.rand(10, 12), alpha=0.0)
    assert out.shape == (10, 12, 3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, to_uint8(image))


def test_box_outline_pixels_and_nothing_else(image):
    out = overlay(image, torch.rand(10, 12), torch.tensor([2.0, 3.0, 8.0, 9.0]), alpha=0.0)
    mask = outline(10, 12, rows=(3, 9), cols=(2, 8))
    assert mask.sum() == 6 * 6 - 2 * 2
    assert (out[mask] == GREEN).all()
    np.testing.assert_array_equal(out[~mask], to_uint8(image)[~mask])


@pytest.mark.parametrize(
    ("box", "rows", "cols"),
    [
        ([1.6, 1.2, 5.0, 6.3], (1, 7), (1, 5)),  # fractional edges: every pixel the box touches
        ([-5.0, -4.0, 3.0, 4.0], (-4, 4), (-5, 3)),  # past the top-left corner: only the visible edges
        ([7.0, 6.0, 30.0, 30.0], (6, 30), (7, 30)),  # past the bottom-right corner
        ([-3.0, -3.0, 40.0, 40.0], (-3, 40), (-3, 40)),  # around the whole image: nothing visible
        ([20.0, 20.0, 30.0, 30.0], (20, 30), (20, 30)),  # outside the image
        ((4, 4, 5, 5), (4, 5), (4, 5)),  # one pixel, given as a tuple of ints
    ],
)
def test_box_is_clipped_to_the_image(image, box, rows, cols):
    out = overlay(image, torch.rand(10, 12), box, alpha=0.0)
    mask = outline(10, 12, rows, cols)
    assert (out[mask] == GREEN).all()
    np.testing.assert_array_equal(out[~mask], to_uint8(image)[~mask])


def test_box_color(image):
    out = overlay(image, torch.rand(10, 12), [0, 0, 4, 4], alpha=0.0, box_color=(255, 0, 128))
    assert out[0, 0].tolist() == [255, 0, 128]


def blend(img: torch.Tensor, t: np.ndarray, a, cmap: str = colors.COLORMAP) -> np.ndarray:
    """Reference: the documented blend ``(1 - a) * image + a * cmap(t)`` for every pixel at once, in float64."""
    if not np.isscalar(a):
        a = a[..., None]
    photo = img.permute(1, 2, 0).double().numpy()
    return np.rint(np.clip((1 - a) * photo + a * matplotlib.colormaps[cmap](t)[..., :3], 0, 1) * 255).astype(np.uint8)


def test_by_default_weight_follows_the_value_and_zero_leaves_the_photo():
    heat = torch.zeros(6, 7)
    heat[2, 3], heat[5, 6], heat[1, 1] = 5.0, -1.0, 2.0
    img = torch.full((3, 6, 7), 0.5)
    out = overlay(img, heat)
    hottest = 0.5 * (1 - colors.OPACITY) + colors.OPACITY * np.array(matplotlib.colormaps["inferno"](1.0)[:3])
    assert out[2, 3].tolist() == np.rint(255 * hottest).tolist()
    assert out[5, 6].tolist() == [128, 128, 128]  # the minimum is t = 0: the photo, untouched
    assert colors.COLORMAP == "inferno" and out[0, 0].tolist() != [128, 128, 128]  # 0 is t = 1/6 here


def test_blend_by_value_for_every_pixel():
    torch.manual_seed(1)
    img = torch.rand(3, 5, 6)
    heat = torch.rand(5, 6) * 7 + 3
    out = overlay(img, heat, opacity=0.6, cmap="viridis")
    t = ((heat - heat.min()) / (heat.max() - heat.min())).numpy().astype(np.float64)
    np.testing.assert_array_equal(out, blend(img, t, colors.heat_alpha(t, 0.6), "viridis"))
    np.testing.assert_array_equal(out, blend(img, t, 0.6 * np.sqrt(t), "viridis"))  # heat_alpha is opacity * sqrt(t)


def test_blend_on_an_absolute_scale_for_every_pixel():
    torch.manual_seed(7)
    img = torch.rand(3, 5, 6)
    heat = torch.randn(5, 6) * 2  # some values below vmin, some above vmax
    out = overlay(img, heat, vmin=-1.0, vmax=1.5)
    t = np.clip((heat.numpy().astype(np.float64) + 1.0) / 2.5, 0, 1)
    assert (t == 0).any() and (t == 1).any()
    np.testing.assert_array_equal(out, blend(img, t, colors.OPACITY * np.sqrt(t)))


def test_vmin_vmax_is_an_absolute_scale(image):
    heat = torch.rand(10, 12)
    np.testing.assert_array_equal(overlay(image, heat, vmin=0.0, vmax=4.0),
                                  overlay(image, 2 * heat, vmin=0.0, vmax=8.0))
    # a map far below vmax barely shows; normalised, the same map is at full strength
    faint = overlay(image, heat, vmin=0.0, vmax=1000.0).astype(int)
    assert np.abs(faint - to_uint8(image)).max() <= np.rint(255 * colors.OPACITY * np.sqrt(1 / 1000)) + 1
    assert np.abs(overlay(image, heat).astype(int) - to_uint8(image)).max() > 50
    # normalize has no say once there is a scale
    np.testing.assert_array_equal(overlay(image, 5 * heat, vmin=0.0, vmax=4.0, normalize=False),
                                  overlay(image, 5 * heat, vmin=0.0, vmax=4.0))


def test_constant_alpha_blend_for_every_pixel():
    torch.manual_seed(1)
    img = torch.full((3, 5, 6), 0.25)
    img[1] = 0.75
    heat = torch.rand(5, 6) * 7 + 3
    out = overlay(img, heat, alpha=0.3, cmap="viridis")
    t = ((heat - heat.min()) / (heat.max() - heat.min())).numpy().astype(np.float64)
    np.testing.assert_array_equal(out, blend(img, t, 0.3, "viridis"))


def test_normalize_ignores_offset_and_scale(image):
    heat = torch.rand(10, 12)
    np.testing.assert_array_equal(overlay(image, heat), overlay(image, 3 * heat - 10))


def test_constant_heatmap_is_zero(image):
    np.testing.assert_array_equal(overlay(image, torch.full((10, 12), 4.0)), to_uint8(image))
    out = overlay(torch.zeros(3, 10, 12), torch.full((10, 12), 4.0), alpha=1.0)
    assert (out == np.rint(255 * np.array(matplotlib.colormaps[colors.COLORMAP](0.0)[:3]))).all()


def test_without_normalize_values_are_used_as_is():
    heat = torch.full((2, 2), 0.5)
    out = overlay(torch.zeros(3, 2, 2), heat, alpha=1.0, normalize=False)
    assert (out == np.rint(255 * np.array(matplotlib.colormaps[colors.COLORMAP](0.5)[:3]))).all()


def test_heatmap_with_grad_and_colormap_object(image):
    heat = torch.rand(10, 12, requires_grad=True)
    out = overlay(image, heat, cmap=matplotlib.colormaps["gray"], alpha=1.0)
    assert out[..., 0].max() == 255 and out[..., 0].min() == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heatmap": torch.rand(10, 11)}, "heatmap shape (10, 11) does not match image shape (10, 12)"),
        ({"heatmap": torch.rand(1, 10, 12)}, "heatmap shape (1, 10, 12) does not match image shape (10, 12)"),
        ({"heatmap": np.zeros((10, 12))}, "expected heatmap to be a tensor, got ndarray"),
        ({"alpha": 1.5}, "expected alpha in [0, 1] or None, got 1.5"),
        ({"opacity": -0.1}, "expected opacity in [0, 1], got -0.1"),
        ({"vmin": 0.0}, "give both vmin and vmax, or neither; got vmin=0.0 and vmax=None"),
        ({"vmin": 1.0, "vmax": 1.0}, "expected finite vmin < vmax, got vmin=1.0 and vmax=1.0"),
        ({"vmin": 0.0, "vmax": float("inf")}, "expected finite vmin < vmax"),
        ({"cmap": "nope"}, "unknown colormap 'nope'"),
        (
            {"normalize": False},
            "expected heatmap values in [0, 1] with normalize=False, got min 0.0 and max 3.0",
        ),
        ({"box": [1, 2, 3]}, "expected box as four finite numbers (x1, y1, x2, y2), got [1.0, 2.0, 3.0]"),
        ({"box": [0, 0, float("inf"), 1]}, "expected box as four finite numbers"),
        ({"box": [5, 0, 4, 1]}, "expected box with x1 <= x2 and y1 <= y2, got [5.0, 0.0, 4.0, 1.0]"),
        ({"box": [0, 0, 4, 4], "box_color": (0, 256, 0)}, "expected box_color as three ints in 0..255"),
    ],
)
def test_overlay_rejects_bad_input(image, kwargs, message):
    heat = torch.zeros(10, 12)
    heat[0, 0] = 3.0
    kwargs = {"heatmap": heat, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        overlay(image, **kwargs)


def test_overlay_rejects_nonfinite_heatmap(image):
    heat = torch.zeros(10, 12)
    heat[1, 1] = float("nan")
    with pytest.raises(ValueError, match="expected a finite heatmap, got 1 non-finite values"):
        overlay(image, heat)


def test_overlay_validates_the_image():
    with pytest.raises(ValueError, match=re.escape("expected image of shape [3, H, W], got (10, 12)")):
        overlay(torch.rand(10, 12), torch.rand(10, 12))


def test_save_overlay_round_trips(image, tmp_path):
    heat, box = torch.rand(10, 12), [1, 1, 6, 6]
    path = save_overlay(tmp_path / "sub" / "o.png", image, heat, box, alpha=0.7, cmap="magma")
    assert path == tmp_path / "sub" / "o.png"
    with Image.open(path) as png:
        assert png.format == "PNG"
        np.testing.assert_array_equal(np.asarray(png), overlay(image, heat, box, alpha=0.7, cmap="magma"))


# --- panel ---------------------------------------------------------------------------------------------


def explanation(h: int = 10, w: int = 12, targets: tuple[str, ...] = TARGETS) -> Explanation:
    torch.manual_seed(2)
    dets = Detections(
        torch.tensor([[0.0, 0.0, 5.0, 5.0], [2.0, 3.0, 9.0, 8.0]]),
        torch.tensor([0.87, 0.5]),
        torch.tensor([0, 2]),
    )
    return Explanation(dets, targets, torch.randn(2, len(targets), h, w))


def image_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_label() != "colorbar"]


def colorbar_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_label() == "colorbar"]


def shown(fig) -> list[np.ndarray]:
    return [np.asarray(ax.get_images()[0].get_array()) for ax in image_axes(fig)]


def class_rgb(label: int) -> tuple[int, int, int]:
    return colors.rgb(colors.class_color(label))


def maps_of(*rows: torch.Tensor, h: int = 10, w: int = 12) -> Explanation:
    """One detection (box 2, 3, 9, 8; label 1; score 0.5) whose maps are ``rows``, named after TARGETS."""
    dets = Detections(torch.tensor([[2.0, 3.0, 9.0, 8.0]]), torch.tensor([0.5]), torch.tensor([1]))
    return Explanation(dets, TARGETS[: len(rows)], torch.stack(rows)[None])


def test_panel_layout_and_titles(image):
    e = explanation()
    fig = panel(image, e, 1, class_names=["person", "car", "dog"])
    maps = e.maps[1]
    titles = [f"{t}  min {float(m.min()):.3g}  max {float(m.max()):.3g}" for t, m in zip(TARGETS, maps, strict=True)]
    assert [ax.get_title() for ax in image_axes(fig)] == [*titles, "combined (normalised)"]
    assert fig.get_suptitle() == "#1 dog 0.50"
    assert not any(ax.axison for ax in image_axes(fig))
    assert panel(image, e, 0).get_suptitle() == "#0 class 0 0.87"
    assert panel(image, e, 0, class_names={0: "person"}).get_suptitle() == "#0 person 0.87"


def test_column_titles_give_each_maps_largest_value(image):
    # the user's report: a score map up to 0.0069 beside a box-edge map up to 1.57
    score, left = torch.zeros(10, 12), torch.zeros(10, 12)
    score[4, 5], left[6, 2] = 0.0069, 1.57
    fig = panel(image, maps_of(score, left), 0)
    assert [ax.get_title() for ax in image_axes(fig)] == ["score  max 0.0069", "left  max 1.57",
                                                          "combined (normalised)"]


def test_colorbar_shows_the_detections_shared_range(image):
    e = explanation()
    for index in (0, 1):
        maps = e.maps[index]
        (bar,) = colorbar_axes(panel(image, e, index))
        assert float(maps.min()) < 0  # so lo is the maps' minimum
        assert bar.get_ylim() == (float(maps.min()), float(maps.max()))
    # maps that are all >= 0: the scale starts at 0, not at their minimum
    e = maps_of(torch.rand(10, 12) + 1, torch.rand(10, 12) * 3 + 0.5)
    fig = panel(image, e, 0)
    (bar,) = colorbar_axes(fig)
    assert bar.get_ylim() == (0.0, float(e.maps.max()))
    assert bar.get_label() == "colorbar" and len(fig.axes) == 4


def test_panel_shows_each_map_on_the_shared_scale(image):
    e = explanation(targets=("score", "right"))
    fig = panel(image, e, 1)
    arrays = shown(fig)
    box, color = e.detections.boxes[1], class_rgb(2)
    lo, hi = min(0.0, float(e.maps[1].min())), float(e.maps[1].max())
    assert len(arrays) == 3
    np.testing.assert_array_equal(arrays[0], overlay(image, e.maps[1, 0], box, vmin=lo, vmax=hi, box_color=color))
    np.testing.assert_array_equal(arrays[1], overlay(image, e.maps[1, 1], box, vmin=lo, vmax=hi, box_color=color))
    np.testing.assert_array_equal(arrays[2], overlay(image, e.combined()[1], box, normalize=False, box_color=color))
    assert not np.array_equal(arrays[0], arrays[1])
    # opacity is passed on
    half = shown(panel(image, e, 1, opacity=0.5))
    np.testing.assert_array_equal(half[0], overlay(image, e.maps[1, 0], box, vmin=lo, vmax=hi, opacity=0.5,
                                                   box_color=color))


def test_a_weak_map_looks_weak_beside_a_strong_one(image):
    score, left = torch.zeros(10, 12), torch.zeros(10, 12)
    score[5, 5], left[5, 5] = 0.0069, 1.57  # inside the box's outline
    arrays = shown(panel(image, maps_of(score, left), 0))
    photo = overlay(image, score, [2.0, 3.0, 9.0, 8.0], alpha=0.0, box_color=class_rgb(1))
    weakest = np.rint(255 * colors.OPACITY * np.sqrt(0.0069 / 1.57)) + 1  # the most a pixel can move, with rounding
    assert np.abs(arrays[0].astype(int) - photo).max() <= weakest
    assert np.abs(arrays[1].astype(int) - photo).max() > 100


def note(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_zero_and_constant_maps_are_labelled_and_show_the_photo(image):
    hot = torch.zeros(10, 12)
    hot[5, 5] = 2.0
    fig = panel(image, maps_of(torch.zeros(10, 12), torch.full((10, 12), 0.5), hot), 0)
    axes = image_axes(fig)
    assert [ax.get_title() for ax in axes] == ["score  all zero", "left  constant 0.5", "top  max 2",
                                               "combined (normalised)"]
    assert [note(ax) for ax in axes] == [["all zero"], ["constant 0.5"], [], []]
    photo = overlay(image, hot, [2.0, 3.0, 9.0, 8.0], alpha=0.0, box_color=class_rgb(1))
    arrays = shown(fig)
    np.testing.assert_array_equal(arrays[0], photo)
    np.testing.assert_array_equal(arrays[1], photo)  # not tinted by 0.5 on the scale 0..2
    assert not np.array_equal(arrays[2], photo)
    (bar,) = colorbar_axes(fig)
    assert bar.get_ylim() == (0.0, 2.0)


def test_all_maps_constant_leaves_out_the_colorbar(image):
    fig = panel(image, maps_of(torch.zeros(10, 12), torch.zeros(10, 12)), 0)
    assert colorbar_axes(fig) == []
    assert [ax.get_title() for ax in fig.axes] == ["score  all zero", "left  all zero",
                                                   "combined (normalised)  all zero"]
    assert [note(ax) for ax in fig.axes] == [["all zero"]] * 3
    photo = overlay(image, torch.zeros(10, 12), [2.0, 3.0, 9.0, 8.0], alpha=0.0, box_color=class_rgb(1))
    for array in shown(fig):
        np.testing.assert_array_equal(array, photo)
    negative = panel(image, maps_of(torch.full((10, 12), -1.0)), 0)
    assert colorbar_axes(negative) == [] and negative.axes[0].get_title() == "score  constant -1"


@pytest.mark.parametrize("index", [2, -1])
def test_panel_index_out_of_range(image, index):
    with pytest.raises(ValueError, match=f"index {index} out of range for an explanation of 2 detections"):
        panel(image, explanation(), index)


def test_panel_unknown_label(image):
    with pytest.raises(ValueError, match=re.escape("label 2 has no entry in class_names (2 names)")):
        panel(image, explanation(), 1, class_names=["person", "car"])


def test_panel_map_size_must_match_image(image):
    with pytest.raises(
        ValueError, match=re.escape("heatmap shape (5, 6) does not match image shape (10, 12)")
    ):
        panel(image, explanation(h=5, w=6), 0)


def test_panel_rejects_nonfinite_maps(image):
    bad = torch.zeros(10, 12)
    bad[1, 1] = float("inf")
    with pytest.raises(ValueError, match=re.escape("expected finite maps, got non-finite values in the 'left' map")):
        panel(image, maps_of(torch.zeros(10, 12), bad), 0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_width": 0}, "expected max_width to be a positive int, got 0"),
    ({"max_width": 2.5}, "expected max_width to be a positive int, got 2.5"),
    ({"opacity": 2.0}, "expected opacity in [0, 1], got 2.0"),
])
def test_panel_checks_its_options(image, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        panel(image, explanation(), 0, **kwargs)


def test_save_panel_writes_png(image, tmp_path):
    e = explanation()
    expected = panel(image, e, 0, dpi=80).canvas.get_width_height()
    path = save_panel(tmp_path / "a" / "b" / "p.png", image, e, 0, dpi=80)
    assert path == tmp_path / "a" / "b" / "p.png"
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == expected
        assert png.width > png.height  # six square-ish cells in two rows of three, and the colorbar


def pixel_size(fig, ax) -> tuple[float, float]:
    fig.canvas.draw()
    extent = ax.get_window_extent()
    return extent.width, extent.height


def test_small_images_are_shown_enlarged_by_a_whole_factor(tmp_path):
    wide = panel(torch.rand(3, 10, 40), explanation(10, 40), 0)
    tall = panel(torch.rand(3, 40, 10), explanation(40, 10), 0)
    # blended at their own size, shown 7 times larger: the longer side reaches 256 pixels
    assert shown(wide)[0].shape == (10, 40, 3) and shown(tall)[0].shape == (40, 10, 3)
    assert pixel_size(wide, wide.axes[0]) == pytest.approx((280, 70), abs=1)
    assert pixel_size(tall, tall.axes[0]) == pytest.approx((70, 280), abs=1)
    big = panel(torch.rand(3, 200, 120), big_explanation(200, 120), 0)
    assert pixel_size(big, big.axes[0]) == pytest.approx((240, 400), abs=1)  # 200 is under 256: twice as large
    as_is = panel(torch.rand(3, 300, 200), big_explanation(300, 200), 0)
    assert pixel_size(as_is, as_is.axes[0]) == pytest.approx((200, 300), abs=1)  # 300 is not


def test_images_are_shown_pixel_for_pixel_up_to_max_width():
    img = torch.rand(3, 500, 600)
    fig = panel(img, big_explanation(500, 600), 0)
    assert shown(fig)[0].shape == (500, 600, 3)
    assert pixel_size(fig, fig.axes[0]) == pytest.approx((600, 500), abs=1)
    fig = panel(img, big_explanation(500, 600), 0, max_width=300)
    assert shown(fig)[0].shape == (250, 300, 3)
    assert pixel_size(fig, fig.axes[0]) == pytest.approx((300, 250), abs=1)  # not enlarged past max_width
    fig = panel(torch.rand(3, 100, 150), big_explanation(100, 150), 0, max_width=400)
    assert pixel_size(fig, fig.axes[0]) == pytest.approx((300, 200), abs=1)  # 4 times would pass max_width


def test_wide_columns_wrap_into_rows():
    e = big_explanation(480, 640, TARGETS)
    fig = panel(torch.rand(3, 480, 640), e, 0)
    fig.canvas.draw()
    corners = [(round(ax.get_window_extent().x0), round(ax.get_window_extent().y1)) for ax in image_axes(fig)]
    assert len({x for x, _ in corners}) == 3 and len({y for _, y in corners}) == 2  # two rows of three
    assert fig.canvas.get_width_height()[0] <= 2400
    small = panel(torch.rand(3, 480, 320), big_explanation(480, 320, TARGETS), 0)
    small.canvas.draw()
    assert len({round(ax.get_window_extent().y1) for ax in image_axes(small)}) == 1  # six columns of 320 in a row
    (bar,) = colorbar_axes(fig)
    assert bar.get_window_extent().x0 > max(ax.get_window_extent().x1 for ax in image_axes(fig))


# --- overview ------------------------------------------------------------------------------------------


def crowd() -> Detections:
    """Three boxes on a 480 x 640 image: one with room above, one at the top edge, one at the right edge."""
    boxes = torch.tensor([[100.5, 200.2, 300.0, 400.0], [350.0, 0.0, 600.0, 150.0], [630.0, 300.0, 640.0, 470.0]])
    return Detections(boxes, torch.tensor([0.9, 0.8, 0.3]), torch.tensor([0, 3, 5]))


@pytest.fixture
def photo() -> torch.Tensor:
    torch.manual_seed(8)
    return torch.rand(3, 480, 640)


def tag_extents(fig) -> dict[str, tuple[float, float, float, float]]:
    """Each tag's text -> its filled box as ``(left, top, right, bottom)`` in image pixels (rows from the top)."""
    fig.canvas.draw()
    height = fig.canvas.get_width_height()[1]
    out = {}
    for text in fig.texts:
        box = text.get_bbox_patch().get_window_extent()
        out[text.get_text()] = (box.x0, height - box.y1, box.x1, height - box.y0)
    return out


def test_overview_outlines_every_box_in_its_class_colour(photo):
    dets = crowd()
    out = overview(photo, dets)
    assert out.shape == (480, 640, 3) and out.dtype == np.uint8
    blocks = [((200, 400), (100, 300)), ((0, 150), (350, 600)), ((300, 470), (630, 640))]
    tags = np.zeros((480, 640), dtype=bool)
    for left, top, right, bottom in tag_extents(odam.viz.overlays._overview_figure(
            photo, dets, class_names=None, max_width=1280)).values():
        tags[max(math.floor(top), 0) : math.ceil(bottom), max(math.floor(left), 0) : math.ceil(right)] = True
    drawn = np.zeros((480, 640), dtype=bool)
    for (rows, cols), label in zip(blocks, [0, 3, 5], strict=True):
        mask = outline(480, 640, rows, cols, thickness=3)
        drawn |= mask
        assert (out[mask & ~tags] == class_rgb(label)).all()
        assert (mask & ~tags).sum() > 3 * 300
    # the rest is the photo, pixel for pixel
    np.testing.assert_array_equal(out[~drawn & ~tags], to_uint8(photo)[~drawn & ~tags])
    # detection 0 lies on top where boxes cross
    crossing = overview(photo, Detections(torch.tensor([[10.0, 50.0, 200.0, 100.0], [50.0, 10.0, 100.0, 200.0]]),
                                          torch.tensor([0.9, 0.8]), torch.tensor([0, 1])))
    assert crossing[51, 51].tolist() == list(class_rgb(0))


def test_overview_numbers_every_detection_in_a_tag(photo):
    dets = crowd()
    fig = odam.viz.overlays._overview_figure(photo, dets, class_names=None, max_width=1280)
    assert sorted(t.get_text() for t in fig.texts) == ["#0", "#1", "#2"]
    assert fig.texts[-1].get_text() == "#0"  # drawn last, on top
    tags = tag_extents(fig)
    # above the box's top-left corner when there is room, inside the box at the top edge, and kept in the image
    left, top, right, bottom = tags["#0"]
    assert (left, bottom) == pytest.approx((100, 200), abs=1) and top > 180
    left, top, right, bottom = tags["#1"]
    assert (left, top) == pytest.approx((350, 0), abs=1)
    left, top, right, bottom = tags["#2"]
    assert right == pytest.approx(640, abs=1) and bottom == pytest.approx(300, abs=1)
    for text in fig.texts:
        label = int(dets.labels[int(text.get_text()[1:])])
        fill = text.get_bbox_patch().get_facecolor()
        assert tuple(round(255 * c) for c in fill[:3]) == class_rgb(label)
    # and they are drawn: the tag of #0 is filled with class 0's colour, with dark ink on it
    out = overview(photo, dets)
    left, top, right, bottom = (round(v) for v in tags["#0"])
    patch = out[top + 1 : bottom - 1, left + 1 : right - 1].reshape(-1, 3)
    assert (patch == class_rgb(0)).all(-1).mean() > 0.5
    assert (patch.max(-1) < 80).sum() > 10  # black ink on a light blue tag


def test_overview_writes_class_names(photo):
    fig = odam.viz.overlays._overview_figure(photo, crowd(), class_names={0: "person", 3: "car", 5: "dog"},
                                             max_width=1280)
    assert sorted(t.get_text() for t in fig.texts) == ["#0 person", "#1 car", "#2 dog"]
    with pytest.raises(ValueError, match=re.escape("label 3 has no entry in class_names (2 names)")):
        overview(photo, crowd(), class_names=["a", "b"])


def test_overview_ink_reads_on_the_tag():
    light, dark = colors.PALETTE.index("#f0e442"), colors.PALETTE.index("#0072b2")
    dets = Detections(torch.tensor([[10.0, 100.0, 200.0, 200.0], [300.0, 100.0, 500.0, 200.0]]),
                      torch.tensor([0.9, 0.8]), torch.tensor([light, dark]))
    fig = odam.viz.overlays._overview_figure(torch.rand(3, 480, 640), dets, class_names=None, max_width=1280)
    ink = {t.get_text(): t.get_color() for t in fig.texts}
    assert ink == {"#0": "black", "#1": "white"}


def test_overview_without_detections_is_the_photo(photo):
    none = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    np.testing.assert_array_equal(overview(photo, none), to_uint8(photo))


def test_overview_shrinks_a_large_image_and_enlarges_a_small_one():
    dets = Detections(torch.tensor([[400.0, 600.0, 1000.0, 1600.0]]), torch.tensor([0.9]), torch.tensor([2]))
    out = overview(torch.rand(3, 2000, 3000), dets, max_width=600)
    assert out.shape == (400, 600, 3)  # not enlarged past max_width either
    assert (out[120:200, 80] == class_rgb(2)).all() and (out[120:200, 79] != class_rgb(2)).any()  # x1 = 400 / 5
    small = Detections(torch.tensor([[2.0, 3.0, 9.0, 8.0]]), torch.tensor([0.9]), torch.tensor([2]))
    out = overview(torch.rand(3, 10, 12), small)
    assert out.shape == (540, 648, 3)  # 54 times: the longer side reaches 640
    mask = outline(540, 648, rows=(3 * 54, 8 * 54), cols=(2 * 54, 9 * 54), thickness=3)
    assert (out[mask][-100:] == class_rgb(2)).all()  # the bottom edge, far from the tag


def test_overview_memory_does_not_grow_with_the_image():
    peaks = []
    for h, w in [(1500, 2000), (3000, 4000)]:
        img = torch.rand(3, h, w)
        dets = Detections(torch.tensor([[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h]]), torch.tensor([0.9]),
                          torch.tensor([0]))
        peaks.append(traced_peak(lambda img=img, dets=dets: overview(img, dets)))
    assert peaks[1] - peaks[0] < 0.1 * (3000 * 4000 - 1500 * 2000)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"detections": torch.zeros(1, 4)}, "expected detections to be Detections, got Tensor"),
    ({"max_width": 0}, "expected max_width to be a positive int, got 0"),
])
def test_overview_rejects_bad_input(photo, kwargs, message):
    kwargs = {"detections": crowd(), **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        overview(photo, **kwargs)


def test_save_overview_round_trips(photo, tmp_path):
    path = save_overview(tmp_path / "sub" / "o.png", photo, crowd(), class_names={0: "a", 3: "b", 5: "c"})
    assert path == tmp_path / "sub" / "o.png"
    with Image.open(path) as png:
        assert png.format == "PNG"
        np.testing.assert_array_equal(np.asarray(png), overview(photo, crowd(), class_names={0: "a", 3: "b", 5: "c"}))


def test_viz_does_not_import_pyplot():
    src = str(Path(odam.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    code = "import sys, odam.viz; assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# --- memory (issue 15) ---------------------------------------------------------------------------------


def traced_peak(fn) -> int:
    """Peak bytes numpy (and Python) allocate during ``fn()``; torch's own allocations are not traced."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_overlay_blends_in_bands_not_in_float64_at_full_resolution(monkeypatch):
    monkeypatch.setattr(odam.viz.overlays, "_CHUNK_PIXELS", 1024, raising=False)
    torch.manual_seed(3)
    img, heat = torch.rand(3, 500, 600), torch.rand(500, 600)
    box = [-1.0, 10.0, 550.0, 480.0]
    peak = traced_peak(lambda: overlay(img, heat, box))
    assert peak < 4 * 500 * 600  # the uint8 result is 3 bytes a pixel; it used to take 150 more
    # and the bands give what one full-resolution float64 pass gives
    monkeypatch.setattr(odam.viz.overlays, "_CHUNK_PIXELS", 10**9)
    np.testing.assert_array_equal(overlay(img, heat, box), overlay(img, heat, box))


def test_overlay_bands_equal_the_formula(monkeypatch):
    monkeypatch.setattr(odam.viz.overlays, "_CHUNK_PIXELS", 7)  # bands of one row, 6 pixels wide
    test_blend_by_value_for_every_pixel()
    test_blend_on_an_absolute_scale_for_every_pixel()
    test_constant_alpha_blend_for_every_pixel()


def test_huge_box_is_clipped_without_a_mask_of_the_image(image):
    out = overlay(image, torch.rand(10, 12), [-1e300, -1e300, 1e300, 1e300], alpha=0.0)
    np.testing.assert_array_equal(out, to_uint8(image))
    out = overlay(image, torch.rand(10, 12), [3.0, -1e300, 5.0, 1e300], alpha=0.0)
    mask = np.zeros((10, 12), dtype=bool)
    mask[:, 3:5] = True  # a box two pixels wide is all outline
    assert (out[mask] == GREEN).all()
    np.testing.assert_array_equal(out[~mask], to_uint8(image)[~mask])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_normalized_is_normalize_maps_bit_for_bit(dtype):
    from odam.structures import normalize_maps

    torch.manual_seed(4)
    for heat in (torch.randn(7, 9) * 100, torch.full((3, 4), 2.5), torch.tensor([[0.0, 1e-40], [0.0, 0.0]]),
                 torch.tensor([[-3.0, 5.0]])):
        heat = heat.to(dtype)
        assert torch.equal(odam.viz.overlays._normalized(heat), normalize_maps(heat)), heat


def big_explanation(h: int, w: int, targets: tuple[str, ...] = ("score", "left")) -> Explanation:
    torch.manual_seed(5)
    dets = Detections(torch.tensor([[0.2 * w, 0.1 * h, 0.6 * w, 0.9 * h]]), torch.tensor([0.7]), torch.tensor([1]))
    return Explanation(dets, targets, torch.randn(1, len(targets), h, w))


def test_panel_draws_a_large_image_at_the_resolution_drawn():
    torch.manual_seed(6)
    img, e = torch.rand(3, 600, 900), big_explanation(600, 900)
    fig = panel(img, e, 0, max_width=300)
    assert [a.shape for a in shown(fig)] == [(200, 300, 3)] * 3
    resize = torch.nn.functional.interpolate
    small = resize(img[None], size=(200, 300), mode="bilinear", antialias=True)[0].clamp(0, 1)
    box, color = e.detections.boxes[0] / 3, class_rgb(1)
    lo, hi = min(0.0, float(e.maps.min())), float(e.maps.max())
    for got, heat in zip(shown(fig)[:2], e.maps[0], strict=True):  # the maps: shrunk as they are, then scaled
        heat = resize(heat[None, None], size=(200, 300), mode="bilinear", antialias=True)[0, 0]
        np.testing.assert_array_equal(got, overlay(small, heat, box, vmin=lo, vmax=hi, box_color=color))
    combined = resize(e.combined()[None], size=(200, 300), mode="bilinear", antialias=True)[0, 0].clamp(0, 1)
    np.testing.assert_array_equal(shown(fig)[2], overlay(small, combined, box, normalize=False, box_color=color))
    assert [a.shape for a in shown(panel(img, e, 0))] == [(427, 640, 3)] * 3  # the default max_width, 640
    tall = panel(torch.rand(3, 2000, 100), big_explanation(2000, 100), 0, max_width=400)
    assert shown(tall)[0].shape == (800, 40, 3)  # at most twice max_width high


def test_panel_does_not_blend_at_full_resolution():
    peaks = []
    for h, w in [(600, 900), (1200, 1800)]:
        img, e = torch.rand(3, h, w), big_explanation(h, w, ("score", "left", "right"))
        peaks.append(traced_peak(lambda img=img, e=e: panel(img, e, 0)))
    # what grows with the image: under half a byte a pixel (matplotlib's own few MB do not); it used to take 90
    assert peaks[1] - peaks[0] < 0.5 * (1200 * 1800 - 600 * 900)


def test_dpi_sizes_the_text_not_the_images(tmp_path):
    img, e = torch.rand(3, 300, 450), big_explanation(300, 450)
    small, large = panel(img, e, 0, dpi=50), panel(img, e, 0, dpi=200)
    assert pixel_size(small, small.axes[0]) == pytest.approx(pixel_size(large, large.axes[0]), abs=1)
    assert large.canvas.get_width_height()[1] > small.canvas.get_width_height()[1] + 50  # taller titles
    path = save_panel(tmp_path / "p.png", img, e, 0, dpi=40)
    with Image.open(path) as png:
        assert png.size == panel(img, e, 0, dpi=40).canvas.get_width_height()
        assert png.info["dpi"] == pytest.approx((40, 40), abs=0.01)
    default = panel(torch.rand(3, 480, 640), big_explanation(480, 640), 0)
    assert default.dpi == pytest.approx(160)  # 100 * 640 / 400: larger text beside 640-pixel columns


@pytest.mark.parametrize("dpi", [0, -1.0, float("nan"), "100", True])
def test_panel_checks_dpi(image, dpi):
    with pytest.raises(ValueError, match=re.escape(f"expected dpi to be a positive number or None, got {dpi!r}")):
        panel(image, explanation(), 0, dpi=dpi)


def test_viz_sets_no_pixel_limit_of_its_own(tmp_path, monkeypatch):
    """The maps already have the image's size: a path over load_image's default limit still draws."""
    real = odam.viz.overlays.load_image

    def tiny_default(image, **kwargs):  # load_image as if its default max_pixels were 10
        return real(image, **{"max_pixels": 10, **kwargs})

    monkeypatch.setattr(odam.viz.overlays, "load_image", tiny_default)
    path = tmp_path / "i.png"
    Image.fromarray(np.zeros((10, 12, 3), dtype=np.uint8)).save(path)
    assert len(image_axes(panel(path, explanation(), 0))) == 6
    assert overlay(path, torch.rand(10, 12)).shape == (10, 12, 3)
