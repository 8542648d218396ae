"""specopt under the trainers: HF transformers.Trainer (optimizers=… and optimizer_cls_and_kwargs=…), PyTorch
Lightning (configure_optimizers, step(closure)), torch.autocast bf16 and bf16 parameters, and the runnable examples of
docs/integrations.md. Tiny random-init causal LMs on a learnable token chain, 20 steps each, on the CPU. Skips
cleanly without transformers / accelerate / lightning."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from specopt import integrations, registry

VOCAB, SEQ, BATCH, STEPS = 64, 32, 8, 20
PRESETS = ("muon", "scion", "uscion", "clipped-scion", "almond", "prox-spectral")
"""Every specopt preset of the registry; Gluon is tested with fixed L under HF and online under Lightning."""


pytestmark = pytest.mark.usefixtures("one_thread")


def chain(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Token sequences that follow one fixed random permutation: a model learns them in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(VOCAB, generator=g)
    x = torch.empty(n, SEQ, dtype=torch.long)
    x[:, 0] = torch.randint(VOCAB, (n,), generator=g)
    for t in range(1, SEQ):
        x[:, t] = perm[x[:, t - 1]]
    return x


def gpt2(dropout: float = 0.0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=SEQ, bos_token_id=0,
                                  eos_token_id=0, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return transformers.GPT2LMHeadModel(cfg)


def llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                   num_key_value_heads=1, vocab_size=VOCAB, max_position_embeddings=SEQ)
    return transformers.LlamaForCausalLM(cfg)


def snapshot(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_trained(model, before: dict, opt, losses: list[float]) -> None:
    """Loss went down, every trainable tensor moved, and the optimizer holds state for every one of them."""
    assert len(losses) >= STEPS
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3, losses
    moved = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert len(moved) == len(before), set(before) - set(moved)
    assert sum(1 for p in model.parameters() if opt.state.get(p)) == len(before)


# ---------------------------------------------------------------------------------------------- create_optimizer
def test_create_optimizer_resolves_names_defaults_and_options():
    import specopt
    from specopt.registry import DEFAULTS

    model = torch.nn.Sequential(torch.nn.Embedding(VOCAB, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, VOCAB))
    opt = integrations.create_optimizer(model, "Clipped_Scion", weight_decay=0.1, estimator="storm")
    assert type(opt) is specopt.ClippedScion and opt.estimator.name == "storm"
    assert {g["lr"] for g in opt.param_groups} == {DEFAULTS["clipped-scion"]["lr"]}
    assert {g["weight_decay"] for g in opt.param_groups} == {0.1}
    assert {g["role"] for g in opt.param_groups} == {"embedding", "hidden", "head", "vector"}
    muon = integrations.create_optimizer(model, "muon", lr=0.05, adamw_lr=1e-3)
    lrs = {g["role"]: g["lr"] for g in muon.param_groups}
    assert lrs["hidden"] == 0.05 and lrs["embedding"] == lrs["head"] == 1e-3


class _ExpertMixer(torch.nn.Module):
    """An MoE-like layer whose 3-D weight no rule knows: ``x @ w[e]`` for each of 2 experts, (E, d_in, d_out)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(2, 8, 4) / 8 ** 0.5)
        self.out = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.out(torch.einsum("bi,eio->bo", x, self.w))


@pytest.mark.parametrize("name", ["muon", "scion", "gluon", "almond"])
def test_the_builders_take_the_declaration_param_groups_asks_for(name):
    """The error for a tensor no rule knows says ``layouts={...}``; the builders passed that keyword to the
    optimizer's constructor (a TypeError), so its advice could not be followed without leaving them. It reaches
    param_groups now, as do msign's settings (bf16 msign off for the Scion family, whose constructors take none)."""
    import specopt

    model = _ExpertMixer()
    with pytest.raises(ValueError, match=r"Declare it in one line: param_groups\(model, layouts="):
        integrations.create_optimizer(model, name)
    opt = integrations.create_optimizer(model, name, layouts={r"^w$": "experts_transposed"},
                                        msign={"compute_dtype": torch.float32})
    (group,) = [g for g in opt.param_groups if any(p is model.w for p in g["params"])]
    assert group["role"] == "expert"
    assert group["norm"] == specopt.views.Stacked(specopt.views.Transposed(
        specopt.Spectral(compute_dtype=torch.float32)))
    with pytest.raises(ValueError, match="adamw steps model.parameters.. as one group and reads no layouts"):
        integrations.create_optimizer(model, "adamw", layouts={r"^w$": "experts_transposed"})
    with pytest.raises(ValueError, match="gram=True and msign=.*disagree"):
        integrations.create_optimizer(model, name, layouts={r"^w$": "experts"}, gram=True, msign={"gram": False})


