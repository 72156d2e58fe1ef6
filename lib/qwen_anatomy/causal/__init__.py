"""CausalQwen (Part V, chapter 50_causal_heads): Cauchy abduction/action heads on a Qwen2 backbone.

Modules: ``cauchy`` (closed forms), ``numtok`` (the <NUM> tokenizer wrapper), ``model`` (CausalQwen,
the baseline, the gated loss), ``data`` (synthetic texts, evaluation sets, the small backbone), ``train``
(loop, metrics, inference modes, generation), ``experiments`` (the suites), ``plots``.
Importing this package imports nothing heavy; import the submodules you need.
"""
