"""Character-level GPT (nanoGPT-style) on the shipped Shakespeare corpus or any text file.

Pre-LayerNorm transformer blocks, causal self-attention through a fused QKV projection, GELU MLP of width
4d, learned position embeddings, untied output head, no biases. 90 % of the text trains, 10 % validates.

Initialisations (option ``init``):

* ``"gpt2"`` (default): every matrix N(0, 0.02²), residual projections N(0, (0.02/√(2L))²) (Radford et al. 2019);
* ``"standard"``: PyTorch's own initialisers, the standard parametrisation of width studies (Yang et al. 2022,
  *Tensor Programs V*, arXiv:2203.03466): linear layers U(±1/√fan_in), embeddings N(0, 1);
* ``"norms"``: every matrix on the unit sphere of the norm Scion gives its role (:func:`specopt.param_groups`,
  text scheme; Pethick et al. 2025, arXiv:2502.07529): hidden matrices ``√(d_out/d_in)·Q`` with Q orthogonal
  (each fused q/k/v block its own), so ``‖W‖_RMS→RMS = 1``; embeddings ±1 (``‖W‖_∞ = 1``); the head ±1/d_in
  (``d_in·max|W| = 1``). The norm of every layer is then the same at every width, the init the norm-based
  geometry assumes (Large et al. 2024, *Scalable optimization in the modular norm*, arXiv:2405.14813).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from specopt._checks import check_positive_int
from specopt.roles import param_groups
from specopt.tasks.base import Task, init_model
from specopt.tasks.data import DataError, read_text


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int


SIZES = {
    "tiny": GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, batch_size=16),
    "small": GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=32),
    "medium": GPTConfig(n_layer=6, n_head=6, n_embd=192, block_size=128, batch_size=32),
}


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, bias=False)
        self.attn = CausalSelfAttention(d, n_head)
        self.ln_2 = nn.LayerNorm(d, bias=False)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab_size: int, cfg: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList([Block(cfg.n_embd, cfg.n_head) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=False)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        for name, p in self.named_parameters():  # GPT-2 init, residual projections scaled by depth
            if p.ndim == 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith(("c_proj.weight", "proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


INITS = ("gpt2", "standard", "norms")


def init_on_unit_spheres(model: nn.Module) -> None:
    """Set every matrix of ``model`` to a random point of norm 1 in its role's norm (``Norm.init``); vectors
    (norm gains) keep their value."""
    with torch.no_grad():
        for group in param_groups(model, scheme="text"):
            if group["role"] == "vector":
                continue
            for _, p in group["params"]:
                p.copy_(group["norm"].init(p.shape, 1.0, dtype=p.dtype))


class CharGPT(Task):
    """Next-character prediction. Options: ``size`` (tiny, small, medium), ``data`` (a text file; default
    the shipped Shakespeare), ``n_embd``/``n_layer`` to override the size (width sweeps), ``head_dim`` to fix
    the attention head's dimension (``n_embd/head_dim`` heads: width sweeps that widen by adding heads),
    ``batch_size``, ``block_size``, ``init`` (see :data:`INITS` and the module docstring)."""

    name = "char-gpt"
    unit = "tokens"
    scheme = "text"

    def __init__(self, seed: int = 0, size: str = "tiny", data: str | None = None, n_embd: int | None = None,
                 n_layer: int | None = None, batch_size: int | None = None, block_size: int | None = None,
                 val_batches: int = 8, head_dim: int | None = None, init: str = "gpt2"):
        super().__init__(seed)
        if size not in SIZES:
            raise ValueError(f"unknown char-gpt size {size!r}; valid sizes: {', '.join(SIZES)}")
        if init not in INITS:
            raise ValueError(f"unknown char-gpt init {init!r}; valid inits: {', '.join(INITS)}")
        self.init = init
        for key, value in (("n_embd", n_embd), ("n_layer", n_layer), ("batch_size", batch_size),
                           ("block_size", block_size)):
            if value is not None:
                check_positive_int(value, f"char-gpt {key}")
        base = SIZES[size]
        n_embd = n_embd or base.n_embd
        if head_dim is None:
            n_head = base.n_head if n_embd % base.n_head == 0 else 1
        elif isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1 or n_embd % head_dim:
            raise ValueError(f"head_dim must be a positive integer dividing n_embd = {n_embd}, got {head_dim!r}")
        else:
            n_head = n_embd // head_dim
        self.cfg = GPTConfig(n_layer or base.n_layer, n_head, n_embd, block_size or base.block_size,
                             batch_size or base.batch_size)
        text = read_text(data)
        chars = sorted(set(text))
        self.vocab = {c: i for i, c in enumerate(chars)}
        ids = torch.tensor([self.vocab[c] for c in text], dtype=torch.long)
        split = int(0.9 * len(ids))
        self.train_ids, self.val_ids = ids[:split], ids[split:]
        if len(self.val_ids) <= self.cfg.block_size + 1:
            raise DataError(f"text file {data or 'shipped'} is too short: its last tenth (validation) holds "
                            f"{len(self.val_ids)} characters, fewer than a context of {self.cfg.block_size} + 1")
        self.val = [self._sample(self.val_ids, torch.Generator().manual_seed(10_000 + i)) for i in range(val_batches)]
        self.units_per_example = self.cfg.block_size

    def _sample(self, ids: torch.Tensor, gen: torch.Generator, batch_size: int | None = None):
        T = self.cfg.block_size
        starts = torch.randint(0, len(ids) - T - 1, (batch_size or self.cfg.batch_size,), generator=gen)
        x = torch.stack([ids[s:s + T] for s in starts.tolist()])
        y = torch.stack([ids[s + 1:s + T + 1] for s in starts.tolist()])
        return x, y

    def build_model(self) -> nn.Module:
        return init_model(self._build, self.seed)

    def _build(self) -> GPT:
        model = GPT(len(self.vocab), self.cfg)
        if self.init == "standard":
            for module in model.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    module.reset_parameters()
        elif self.init == "norms":
            init_on_unit_spheres(model)
        return model

    def batch(self, step: int):
        return self._sample(self.train_ids, self.generator(step))

    def batch_of(self, step: int, batch_size: int):
        return self._sample(self.train_ids, self.generator(step), batch_size)

    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def validation_loss(self, model) -> float:
        was_training = model.training
        model.eval()
        value = sum(float(self.loss(model, b)) for b in self.val) / len(self.val)
        model.train(was_training)
        return value

    def units_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.block_size

    def describe(self) -> str:
        c = self.cfg
        return (f"char-gpt: {c.n_layer} layers, width {c.n_embd}, {c.n_head} heads, context {c.block_size}, "
                f"batch {c.batch_size}, vocab {len(self.vocab)}, {len(self.train_ids):,} training characters")
