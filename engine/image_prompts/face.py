"""FaceSwap's face crop: find the face, level the eyes, and centre it on a 512-px square.

Fooocus detects faces with RetinaFace and warps five landmarks onto a template. This engine
uses the face and eye detectors that ship inside OpenCV (Haar cascades: no model download), so
it aligns by the two eyes only: the face is rotated so the eyes are level, scaled so the face
box spans ``FACE_SHARE`` of the square, and centred; what falls outside the photo is filled with
Fooocus's template grey. Without a detectable face it falls back to the centred square.
"""

from __future__ import annotations

import functools
import logging
import math

import cv2
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

OUTPUT_SIZE = 512
FACE_SHARE = 0.55  # of the output's width taken by the detected face box
TEMPLATE_GREY = (135, 133, 132)


@functools.cache
def _cascade(name: str) -> cv2.CascadeClassifier:
    return cv2.CascadeClassifier(cv2.data.haarcascades + name)  # type: ignore[attr-defined]


def detect_face(gray: np.ndarray) -> tuple[int, int, int, int] | None:
    """The largest frontal face as (x, y, w, h), or None."""
    side = min(gray.shape[:2])
    faces = _cascade("haarcascade_frontalface_default.xml").detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(max(24, side // 16),) * 2
    )
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda face: int(face[2]) * int(face[3]))
    return int(x), int(y), int(w), int(h)


def detect_eyes(
    gray: np.ndarray, face: tuple[int, int, int, int]
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The centres of the two eyes (left, right in the image) inside the face's upper part."""
    x, y, w, h = face
    upper = gray[y : y + int(h * 0.6), x : x + w]
    eyes = _cascade("haarcascade_eye.xml").detectMultiScale(
        upper, scaleFactor=1.1, minNeighbors=5, minSize=(max(8, w // 10),) * 2
    )
    if len(eyes) < 2:
        return None
    # The two largest detections, ordered left to right.
    two = sorted(eyes, key=lambda eye: -int(eye[2]) * int(eye[3]))[:2]
    centres = sorted((x + ex + ew / 2.0, y + ey + eh / 2.0) for ex, ey, ew, eh in two)
    (lx, ly), (rx, ry) = centres
    if rx - lx < w * 0.2:  # both detections on one eye
        return None
    return (lx, ly), (rx, ry)


def face_crop(image: Image.Image) -> Image.Image:
    """The aligned 512x512 face FaceSwap encodes (the centred square when no face is found)."""
    rgb = np.asarray(image.convert("RGB"))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    face = detect_face(gray)
    if face is None:
        logger.info("FaceSwap: no face found; using the centred square of the image")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        return image.convert("RGB").crop((left, top, left + side, top + side))
    x, y, w, h = face
    centre = (x + w / 2.0, y + h / 2.0)
    angle = 0.0
    eyes = detect_eyes(gray, face)
    if eyes is not None:
        (lx, ly), (rx, ry) = eyes
        angle = math.degrees(math.atan2(ry - ly, rx - lx))
    scale = OUTPUT_SIZE * FACE_SHARE / w
    matrix = cv2.getRotationMatrix2D(centre, angle, scale)
    matrix[0, 2] += OUTPUT_SIZE / 2.0 - centre[0]
    matrix[1, 2] += OUTPUT_SIZE / 2.0 - centre[1]
    aligned = cv2.warpAffine(
        rgb,
        matrix,
        (OUTPUT_SIZE, OUTPUT_SIZE),
        flags=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=TEMPLATE_GREY,
    )
    return Image.fromarray(aligned)
