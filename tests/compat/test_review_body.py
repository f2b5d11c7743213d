"""A hostile answer (or prompt) is shown as text in the review, and an edit keeps what the reviewer left alone.

The review body is Markdown that Airflow's Required Actions page renders (react-markdown with GFM: raw HTML
dropped, images loaded, links made).  Here the body is rendered by a real CommonMark renderer (markdown-it-py,
with GFM tables and strikethrough, and raw HTML *on*, so that any HTML left unescaped would show) and the HTML
is checked: no image, no link, no HTML from the answer, every hostile string visible as the text it is.  The
browser test (tests/ui/test_review_ui.py) opens such a review in Chromium.  Pure functions: runs on every Airflow.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any

import pytest
from markdown_it import MarkdownIt
from pydantic import BaseModel

from airflow_provider_candela.operators._review import _kept_exact, literal, review_body

#: What the body may render to: ours only (no img, a, script, h1..h6, li, hr, del, ...).
ALLOWED_TAGS = {"p", "strong", "em", "code", "pre", "blockquote", "br", "table", "thead", "tbody", "tr", "th", "td"}

HOSTILE = [
    "![x](http://127.0.0.1:9/pixel.png?d=secret)",
    "[Approve](http://evil.example/approve)",
    '[Approve][ref]\n\n[ref]: http://evil.example/ref "title"',
    '<img src="http://127.0.0.1:9/i.png?d=secret">',
    "<script>alert(1)</script>",
    "<a href='http://evil.example'>Approve</a>",
    "<http://evil.example/auto> and <mail@evil.example>",
    "&lt;img src=x&gt; &amp; &#60;b&#62;",
    "```\nend of the code block\n```\n~~~~\nand another\n~~~~",
    "    an indented line\n\tand a tabbed one",
    "# heading\n1. item\n2) item\n- item\n+ item\n* item\n> quote",
    "text\n===\nmore\n---\n***\n___",
    "**bold** _em_ ~~strike~~ ~single~ `code` [^1]",
    "a | b | c\n---|---|---\n1 | 2 | 3",
    "trailing backslash \\\nnext line\\",
]


class _Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _render(body: str) -> tuple[list[tuple[str, dict[str, str | None]]], str]:
    """The body as HTML (markdown-it, CommonMark + GFM tables and strikethrough, raw HTML allowed): tags, text."""
    html = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(body)
    parser = _Html()
    parser.feed(html)
    return parser.tags, "".join(parser.text).replace("\u00a0", " ")


def _assert_shown_as_text(body: str, *texts: str) -> str:
    tags, text = _render(body)
    assert {tag for tag, _ in tags} <= ALLOWED_TAGS, f"markup from the answer rendered: {tags}"
    attributes = [attrs for _, attrs in tags if attrs and attrs != {"class": "language-json"}]
    assert not attributes, "no attribute (src, href, ...) comes from the answer"
    for value in texts:
        for line in value.splitlines():
            assert line.strip() in text, f"{line!r} is not shown as text"
    return text


class Trade(BaseModel):
    trade_id: int
    note: str


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_hostile_prompt_and_pipeline_answer_show_as_text(hostile: str) -> None:
    body = review_body(
        task="d.t",
        prompt=hostile,
        kind="pipeline",
        answer={"trade_id": 1, "note": hostile},
        output_type=Trade,
        editable=True,
    )
    text = _assert_shown_as_text(body, hostile)
    assert "You may edit the answer" in text, "the body's own text after the answer is still there"


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_hostile_agent_chat_table_and_result_show_as_text(hostile: str) -> None:
    csv = "name,value\n" + "\n".join(f'"{line.replace(chr(34), chr(34) * 2)}",x' for line in hostile.splitlines())
    answer = {
        "response": hostile,
        "results": [
            {"content_type": "table", "content": {"data": csv}},
            hostile,
            {"content_type": "text", "content": hostile},
        ],
    }
    body = review_body(task="d.t", prompt="p", kind="agent", answer=answer, output_type=None, editable=False)
    text = _assert_shown_as_text(body, hostile)
    assert "Result 3" in text


def test_field_names_and_csv_headers_from_candela_show_as_text() -> None:
    hostile = "![x](http://127.0.0.1:9/h.png)"
    body = review_body(
        task="d.t",
        prompt="p",
        kind="agent",
        answer={"response": "", "results": [{"content_type": "table", "content": {"data": f"{hostile},b\n1,2\n"}}]},
        output_type=None,
        editable=False,
    )
    _assert_shown_as_text(body, hostile)
    body = review_body(
        task="d.t",
        prompt="p",
        kind="pipeline",
        answer={hostile: 1, "<b>x</b>": 2},
        output_type=Trade,
        editable=False,
    )
    _assert_shown_as_text(body, hostile, "<b>x</b>")


@pytest.mark.parametrize("run", [3, 4, 7, 12])
def test_no_value_can_end_its_code_block(run: int) -> None:
    value = f"before\n{'`' * run}\nnot code: ![x](http://127.0.0.1:9/x.png)\n{'~' * run}\nafter"
    body = review_body(
        task="d.t",
        prompt="p",
        kind="agent",
        answer={"response": "chat", "results": [value, {"content_type": "json", "content": {"v": value}}]},
        output_type=None,
        editable=False,
    )
    tags, text = _render(body)
    assert [tag for tag, _ in tags].count("pre") == 2, "two code blocks, each whole"
    assert text.count(value) == 1, "the string result is the first block's text, exactly"
    assert json.dumps({"content_type": "json", "content": {"v": value}}, indent=2) in text
    assert "Result 2" in text and {tag for tag, _ in tags} <= ALLOWED_TAGS


def test_pipes_and_newlines_in_table_cells_keep_the_table_whole() -> None:
    body = review_body(
        task="d.t",
        prompt="p",
        kind="agent",
        answer={"response": "", "results": [{"content_type": "table", "content": {"data": 'a,b\n"x | y","1\n2"\n'}}]},
        output_type=None,
        editable=False,
    )
    tags, text = _render(body)
    assert [tag for tag, _ in tags].count("td") == 2, "one row of two cells"
    assert "x | y" in text and "1 2" in text


def test_a_row_longer_than_the_header_shows_all_its_cells() -> None:
    body = review_body(
        task="d.t",
        prompt="p",
        kind="agent",
        answer={"response": "", "results": [{"content_type": "table", "content": {"data": "a\n1,hidden?\n"}}]},
        output_type=None,
        editable=False,
    )
    assert "hidden?" in _render(body)[1]


def test_literal_keeps_lines_and_indentation_readable() -> None:
    assert literal("Total: 4 words.") == "Total: 4 words\\."
    assert literal("a\nb\n\nc") == "a\\\nb\n\nc", "lines stay lines; a blank line starts a paragraph"
    assert literal("  x") == "\u00a0\u00a0x", "leading blanks show, and start no indented code block"
    assert (
        literal("see https://evil.example/a, www.evil.example")
        == "see https\\://evil\\.example/a, www\\.evil\\.example"
    )


@pytest.mark.parametrize("limit", [300, 301, 302, 303, 340])
def test_cut_closes_a_code_block_of_any_fence_length(limit: int) -> None:
    value = "`" * 9 + "\n" + "x" * 2000
    body = review_body(
        task="d.t",
        prompt="p",
        kind="agent",
        answer={"response": "", "results": [value]},
        output_type=None,
        editable=False,
        limit=limit,
    )
    assert len(body.encode()) <= limit
    tags, text = _render(body)
    assert tags[-1][0] == "em" and "The answer is cut here" in text.splitlines()[-1], "the note is outside the code"


# ------------------------------------------------------------------------------------------------
# an edit keeps what the reviewer left alone, exactly


BIG = 2**63 - 5  # a trade id: the browser reads it as 9223372036854775808.0


def _as_the_form_sends(value: Any) -> Any:
    """``value`` after the browser's JSON: every number a double (sent back as a float, e.g. 9.2e18)."""

    def doubles(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: doubles(x) for k, x in v.items()}
        if isinstance(v, list):
            return [doubles(x) for x in v]
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    return json.loads(json.dumps(doubles(value)))


