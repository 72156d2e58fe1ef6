"""CausalQwen: abduction and action heads on a Qwen2 backbone (chapter 50_causal_heads).

Per position: e = Embed(x) + phi(v) -> backbone -> z [B, T, H] (after the final norm) ->
abduction U ~ Cauchy(loc_U, scale_U) [B, T, C] -> action: U' = U + noise (scale + |b_noise|) ->
class scores S ~ Cauchy(loc_S, scale_S) [B, T, V] judged one-vs-rest, and the number value
Y ~ Cauchy(loc_Y, scale_Y) [B, T]. Everything is analytic (:mod:`qwen_anatomy.causal.cauchy`).

Ablation switches in :class:`CausalConfig` change real code paths: ``classifier="softmax"`` trains
with cross-entropy on loc_S instead of OvR binary cross-entropy, ``distribution="normal"`` propagates
scales as sqrt(sum w^2 sigma^2) and uses Normal CDF / NLL, ``abduction_init="random"`` starts the
abduction from Xavier weights instead of the identity. :class:`BaselineQwen` is the honest baseline:
the same backbone and numeric fusion with a plain softmax LM head and a Normal regression head.

Thresholds C_k (``threshold_mode``): "scalar" is one fixed C for every class (``threshold``);
"per_class" is a vector measured on a calibration batch (:meth:`CausalQwen.calibrate_threshold`, which
:func:`qwen_anatomy.causal.train.train` calls on its first batch) and then frozen; "learnable" is the
same measured vector, trained with the heads. The measurement: at class k's mean location m_k and
mean scale s_k over the calibration positions, P_k equals the compatible-mode (softmax of loc_S, at
step 0 the base model's) mean probability of k, floored at ``THRESHOLD_MIN_PROB``:
C_k = m_k - s_k F^-1(max(mean_i softmax(loc_S)_ik, floor)). So at a typical position the P_k sum to
about 1 at step 0 instead of about V/2 with a scalar C far below the class scales.

Output classes (``classes``): by default every token id is a class (the spec's design). A model built
with ``classes`` = a sorted list of token ids (the study's ``vocab="template"``) judges only those: the
class head (and the per-class thresholds, or the baseline's LM head) keeps the rows of those ids,
copied from the full model's initialisation (so at step 0 its scores are the full model's columns at
those ids), and every output over classes ([B, T, N], N = ``n_classes``) is indexed by the position of
an id in ``classes``. :meth:`_NumericFusion.class_targets` maps token ids to those positions (refusing an
id outside the set) and ``num_class`` is the position of ``<NUM>``; with every id a class both are the
identity. Softmax and the normalised OvR probabilities are then renormalised over the N classes, and
measured thresholds read that renormalised softmax (so their P_k sum to about 1 over the N classes).

Precision: the backbone runs in its own dtype (float32, or bfloat16 / float16 when loaded so); the
heads, their parameters (new embedding rows and the numeric direction included) and the losses are
always float32, on the backbone's device: z is cast up before the heads, and the new rows and phi(v)
are cast to the backbone's dtype only where they enter it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserInputError
from ..model import Qwen2ForCausalLM
from . import cauchy

CLASSIFIERS = ("ovr", "softmax")
THRESHOLD_MODES = ("scalar", "per_class", "learnable")
MEASURED_THRESHOLD_MODES = ("per_class", "learnable")  # C_k measured by calibrate_threshold
# Floor on the measured mean probability: C_k - m_k ~ s_k / (pi p) for Cauchy, and loc_S - C_k is taken
# in float32, so a smaller p would round away the differences in loc_S (at p = 1e-4 and a class scale
# of 200, C_k is about 6e5, resolved to 0.06 in loc_S).
THRESHOLD_MIN_PROB = 1e-4
ABDUCTION_INITS = ("identity", "random")


@dataclass(frozen=True)
class CausalConfig:
    """Every knob of the causal heads and their loss. ``causal_dim=None`` means C = H."""

    causal_dim: int | None = None
    gamma0: float = 10.0  # softplus(b_s) at initialisation: the prior scale of U
    b_noise: float = 0.1
    # C of threshold_mode "scalar" (the measured per-class modes do not read it). A convention, not a
    # measured optimum: chapter 50 compares it with 0, 100 and 1000 over three seeds (causal variants).
    threshold: float = 10.0
    threshold_mode: str = "scalar"  # scalar, per_class (measured, frozen), learnable (measured, trained)
    alpha: float = 1.0  # gate: 1 = hard mask, 0 = weight by P_<NUM>
    lam: float = 1.0  # weight of the regression term
    classifier: str = "ovr"
    distribution: str = "cauchy"
    abduction_init: str = "identity"
    reg_gain: float = 0.01
    freeze_backbone: bool = True
    seed: int = 0

    def replace(self, **changes) -> CausalConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self, hidden_size: int | None = None) -> CausalConfig:
        """Raise UserInputError naming the bad field and what is accepted (before any training)."""

        def finite(name):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise UserInputError(f"{name}={value!r} must be a finite number")
            return value

        finite("threshold")
        if not 0.0 <= finite("alpha") <= 1.0:
            raise UserInputError(
                f"alpha={self.alpha} must lie in [0, 1] (1 = hard mask, 0 = gate by P_<NUM>)"
            )
        if finite("lam") < 0:
            raise UserInputError(f"lam={self.lam} must be >= 0")
        if finite("gamma0") <= 0:
            raise UserInputError(f"gamma0={self.gamma0} must be > 0 (it is the initial scale of U)")
        if finite("b_noise") < 0:
            raise UserInputError(f"b_noise={self.b_noise} must be >= 0")
        for name, allowed in (
            ("classifier", CLASSIFIERS),
            ("distribution", cauchy.DISTRIBUTIONS),
            ("threshold_mode", THRESHOLD_MODES),
            ("abduction_init", ABDUCTION_INITS),
        ):
            if getattr(self, name) not in allowed:
                raise UserInputError(f"{name}={getattr(self, name)!r}: use one of {allowed}")
        if self.causal_dim is not None and (not isinstance(self.causal_dim, int) or self.causal_dim <= 0):
            raise UserInputError(f"causal_dim={self.causal_dim!r} must be a positive integer")
        if (
            hidden_size is not None
            and self.abduction_init == "identity"
            and self.causal_dim not in (None, hidden_size)
        ):
            raise UserInputError(
                f"causal_dim={self.causal_dim} differs from the hidden size {hidden_size}, so the identity "
                "abduction init is impossible: use abduction_init='random' or causal_dim=hidden size"
            )
        return self


@dataclass
class CausalOutput:
    """Per-position distributions. Shapes: z [B,T,H]; *_U [B,T,C]; *_S, probs [B,T,V]; *_Y [B,T]."""

    z: torch.Tensor
    loc_U: torch.Tensor | None
    scale_U: torch.Tensor | None
    loc_S: torch.Tensor
    scale_S: torch.Tensor | None
    probs: torch.Tensor  # OvR P_k (do not sum to 1), or softmax for the softmax classifier/baseline
    loc_Y: torch.Tensor
    scale_Y: torch.Tensor
    distribution: str = "cauchy"
    margin: torch.Tensor | None = None  # OvR: t = (loc_S - C)/scale_S [B,T,V]; None for softmax heads

    def choice(self) -> torch.Tensor:
        """The decision argmax_k P_k [B, T], taken on the margin when there is one (same order as P,
        without the float32 ties of P near 1), else on the scores (softmax heads)."""
        return (self.margin if self.margin is not None else self.loc_S).argmax(-1)


def phi(values: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Numeric embedding sign(v) ln(1 + |v|) w: [B, T] x [H] -> [B, T, H]; phi(0) = 0 exactly."""
    return (torch.sign(values) * torch.log1p(values.abs())).unsqueeze(-1) * direction


