import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbit.tts.answers import (
    aggregate,
    answers_equal,
    early_stop,
    extract_answer,
    extract_boxed,
    extract_gsm,
    majority_vote,
    normalize_answer,
    rm_argmax,
    weighted_vote,
)


def test_boxed_nested_and_last():
    assert extract_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{a{b}c}") == "a{b}c"
    assert extract_boxed(r"\boxed{unclosed") is None
    assert extract_boxed("none") is None


def test_gsm_marker():
    assert extract_gsm("He pays 3*4=<<3*4=12>>12.\n#### 12") == "12"
    assert extract_gsm("#### 1,000\nextra") == "1,000"
    assert extract_gsm("no marker") is None


@pytest.mark.parametrize(("text", "want"), [
    (r"so \boxed{1,000}", "1000"),
    ("#### $18", "18"),
    ("The answer is 42.", "42"),
    ("The answer is: 3.50 dollars", "7/2"),
    ("x = 3 and then y = 7", "7"),
    (r"\boxed{\frac{2}{4}}", "1/2"),
    (r"\boxed{\text{Paris}}", "paris"),
    (r"\boxed{10\%}", "10"),
    ("no digits here", None),
    ("#### -4'.", "-4"),                  # a quote after the number (seen from Qwen2.5-Coder)
    ("#### \\[ 8355 \\]", "8355"),      # LaTeX display brackets after the marker
])
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_normalize_equivalences():
    for a, b in [("0.5", "1/2"), ("1,000", "1000.0"), ("$5", "5"), ("-3", "-3.00"),
                 ("12 apples", "12")]:
        assert answers_equal(a, b), (a, b)
    assert not answers_equal("1", "2")
    assert not answers_equal(None, None)
    assert normalize_answer("  ") is None


def test_majority_tie_goes_to_first_seen():
    assert majority_vote(["b", "a", "a", "b"]) == "b"
    assert majority_vote(["a", "b", "b"]) == "b"
    assert majority_vote([None, "c", None]) == "c"
    assert majority_vote([None, None]) is None


def test_weighted_and_rm():
    ans = ["a", "b", "b"]
    assert weighted_vote(ans, [0.9, 0.3, 0.4]) == "a"
    assert rm_argmax(ans, [0.5, 0.6, 0.1]) == "b"
    assert aggregate("rm_weighted", ans, rm_scores=[0.9, 0.5, 0.5]) == "b"
    assert aggregate("weighted", ans, logprobs=[-0.01, -3.0, -3.0]) == "a"
    assert aggregate("majority", ans) == "b"
    assert rm_argmax([None, "x"], [9.0, 0.1]) == "x"


def test_early_stop_rule():
    assert early_stop(["a", "a", "a"], 2)
    assert not early_stop(["a", "a", "b"], 1)
    assert not early_stop([], 1)
    assert early_stop([], 0)


@given(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=7),
       st.integers(0, 4))
def test_early_stop_never_changes_the_winner(done, n_left):
    if not early_stop(done, n_left):
        return
    for rest in itertools.product(["a", "b", "c", None], repeat=n_left):
        assert majority_vote(done + list(rest)) == majority_vote(done)
