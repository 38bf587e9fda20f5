"""Imports a module that is not installed; requirements.txt names the distribution that provides it."""

import genloom_fixture_absent_mod  # noqa: F401

NODE_CLASS_MAPPINGS = {}