class _NumericFusion(nn.Module):
    """Token embedding (the backbone's table, plus new rows when it has no spare row) + phi(v)."""

    def _init_fusion(
        self, backbone: Qwen2ForCausalLM, num_token_id: int, generator: torch.Generator, classes=None
    ):
        self.backbone = backbone
        self.num_token_id = int(num_token_id)
        h = backbone.config.hidden_size
        table = backbone.model.embed_tokens.weight
        self.base_vocab = table.shape[0]
        self.vocab_size = max(self.base_vocab, self.num_token_id + 1)
        self._init_classes(classes)
        n_new = self.vocab_size - self.base_vocab
        # a model without spare rows (SmolLM2) gets new rows initialised to the mean embedding
        self.extra_rows = (
            nn.Parameter(table.detach().float().mean(0, keepdim=True).repeat(n_new, 1).clone())
            if n_new
            else None
        )
        w = torch.randn(h, generator=generator)
        self.num_direction = nn.Parameter((w / w.norm()).to(table.device))

    def embed(self, input_ids: torch.Tensor, numerical_values: torch.Tensor | None = None) -> torch.Tensor:
        table = self.backbone.model.embed_tokens
        if self.extra_rows is None:
            e = table(input_ids)
        else:
            new = input_ids >= self.base_vocab
            e = table(input_ids.clamp(max=self.base_vocab - 1))
            extra = self.extra_rows[(input_ids - self.base_vocab).clamp(min=0)]
            e = torch.where(new.unsqueeze(-1), extra.to(e.dtype), e)
        if numerical_values is not None:
            e = e + phi(numerical_values.float(), self.num_direction).to(e.dtype)
        return e

    def features(self, input_ids, numerical_values=None, attention_mask=None) -> torch.Tensor:
        """z: the backbone's last hidden state after the final norm, [B, T, H], in float32."""
        e = self.embed(input_ids, numerical_values)
        out = self.backbone(inputs_embeds=e, attention_mask=attention_mask, logits_to_keep=1)
        return out.last_hidden_state.float()

    def _init_classes(self, classes) -> None:
        """The output classes: every token id (``classes`` None), or the given sorted, distinct ids, which
        must hold ``<NUM>``. Sets ``classes`` (a buffer, or None), ``n_classes``, ``num_class`` (the
        class index of ``<NUM>``) and the id -> class lookup (-1 outside the set)."""
        if classes is None:
            self.classes = None
            self.n_classes = self.vocab_size
            self.num_class = self.num_token_id
            return
        ids = torch.as_tensor(classes, dtype=torch.long).flatten()
        if ids.numel() == 0:
            raise UserInputError("classes is empty: give the token ids the model should judge")
        if bool((ids[1:] <= ids[:-1]).any()):
            raise UserInputError("classes must be sorted token ids without repeats")
        if int(ids[0]) < 0 or int(ids[-1]) >= self.vocab_size:
            raise UserInputError(
                f"classes holds ids from {int(ids[0])} to {int(ids[-1])}; the model has ids 0..{self.vocab_size - 1}"
            )
        where = (ids == self.num_token_id).nonzero()
        if where.numel() == 0:
            raise UserInputError(f"classes lacks <NUM> (id {self.num_token_id}): a number must stay a class")
        self.register_buffer("classes", ids)
        lookup = torch.full((self.vocab_size,), -1, dtype=torch.long)
        lookup[ids] = torch.arange(len(ids))
        self.register_buffer("class_lookup", lookup, persistent=False)
        self.n_classes = len(ids)
        self.num_class = int(where[0, 0])

    def class_targets(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token ids [B, T] as class indices (the ids themselves when every id is a class). Padding
        (``attention_mask`` 0) becomes class 0, which no loss or metric reads; a real position whose id
        is not a class is refused (UserInputError naming it)."""
        if self.classes is None:
            return input_ids
        real = (
            torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        inside = (input_ids >= 0) & (input_ids < self.vocab_size)
        mapped = self.class_lookup.to(input_ids.device)[input_ids.clamp(0, self.vocab_size - 1)]
        mapped = torch.where(inside, mapped, torch.full_like(mapped, -1))
        bad = real & (mapped < 0)
        if bool(bad.any()):
            ids = sorted({int(i) for i in input_ids[bad].tolist()})
            raise UserInputError(
                f"token id(s) {ids[:10]}{' ...' if len(ids) > 10 else ''} are not among this model's "
                f"{self.n_classes} output classes (vocab restricted to the study's token ids); rebuild the "
                "class set from these texts"
            )
        return torch.where(real, mapped, torch.zeros_like(mapped))

    def class_tokens(self, class_index: torch.Tensor) -> torch.Tensor:
        """Class indices back to token ids (the identity when every id is a class)."""
        if self.classes is None:
            return class_index
        return self.classes.to(class_index.device)[class_index]

    def _restricted_linear(self, full: nn.Linear) -> nn.Linear:
        """``full`` (one row per token id) cut to the rows of ``classes``: the same values, so the
        restricted scores equal the full ones at those ids."""
        if self.classes is None:
            return full
        # built on "meta" and then allocated empty: no random init drawn (the global RNG stays untouched)
        out = nn.Linear(full.in_features, self.n_classes, bias=full.bias is not None, device="meta")
        out = out.to_empty(device=full.weight.device)
        with torch.no_grad():
            out.weight.copy_(full.weight[self.classes])
            if full.bias is not None:
                out.bias.copy_(full.bias[self.classes])
        return out

    def _init_num_row(self, head_weight: torch.Tensor) -> None:
        """The head's ``<NUM>`` row as its own parameter, so that training can give the rows copied from
        the base model a smaller learning rate than this new class (see ``pretrained_parameters``).
        The row of the same index inside the head matrix is never read."""
        self.num_class_row = nn.Parameter(head_weight.detach()[self.num_token_id].clone())

    def _with_num_row(self, head_weight: torch.Tensor) -> torch.Tensor:
        """The head matrix [V, C] (or [N, C] over restricted classes) whose ``<NUM>`` row is
        ``num_class_row``."""
        idx = torch.tensor([self.num_class], device=head_weight.device)
        return head_weight.index_copy(0, idx, self.num_class_row[None].to(head_weight.dtype))

    def _class_head_from_base(self, base_head: torch.Tensor) -> torch.Tensor:
        """An independent copy of the base LM head [V, H], with mean rows for new tokens."""
        w = base_head.detach().clone()
        n_new = self.vocab_size - w.shape[0]
        if n_new:
            w = torch.cat([w, w.mean(0, keepdim=True).repeat(n_new, 1)])
        return w


def _freeze(backbone: nn.Module, frozen: bool) -> None:
    if not frozen and any(p.dtype != torch.float32 for p in backbone.parameters()):
        raise UserInputError(
            "freeze_backbone=False trains the backbone, which needs float32 weights (AdamW's updates "
            "fall below bfloat16's resolution): load the backbone in float32"
        )
    for p in backbone.parameters():
        p.requires_grad_(not frozen)


class CausalQwen(_NumericFusion):
    """Abduction + action heads over a Qwen2 backbone. Build with :meth:`from_base`. ``classes``: the
    output classes (None: every token id; see the module docstring)."""

    def __init__(
        self,
        backbone: Qwen2ForCausalLM,
        num_token_id: int,
        config: CausalConfig | None = None,
        classes=None,
    ):
        super().__init__()
        config = (config or CausalConfig()).validate(backbone.config.hidden_size)
        self.config = config
        g = torch.Generator().manual_seed(config.seed)
        self._init_fusion(backbone, num_token_id, g, classes)
        h = backbone.config.hidden_size
        c = config.causal_dim or h
        self.causal_dim = c
        self.abduction_loc = nn.Linear(h, c)
        self.abduction_scale = nn.Linear(h, c)
        self.class_head = nn.Linear(c, self.vocab_size)
        self.reg_head = nn.Linear(c, 1)
        self.b_noise = nn.Parameter(torch.full((c,), float(config.b_noise)))
        if config.threshold_mode == "scalar":
            self.register_buffer("threshold", torch.tensor(float(config.threshold)))
            self.threshold_measured = True  # nothing to measure
        else:
            # NaN until calibrate_threshold measures it (or a saved state is loaded): never used unmeasured
            unmeasured = torch.full((self.n_classes,), float("nan"))
            if config.threshold_mode == "per_class":
                self.register_buffer("threshold", unmeasured)
            else:
                self.threshold = nn.Parameter(unmeasured)
            self.threshold_measured = False
            self.register_load_state_dict_post_hook(_threshold_loaded)
        self._initialise(g)
        # built and initialised over every id (the same random draws), then cut to the classes
        self.class_head = self._restricted_linear(self.class_head)
        _freeze(backbone, config.freeze_backbone)
        self.to(backbone.device)  # the heads were built on the CPU

    @classmethod
    def from_base(
        cls, base: Qwen2ForCausalLM, num_token_id: int, config: CausalConfig | None = None, classes=None
    ):
        """Start from a base model: identity abduction, untied copy of its LM head (so loc_S equals the
        base logits at step 0), small regression head, b_noise = 0.1, softplus(b_s) = gamma0."""
        return cls(base, num_token_id, config, classes)

    @torch.no_grad()
    def _initialise(self, g: torch.Generator) -> None:
        cfg, h, c = self.config, self.backbone.config.hidden_size, self.causal_dim

        def xavier(w, gain=1.0):
            bound = gain * math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
            w.copy_((torch.rand(w.shape, generator=g) * 2 - 1) * bound)

        if cfg.abduction_init == "identity":
            self.abduction_loc.weight.copy_(torch.eye(c, h))
        else:
            xavier(self.abduction_loc.weight)
        self.abduction_loc.bias.zero_()
        self.abduction_scale.weight.zero_()
        # softplus^-1(gamma0) = log(expm1(gamma0)), stable for large gamma0
        self.abduction_scale.bias.fill_(cfg.gamma0 + math.log(-math.expm1(-cfg.gamma0)))
        if c == h:
            self.class_head.weight.copy_(self._class_head_from_base(self.backbone.lm_head.weight))
        else:
            xavier(self.class_head.weight)
        self.class_head.bias.zero_()
        self._init_num_row(self.class_head.weight)
        xavier(self.reg_head.weight, cfg.reg_gain)
        self.reg_head.bias.zero_()

    def _scores(self, z: torch.Tensor):
        """loc_U, scale_U [B,T,C]; loc_S, scale_S [B,T,V]; loc_Y, scale_Y [B,T,1] from features z."""
        dist = self.config.distribution
        loc_u = self.abduction_loc(z)
        scale_u = F.softplus(self.abduction_scale(z))
        scale_total = cauchy.add_independent(scale_u, self.b_noise.abs(), dist)
        loc_s, scale_s = cauchy.linear_propagate(
            loc_u, scale_total, self._with_num_row(self.class_head.weight), self.class_head.bias, dist
        )
        loc_y, scale_y = cauchy.linear_propagate(
            loc_u, scale_total, self.reg_head.weight, self.reg_head.bias, dist
        )
        return loc_u, scale_u, loc_s, scale_s, loc_y, scale_y

    def _threshold(self) -> torch.Tensor:
        """C (scalar) or C_k [V]; refuses a per-class threshold that was never measured."""
        if not self.threshold_measured:
            raise UserInputError(
                f"threshold_mode={self.config.threshold_mode!r} measures C_k on a calibration batch: call "
                "model.calibrate_threshold(input_ids, numerical_values, attention_mask) first "
                "(train() does it on its first batch)"
            )
        return self.threshold

    @torch.no_grad()
    def calibrate_threshold(
        self,
        input_ids: torch.Tensor,
        numerical_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        min_prob: float = THRESHOLD_MIN_PROB,
    ) -> torch.Tensor:
        """Measure the per-class thresholds C_k [V] on a calibration batch and set them (see the module
        docstring for the rule): C_k = m_k - s_k F^-1(max(p_k, min_prob)), with m_k, s_k the mean of
        loc_S,k and scale_S,k over the batch's real positions and p_k the mean of softmax(loc_S)_k."""
        self._check_measurable(min_prob)
        z = self.features(input_ids, numerical_values, attention_mask)
        real = None if attention_mask is None else attention_mask.bool()
        return self.calibrate_threshold_on_features(z, real, min_prob)

    @torch.no_grad()
    def calibrate_threshold_on_features(
        self, z: torch.Tensor, real: torch.Tensor | None = None, min_prob: float = THRESHOLD_MIN_PROB
    ) -> torch.Tensor:
        """:meth:`calibrate_threshold` on features z [B, T, H] already computed (a feature cache), over
        the positions where ``real`` [B, T] is true (all when None). Position chunks keep the [N, V]
        scores small on a large vocabulary. Over restricted classes the softmax is over those classes."""
        self._check_measurable(min_prob)
        rows = z.reshape(-1, z.shape[-1]) if real is None else z[real.to(z.device)]  # [N, H]
        if rows.shape[0] == 0:
            raise UserInputError("the calibration batch has no real position: give at least one text")
        sums = torch.zeros(3, self.n_classes, dtype=torch.float64, device=z.device)
        for chunk in rows.split(64):
            _, _, loc_s, scale_s, _, _ = self._scores(chunk)
            sums[0] += loc_s.double().sum(0)
            sums[1] += scale_s.double().sum(0)
            sums[2] += torch.softmax(loc_s, -1).double().sum(0)
        loc, scale, prob = sums / rows.shape[0]
        c = loc - scale * cauchy.quantile(prob.clamp_min(min_prob), self.config.distribution)
        self.threshold.copy_(c.to(self.threshold.dtype))
        self.threshold_measured = True
        return self.threshold.detach().clone()

    def _check_measurable(self, min_prob: float) -> None:
        if self.config.threshold_mode not in MEASURED_THRESHOLD_MODES:
            raise UserInputError(
                f"threshold_mode={self.config.threshold_mode!r} uses the fixed threshold "
                f"{self.config.threshold:g}; only {MEASURED_THRESHOLD_MODES} measure C_k"
            )
        if not 0.0 < min_prob < 0.5:
            raise UserInputError(f"min_prob={min_prob!r} must lie in (0, 0.5)")

    def heads(self, z: torch.Tensor) -> CausalOutput:
        """Abduction and action on features z [B, T, H]."""
        dist = self.config.distribution
        loc_u, scale_u, loc_s, scale_s, loc_y, scale_y = self._scores(z)
        margin = None
        if self.config.classifier == "ovr":
            threshold = self._threshold()
            margin = cauchy.ovr_margin(loc_s, scale_s, threshold)
            probs = cauchy.ovr_probability(loc_s, scale_s, threshold, dist)
        else:
            probs = torch.softmax(loc_s, dim=-1)
        return CausalOutput(
            z, loc_u, scale_u, loc_s, scale_s, probs, loc_y[..., 0], scale_y[..., 0], dist, margin
        )

    def forward(self, input_ids, numerical_values=None, attention_mask=None) -> CausalOutput:
        return self.heads(self.features(input_ids, numerical_values, attention_mask))

    def used_config(self) -> dict:
        """The settings this model uses: its whole config (``threshold`` only in the scalar mode)."""
        cfg = self.config.to_dict()
        if self.config.threshold_mode != "scalar":
            del cfg["threshold"]
        return cfg

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The head matrices that start as the base model's knowledge: the identity abduction (when
        initialised so) and the copy of the LM head (when C = H), whose ``<NUM>`` row lives apart in
        ``num_class_row`` (a new class). Training may give them a smaller learning rate
        (``train(lr_pretrained=...)``)."""
        out = []
        if self.config.abduction_init == "identity":
            out.append(self.abduction_loc.weight)
        if self.causal_dim == self.backbone.config.hidden_size:
            out.append(self.class_head.weight)
        return out

    def actions_from_u(self, u: torch.Tensor):
        """Causal sampling: given an individual u [.., C], class scores are Cauchy(W u + b, |W||b_noise|).

        Returns (scores whose argmax is the decision: the OvR margin, or loc_S for softmax; value)."""
        dist = self.config.distribution
        noise = self.b_noise.abs().expand_as(u)
        loc_s, scale_s = cauchy.linear_propagate(
            u, noise, self._with_num_row(self.class_head.weight), self.class_head.bias, dist
        )
        loc_y, _ = cauchy.linear_propagate(u, noise, self.reg_head.weight, self.reg_head.bias, dist)
        if self.config.classifier == "ovr":
            return cauchy.ovr_margin(loc_s, scale_s, self._threshold()), loc_y[..., 0]
        return loc_s, loc_y[..., 0]


def _threshold_loaded(module: CausalQwen, incompatible) -> None:
    """A loaded state that holds the threshold carries a measured C_k."""
    if not any(k == "threshold" or k.endswith(".threshold") for k in incompatible.missing_keys):
        module.threshold_measured = True


class BaselineQwen(_NumericFusion):
    """Same backbone and numeric fusion; softmax LM head (untied copy) + Normal regression head.

    Of :class:`CausalConfig` it reads ``gamma0`` (the initial sigma of the regression head), ``lam``,
    ``reg_gain``, ``freeze_backbone`` and ``seed``; ``FIXED`` are the values it always uses and
    ``UNUSED`` the fields it never reads (the command line refuses them: see :func:`baseline_conflicts`).
    """

    FIXED = {"classifier": "softmax", "distribution": "normal", "alpha": 1.0}
    UNUSED = ("causal_dim", "b_noise", "threshold", "threshold_mode", "abduction_init")

    def __init__(
        self,
        backbone: Qwen2ForCausalLM,
        num_token_id: int,
        config: CausalConfig | None = None,
        classes=None,
    ):
        super().__init__()
        config = (config or CausalConfig()).validate()
        self.config = config.replace(**self.FIXED)
        g = torch.Generator().manual_seed(config.seed)
        self._init_fusion(backbone, num_token_id, g, classes)
        h = backbone.config.hidden_size
        self.lm_head = nn.Linear(h, self.vocab_size, bias=False)
        self.reg_head = nn.Linear(h, 2)  # mean, softplus^-1(sigma)
        with torch.no_grad():
            self.lm_head.weight.copy_(self._class_head_from_base(backbone.lm_head.weight))
            self._init_num_row(self.lm_head.weight)
            bound = config.reg_gain * math.sqrt(6.0 / (h + 2))
            self.reg_head.weight.copy_((torch.rand(self.reg_head.weight.shape, generator=g) * 2 - 1) * bound)
            self.reg_head.bias.copy_(
                torch.tensor([0.0, config.gamma0 + math.log(-math.expm1(-config.gamma0))])
            )
        self.lm_head = self._restricted_linear(self.lm_head)
        _freeze(backbone, config.freeze_backbone)
        self.to(backbone.device)  # the heads were built on the CPU

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The copy of the base LM head (see :meth:`CausalQwen.pretrained_parameters`)."""
        return [self.lm_head.weight]

    def used_config(self) -> dict:
        """The settings this model actually uses (its config without the fields it never reads)."""
        return {k: v for k, v in self.config.to_dict().items() if k not in self.UNUSED}

    def forward(self, input_ids, numerical_values=None, attention_mask=None) -> CausalOutput:
        return self.heads(self.features(input_ids, numerical_values, attention_mask))

    def heads(self, z: torch.Tensor) -> CausalOutput:
        """The softmax and Normal heads on features z [B, T, H] (also used on a feature cache)."""
        logits = F.linear(z, self._with_num_row(self.lm_head.weight))
        reg = self.reg_head(z)
        return CausalOutput(
            z,
            None,
            None,
            logits,
            None,
            torch.softmax(logits, -1),
            reg[..., 0],
            F.softplus(reg[..., 1]),
            "normal",
        )


