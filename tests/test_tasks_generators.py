"""Part III generators: recurrences against hand-worked examples, file format, draw order, orders."""

from __future__ import annotations

import random

import numpy as np
import pytest

from qwen_anatomy.errors import UserInputError
from qwen_anatomy.tasks.generators import (
    TaskSpec,
    format_line,
    generate_task,
    index_forward,
    parse_line,
    parse_permutation,
    read_task_file,
    relu_forward,
    square_forward,
)


def test_relu_hand_worked():
    # 3; 3-5=-2 -> 0; 0+2=2; 2+4=6; 6-10=-4 -> 0; 0+1=1
    assert relu_forward([3, -5, 2, 4, -10, 1]) == [3, 0, 2, 6, 0, 1]
    assert relu_forward([-1, -1]) == [0, 0]


def test_relu_spec_line():
    x = [-8, 5, 3, -1, -1, 7, -8, 4, -6, -8]
    assert relu_forward(x) == [0, 5, 8, 7, 6, 13, 5, 9, 3, 0]


def test_square_hand_worked():
    # y0 = 3 (copied); y1 = (2^2 + 3^2) mod 19 - 9 = 13 - 9 = 4; y2 = (16 + 16) mod 19 - 9 = 13 - 9 = 4
    assert square_forward([3, 2, -4], 19) == [3, 4, 4]
    # y0 = -9 (not reduced); y1 = 81 mod 19 - 9 = 5 - 9 = -4; y2 = (1 + 16) mod 19 - 9 = 8
    assert square_forward([-9, 0, 1], 19) == [-9, -4, 8]
    # p = 5: y1 = (1 + 4) mod 5 - 2 = -2
    assert square_forward([2, 1], 5) == [2, -2]


def test_square_range_for_p19():
    rng = np.random.default_rng(0)
    for _ in range(200):
        y = square_forward(rng.integers(-9, 10, size=12).tolist(), 19)
        assert all(-9 <= v <= 9 for v in y[1:])


def test_index_hand_worked():
    # n = 4, m = 2: y0 = x[1 mod 4] = 3; y1 = x[3] = 1; y2 = x[(3+1) mod 4 = 0] = 1; y3 = x[(1+1)] = 2
    assert index_forward([1, 3, 2, 1], 2) == [3, 1, 1, 2]
    # m = 1 only the previous output points: y1 = x[3] = 1, y2 = x[1] = 3, y3 = x[3] = 1
    assert index_forward([1, 3, 2, 1], 1) == [3, 1, 3, 1]


def test_format_and_parse_roundtrip():
    line = format_line([-8, 5], [0, 5])
    assert line == "-8 5 # 0 5\n"
    assert parse_line(line) == ([-8, 5], [0, 5])


@pytest.fixture(scope="module")
def relu_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    generate_task(TaskSpec("relu", 10), root, train_samples=300, test_samples=200, progress=False)
    return root


def test_relu_file_layout_and_first_line(relu_root):
    folder = relu_root / "relu" / "n=10"
    assert sorted(p.name for p in folder.iterdir()) == [
        "data-inv.test",
        "data-inv.train",
        "data.test",
        "data.train",
    ]
    first = (folder / "data.train").read_text().splitlines()[0]
    assert first == "-8 5 3 -1 -1 7 -8 4 -6 -8 # 0 5 8 7 6 13 5 9 3 0"


def test_relu_draw_order_one_call_per_sample(relu_root):
    rng = np.random.default_rng(123)  # the test seed
    xs, ys = read_task_file(relu_root / "relu" / "n=10" / "data.test")
    for x, y in zip(xs[:50], ys[:50], strict=True):
        expected = rng.integers(-9, 10, size=10).tolist()
        assert x == expected
        assert y == relu_forward(expected)


def test_inverse_reverses_outputs_with_identical_inputs(relu_root):
    folder = relu_root / "relu" / "n=10"
    for split in ("train", "test"):
        fx, fy = read_task_file(folder / f"data.{split}")
        ix, iy = read_task_file(folder / f"data-inv.{split}")
        assert fx == ix
        assert [y[::-1] for y in fy] == iy
        assert fy != iy