@pytest.mark.parametrize("name", ["torch-muon", "prox-spectral"])
def test_builders_of_whole_matrix_steps_take_roles_and_refuse_what_they_would_ignore(name):
    """torch's Muon and ProxSpectral's P(d) take each whole matrix with their own norm: a declared layout or head
    decides which tensors they get; per-head blocks, overrides and msign settings were accepted and dropped."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    task, hp = SimpleNamespace(name="t", scheme="image"), registry.resolve(name)
    opt = registry.build(name, model, task, hp, groups={"head": False})[0]  # the last layer is hidden, not a head
    assert {id(p) for g in opt.param_groups if g.get("norm") != "adamw" for p in g["params"]} == {
        id(model[0].weight), id(model[2].weight)}
    for option in ({"num_heads": 2}, {"split_sizes": {"0": (4, 4)}}, {"msign": {"gram": True}},
                   {"overrides": {"0": {"lr": 0.1}}}, {"embedding_norm": "col_norm"}):
        with pytest.raises(ValueError, match=f"{name} reads only the roles of param_groups .*so {next(iter(option))} "
                                             "would be ignored"):
            registry.build(name, model, task, hp, groups={"head": False, **option})


@pytest.mark.parametrize("name, kwargs, message", [
    ("adam", {}, "unknown optimizer 'adam'; valid optimizers: adamw"),
    ("torch-muon", {}, "is two optimizers"),
    ("scion", {"weight_decay": 0.1}, "scion has no weight_decay"),
    ("adamw", {"momentum": 0.5}, "adamw does not use momentum (it takes lr, weight_decay)"),
    ("gluon", {"radius": 3.0}, "gluon does not use radius"),
    ("scion", {"adamw_lr": 1e-3}, "scion does not use adamw_lr"),
    ("clipped-scion", {"constrained": True, "weight_decay": 0.5}, "rule 'clipped_constrained' has no weight decay"),
])
def test_create_optimizer_refuses_with_a_reason(name, kwargs, message):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=re.escape(message)):
        integrations.create_optimizer(model, name, **kwargs)


@pytest.mark.parametrize("name", ["muon", "normuon", "torch-muon"])
def test_the_muon_familys_momentum_is_the_one_given(name):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    hp = registry.resolve(name, {"momentum": 0.5})
    task = type("Task", (), {"scheme": "image"})()
    opt = registry.build(name, model, task, hp)[0]
    assert {g["momentum"] for g in opt.param_groups if g.get("norm", "muon") != "adamw"} == {0.5}


def test_hf_builders_name_a_missing_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with pytest.raises(ImportError, match=re.escape("trainer_optimizers needs the optional package 'transformers'")):
        integrations.trainer_optimizers(model, num_training_steps=10)
    assert integrations.lightning_optimizers(model, num_training_steps=10)["lr_scheduler"]["interval"] == "step"


def test_warmup_schedule_matches_transformers_after_warmup():
    transformers = pytest.importorskip("transformers")
    for kind in ("linear", "cosine", "constant"):
        ours = integrations.warmup_schedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
                                            STEPS, 4, kind)
        hf_name = "constant_with_warmup" if kind == "constant" else kind
        theirs = transformers.get_scheduler(hf_name, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
                                            num_warmup_steps=4, num_training_steps=STEPS)
        for k in range(STEPS):
            a, b = ours.get_last_lr()[0], theirs.get_last_lr()[0]
            assert a == pytest.approx((k + 1) / 5) if k < 4 else a == pytest.approx(b, abs=1e-12), (kind, k)
            ours.optimizer.step(), theirs.optimizer.step()
            ours.step(), theirs.step()
    with pytest.raises(ValueError, match="unknown schedule 'exp'"):
        integrations.warmup_schedule(ours.optimizer, STEPS, 0, "exp")
    with pytest.raises(ValueError, match="num_warmup_steps .30. exceeds"):
        integrations.warmup_schedule(ours.optimizer, STEPS, 30)


# ---------------------------------------------------------------------------------------------- HF Trainer
def hf_train(model, steps: int = STEPS, data=None, **trainer_kwargs):
    """Run transformers.Trainer on the chain data; return the trainer and its per-step (loss, lr, grad_norm)."""
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    x = chain() if data is None else data
    rows = [{"input_ids": s, "labels": s} for s in x]
    arg_names = ("max_grad_norm", "bf16", "lr_scheduler_type", "warmup_steps", "learning_rate")
    args = {k: trainer_kwargs.pop(k) for k in arg_names if k in trainer_kwargs}
    out = trainer_kwargs.pop("output_dir")
    targs = transformers.TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH,
                                           report_to="none", use_cpu=True, save_strategy="no", logging_steps=1,
                                           disable_tqdm=True, seed=0, **args)
    trainer = transformers.Trainer(model=model, args=targs, train_dataset=rows, **trainer_kwargs)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return trainer, [h["loss"] for h in logs], [h["learning_rate"] for h in logs], [h["grad_norm"] for h in logs]


@pytest.mark.parametrize("name, kwargs", [(p, {}) for p in PRESETS] + [("gluon", {"L0": 1.0, "L1": 20.0})])
def test_hf_trainer_trains_with_every_preset(tmp_path, name, kwargs):
    model = gpt2()
    opt, scheduler = integrations.trainer_optimizers(model, name, num_training_steps=STEPS, num_warmup_steps=2,
                                                     lr_scheduler_type="cosine", **kwargs)
    before = snapshot(model)
    trainer, losses, lrs, _ = hf_train(model, optimizers=(opt, scheduler), output_dir=tmp_path)
    assert trainer.optimizer.optimizer is opt
    assert_trained(model, before, opt, losses)
    peak = opt.param_groups[0]["initial_lr"]  # what HF logs: the first group's lr (Muon's: an AdamW group)
    assert lrs[:3] == pytest.approx([0.0, peak / 2, peak]) and lrs[-1] < 0.05 * peak  # warm-up, then cosine


def test_hf_trainer_llama_bf16_autocast(tmp_path):
    model = llama()
    opt, scheduler = integrations.trainer_optimizers(model, "muon", num_training_steps=STEPS)
    before = snapshot(model)
    _, losses, lrs, _ = hf_train(model, optimizers=(opt, scheduler), bf16=True, output_dir=tmp_path)
    assert_trained(model, before, opt, losses)
    assert next(model.parameters()).dtype == torch.float32 and lrs[0] > lrs[-1] > 0


def test_hf_trainer_builds_the_optimizer_through_the_factory(tmp_path):
    trainer_optimizer = pytest.importorskip("transformers.trainer_optimizer")
    if not hasattr(trainer_optimizer, "is_optimizer_factory"):
        pytest.skip("this transformers calls optimizer_cls(param_groups, **kwargs), not factories")
    model = gpt2()
    before = snapshot(model)
    trainer, losses, lrs, _ = hf_train(
        model, optimizer_cls_and_kwargs=(integrations.OptimizerFactory, {"name": "uscion", "lr": 2**-10}),
        lr_scheduler_type="linear", warmup_steps=2, output_dir=tmp_path)
    opt = trainer.optimizer.optimizer
    assert type(opt).__name__ == "UScion" and {g["role"] for g in opt.param_groups} >= {"embedding", "hidden"}
    assert_trained(model, before, opt, losses)
    assert lrs[:3] == pytest.approx([0.0, 2**-11, 2**-10]) and lrs[-1] < 2**-13


@pytest.mark.parametrize("kwargs, message", [({"name": "muon", "estimator": "storm"}, "needs optimizer.step(closure)"),
                                             ({"name": "gluon"}, "online L0/L1 estimate needs"),
                                             ({"name": "gluon-mvr"}, "estimator 'storm', which needs")])
def test_hf_routes_refuse_what_needs_a_closure(kwargs, message):
    pytest.importorskip("transformers")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=re.escape(message)):
        integrations.trainer_optimizers(model, num_training_steps=10, **kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        integrations.OptimizerFactory()(model, **kwargs)


def test_hf_max_grad_norm_scales_clipped_scion_and_gluon_steps_not_muon(tmp_path):
    """One step from the same weights with max_grad_norm off and on: ClippedScion's step (ρ_c above the dual norm)
    shrinks by the clip factor c = max_norm/‖g‖, Gluon's t = D/(L0 + L1·D) shrinks too, Muon's length is kept."""
    max_norm = 0.25
    ratios = {}
    for name, kwargs in (("clipped-scion", {"clip_radius": 600.0}), ("gluon", {"L0": 1.0, "L1": 20.0}),
                         ("muon", {})):
        steps, grad_norms = [], []
        for clip in (0.0, max_norm):
            model = gpt2()
            opt, scheduler = integrations.trainer_optimizers(model, name, num_training_steps=1,
                                                             lr_scheduler_type="constant", **kwargs)
            hidden = [(p, g["norm"]) for g in opt.param_groups if g["role"] == "hidden" for p in g["params"]]
            before = [p.detach().clone() for p, _ in hidden]
            _, _, _, gn = hf_train(model, steps=1, optimizers=(opt, scheduler), max_grad_norm=clip,
                                   output_dir=tmp_path)
            grad_norms.append(gn[0])
            steps.append(torch.stack([norm.norm(p.detach() - b) for (p, norm), b in zip(hidden, before, strict=True)]))
        assert grad_norms[0] == pytest.approx(grad_norms[1]) and grad_norms[0] > 2 * max_norm
        ratios[name] = (steps[1] / steps[0], max_norm / grad_norms[0])
    ratio, c = ratios["clipped-scion"]
    assert ratio == pytest.approx(torch.full_like(ratio, c), rel=0.03)
    assert float(ratios["gluon"][0].max()) < 0.9
    assert ratios["muon"][0] == pytest.approx(torch.ones_like(ratios["muon"][0]), rel=0.03)


@pytest.mark.parametrize("name, route", [("muon", "optimizers"), ("drop-muon", "factory"), ("muonbp", "optimizers")])
def test_hf_trainer_resumes_exactly_from_its_checkpoint(tmp_path, name, route):
    """resume_from_checkpoint: Trainer saves optimizer.pt (torch.save of state_dict()) and reloads it into a fresh
    optimizer; 6 steps straight and 3 + 3 from checkpoint-3 end on the same weights, bit for bit."""
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    rows = [{"input_ids": s, "labels": s} for s in chain()]

    def train(out, resume=None):
        model = gpt2()
        args = transformers.TrainingArguments(output_dir=str(out), max_steps=6, per_device_train_batch_size=BATCH,
                                              report_to="none", use_cpu=True, save_strategy="steps", save_steps=3,
                                              disable_tqdm=True, seed=0, lr_scheduler_type="cosine", warmup_steps=2)
        if route == "optimizers":
            kwargs = {"optimizers": integrations.trainer_optimizers(model, name, num_training_steps=6,
                                                                    num_warmup_steps=2, lr_scheduler_type="cosine")}
        else:
            kwargs = {"optimizer_cls_and_kwargs": (integrations.OptimizerFactory, {"name": name})}
        trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, **kwargs)
        trainer.train(resume_from_checkpoint=resume)
        return model, trainer.optimizer.optimizer

    if route == "factory" and not hasattr(pytest.importorskip("transformers.trainer_optimizer"),
                                          "is_optimizer_factory"):
        pytest.skip("this transformers calls optimizer_cls(param_groups, **kwargs), not factories")
    straight, opt = train(tmp_path / "straight")
    resumed, _ = train(tmp_path / "resumed", resume=tmp_path / "straight" / "checkpoint-3")
    assert type(opt).__name__ == {"muon": "Muon", "drop-muon": "DropMuon", "muonbp": "MuonBP"}[name]
    for (n, a), b in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), n


# ---------------------------------------------------------------------------------------------- Lightning
def lightning_fit(name: str, precision: str = "32-true", dropout: float = 0.0, **kwargs):
    """Fit a LightningModule whose configure_optimizers returns lightning_optimizers(...); record every
    training_step call (loss, step) and the lr at the start of each step."""
    L = pytest.importorskip("lightning")
    logging.getLogger("lightning").setLevel(logging.ERROR)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net, self.calls, self.lrs, self.reported = gpt2(dropout), [], [], []

        def training_step(self, batch, batch_idx):
            (x,) = batch
            loss = self.net(input_ids=x, labels=x).loss
            self.calls.append((batch_idx, float(loss)))
            self.log("train_loss", loss)
            return loss

        def on_train_batch_start(self, batch, batch_idx):
            self.lrs.append(self.optimizers().param_groups[0]["lr"])

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.reported.append(float(outputs["loss"]))

        def configure_optimizers(self):
            return integrations.lightning_optimizers(self.net, name, num_training_steps=STEPS, num_warmup_steps=2,
                                                     **kwargs)

    module = Module()
    before = snapshot(module.net)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(chain()), batch_size=BATCH)
    trainer = L.Trainer(accelerator="cpu", max_steps=STEPS, precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    return module, before, trainer


@pytest.mark.parametrize("name, kwargs, calls", [(p, {}, STEPS) for p in PRESETS] + [
    ("gluon", {}, 2 * STEPS - 1),                         # online L: one probe of the batch per step from step 2
    ("muon", {"estimator": "storm"}, 2 * STEPS - 1),      # STORM: the batch again at the previous iterate
    ("gluon", {"estimator": "storm"}, 2 * STEPS - 1),     # both probe x_{k-1}: one evaluation serves both
])
def test_lightning_steps_every_preset_through_its_closure(name, kwargs, calls):
    module, before, trainer = lightning_fit(name, **kwargs)
    opt = trainer.optimizers[0]
    firsts = [loss for i, (b, loss) in enumerate(module.calls) if i == 0 or module.calls[i - 1][0] != b]
    assert_trained(module.net, before, opt, firsts)
    assert len(module.calls) == calls
    assert module.lrs[:3] == pytest.approx([x * opt.param_groups[0]["initial_lr"] for x in (1 / 3, 2 / 3, 1.0)])
    assert module.lrs[-1] < 0.1 * module.lrs[2]
    # Lightning reports (outputs, self.log) the closure's last evaluation; the probe runs first, so that is the loss
    # at the current weights, and the probe's (at the previous weights) is the first call of a batch
    lasts = [loss for i, (b, loss) in enumerate(module.calls) if i + 1 == len(module.calls)
             or module.calls[i + 1][0] != b]
    assert module.reported == pytest.approx(lasts)
    assert float(trainer.callback_metrics["train_loss"]) == pytest.approx(lasts[-1])
    assert (module.reported != pytest.approx(firsts)) == (calls > STEPS)


@pytest.mark.parametrize("precision, name, kwargs", [("bf16-mixed", "gluon", {}),
                                                     ("bf16-true", "muon", {"estimator": "storm"})])
def test_lightning_bf16(precision, name, kwargs):
    module, before, trainer = lightning_fit(name, precision=precision, **kwargs)
    firsts = [loss for i, (b, loss) in enumerate(module.calls) if i == 0 or module.calls[i - 1][0] != b]
    assert_trained(module.net, before, trainer.optimizers[0], firsts)
    expected = torch.bfloat16 if precision == "bf16-true" else torch.float32
    assert {p.dtype for p in module.net.parameters()} == {expected}


@pytest.mark.parametrize("name, kwargs", [("gluon", {}), ("muon", {"estimator": "storm"})])
def test_lightning_resumes_exactly_from_its_checkpoint(tmp_path, name, kwargs):
    """Trainer.fit(ckpt_path=…) from a ModelCheckpoint at step 4 of 8 ends where the straight run ends, bit for
    bit: the probing presets' state (Gluon's online L0/L1, STORM's previous gradient) and the schedule survive
    Lightning's checkpoint."""
    L = pytest.importorskip("lightning")
    logging.getLogger("lightning").setLevel(logging.ERROR)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = gpt2()

        def training_step(self, batch, batch_idx):
            (x,) = batch
            return self.net(input_ids=x, labels=x).loss

        def configure_optimizers(self):
            return integrations.lightning_optimizers(self.net, name, num_training_steps=8, num_warmup_steps=2,
                                                     **kwargs)

    def fit(ckpt_path=None):
        module = Module()
        saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1)
        trainer = L.Trainer(accelerator="cpu", max_steps=8, logger=False, callbacks=[saver],
                            enable_progress_bar=False, enable_model_summary=False)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(chain(32)), batch_size=BATCH)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, loader, ckpt_path=ckpt_path)
        return module.net

    straight = fit()
    (step4,) = tmp_path.glob("*step=4.ckpt")
    resumed = fit(step4)
    for (n, a), b in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("case, name, kwargs, outcome", [
    ("manual", "gluon", {}, "computed no gradients"),
    ("accumulate", "gluon", {}, "added to the gradients already there"),
    ("manual", "muon", {"estimator": "storm"}, ValueError),
    ("accumulate", "muon", {"estimator": "storm"}, ValueError),
])
def test_lightning_manual_optimization_and_accumulation_are_not_taken_for_a_closure(case, name, kwargs, outcome):
    """Lightning's manual optimization turns ``opt.step()`` into ``step(closure=<an empty one>)`` and its
    ``accumulate_grad_batches`` hands ``step`` a closure that adds the last micro-batch to the others: online Gluon
    read a zero or another batch's gradient at the previous weights and stopped training (loss 4.16 from ln 64),
    silently, and STORM skipped its correction. Gluon now warns and steps as without a closure; STORM refuses."""
    L = pytest.importorskip("lightning")
    logging.getLogger("lightning").setLevel(logging.ERROR)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net, self.automatic_optimization = gpt2(), case != "manual"

        def training_step(self, batch, batch_idx):
            (x,) = batch
            loss = self.net(input_ids=x, labels=x).loss
            if case == "manual":
                opt = self.optimizers()
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
            return loss

        def configure_optimizers(self):
            return integrations.create_optimizer(self.net, name, **kwargs)

    module = Module()
    before = float(module.net(input_ids=chain(), labels=chain()).loss)
    trainer = L.Trainer(accelerator="cpu", max_steps=STEPS, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accumulate_grad_batches=2 if case == "accumulate" else 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(chain()), batch_size=BATCH)
    if outcome is ValueError:
        with pytest.raises(ValueError, match="estimator='storm' re-evaluates"):
            trainer.fit(module, loader)
        return
    with pytest.warns(UserWarning) as caught:
        trainer.fit(module, loader)
    (said,) = [str(w.message) for w in caught if "the closure given to step()" in str(w.message)]  # once, one reason
    assert outcome in said
    with torch.no_grad():
        assert float(module.net(input_ids=chain(), labels=chain()).loss) < 0.9 * before


