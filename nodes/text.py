"""ComfyUI's text nodes (comfy_extras/nodes_string.py, nodes_text.py, nodes_preview_any.py): the same
names, inputs, outputs and results. Inputs ComfyUI declares without a default, range or step have
none here either, so the editor shows them as it does for ComfyUI. The regex, JSON, preview and file
work is genloom.diffusion.text."""

from __future__ import annotations

import re

from genloom.diffusion import text as lib
from genloom.engine import context
from genloom.engine.errors import NodeInputError
from genloom.engine.folders import UnsafePath
from genloom.engine.node import Boolean, Combo, Input, Int, Node, NodeOutput, Out, String


def _text(name: str, **kw):
    """A multi-line text widget without a default, as ComfyUI's string nodes declare theirs."""
    return String(name, None, multiline=True, **kw)


def _flag(name: str, default: bool, **kw):
    return Boolean(name, default, advanced=True, **kw)


class StringConcatenate(Node):
    """Joins two texts, with a delimiter between them."""

    category = "text"
    display_name = "Concatenate Text"
    inputs = [_text("string_a"), _text("string_b"), String("delimiter", "")]
    outputs = [Out("STRING")]

    def run(self, string_a, string_b, delimiter):
        return (f"{string_a}{delimiter}{string_b}",)


class StringSubstring(Node):
    """The characters from `start` up to (not including) `end`; negative positions count from the end."""

    category = "text"
    display_name = "Substring"
    inputs = [_text("string"), Int("start", None, min=None, max=None, step=None),
              Int("end", None, min=None, max=None, step=None)]
    outputs = [Out("STRING")]

    def run(self, string, start, end):
        return (string[start:end],)


class StringLength(Node):
    """The number of characters in a text."""

    category = "text"
    display_name = "Text Length"
    inputs = [_text("string")]
    outputs = [Out("INT", "length")]

    def run(self, string):
        return (len(string),)


class CaseConverter(Node):
    """Upper case, lower case, first letter capitalised, or every word capitalised."""

    category = "text"
    display_name = "Convert Text Case"
    inputs = [_text("string"), Combo("mode", lib.CASE_MODES)]
    outputs = [Out("STRING")]

    def run(self, string, mode):
        return (lib.convert_case(string, mode),)


class StringTrim(Node):
    """Removes whitespace from both ends, the start or the end of a text."""

    category = "text"
    display_name = "Trim Text"
    inputs = [_text("string"), Combo("mode", lib.TRIM_MODES)]
    outputs = [Out("STRING")]

    def run(self, string, mode):
        return (lib.trim(string, mode),)


class StringReplace(Node):
    """Replaces every occurrence of one text with another."""

    category = "text"
    display_name = "Replace Text"
    inputs = [_text("string"), _text("find"), _text("replace")]
    outputs = [Out("STRING")]

    def run(self, string, find, replace):
        return (string.replace(find, replace),)


class StringContains(Node):
    """Whether a text contains another."""

    category = "text"
    display_name = "Contains Text"
    inputs = [_text("string"), _text("substring"), _flag("case_sensitive", True)]
    outputs = [Out("BOOLEAN", "contains")]

    def run(self, string, substring, case_sensitive):
        if not case_sensitive:
            string, substring = string.lower(), substring.lower()
        return (substring in string,)


class StringCompare(Node):
    """Whether text A starts with, ends with or equals text B."""

    category = "text"
    display_name = "Compare Text"
    inputs = [_text("string_a"), _text("string_b"), Combo("mode", lib.COMPARE_MODES),
              _flag("case_sensitive", True)]
    outputs = [Out("BOOLEAN")]

    def run(self, string_a, string_b, mode, case_sensitive):
        return (lib.compare(string_a, string_b, mode, case_sensitive),)


def _regex_flags():
    return [_flag("case_insensitive", True), _flag("multiline", False), _flag("dotall", False)]


