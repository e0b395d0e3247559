"""Mask arithmetic against hand-computed cases."""

from __future__ import annotations

import numpy as np

from engine.tools.masks import (
    boxes_image,
    erode_or_dilate,
    fill_small_holes,
    grow_boxes,
    invert,
    merge_detections,
)


def _dot(size: int = 9) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 2, size // 2] = 255
    return mask


def test_dilate_grows_a_pixel_by_one_ring_per_iteration() -> None:
    once = erode_or_dilate(_dot(), 1)
    twice = erode_or_dilate(_dot(), 2)
    expected_once = np.zeros((9, 9), dtype=np.uint8)
    expected_once[3:6, 3:6] = 255
    expected_twice = np.zeros((9, 9), dtype=np.uint8)
    expected_twice[2:7, 2:7] = 255
    assert np.array_equal(once, expected_once)
    assert np.array_equal(twice, expected_twice)


def test_erode_shrinks_a_square_and_zero_changes_nothing() -> None:
    square = np.zeros((9, 9), dtype=np.uint8)
    square[2:7, 2:7] = 255
    eroded = erode_or_dilate(square, -1)
    expected = np.zeros((9, 9), dtype=np.uint8)
    expected[3:6, 3:6] = 255
    assert np.array_equal(eroded, expected)
    assert np.array_equal(erode_or_dilate(square, -3), np.zeros((9, 9), dtype=np.uint8))
    assert erode_or_dilate(square, 0) is square


def test_invert() -> None:
    mask = np.array([[0, 255], [128, 1]], dtype=np.uint8)
    assert invert(mask).tolist() == [[255, 0], [127, 254]]


def test_grow_boxes_moves_each_edge() -> None:
    boxes = np.array([[10, 20, 30, 40]], dtype=np.float32)
    assert grow_boxes(boxes, 5).tolist() == [[5, 15, 35, 45]]
    assert grow_boxes(boxes, -2).tolist() == [[12, 22, 28, 38]]
    assert grow_boxes(boxes, 0) is boxes


def test_boxes_image_fills_inclusive_rounded_boxes_clipped_to_the_image() -> None:
    out = boxes_image(np.array([[1.4, 0.6, 2.5, 1.2], [-3, -3, 0, 0]]), 5, 4)
    expected = np.zeros((4, 5), dtype=np.uint8)
    expected[1:2, 1:3] = 255  # x 1..2 (2.5 rounds to 2), y 1..1
    expected[0, 0] = 255  # the clipped second box
    assert np.array_equal(out, expected)


def test_small_holes_are_filled_and_large_ones_kept() -> None:
    mask = np.ones((40, 40), dtype=bool)
    mask[2:5, 2:5] = False  # 9 px hole
    mask[15:35, 15:35] = False  # 400 px hole: not smaller than 400
    filled = fill_small_holes(mask)
    expected = mask.copy()
    expected[2:5, 2:5] = True
    assert np.array_equal(filled, expected)


def test_merge_takes_the_first_n_detections() -> None:
    shape = (4, 4)
    masks = [np.zeros(shape, dtype=bool) for _ in range(3)]
    masks[0][0, 0] = True
    masks[1][1, 1] = True
    masks[2][2, 2] = True
    merged_all, count_all = merge_detections(masks, 0, shape)
    merged_two, count_two = merge_detections(masks, 2, shape)
    merged_many, count_many = merge_detections(masks, 10, shape)
    assert count_all == 3
    assert count_two == 2
    assert count_many == 3
    assert merged_all.dtype == np.uint8
    assert set(np.unique(merged_all)) == {0, 255}
    assert np.argwhere(merged_all).tolist() == [[0, 0], [1, 1], [2, 2]]
    assert np.argwhere(merged_two).tolist() == [[0, 0], [1, 1]]
    assert np.array_equal(merged_many, merged_all)
    empty, none = merge_detections([], 0, shape)
    assert none == 0
    assert not empty.any()
