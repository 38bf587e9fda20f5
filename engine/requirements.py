"""Which of a pack's declared requirements provides a module it failed to import.

A pack ships `requirements.txt` and/or pyproject `[project] dependencies`; an import error names the
missing module (`cv2`), and the requirement is matched by its distribution name (`opencv-python`),
by the modules an installed distribution provides, or by the usual import-name/distribution-name
pairs. genloom only reports it: it never installs anything.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

# Import names whose distribution is named otherwise (the common cases in ComfyUI packs).
KNOWN = {
    "cv2": ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
            "opencv-contrib-python-headless"),
    "skimage": ("scikit-image",), "sklearn": ("scikit-learn",), "PIL": ("pillow",),
    "yaml": ("pyyaml",), "bs4": ("beautifulsoup4",), "google.protobuf": ("protobuf",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "av": ("av",), "git": ("gitpython",),
    "dateutil": ("python-dateutil",), "Crypto": ("pycryptodome",), "fitz": ("pymupdf",),
    "mediapipe": ("mediapipe",), "insightface": ("insightface",), "dotenv": ("python-dotenv",),
}

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(pack: Path) -> list[tuple[str, str]]:
    """(requirement line, file it came from) for each requirement the pack declares."""
    root = pack if pack.is_dir() else pack.parent
    if not pack.is_dir():
        return []  # a single-file pack shares its folder with others: no requirements of its own
    found = []
    req = root / "requirements.txt"
    if req.is_file():
        for line in req.read_text(errors="replace").splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                found.append((line, req.name))
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            deps = tomllib.loads(pyproject.read_text()).get("project", {}).get("dependencies", [])
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            deps = []
        found.extend((str(d), pyproject.name) for d in deps)
    return found


def missing_module(exc: BaseException) -> str | None:
    """The top-level module an ImportError (or one it caused) could not find."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name
        exc = exc.__cause__ or exc.__context__
    return None


def requirement_for(exc: BaseException, pack: Path) -> dict:
    """{"missing_module", "requirement"?, "requirements_file"?} for an import failure, else {}."""
    module = missing_module(exc)
    if module is None:
        return {}
    out = {"missing_module": module}
    top = module.partition(".")[0]
    wanted = {normalise(top), normalise(module)}
    for alias in (module, top):
        wanted.update(normalise(d) for d in KNOWN.get(alias, ()))
    for line, source in declared(pack):
        match = _NAME.match(line)
        if match and normalise(match.group(1)) in wanted:
            out.update(requirement=line, requirements_file=source)
            break
    return out