def test_reversal_permutation_reproduces_inverse_files(relu_root, tmp_path):
    perm = ",".join(str(i) for i in range(9, -1, -1))
    written = generate_task(
        TaskSpec("relu", 10), tmp_path, train_samples=300, test_samples=200, permutation=perm, progress=False
    )
    assert [p.name for p in written] == [
        "data-perm-9_8_7_6_5_4_3_2_1_0.train",
        "data-perm-9_8_7_6_5_4_3_2_1_0.test",
    ]
    assert not (tmp_path / "relu" / "n=10" / "data.train").exists()  # the forward files are untouched
    for split in ("train", "test"):
        perm_bytes = (tmp_path / "relu" / "n=10" / f"data-perm-9_8_7_6_5_4_3_2_1_0.{split}").read_bytes()
        assert perm_bytes == (relu_root / "relu" / "n=10" / f"data-inv.{split}").read_bytes()


def test_identity_permutation_is_forward(relu_root, tmp_path):
    generate_task(
        TaskSpec("relu", 10),
        tmp_path,
        train_samples=300,
        test_samples=200,
        permutation=list(range(10)),
        progress=False,
    )
    got = (tmp_path / "relu" / "n=10" / "data-perm-0_1_2_3_4_5_6_7_8_9.test").read_bytes()
    assert got == (relu_root / "relu" / "n=10" / "data.test").read_bytes()


@pytest.mark.parametrize("bad", ["0,1", "0,1,1", "0,1,3", "a,b,c"])
def test_bad_permutations(bad):
    with pytest.raises(UserInputError):
        parse_permutation(bad, 3)


def test_train_and_test_do_not_overlap(relu_root):
    folder = relu_root / "relu" / "n=10"
    train = set((folder / "data.train").read_text().splitlines())
    test = set((folder / "data.test").read_text().splitlines())
    assert len(train) > 250 and len(test) > 150
    assert not train & test


def test_square_and_index_files(tmp_path):
    generate_task(
        TaskSpec("square", 6), tmp_path, train_samples=20, test_samples=10, progress=False, inverse=False
    )
    xs, ys = read_task_file(tmp_path / "square" / "n=6" / "data.train")
    rng = np.random.default_rng(42)
    assert xs[0] == rng.integers(-9, 10, size=6).tolist()
    assert all(y == square_forward(x, 19) for x, y in zip(xs, ys, strict=True))
    assert not (tmp_path / "square" / "n=6" / "data-inv.train").exists()

    generate_task(TaskSpec("index", 13, m=2), tmp_path, train_samples=20, test_samples=10, progress=False)
    xs, ys = read_task_file(tmp_path / "index" / "n=13_m=2" / "data.test")
    rng = random.Random(43)  # element by element, sample by sample
    for x in xs:
        assert x == [rng.randint(1, 12) for _ in range(13)]
    assert all(y == index_forward(x, 2) for x, y in zip(xs, ys, strict=True))


def test_new_length_restarts_the_stream(tmp_path):
    generate_task(TaskSpec("relu", 4), tmp_path, train_samples=5, test_samples=5, progress=False)
    generate_task(TaskSpec("relu", 6), tmp_path, train_samples=5, test_samples=5, progress=False)
    x4, _ = read_task_file(tmp_path / "relu" / "n=4" / "data.train")
    x6, _ = read_task_file(tmp_path / "relu" / "n=6" / "data.train")
    assert x4[0] == x6[0][:4]  # same generator start: the first draw shares its prefix


def test_existing_files_are_not_overwritten(tmp_path):
    generate_task(TaskSpec("relu", 3), tmp_path, train_samples=5, test_samples=5, progress=False)
    with pytest.raises(UserInputError, match="already exists"):
        generate_task(TaskSpec("relu", 3), tmp_path, train_samples=5, test_samples=5, progress=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "index", "n": 13}, "--m"),
        ({"task": "relu", "n": 5, "value_min": 3, "value_max": 1}, "value-min"),
        ({"task": "relu", "n": 0}, "positive"),
        ({"task": "cube", "n": 3}, "unknown task"),
    ],
)
def test_bad_specs(kwargs, match):
    with pytest.raises(UserInputError, match=match):
        TaskSpec(**kwargs)