def baseline_conflicts(given: dict) -> list[str]:
    """The CausalConfig fields in ``given`` (settings a user passed explicitly) that do not apply to the
    baseline: a field it never reads, or a value other than the one it always uses."""
    return [
        name
        for name, value in given.items()
        if name in BaselineQwen.UNUSED or (name in BaselineQwen.FIXED and value != BaselineQwen.FIXED[name])
    ]


def next_token_targets(input_ids, numerical_values, attention_mask, num_token_id):
    """Labels, valid mask, number mask and target values of the next-token convention.

    labels_i = x_{i+1}; valid_i = position i and i+1 both real (the last position is ignored);
    m_i = valid_i and labels_i == <NUM>; target value v_i = numerical_values_{i+1}. All [B, T].
    """
    b, t = input_ids.shape
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    labels = torch.zeros_like(input_ids)
    labels[:, :-1] = input_ids[:, 1:]
    valid = torch.zeros_like(mask)
    valid[:, :-1] = mask[:, :-1] & mask[:, 1:]
    values = torch.zeros(b, t, dtype=torch.float32, device=input_ids.device)
    if numerical_values is not None:
        values[:, :-1] = numerical_values[:, 1:].float()
    is_num = valid & (labels == num_token_id)
    return labels, valid, is_num, values


