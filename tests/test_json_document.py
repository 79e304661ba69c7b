"""Strict reading of a JSON document a user wrote: where it nests too deeply, which key it repeats."""

from __future__ import annotations

import pytest

from dagnats.domain.json_document import duplicate_key_problem, json_path, where_too_deep


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
    assert duplicate_key_problem(text) == ""


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"a": 1, "a": 2}', 'duplicate key "a" at $'),
        ('{"steps": [{"id": "a"}, {"id": "b", "task": "t", "task": "u"}]}', 'duplicate key "task" at $.steps[1]'),
        ('{"x": {"y": {"$ref": "a", "$ref": "b"}}}', 'duplicate key "$ref" at $.x.y'),
        ('[{"ok": 1}, {"q": {"k": 1, "k": 1}}, {"z": 1, "z": 1}]', 'duplicate key "k" at $[1].q'),
    ],
)
def test_the_first_duplicate_key_is_named_with_where_it_is(text, problem):
    assert duplicate_key_problem(text) == problem


def test_documents_without_duplicate_keys_have_no_problem():
    assert duplicate_key_problem('{"a": {"a": 1}, "b": [{"a": 1}, {"a": 2}]}') == ""


def test_json_path_quotes_keys_that_are_not_plain():
    assert json_path(["steps", 0, "input", "a.b", "$ref"]) == '$.steps[0].input["a.b"].$ref'
