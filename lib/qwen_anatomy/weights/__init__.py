"""Weights anatomy (book Part II, chapters 10-12): streaming per-tensor analysis of checkpoints.

Submodules (import what you need; this package import is cheap and pulls in neither torch nor numpy):

- :mod:`.safetensors_io` reads safetensors headers with ``json`` + ``struct``, follows shard indexes,
  decodes bf16 bit-exactly with numpy and streams one tensor at a time in row chunks.
- :mod:`.gguf_io` dequantises GGUF tensors one by one through the ``gguf`` package and maps
  llama.cpp names (``blk.N.attn_q.weight``) to Hugging Face keys, undoing llama.cpp's q/k permutation.
- :mod:`.naming` turns a tensor name into layer index, block type and kind.
- :mod:`.stats` holds the float64 statistics, spectra (Gram route, exact route), ranks and the
  power-law fit of the eigenvalues: our rule (default) or WeightWatcher's own (``--alpha-method ww``).
- :mod:`.alpha` sets the two power-law rules side by side (chapter 11).
- :mod:`.table` builds the per-tensor table (``qwen-anatomy params``) with resume and run record.
- :mod:`.embeddings` is the embedding / output-layer report and clustering (``qwen-anatomy embeddings``).
- :mod:`.download` is ``qwen-anatomy download`` (Hugging Face Hub, safetensors only).
- :mod:`.plots` draws the chapter figures on :mod:`qwen_anatomy.plotting`.
"""
