"""Part IV evaluation data: task files scored on the answer only, text files on every next token."""

from __future__ import annotations

import pytest

from qwen_anatomy.errors import UserInputError
from qwen_anatomy.heads.core import IGNORE
from qwen_anatomy.heads.data import is_task_file, load_eval_data
from qwen_anatomy.tasks.data import decoder_example
from qwen_anatomy.tasks.vocab import save_tokenizer
from qwen_anatomy.tokenizer import Tokenizer


def test_task_file_is_scored_on_the_output_part(tmp_path):
    f = tmp_path / "data.test"
    f.write_text("-8 5 3 # 0 5 8\n1 2 # 1 3\n")
    assert is_task_file(f)
    batch, kind = load_eval_data(f)
    assert kind == "task" and len(batch) == 2
    ex = decoder_example([-8, 5, 3], [0, 5, 8])
    ids = ex["input_ids"]
    assert batch.input_ids[0, : len(ids)].tolist() == ids
    # position p predicts token p + 1: exactly the labelled tokens (y and <eos>) are targets
    expected = [lab for lab in ex["labels"][1:]] + [IGNORE]
    assert batch.targets[0, : len(ids)].tolist() == expected
    assert (batch.targets[1, batch.lengths[1] - 1 :] == IGNORE).all()


def test_text_file_is_scored_on_every_next_token(tmp_path):
    save_tokenizer(tmp_path / "tok")
    tok = Tokenizer(tmp_path / "tok")
    f = tmp_path / "text.txt"
    f.write_text("1 2 3 4 5 6\n\n7 8 9\n")
    assert not is_task_file(f)
    batch, kind = load_eval_data(f, tok, max_examples=5, max_tokens=4)
    assert kind == "text" and len(batch) == 2
    assert batch.lengths.tolist() == [4, 3]
    assert batch.targets[0].tolist() == batch.input_ids[0, 1:].tolist() + [IGNORE]
    assert (batch.targets != IGNORE).sum().item() == 3 + 2


def test_missing_file_raises_user_error(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        load_eval_data(tmp_path / "missing.txt")