def test_an_untouched_big_integer_is_kept_exactly_when_another_field_is_edited() -> None:
    original = {"trade_id": BIG, "note": "x", "legs": [{"id": BIG - 2, "qty": 1}], "flag": True}
    edit = _as_the_form_sends(original)
    edit["note"] = "checked"
    merged = _kept_exact(original, edit)
    assert merged == {**original, "note": "checked"}
    assert type(merged["legs"][0]["qty"]) is int, "an untouched 1 stays 1, not 1.0"
    as_js = _as_the_form_sends(original)
    as_js["note"] = "checked"
    as_js["trade_id"] = int(as_js["trade_id"])  # JSON.stringify writes 9223372036854775808 as an integer
    assert _kept_exact(original, as_js)["trade_id"] == BIG


def test_a_value_the_reviewer_changed_is_theirs() -> None:
    original = {"trade_id": BIG, "flag": True, "n": 1}
    edit = {"trade_id": 42, "flag": 1, "n": 2}
    assert _kept_exact(original, edit) == {"trade_id": 42, "flag": 1, "n": 2}
    assert _kept_exact(original, {"trade_id": BIG}) == {"trade_id": BIG}, "a removed key stays removed"


def test_items_of_a_list_the_reviewer_shortened_keep_their_exact_values() -> None:
    original = [{"id": BIG, "note": "a"}, {"id": BIG - 2**12, "note": "b"}, {"id": BIG - 2**13, "note": "c"}]
    edit = _as_the_form_sends(original)
    del edit[0]  # removed the first item, and edited the second
    edit[0]["note"] = "b, checked"
    assert _kept_exact(original, edit) == [{"id": BIG - 2**12, "note": "b, checked"}, original[2]]
