from ..helpers import shout

PREFIX = shout("mod")
