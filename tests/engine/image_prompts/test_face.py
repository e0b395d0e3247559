"""FaceSwap's face crop on a real photograph (scikit-image's bundled astronaut portrait)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from PIL import Image

from engine.image_prompts.face import (
    OUTPUT_SIZE,
    TEMPLATE_GREY,
    detect_eyes,
    detect_face,
    face_crop,
)

skimage_data = pytest.importorskip("skimage.data")


def portrait() -> Image.Image:
    return Image.fromarray(skimage_data.astronaut())


def gray(image: Image.Image) -> np.ndarray:
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)


def eye_tilt(image: Image.Image) -> float:
    face = detect_face(gray(image))
    assert face is not None
    eyes = detect_eyes(gray(image), face)
    assert eyes is not None
    (lx, ly), (rx, ry) = eyes
    return math.degrees(math.atan2(ry - ly, rx - lx))


def test_the_face_is_found_and_centred() -> None:
    crop = face_crop(portrait())
    assert crop.size == (OUTPUT_SIZE, OUTPUT_SIZE)
    face = detect_face(gray(crop))
    assert face is not None
    x, y, w, h = face
    assert abs((x + w / 2) - OUTPUT_SIZE / 2) < OUTPUT_SIZE * 0.08
    assert abs((y + h / 2) - OUTPUT_SIZE / 2) < OUTPUT_SIZE * 0.08
    assert 0.4 < w / OUTPUT_SIZE < 0.7


def test_a_tilted_face_comes_out_level() -> None:
    tilted = portrait().rotate(12, resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))
    assert abs(eye_tilt(tilted)) > 6
    assert abs(eye_tilt(face_crop(tilted))) < 4


def test_what_leaves_the_photo_is_template_grey() -> None:
    # A face near the top edge: the square around it reaches past the photo.
    photo = portrait().crop((0, 40, 512, 400))
    crop = np.asarray(face_crop(photo))
    assert tuple(crop[0, OUTPUT_SIZE // 2]) == TEMPLATE_GREY


def test_no_face_falls_back_to_the_centred_square() -> None:
    plain = Image.new("RGB", (96, 48), (30, 90, 150))
    assert detect_face(gray(plain)) is None
    assert face_crop(plain).size == (48, 48)
