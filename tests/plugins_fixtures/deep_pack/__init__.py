"""Every relative-import form: `from . import x`, `from .pkg import mod`, `from .a.b import X`."""

from . import helpers
from .a.b import DeepJoin
from .a.b.c import deeper
from .pkg import mod

NODE_CLASS_MAPPINGS = {"DeepJoin": DeepJoin}
LOADED = (helpers.shout("a"), mod.PREFIX, deeper())