def gated_loss(
    out: CausalOutput,
    input_ids: torch.Tensor,
    numerical_values: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    num_token_id: int,
    alpha: float = 1.0,
    lam: float = 1.0,
    classifier: str = "ovr",
    eps: float = 1e-7,
    eps_log: float = 1e-30,
) -> dict[str, torch.Tensor]:
    """Total = mean classification loss over valid positions + lam * sum(g NLL) / sum(m).

    OvR classification: binary cross-entropy summed over the vocabulary (one-hot target). With the
    margin t available, log P and log(1 - P) come from :func:`cauchy.ovr_log_probability` (accurate in
    both tails, floored at log(eps_log)); otherwise from P clamped to [eps, 1 - eps]. A clamp on P has
    zero gradient where it acts, so a negative class whose P rounded to 1 could never be pushed back
    down: on SmolLM2 hundreds of classes stuck that way (chapter 50). Softmax: cross-entropy on loc_S.
    Gate g_i = m_i (alpha + (1 - alpha) P_<NUM>,i), with P_<NUM> detached (chapter 50 says why).
    Denominators are at least 1.
    """
    labels, valid, is_num, values = next_token_targets(
        input_ids, numerical_values, attention_mask, num_token_id
    )
    n_valid = valid.sum().clamp_min(1)
    n_num = is_num.sum().clamp_min(1)
    if classifier == "ovr" and out.margin is not None:
        floor = math.log(eps_log)
        log_p = cauchy.ovr_log_probability(out.margin, out.distribution).clamp_min(floor)
        log_q = cauchy.ovr_log_probability(-out.margin, out.distribution).clamp_min(floor)  # log(1 - P)
        # sum_k -log(1 - P_k) over every k, then swap in -log P_y for the target (no [B,T,V] one-hot)
        per_pos = (
            -log_q.sum(-1)
            + log_q.gather(-1, labels[..., None])[..., 0]
            - log_p.gather(-1, labels[..., None])[..., 0]
        )
    elif classifier == "ovr":
        p = out.probs.clamp(eps, 1 - eps)
        neg = -torch.log1p(-p)
        p_target = p.gather(-1, labels[..., None])[..., 0]
        per_pos = neg.sum(-1) + torch.log1p(-p_target) - torch.log(p_target)
    else:
        per_pos = F.cross_entropy(out.loc_S.transpose(1, 2), labels, reduction="none")
    cls_loss = (per_pos * valid).sum() / n_valid
    # The NLL at the positions that are not numbers is masked out, but its gradient is not: where the
    # masked branch is infinite (a Normal sigma that underflowed to 0 at a position no loss reads),
    # torch.where passes 0 * inf = NaN back to the head. Safe inputs there keep every gradient finite
    # (the baseline's regression head went NaN after 150 steps on Qwen2.5 without them).
    safe_loc = torch.where(is_num, out.loc_Y, torch.zeros_like(out.loc_Y))
    safe_scale = torch.where(is_num, out.scale_Y, torch.ones_like(out.scale_Y))
    nll = cauchy.nll(
        torch.where(is_num, values, torch.zeros_like(values)), safe_loc, safe_scale, out.distribution
    )
    p_num = out.probs[..., num_token_id].detach()
    gate = is_num.float() * (alpha + (1 - alpha) * p_num)
    reg_loss = (gate * torch.where(is_num, nll, torch.zeros_like(nll))).sum() / n_num
    return {
        "loss": cls_loss + lam * reg_loss,
        "cls": cls_loss,
        "reg": reg_loss,
        "gate_mean": gate.sum() / n_num,
    }
