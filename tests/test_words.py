"""qwen_anatomy.words: the plural rule the library's sentences share."""

from qwen_anatomy.words import count


def test_count_is_singular_for_one_only():
    assert count(1, "seed") == "1 seed"
    assert count(0, "seed") == "0 seeds"
    assert count(1200, "run") == "1,200 runs"
