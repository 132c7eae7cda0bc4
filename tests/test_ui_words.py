"""The landscape box's cost and time-left words (issue 28: it read "0.0 M image forward passes")."""
from ulviz.app.ui import count_words, duration_words


def test_count_words_never_rounds_a_real_cost_to_zero():
    assert count_words(441 * 64) == "28.2 thousand"
    assert count_words(1681 * 10_000) == "16.8 million"
    assert count_words(950) == "950"
    assert count_words(2.5e9) == "2.5 billion"


def test_duration_words():
    assert duration_words(45.4) == "45 s"
    assert duration_words(200) == "3 min 20 s"
    assert duration_words(3900) == "1 h 5 min"
    assert duration_words(-3) == "0 s"
