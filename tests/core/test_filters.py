from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from runtime.core.errors import InvalidArgument
from runtime.core.filters import Filter, Operator, Selector, adapt, parse

CONTAINER: dict[str, Any] = {
    "id": "web-1",
    "image": "docker.io/library/nginx:1.27",
    "runtime": {"name": "io.containerd.runc.v2"},
    "labels": {"io.moorage/owner": "ci", "team": "infra", "empty": ""},
}


def matches(*filters: str, record: dict[str, Any] = CONTAINER) -> bool:
    return parse(filters).match(adapt(record))


def test_filter_absent_matches_everything() -> None:
    assert parse([]) == Filter()
    assert matches()
    assert matches("")


def test_filter_equal_requires_presence_and_equality() -> None:
    assert matches("id==web-1")
    assert not matches("id==web-2")
    assert not matches("missing==web-1")


def test_filter_not_equal_is_true_when_absent_or_different() -> None:
    assert matches("id!=web-2")
    assert matches("missing!=x")
    assert not matches("id!=web-1")


def test_filter_regex_matches_topic_prefix() -> None:
    record = {"topic": "/tasks/exit"}
    assert matches('topic~="^/tasks/"', record=record)
    assert matches("topic~=|^/tasks/|", record=record)
    assert matches(r"topic~=/^\/tasks\/e/", record=record)
    assert not matches('topic~="^/images/"', record=record)


def test_filter_regex_searches_anywhere_and_needs_presence() -> None:
    assert matches("image~=nginx")
    assert matches(r"image~=/:1\.\d+$/")
    assert not matches("missing~=.*")


def test_filter_field_alone_tests_presence() -> None:
    assert matches("labels.team")
    assert matches("labels.empty")
    assert not matches("labels.nothing")
    assert not matches("id.sub")


def test_filter_quoted_field_reaches_label_keys_with_dots() -> None:
    assert matches('labels."io.moorage/owner"==ci')
    assert not matches("labels.io.moorage")


def test_filter_commas_are_and() -> None:
    assert matches("id==web-1,labels.team==infra")
    assert not matches("id==web-1,labels.team==web")


def test_filter_several_strings_are_or() -> None:
    assert matches("id==nope", "labels.team==infra")
    assert not matches("id==nope", "labels.team==nope")


def test_filter_bar_is_or_and_binds_looser_than_comma() -> None:
    assert matches("id==nope|labels.team==infra")
    assert matches("id==nope,labels.team==nope|runtime.name~=runc")
    assert not matches("id==nope,runtime.name~=runc|labels.team==nope")
    assert parse(["a|b,c"]).alternatives == (
        (Selector(("a",)),),
        (Selector(("b",)), Selector(("c",))),
    )


def test_filter_empty_string_among_others_matches_everything() -> None:
    assert matches("id==nope", "")


def test_filter_allows_spaces_between_tokens() -> None:
    assert matches(' id == web-1 , labels . "team" == infra ')


def test_filter_quoted_values_use_go_escapes() -> None:
    [[selector]] = parse([r'name=="a\"b\\c\n\x41\u00e9\101\U0001F600"']).alternatives
    assert selector == Selector(("name",), Operator.EQUAL, 'a"b\\c\nAéA\U0001f600')


def test_filter_unquoted_value_may_contain_slashes_and_quotes() -> None:
    [[selector]] = parse(['topic==/tasks/exit"x']).alternatives
    assert selector.value == '/tasks/exit"x'


def test_filter_regex_delimiter_may_be_escaped() -> None:
    [[selector]] = parse([r"topic~=/a\/b\d/"]).alternatives
    assert selector.value == r"a/b\d"


def test_filter_accepts_a_lone_string_as_one_filter() -> None:
    assert parse("id==web-1") == parse(["id==web-1"])


def test_adapt_turns_scalars_into_strings() -> None:
    lookup = adapt(
        {
            "n": 3,
            "ok": True,
            "off": False,
            "none": None,
            "at": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            "list": [1],
        }
    )
    assert lookup(["n"]) == ("3", True)
    assert lookup(["ok"]) == ("true", True)
    assert lookup(["off"]) == ("false", True)
    assert lookup(["none"]) == ("", False)
    assert lookup(["at"]) == ("2024-01-02T03:04:05+00:00", True)
    assert lookup(["list"]) == ("", True)
    assert lookup(["n", "deeper"]) == ("", False)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "topic=x",
            "invalid filter 'topic=x': expected '==', '!=' or '~=' at position 5, found '=x'",
        ),
        (
            "id==",
            "invalid filter 'id==': expected a value (unquoted, or \"quoted\") at position 4, "
            "found the end",
        ),
        (
            "a,,b",
            "invalid filter 'a,,b': expected a field name ([A-Za-z][A-Za-z0-9_]*) or a "
            "\"quoted\" field at position 2, found ',b'",
        ),
        (
            "1a",
            "invalid filter '1a': expected a field name ([A-Za-z][A-Za-z0-9_]*) or a "
            "\"quoted\" field at position 0, found '1a'",
        ),
        (
            "id==a b",
            "invalid filter 'id==a b': expected ',', '|' or the end of the filter at position 6, "
            "found 'b'",
        ),
        (
            'id=="abc',
            "invalid filter 'id==\"abc': expected '\"' at position 8, found the end "
            "(the string opened at position 4 is not closed)",
        ),
        (
            "topic~=/tasks/.*",
            "invalid filter 'topic~=/tasks/.*': expected ',', '|' or the end of the filter after "
            "the /.../ regex at position 14, found '.*' "
            r"(write / inside the regex as \/, or quote the regex)",
        ),
        (
            "topic~=|abc",
            "invalid filter 'topic~=|abc': expected '|' at position 11, found the end "
            "(the regex opened at position 7 is not closed)",
        ),
        (
            'a~="("',
            "invalid filter 'a~=\"(\"': expected a regular expression at position 3, "
            "found '(' (missing ), unterminated subpattern)",
        ),
    ],
)
def test_filter_syntax_error_names_position_and_expectation(source: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse([source])
    assert caught.value.message == message


def test_filter_rejects_regex_escapes_in_double_quotes() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse([r'topic~="\d"'])
    assert caught.value.message == (
        "invalid filter 'topic~=\"\\\\d\"': expected an escape "
        r"(\" \\ \n \t \xHH \uHHHH \ooo ...) at position 8, found "
        "'\\\\d\"' (write regular expressions as /.../ to keep their backslashes)"
    )


def test_filter_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="position 0"):
        parse([","])
