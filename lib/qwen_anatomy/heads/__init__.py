"""Part IV: attention heads — importance against plasticity (chapter 40_heads_importance_vs_plasticity).

- :mod:`.core`: evaluation batches, per-example losses, head gates (native or o_proj pre-hooks);
- :mod:`.ablation`: zero/mean ablation of query heads and KV groups (loop, batched, prefix reuse);
- :mod:`.gradients`: per-example gate gradients from one backward pass, and G, F, Ppred, SNR, −E[g];
- :mod:`.plasticity`: update magnitudes U, Urel (and the QO/KV split) between two checkpoints;
- :mod:`.stats`: Spearman with permutation p-values and bootstrap intervals, within-layer ρ, top-K
  overlap, counterexample sets, across-seed agreement;
- :mod:`.analysis`: one call measuring everything for a (θ0, θ1) pair, tables and ``run(config)``;
- :mod:`.plots`: the chapter's figures.
"""
