"""Part III: synthetic step-by-step tasks (chapter 30_synthetic_tasks).

``generators`` writes the ReLU, Square and Index datasets byte-for-byte like the original seminar
generators; ``vocab`` builds the one integer vocabulary every task shares; ``data`` collates
decoder-only (``<bos> x # y <eos>``, loss on ``y <eos>`` only) and BART batches; ``train`` trains with
the Hugging Face Trainer; ``evaluate`` scores a checkpoint by greedy exact match and per-position
accuracy. Importing this package imports nothing heavy.
"""
