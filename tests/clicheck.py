"""One check for the command line's bad-input promise, shared by the CLI test modules."""

from __future__ import annotations


def one_line_error(capsys, argv, match: str | None = None) -> str:
    """Run ``qwen-anatomy ARGV`` in-process; assert exit code 2, one stderr line, no traceback.

    Returns the line; with ``match``, also asserts it contains that text.
    """
    from qwen_anatomy.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    if match is not None:
        assert match in lines[0], lines[0]
    return lines[0]