class RegexMatch(Node):
    """Whether a regular expression matches anywhere in a text (an invalid pattern never matches)."""

    category = "text"
    display_name = "Match Text"
    inputs = [_text("string"), _text("regex_pattern"), *_regex_flags()]
    outputs = [Out("BOOLEAN", "matches")]

    def run(self, string, regex_pattern, case_insensitive, multiline, dotall):
        return (lib.regex_matches(string, regex_pattern, lib.regex_flags(case_insensitive, multiline, dotall)),)


class RegexExtract(Node):
    """The first match, all matches, the first match's group or every match's group of a regular
    expression; several results are joined with newlines."""

    category = "text"
    display_name = "Extract Text"
    inputs = [_text("string"), _text("regex_pattern"), Combo("mode", lib.EXTRACT_MODES), *_regex_flags(),
              Int("group_index", 1, min=0, max=100, step=None, advanced=True)]
    outputs = [Out("STRING")]

    def run(self, string, regex_pattern, mode, case_insensitive, multiline, dotall, group_index):
        flags = lib.regex_flags(case_insensitive, multiline, dotall)
        return (lib.regex_extract(string, regex_pattern, mode, flags, group_index),)


class RegexReplace(Node):
    """Replaces what a regular expression matches (\\1 or \\g<name> in the replacement insert groups)."""

    category = "text"
    display_name = "Replace Text (Regex)"
    inputs = [
        _text("string"), _text("regex_pattern"), _text("replace"),
        _flag("case_insensitive", True, optional=True),
        _flag("multiline", False, optional=True),
        _flag("dotall", False, optional=True, tooltip="When on, the dot (.) also matches newlines."),
        Int("count", 0, min=0, max=100, step=None, optional=True, advanced=True,
            tooltip="At most this many replacements; 0 replaces every match."),
    ]
    outputs = [Out("STRING")]

    def run(self, string, regex_pattern, replace, case_insensitive=True, multiline=False, dotall=False, count=0):
        flags = lib.regex_flags(case_insensitive, multiline, dotall)
        try:
            return (re.sub(regex_pattern, replace, string, count=count, flags=flags),)
        except re.error as exc:
            raise NodeInputError("regex_pattern", f"invalid regular expression or replacement: {exc}") from exc


class JsonExtractString(Node):
    """The value of a key in the first JSON object of a text (e.g. a language model's answer, Markdown
    code fences included); empty when there is no object or no such key."""

    category = "text"
    display_name = "Extract Text from JSON"
    inputs = [_text("json_string"), String("key", None)]
    outputs = [Out("STRING")]

    def run(self, json_string, key):
        return (lib.json_extract(json_string, key),)


class SaveText(Node):
    """Writes a text to the output folder as `{prefix}_{counter:05}.{format}` (JSON pretty-printed
    when it parses) and passes it on."""

    category = "text"
    display_name = "Save Text"
    output_node = True
    inputs = [Input("text", "STRING"), String("filename_prefix", "ComfyUI"),
              Combo("format", lib.TEXT_FORMATS, "txt")]
    outputs = [Out("STRING", "text")]

    def run(self, text, filename_prefix, format):  # noqa: A002 - ComfyUI's input name
        try:
            saved = lib.save_text(text, context.current().folders.output_dir, filename_prefix, format)
        except UnsafePath as exc:
            raise NodeInputError("filename_prefix", str(exc)) from exc
        return NodeOutput(text, ui={"text": [text], "files": [saved]})


class PreviewAny(Node):
    """Shows any value in the editor as text (JSON for lists and dicts) and passes that text on."""

    category = "utilities"
    display_name = "Preview as Text"
    output_node = True
    inputs = [Input("source", "*")]
    outputs = [Out("STRING")]

    def run(self, source=None):
        value = lib.preview_text(source)
        return NodeOutput(value, ui={"text": [value]})


NODES = [StringConcatenate, StringSubstring, StringLength, CaseConverter, StringTrim, StringReplace,
         StringContains, StringCompare, RegexMatch, RegexExtract, RegexReplace, JsonExtractString, SaveText,
         PreviewAny]
