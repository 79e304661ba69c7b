"""Strict reading of a JSON document a user wrote: where it nests too deeply."""

from __future__ import annotations

import pytest

from dagnats.domain.json_document import json_path, where_too_deep


def test_where_too_deep_names_the_path_of_the_first_container_past_the_limit():
    text = '{"a": [1, 2, {"b c": [[["x"]]]}]}'
    assert where_too_deep(text, 6) == ""
    assert where_too_deep(text, 4) == '$.a[2]["b c"][0]'
    assert where_too_deep(text.encode(), 1) == "$.a"


def test_where_too_deep_ignores_brackets_and_quotes_inside_strings():
    text = '{"k": "[[[[{{{{ \\" ]]", "n": ["[", "\\\\"]}'
    assert where_too_deep(text, 2) == ""
    assert where_too_deep("[" * 100_000 + "]" * 100_000, 64).startswith("$[0][0]")


@pytest.mark.parametrize("text", ["{", "]]]", '{"a": [}', ""])
def test_malformed_text_is_left_to_the_decoder(text):
    assert where_too_deep(text, 64) == ""


def test_json_path_quotes_keys_that_are_not_plain():
    assert json_path(["steps", 0, "input", "a.b", "$ref"]) == '$.steps[0].input["a.b"].$ref'
