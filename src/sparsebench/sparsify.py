"""The public entry: ``sparsify(model, method, …)`` selects weights, attaches a technique and
returns a ``Sparsifier`` that steps it, reports it, saves it and finally squashes it into plain
weights.

Mechanism: one ``torch.nn.utils.parametrize`` parametrization per selected weight. The weight's
trained value moves to ``<module>.parametrizations.<attr>.original`` (the same Parameter object,
so an optimizer made earlier stays valid for it), and masks, log σ² and log α live in the
parametrization, hence in the model's state_dict: a checkpoint of the model alone rebuilds the
sparse model.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from .distributions import LayerSparsity, matches, resolve_layer_sparsity
from .layer_kinds import is_transposed_linear
from .methods import Layer, Method, MethodConfig, catalogue
from .schedules import GradualSchedule

__all__ = ["Sparsifier", "load_masks", "select_layers", "sparsify"]

#: Prefix of the technique-wide entries (``Method.extra_state``) in ``Sparsifier.state_dict``:
#: a "/" is in no module name, so they never meet a layer's ``<weight name>.<key>``.
_TECHNIQUE_STATE = "technique/"

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
#: Sparsified only when an ``include`` pattern names them: a lookup table is not a layer most
#: users mean by "the model's weights", but the study prunes the Transformer's shared
#: embedding / softmax matrix (state_of_sparsity/sparse_transformer/layers/sparse_modalities.py).
_OPT_IN = (nn.Embedding,)
#: A module type the default selection leaves dense is named in a warning when it holds more
#: than this share of the model's parameters (the user most likely meant it to be sparse).
WARN_UNSELECTED_SHARE = 0.5


def _weight_attrs(module: nn.Module) -> list[str]:
    """Returns the attributes of ``module`` that hold a weight sparsebench can sparsify."""
    if isinstance(module, nn.MultiheadAttention):
        return (["in_proj_weight"] if module.in_proj_weight is not None
                else ["q_proj_weight", "k_proj_weight", "v_proj_weight"])
    if isinstance(module, _PRUNABLE + _OPT_IN) or is_transposed_linear(module):
        return ["weight"]
    return []


def _as_patterns(patterns: str | Iterable[str] | None, what: str) -> list[str] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    result = list(patterns)
    if not all(isinstance(p, str) for p in result):
        raise ValueError(f"{what} must be a name pattern or a list of name patterns.")
    return result


_Use = tuple[str, nn.Module, str]  # (module name, module, attribute)


def _full_name(module_name: str, attr: str) -> str:
    return f"{module_name}.{attr}" if module_name else attr


def _parameter_uses(model: nn.Module) -> dict[int, list[_Use]]:
    """Returns, per Parameter (by identity), every module attribute that holds it, in module
    order: more than one for tied weights."""
    uses: dict[int, list[_Use]] = {}
    for module_name, module in model.named_modules():
        for attr, param in module.named_parameters(recurse=False):
            uses.setdefault(id(param), []).append((module_name, module, attr))
    return uses


def _candidates(model: nn.Module) -> list[Layer]:
    """Returns one Layer per sparsifiable Parameter (a tied one once, under its first name, its
    other holders in ``tied``), in module order."""
    parents = {id(child): module for module in model.modules() for child in module.children()}
    uses = _parameter_uses(model)
    layers: list[Layer] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for attr in _weight_attrs(module):
            weight = getattr(module, attr)
            if id(weight) in seen:
                continue  # a tied weight, listed under its first holder
            seen.add(id(weight))
            tied = tuple(h for h in uses.get(id(weight), [])
                         if not (h[1] is module and h[2] == attr))
            own_forward = (attr == "weight"
                           and not isinstance(parents.get(id(module)), nn.MultiheadAttention)
                           and (isinstance(module, (nn.Linear, nn.Conv2d))
                                or is_transposed_linear(module)))
            layers.append(Layer(
                name=_full_name(module_name, attr), module_name=module_name, module=module,
                attr=attr, shape=tuple(weight.shape),
                # A tied weight is read by more than one forward: its noise (VD) is drawn per
                # read of the weight rather than inside one module's own forward.
                local_reparam=own_forward and not tied,
                transposed=is_transposed_linear(module), tied=tied))
    return layers


def _use_aliases(use: _Use) -> tuple[str, str]:
    module_name, _, attr = use
    return (_full_name(module_name, attr), module_name)


def select_layers(
    model: nn.Module,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
) -> list[Layer]:
    """Returns the weights ``sparsify`` would sparsify, in module order.

    By default: the ``weight`` of every nn.Linear, nn.Conv1d, nn.Conv2d and transformers'
    ``Conv1D`` (a Linear stored transposed, as in GPT-2), and the input projection of every
    nn.MultiheadAttention (its output projection is an nn.Linear). Biases, norms and
    embeddings stay dense. ``include`` keeps only weights matching one of its glob patterns,
    and it is also how an nn.Embedding's weight is chosen (``include=["*"]``: every weight above
    and the embeddings); ``exclude`` drops the matching ones. A pattern matches a weight when it
    matches either the parameter name (``"fc.weight"``) or its module name (``"fc"``).

    Tied weights (one Parameter held by two modules, e.g. a language model's ``lm_head`` and
    its input embedding) are one weight: selected when any of their uses is, then sparse in
    every use, with one mask. A model that reads an embedding's weight as its output projection
    (``F.linear(x, embed.weight)``) sees the sparse weight there too.

    When the default selection leaves dense a module type that holds most of the model's
    parameters, a warning names the type and its share.

    Raises:
        ValueError: when a pattern matches no weight, the selection is empty, or ``exclude``
            names one use of a tied weight whose other use is selected (pruning half of a tie
            would change the other use).
    """
    include_p = _as_patterns(include, "include")
    exclude_p = _as_patterns(exclude, "exclude")
    candidates = _candidates(model)
    if not candidates:
        raise ValueError("The model has no nn.Linear, nn.Conv1d, nn.Conv2d, transformers "
                         "Conv1D, nn.MultiheadAttention or nn.Embedding weight to sparsify.")
    for pattern in (include_p or []) + (exclude_p or []):
        if not any(matches(pattern, layer.aliases) for layer in candidates):
            names = ", ".join(layer.name for layer in candidates[:12])
            raise ValueError(f"Pattern {pattern!r} matches no sparsifiable weight; "
                             f"the weights are: {names}{' …' if len(candidates) > 12 else ''}.")

    def chosen(use: _Use) -> bool:  # the use on its own, ties aside
        aliases = _use_aliases(use)
        if include_p is not None:
            return any(matches(p, aliases) for p in include_p)
        return bool(_weight_attrs(use[1])) and not isinstance(use[1], _OPT_IN)

    def excluded(use: _Use) -> bool:
        return any(matches(p, _use_aliases(use)) for p in (exclude_p or []))

    selected = []
    for layer in candidates:
        uses = [(layer.module_name, layer.module, layer.attr), *layer.tied]
        wanted = [use for use in uses if chosen(use) and not excluded(use)]
        dropped = [use for use in uses if excluded(use)]
        if wanted and dropped:
            raise ValueError(
                f"{_use_aliases(wanted[0])[0]!r} and {_use_aliases(dropped[0])[0]!r} are one "
                "tied Parameter: exclude both or neither (pruning one use prunes the other).")
        if wanted:
            selected.append(layer)
    if not selected:
        if include_p is None and all(isinstance(c.module, _OPT_IN) for c in candidates):
            raise ValueError("The model's only sparsifiable weights are embeddings, which are "
                             "sparsified only when named: pass include=['*'] (or their names).")
        raise ValueError("include/exclude left no weight to sparsify.")
    if include_p is None and exclude_p is None:
        _warn_unselected(model, selected)
    return selected


def _warn_unselected(model: nn.Module, selected: Sequence[Layer]) -> None:
    """Warns once per module type that holds most of the model's parameters and is left
    dense, so that a model whose main layers sparsebench does not know is not silently dense."""
    chosen = {id(getattr(layer.module, layer.attr)) for layer in selected}
    total, by_type, counted = 0, {}, set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if id(param) in counted:
                continue
            counted.add(id(param))
            total += param.numel()
            if id(param) not in chosen:
                kind = type(module)
                by_type[kind] = by_type.get(kind, 0) + param.numel()
    for kind, count in by_type.items():
        share = count / max(total, 1)
        if share > WARN_UNSELECTED_SHARE:
            hint = ("name them in include= (e.g. include=['*']) to sparsify them"
                    if issubclass(kind, _OPT_IN) else
                    "sparsebench does not know this layer type, so they stay dense")
            warnings.warn(f"{kind.__name__} layers hold {share:.0%} of the model's parameters "
                          f"and are not sparsified: {hint}.", UserWarning, stacklevel=3)


def sparsify(
    model: nn.Module,
    method: str | MethodConfig,
    sparsity: float | None = None,
    schedule: GradualSchedule | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    layer_sparsity: LayerSparsity | str | Mapping[str, float] | None = None,
    **hparams: Any,
) -> Sparsifier:
    """Makes ``model`` sparse-trainable in place and returns its ``Sparsifier``.

    Create the optimizer *after* this call: variational dropout and L0 add parameters.

    Args:
        model: any module built from standard layers.
        method: ``"magnitude"``, ``"random"``, ``"variational_dropout"`` (``"vd"``) or ``"l0"``
            (``methods.names()``), or a technique's typed Config (e.g. ``MagnitudeConfig(...)``,
            then no ``**hparams``).
        sparsity: the overall target in [0, 1) for magnitude and random pruning. VD and L0 take
            no target: their ``kl_weight`` / ``l0_weight`` (and VD's threshold) set the sparsity.
        schedule: a ``GradualSchedule``; None prunes to the target at once (one-shot).
        include, exclude: glob patterns over parameter or module names (see ``select_layers``);
            embeddings are sparsified only when ``include`` names them (``include=["*"]``).
        layer_sparsity: per-layer targets: a distribution name (``"uniform"``, ``"fill"``,
            ``"erk"``), a map of patterns to sparsities (others get ``sparsity``), or a
            ``LayerSparsity`` combining both.
        **hparams: the technique's own options (its Config fields).

    Returns:
        A ``Sparsifier``; call ``step()`` after each optimizer step.

    Raises:
        ValueError: with one sentence for an unknown method or hyperparameter, a sparsity
            outside [0, 1), a pattern matching nothing, or options the method does not take.
    """
    technique_entry, config = _technique_and_config(method, hparams)
    method_class = technique_entry.method_class
    if method_class.uses_sparsity_target:
        if sparsity is None:
            raise ValueError(f"{method_class.name} pruning needs a target: pass sparsity=… in "
                             f"[0, 1).")
        # A technique's own distribution (RigL's ERK) when the caller names none.
        spec = LayerSparsity.coerce(layer_sparsity if layer_sparsity is not None
                                    else technique_entry.distribution)
        if schedule is not None and not isinstance(schedule, GradualSchedule):
            raise ValueError(f"schedule must be a GradualSchedule or None, got {schedule!r}.")
    else:
        for name, value in (("sparsity", sparsity), ("schedule", schedule),
                            ("layer_sparsity", layer_sparsity)):
            if value is not None:
                raise ValueError(
                    f"{method_class.name} takes no {name}: its sparsity comes from its "
                    f"regularization weight (and threshold), and the achieved value is reported."
                )
    for module in model.modules():
        if parametrize.is_parametrized(module):
            raise ValueError("The model is already parametrized (sparsified?); finalize() the "
                             "previous Sparsifier or start from a plain model.")

    layers = select_layers(model, include, exclude)
    if method_class.uses_sparsity_target:
        targets = resolve_layer_sparsity(
            {layer.name: (layer.shape, layer.aliases) for layer in layers}, sparsity, spec
        )
        technique = method_class(config, layers, targets, schedule)
    else:
        technique = method_class(config, layers, {})
    technique.model = model
    for layer in layers:
        parametrization = technique.make_parametrization(layer)
        for module, attr in layer.uses:
            # Tied uses share the one parametrization object: one mask, one log σ² / log α.
            parametrize.register_parametrization(module, attr, parametrization)
        override = technique.forward_override(layer)
        if override is not None:
            # An instance attribute shadows the class's forward; finalize() deletes it.
            layer.module.forward = override
    technique.on_attach()
    return Sparsifier(model, technique, sparsity, schedule)


def _technique_and_config(method: str | MethodConfig, hparams: Mapping[str, Any]
                          ) -> tuple[catalogue.Technique, MethodConfig]:
    """Returns the catalogue entry and the typed Config of ``sparsify``'s method argument."""
    if isinstance(method, MethodConfig):
        if hparams:
            raise ValueError(f"Pass a technique's options either as a Config or as keywords, "
                             f"not both (got {sorted(hparams)} beside {method!r}).")
        owners = [t for t in catalogue.entries(catalogue.SPARSIFIER)
                  if t.method_class.config_class is type(method)]
        if not owners:
            raise ValueError(f"{type(method).__name__} is no registered technique's Config.")
        return owners[0], method
    technique = catalogue.get(method, role=catalogue.SPARSIFIER)
    if "block" in hparams and "block" not in technique.config_fields():
        with_blocks = [t.name for t in catalogue.entries(catalogue.SPARSIFIER)
                       if "block" in t.config_fields()]
        raise ValueError(f"block= is available for {' and '.join(with_blocks)} only; "
                         f"{technique.name} has no group (one gate per block) variant here.")
    return technique, technique.parse_config(hparams)


class Sparsifier:
    """Drives one technique on one model: step, penalty, reports, state and finalize."""

    def __init__(self, model: nn.Module, technique: Method, sparsity: float | None,
                 schedule: GradualSchedule | None):
        self.model = model
        self.technique = technique
        self.target = sparsity
        self.schedule = schedule
        self._step = 0
        self._finalized = False
        self._step_hooks: list[Any] = []

    # -- training ------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.technique.name

    @property
    def layers(self) -> list[Layer]:
        return self.technique.layers

    @property
    def current_step(self) -> int:
        """Returns how many times ``step()`` has been called (optimizer steps)."""
        return self._step

    def step(self) -> None:
        """Advances the step counter by one optimizer step and updates masks when due."""
        self._check_live()
        self._step += 1
        for hook in self._step_hooks:
            hook.before_update(self._step)
        self.technique.on_step(self._step)
        for hook in self._step_hooks:
            hook.after_update(self._step)

    def add_step_hook(self, hook: Any) -> None:
        """Registers an object whose ``before_update(step)`` and ``after_update(step)`` run
        around the technique's work in every ``step()`` (a sparse training step writes its
        weights back before a mask update and rebuilds its layout after)."""
        self._step_hooks.append(hook)

    def remove_step_hook(self, hook: Any) -> None:
        """Unregisters a hook added with ``add_step_hook``."""
        self._step_hooks.remove(hook)

    def use_optimizer(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Tells the technique which optimizer trains the model: SET and RigL then start each
        connection they grow with a zero optimizer state (no momentum from the weight that
        held the position before). Call it again when the loop builds a new optimizer."""
        self._check_live()
        self.technique.use_optimizer(optimizer)

    def plan_rounds(self, total_steps: int) -> tuple[int, ...]:
        """Tells the technique the run has ``total_steps`` optimizer steps and returns the
        steps (0-based, ascending) at which a new round of training starts: empty for every
        technique that trains in one piece; for iterative magnitude pruning, its rounds. Call
        it once before training. A training loop restarts there, as a separate run would:
        a fresh optimizer (no momentum or Adam moments carried over), and the learning-rate
        schedule from its start, over the round's length (up to the next start or the end).
        ``sparsebench.train`` does both; the technique itself prunes and rewinds in
        ``step()``.

        Raises:
            ValueError: one sentence when the technique's options do not fit the run's length.
        """
        self._check_live()
        return tuple(self.technique.plan_rounds(total_steps))

    def fix_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Installs ``masks`` (weight name -> bool tensor, e.g. from ``load_masks``) and keeps
        them for the rest of training. Only for magnitude and random pruning.

        Raises:
            ValueError: for another method, or masks that do not match the weights.
        """
        self._check_live()
        if not hasattr(self.technique, "fix_masks"):
            able = [t.name for t in catalogue.entries(catalogue.SPARSIFIER)
                    if hasattr(t.method_class, "fix_masks")]
            raise ValueError(f"{self.method} has no masks to fix; use {' or '.join(able)}.")
        self.technique.fix_masks(dict(masks))

    def penalty(self) -> torch.Tensor:
        """Returns the regularizer to add to a mean loss: 0 for magnitude and random pruning,
        ``kl_weight·warm-up·ΣKL`` for VD, ``l0_weight·warm-up·ΣP(z≠0)`` for L0."""
        self._check_live()
        return self.technique.penalty(self._step)

    # -- reports -------------------------------------------------------------------------
    @torch.no_grad()
    def masks(self) -> dict[str, torch.Tensor]:
        """Returns each layer's boolean keep-mask as it would be at evaluation."""
        self._check_live()
        return {
            layer.name: layer.parametrization.keep_mask(layer.original).detach().clone()
            for layer in self.layers
        }

    def layer_sparsity(self) -> dict[str, float]:
        """Returns each layer's achieved sparsity (fraction of zeros at evaluation)."""
        return {name: 1.0 - int(torch.count_nonzero(mask)) / mask.numel()
                for name, mask in self.masks().items()}

    def sparsity(self) -> float:
        """Returns the achieved sparsity over all sparsified weights (zeros / size)."""
        masks = self.masks()
        zeros = sum(m.numel() - int(torch.count_nonzero(m)) for m in masks.values())
        return zeros / sum(m.numel() for m in masks.values())

    def block_sparsity(self) -> dict[str, float]:
        """Returns each layer's fraction of zero blocks under the ``block=`` structure (equal to
        ``layer_sparsity()`` for unstructured pruning).

        Raises:
            ValueError: for VD and L0, which have no block structure.
        """
        self._check_live()
        if not hasattr(self.technique, "block_sparsity"):
            raise ValueError(f"{self.method} has no block structure.")
        return self.technique.block_sparsity()

    def targets(self) -> dict[str, float]:
        """Returns each layer's final target (empty for VD and L0, which have none)."""
        return dict(self.technique.targets)

    def describe(self) -> dict[str, Any]:
        """Returns the set-up as plain data (method, config, target, schedule, layers)."""
        schedule = None
        if self.schedule is not None:
            schedule = {f: getattr(self.schedule, f)
                        for f in ("begin_step", "end_step", "frequency", "initial_sparsity")}
        return {
            "method": self.method,
            "config": self.technique.config.to_dict(),
            "sparsity": self.target,
            "schedule": schedule,
            "layers": {layer.name: list(layer.shape) for layer in self.layers},
            "targets": self.targets(),
        }

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Returns the step counter, every layer's method state (masks, log σ², log α) and
        the technique's own (IMP's rewind point, under ``technique/``) as a flat map of
        tensors, ready for safetensors."""
        self._check_live()
        state = {"step": torch.tensor(self._step, dtype=torch.int64)}
        for layer in self.layers:
            for key, value in layer.parametrization.state_dict().items():
                state[f"{layer.name}.{key}"] = value.detach().clone()
        for key, value in self.technique.extra_state().items():
            state[_TECHNIQUE_STATE + key] = value.detach().clone()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restores a ``state_dict()`` so a resumed run continues exactly.

        Raises:
            ValueError: when keys or shapes do not match this sparsifier's layers.
        """
        self._check_live()
        expected = set(self.state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"Sparsifier state does not match: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}.")
        for layer in self.layers:
            own = layer.parametrization.state_dict()
            layer.parametrization.load_state_dict(
                {key: state[f"{layer.name}.{key}"] for key in own}
            )
        self.technique.load_extra_state({key.removeprefix(_TECHNIQUE_STATE): value
                                         for key, value in state.items()
                                         if key.startswith(_TECHNIQUE_STATE)})
        self._step = int(state["step"])

    def save(self, path: str | Path) -> None:
        """Writes ``state_dict()`` to a safetensors file, with the set-up as metadata."""
        metadata = {"sparsebench": json.dumps(self.describe())}
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path), metadata)

    def load(self, path: str | Path) -> None:
        """Reads a file written by ``save()`` into this sparsifier."""
        self.load_state_dict(load_file(str(path)))

    def save_masks(self, path: str | Path) -> None:
        """Writes each layer's boolean evaluation mask to a safetensors file."""
        save_file({k: v.contiguous().cpu() for k, v in self.masks().items()}, str(path),
                  {"sparsebench": json.dumps({"method": self.method})})

    # -- the end -------------------------------------------------------------------------
    @torch.no_grad()
    def finalize(self) -> nn.Module:
        """Squashes the technique into plain weights and returns the model.

        Magnitude and random pruning apply their masks; VD zeroes weights whose log α exceeds
        the threshold and keeps θ elsewhere; L0 multiplies by the test-time gate. Afterwards the
        model has exactly the parameters and buffers (names, shapes) it had before
        ``sparsify()``, and its weights hold exact zeros. The Parameter objects are the
        originals, so an optimizer still refers to them, and tied weights stay tied.
        """
        self._check_live()
        for layer in self.layers:
            final = layer.parametrization.final_weight(layer.original.detach())
            if "forward" in vars(layer.module):
                del layer.module.forward
            for module, attr in layer.uses:
                # Each use gets back the same original Parameter, so a tie stays a tie.
                parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
            getattr(layer.module, layer.attr).copy_(final)
        self._finalized = True
        return self.model

    def _check_live(self) -> None:
        if self._finalized:
            raise RuntimeError("This Sparsifier was finalized; its model is plain again.")


def load_masks(path: str | Path) -> dict[str, torch.Tensor]:
    """Returns the boolean masks written by ``Sparsifier.save_masks``, keyed by weight name."""
    return load_file(str(path))
