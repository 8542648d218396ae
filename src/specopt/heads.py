"""The output layer of a model, found by what it is (it produces the logits), not by registration order.

In order: the module transformers' ``get_output_embeddings()`` or timm's ``get_classifier()`` returns (a conv
classifier too; in a classifier module without a weight of its own, its ``num_classes`` Linear layers; with timm's
``aux_head``); a classifier with ``config.num_labels`` outputs outside a transformers base model; litgpt's
``lm_head`` and x-transformers' ``to_logits`` and ``mlp_head``; the ``nn.Linear`` (or ``Conv1D``) whose output
reaches the model's output through parameter-free operations in a ``torch.fx`` trace; the head the outermost
transformers or timm model inside states by the first two rules (a LightningModule's ``self.model``); the one
``nn.Linear`` that projects back to the rows of one of the model's ``nn.Embedding`` tables (a language model of
one's own; a position table's rows may equal hidden widths). Otherwise the model has no head
(``nn.Transformer`` alone, a feature extractor). ``torch.compile``, DDP and ``nn.DataParallel`` wrappers are read
through the module they wrap.
"""

from __future__ import annotations

import contextlib
import warnings

import torch.fx
from torch import nn


def find_heads(model: nn.Module) -> tuple[set[str], str]:
    """Names of the modules that produce the model's output (logits), and the rule that found them. A model wrapped
    by ``torch.compile``, DDP or ``nn.DataParallel`` is read through the module it wraps (the wrapper forwards
    neither transformers' nor timm's getters, and torch.fx cannot trace it); a model held by a module of one's own
    (a LightningModule's ``self.model``) states its head as it would alone."""
    wrapped = _wrapped(model)
    if wrapped is not None:
        attribute, inner = wrapped
        heads, rule = find_heads(inner)
        return {f"{attribute}.{name}" for name in heads}, rule
    modules = dict(model.named_modules())
    stated = _stated_heads(model, modules)
    if stated is not None:
        return stated
    found = _fx_output_linears(model)
    if found:
        return found, "torch.fx: produces the output"
    for name, sub in modules.items():  # outermost first: the transformers or timm model a wrapper holds
        if sub is not model and _states_its_head(sub):
            inner = dict(sub.named_modules())
            stated = _stated_heads(sub, inner)  # an encoder stack that returns its input table states no head
            if stated is not None and not any(is_embedding(inner[n]) for n in stated[0]):
                return {f"{name}.{n}" for n in stated[0]}, f"{stated[1]} of {name}"
    return _projects_to_vocabulary(modules)


def _projects_to_vocabulary(modules: dict) -> tuple[set[str], str]:
    """The one ``nn.Linear`` whose width is an ``nn.Embedding``'s number of rows, table by table: a position table's
    rows (the context length) often equal the width of hidden layers, which must not hide the token table's one
    projection. Two tables with one projection each: no head, with a warning naming both and the ``head=`` to pass."""
    unique = []
    for rows in sorted({m.weight.shape[0] for m in modules.values() if is_embedding(m)}):
        found = {n for n, m in modules.items() if isinstance(m, nn.Linear) and m.out_features == rows}
        if len(found) == 1:
            unique.append(found)
    if len(unique) == 1:
        return unique[0], "projects to the embedding's vocabulary"
    if unique:
        named = ", ".join(sorted(set().union(*unique)))
        warnings.warn(f"param_groups could not tell the output layer: {named} each project to the rows of an "
                      "nn.Embedding; pass head='<regex of its name>' (or head=False for none). Until then each is "
                      "read as a hidden matrix", stacklevel=2)
    return set(), "none found"


def _states_its_head(model: nn.Module) -> bool:
    return any(callable(getattr(model, g, None)) for g in ("get_output_embeddings", "get_classifier")) or \
        getattr(getattr(model, "config", None), "num_labels", None) is not None or _litgpt_head(model) is not None \
        or _x_transformers_head(model) is not None


X_TRANSFORMERS_HEADS = {"TransformerWrapper": "to_logits", "ViTransformerWrapper": "mlp_head",
                        "ContinuousTransformerWrapper": "project_out"}
"""x-transformers' wrappers and the attribute that holds their output layer (their forward does not trace with
torch.fx, and a language model's vocabulary often equals a hidden width)."""


def _x_transformers_head(model: nn.Module) -> list[nn.Module] | None:
    """The output layers of an x-transformers wrapper: its ``to_logits`` or ``mlp_head`` Linear, or each Linear of
    a ``to_logits`` list (``num_output_heads > 1``); None for another model or a tied head (a function)."""
    attribute = X_TRANSFORMERS_HEADS.get(type(model).__name__)
    if attribute is None or not type(model).__module__.startswith("x_transformers"):
        return None
    head = getattr(model, attribute, None)
    heads = list(head) if isinstance(head, nn.ModuleList) else [head]
    return heads if heads and all(isinstance(h, nn.Module) and _has_weight(h) for h in heads) else None


