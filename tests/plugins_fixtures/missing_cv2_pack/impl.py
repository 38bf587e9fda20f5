import cv2  # noqa: F401

NODE_CLASS_MAPPINGS = {}
