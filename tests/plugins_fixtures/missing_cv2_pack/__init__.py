"""Imports cv2 (OpenCV), which its pyproject declares as opencv-python-headless."""

from .impl import NODE_CLASS_MAPPINGS  # noqa: F401