def _litgpt_head(model: nn.Module) -> nn.Module | None:
    """litgpt's GPT (and its LoRA and adapter variants) names its output layer ``lm_head``: the Linear there, or the
    one its adapter wraps (``lm_head.linear``)."""
    head = getattr(model, "lm_head", None)
    if not type(model).__module__.startswith("litgpt.") or not isinstance(head, nn.Module):
        return None
    head = head if _has_weight(head) else getattr(head, "linear", None)
    return head if isinstance(head, nn.Module) and _has_weight(head) else None


def _stated_heads(model: nn.Module, modules: dict) -> tuple[set[str], str] | None:
    """The head a model states: what transformers' ``get_output_embeddings()`` or timm's ``get_classifier()``
    returns (each of a tuple or ``nn.ModuleList``: DeiT-distilled's and LeViT's ``head`` and ``head_dist``),
    litgpt's ``lm_head``, or a transformers classifier of ``config.num_labels`` (or ``vocab_size``) outputs outside
    the base model; None if none."""
    names = {id(m): n for n, m in modules.items()}
    classifiers = _label_classifiers(model, modules)
    for getter in ("get_output_embeddings", "get_classifier"):
        fn = getattr(model, getter, None)
        if callable(fn):
            try:
                out = fn()
            except Exception:  # noqa: BLE001 — a getter that is not implemented for this model
                out = None
            outs = [o for item in _flat(out) for o in _output_layers(item, getattr(model, "num_classes", None))]
            if outs and all(isinstance(o, nn.Module) and id(o) in names and _has_weight(o) for o in outs):
                both = f" and config.num_labels classifier {', '.join(sorted(classifiers))}" if classifiers else ""
                auxiliary = _auxiliary_heads(model, modules) if getter == "get_classifier" else set()
                return {_weight_owner(o, names) for o in outs} | classifiers | auxiliary, f"{getter}(){both}"
    head = _litgpt_head(model)
    if head is not None and id(head) in names:
        return {names[id(head)]}, "litgpt's lm_head"
    heads = _x_transformers_head(model)
    if heads is not None and all(id(h) in names for h in heads):
        return {names[id(h)] for h in heads}, \
            f"x-transformers {type(model).__name__}.{X_TRANSFORMERS_HEADS[type(model).__name__]}"
    if classifiers:
        return classifiers, "config.num_labels or vocab_size classifier"
    return None


def _label_classifiers(model: nn.Module, modules: dict) -> set[str]:
    """The ``nn.Linear`` modules of ``config.num_labels`` or ``config.vocab_size`` outputs outside a transformers base
    model: the classifier of a ``…ForSequenceClassification``, a second output beside the one
    ``get_output_embeddings()`` states (BERT's pre-training next-sentence classifier ``cls.seq_relationship`` beside
    its MLM decoder), and a CTC model's ``lm_head`` (wav2vec2, HuBERT, WavLM, …: no token table, no getter), a
    ``vocab_size`` one only as a child of the model itself (a projection of that width deeper down, e.g. a LoRA factor
    of a model wrapped by peft, is not an output)."""
    config = getattr(model, "config", None)
    labels, vocabulary = getattr(config, "num_labels", None), getattr(config, "vocab_size", None)
    prefix = getattr(model, "base_model_prefix", None)
    # The base model where it is: a model wrapped by peft forwards `base_model_prefix` and the attribute through
    # wrappers whose own `model` is another module, while the base model sits deeper (`base_model.model.model`), and
    # the LoRA factors inside it (rank r outputs, r = num_labels by chance) are not classifiers. The transformers
    # model is the module whose class states the prefix.
    owner = next((n for n, m in modules.items() if prefix and getattr(type(m), "base_model_prefix", None) == prefix
                  and isinstance(m._modules.get(prefix), nn.Module)), None)
    if owner is None:
        return set()
    inside = f"{owner}.{prefix}" if owner else prefix
    return {n for n, m in modules.items() if isinstance(m, nn.Linear) and not n.startswith(inside + ".")
            and n != inside and (m.out_features == labels or (m.out_features == vocabulary and "." not in n))}


def _wrapped(model: nn.Module) -> tuple[str, nn.Module] | None:
    """``(attribute, module)`` a wrapper holds the model in: ``torch.compile``'s ``_orig_mod`` (known by its class
    name, so that reading it does not import torch._dynamo), DDP's and DataParallel's ``module``."""
    if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        return "_orig_mod", model._orig_mod
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return "module", model.module
    return None


def _weight_owner(module: nn.Module, names: dict) -> str:
    """The name of the module that holds ``module.weight`` itself: the module, or the trainable copy inside a wrapper
    that forwards ``weight`` (peft's ``modules_to_save``)."""
    return next((names[id(m)] for m in module.modules() if m._parameters.get("weight") is module.weight),
                names[id(module)])


def _flat(out) -> list:
    """A getter's answer as a list: timm's DeiT-distilled and LeViT return ``(head, head_dist)``, EfficientViM's
    distilled models a tuple of ``nn.ModuleList`` (one classifier per stage)."""
    if isinstance(out, (tuple, list, nn.ModuleList)):
        return [o for item in out for o in _flat(item)]
    return [out]


