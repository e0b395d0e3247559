"""Mask arithmetic shared by generate_mask and enhance, in plain numpy/OpenCV so it can be
checked by hand: erode/dilate, invert, grown boxes, SAM's hole filling, merging detections."""

from __future__ import annotations

import cv2
import numpy as np

SAM_HOLE_AREA = 400  # holes smaller than this (in pixels) are filled, as Fooocus does


def erode_or_dilate(mask: np.ndarray, k: int) -> np.ndarray:
    """Dilate (``k`` > 0) or erode (``k`` < 0) a uint8 mask |k| times with a 3x3 ones kernel
    (Fooocus's ``erode_or_dilate``); 0 returns it unchanged."""
    k = int(k)
    if k == 0:
        return mask
    kernel = np.ones((3, 3), dtype=np.uint8)
    op = cv2.dilate if k > 0 else cv2.erode
    return op(mask, kernel, iterations=abs(k))


def invert(mask: np.ndarray) -> np.ndarray:
    """255 - mask for a uint8 mask."""
    return (255 - mask.astype(np.int16)).astype(np.uint8)


def grow_boxes(boxes: np.ndarray, amount: float) -> np.ndarray:
    """Move every box edge (x0, y0, x1, y1 in pixels) outwards by ``amount`` (inwards if < 0),
    as Fooocus applies ``dino_erode_or_dilate`` to GroundingDINO's boxes."""
    if amount == 0 or len(boxes) == 0:
        return boxes
    grown = boxes.astype(np.float32).copy()
    grown[:, :2] -= amount
    grown[:, 2:] += amount
    return grown


def boxes_image(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """A black uint8 image with each box filled white (the ``dino_debug`` answer).

    Corners are rounded to whole pixels and both ends are included, like PIL's rectangle."""
    out = np.zeros((height, width), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        left, top = max(round(x0), 0), max(round(y0), 0)
        right, bottom = min(round(x1), width - 1), min(round(y1), height - 1)
        if right >= left and bottom >= top:
            out[top : bottom + 1, left : right + 1] = 255
    return out


def fill_small_holes(mask: np.ndarray, area: int = SAM_HOLE_AREA) -> np.ndarray:
    """A boolean mask with every hole (8-connected region of False) smaller than ``area`` pixels
    set True. Regions of False touching nothing special are holes too, as in SAM's helper: only
    the size decides."""
    background = (~mask.astype(bool)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=8)
    filled = mask.astype(bool).copy()
    for label in range(1, count):
        if stats[label, cv2.CC_STAT_AREA] < area:
            filled[labels == label] = True
    return filled


def merge_detections(
    masks: list[np.ndarray], max_detections: int, shape: tuple[int, int]
) -> tuple[np.ndarray, int]:
    """The union of the first ``max_detections`` masks (0 = all) as uint8 0/255 of ``shape``
    (height, width), and how many were merged."""
    limit = len(masks) if max_detections <= 0 else min(len(masks), max_detections)
    merged = np.zeros(shape, dtype=bool)
    for mask in masks[:limit]:
        merged |= mask.astype(bool)
    return np.where(merged, 255, 0).astype(np.uint8), limit
