"""Part III: synthetic step-by-step tasks (chapter 30_synthetic_tasks).

``generators`` writes the ReLU, Square and Index datasets byte-for-byte like the original seminar
generators; ``vocab`` builds the one integer vocabulary every task shares; ``data`` collates
decoder-only (``<bos> x # y <eos>``, loss on ``y <eos>`` only) and BART batches; ``train`` trains with
the Hugging Face Trainer; ``evaluate`` scores a checkpoint by greedy exact match and per-position
accuracy and keeps every generation; ``experiment`` runs the sweep over configs, lengths and seeds
(``configs/sweeps/length.yaml``); ``cost`` measures and projects what it costs; ``verdicts`` and
``report`` turn curves and seeds into the chapter's sentences; ``plots`` draws its figures.
Importing this package imports nothing heavy.
"""