def _output_layers(module, classes) -> list:
    """The module a getter returned, or the layers inside it when it holds no weight of its own: the one
    ``nn.Linear`` (timm LeViT's ``NormLinear``: a BatchNorm1d, then ``linear``), or every ``nn.Linear`` of the
    model's ``num_classes`` outputs (RepViT's classifier: ``head`` and ``head_dist``, each a NormLinear)."""
    if not isinstance(module, nn.Module) or _has_weight(module):
        return [module]
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if len(linears) == 1:
        return linears
    sized = [m for m in linears if isinstance(classes, int) and m.out_features == classes]
    return sized or [module]


def _auxiliary_heads(model: nn.Module, modules: dict) -> set[str]:
    """A timm model's ``aux_head``: a second classifier of ``num_classes`` outputs on the tokens whose logits are
    added to the output (VOLO, LV-ViT's token labelling)."""
    classes = getattr(model, "num_classes", None)
    aux = modules.get("aux_head")
    return {"aux_head"} if isinstance(aux, nn.Linear) and aux.out_features == classes else set()


def _has_weight(module) -> bool:
    """A module with a weight of its own of at least 2 dims: a linear map, or a conv kernel (timm's DLA, DPN and
    ResNetV2 classify with a 1×1 conv)."""
    return isinstance(getattr(module, "weight", None), nn.Parameter) and module.weight.ndim >= 2


def _fx_output_linears(model: nn.Module) -> set[str]:
    """The Linear modules whose outputs reach the traced output through parameter-free ops only (traced with the
    forward hooks off, so that FSDP2-sharded models trace like the model they shard)."""
    try:
        with warnings.catch_warnings(), _hooks_off(model):
            warnings.simplefilter("ignore")
            graph = _LinearLeafTracer().trace(model)
    except Exception:  # noqa: BLE001 — most models with data-dependent control flow do not trace
        return set()
    modules = dict(model.named_modules())
    found: set[str] = set()
    output = next(n for n in graph.nodes if n.op == "output")
    frontier = _nodes_in(output.args)
    seen = set()
    while frontier:
        node = frontier.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module":
            module = modules.get(node.target)
            if isinstance(module, nn.Linear) or is_hf_conv1d(module):
                found.add(node.target)
                continue
            if module is not None and any(True for _ in module.parameters()):
                continue
        elif node.op not in ("call_function", "call_method"):
            continue
        inputs = _nodes_in(node.args)
        if len(inputs) == 1:
            frontier.extend(inputs)
    return found


def _nodes_in(args) -> list:
    out = []
    torch.fx.node.map_arg(args, lambda n: out.append(n))
    return out


try:
    from torch.distributed.fsdp import FSDPModule as _FSDPModule
except ImportError:  # a torch build without torch.distributed
    _FSDPModule = None


def authored_class(module: nn.Module) -> type:
    """The class the model's author wrote, under the subclasses that FSDP2's ``fully_shard`` (``FSDP<Name>``) and
    ``torch.nn.utils.parametrize`` (``Parametrized<Name>``) swap in: the rules that know a module by its class name
    read this one, so that a sharded or parametrized module keeps its layout."""
    cls = type(module)
    while True:
        bases = cls.__bases__
        if _FSDPModule is not None and len(bases) == 2 and _FSDPModule in bases:
            cls = bases[1] if bases[0] is _FSDPModule else bases[0]
        elif len(bases) == 1 and cls.__name__ == "Parametrized" + bases[0].__name__:
            cls = bases[0]
        else:
            return cls


EMBEDDING_CLASSES = {"QuantEmbedding": "I-BERT's QuantEmbedding (nn.functional.embedding of its weight)"}
"""Lookup tables that are not ``nn.Embedding`` subclasses, by their class name: what each is."""


def is_embedding(module: nn.Module) -> bool:
    """An embedding table: ``nn.Embedding``/``nn.EmbeddingBag`` or a class of :data:`EMBEDDING_CLASSES` (its
    ``weight`` is ``(rows, d)``, read a row per token)."""
    return isinstance(module, (nn.Embedding, nn.EmbeddingBag)) or authored_class(module).__name__ in EMBEDDING_CLASSES


def is_hf_conv1d(module) -> bool:
    """transformers' ``Conv1D`` (GPT-2 family): ``y = x·W + b`` with ``W`` stored ``(d_in, d_out)``."""
    return authored_class(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


class _LinearLeafTracer(torch.fx.Tracer):
    """torch.fx's tracer, with every Linear (and Conv1D) a leaf, also when FSDP2 has replaced its class."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.Linear) or is_hf_conv1d(m) or super().is_leaf_module(m, qualname)


@contextlib.contextmanager
def _hooks_off(model: nn.Module):
    """The model's forward hooks removed while it is traced: the trace computes nothing, and FSDP2's pre-forward
    hook would initialise its state on a symbolic input (and then refuse the real first forward)."""
    saved = [(m, dict(m._forward_pre_hooks), dict(m._forward_hooks)) for m in model.modules()]
    try:
        for m, _, _ in saved:
            m._forward_pre_hooks.clear()
            m._forward_hooks.clear()
        yield
    finally:
        for m, pre, post in saved:
            m._forward_pre_hooks.update(pre)
            m._forward_hooks.update(post)