# ---------------------------------------------------------------------------------------------- plain loop, bf16
@pytest.mark.parametrize("mode, name, kwargs", [("autocast", "muon", {}), ("autocast", "gluon", {}),
                                                ("bf16-params", "clipped-scion", {}),
                                                ("bf16-params", "uscion", {"estimator": "storm"})])
def test_bf16_autocast_and_bf16_parameters(mode, name, kwargs):
    model = llama()
    if mode == "bf16-params":
        model = model.to(torch.bfloat16)
    opt = integrations.create_optimizer(model, name, **kwargs)
    scheduler = integrations.warmup_schedule(opt, STEPS, 2, "cosine")
    before, data, losses = snapshot(model), chain(), []
    for k in range(STEPS):
        batch = data[BATCH * k % len(data):][:BATCH]

        def closure(batch=batch):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
                loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            return loss

        losses.append(float(opt.step(closure)))
        scheduler.step()
    assert_trained(model, before, opt, losses)
    want = torch.bfloat16 if mode == "bf16-params" else torch.float32
    assert {p.dtype for p in model.parameters()} == {want}
    up = opt.state[model.model.layers[0].mlp.up_proj.weight]
    assert up["momentum_buffer"].dtype == torch.float32  # low-precision parameters: the estimator in float32


# ---------------------------------------------------------------------------------------------- the docs
def doc_blocks() -> list[str]:
    text = (Path(__file__).parents[1] / "docs" / "integrations.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_docs_have_examples_for_each_trainer():
    blocks = "\n".join(doc_blocks())
    for needle in ("transformers.Trainer(", "optimizer_cls_and_kwargs", "lightning", "torch.autocast",
                   "torch.bfloat16", "max_grad_norm"):
        assert needle in blocks, needle


@pytest.mark.parametrize("index", range(len(doc_blocks())))
def test_docs_examples_run_as_written(index, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    pytest.importorskip("lightning")
    if "import peft" in doc_blocks()[index]:
        pytest.importorskip("peft")
    monkeypatch.chdir(tmp_path)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(doc_blocks()[index], f"docs/integrations.md block {index}", "exec"), {"__name__": "__doc__"})
