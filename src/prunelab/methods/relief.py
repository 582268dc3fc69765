"""Neural network relief (NN-relief): iterative pruning by each connection's share of neural activity.

Reference: A. Dekhovich, D. M. J. Tax, M. H. F. Sluiter, M. A. Bessa, *Neural network relief: a
pruning algorithm based on neural activity*, Machine Learning 113(5):2597–2618, 2024,
arXiv:2109.10795. Official code: github.com/adekhovich/NNrelief (read, not copied).

One round of the ``relief`` driver:

1. **statistics**: run a fixed calibration set (default 1000 training samples, no augmentation)
   through the model in eval mode and accumulate ``mean_n |x_n|`` of every layer input, plus the conv
   mean-of-norms numerators (:mod:`prunelab.stats.activations`), all-reduced under DDP;
2. **scores**: for neuron/filter ``j`` the importance of input ``i`` and of the bias are
   ``s_ij = mean_n |w_ji x_{n,i}| / S_j`` and ``s_bias,j = |b_j| / S_j`` (conv:
   ``s_ij = mean_n ‖ |K_ji| ∗ |x_{n,i}| ‖_F / S_j``, ``s_bias,j = |b_j| √(h¹h²) / S_j``), where ``S_j`` is
   the total importance flowing into ``j`` (:mod:`prunelab.criteria.relief`). In a grouped or depthwise
   convolution filter ``j`` reads only its group's input channels, so its row holds its ``c_in/G``
   kernels; a Linear applied over positions (channels-last ``(N, H, W, C)``) is scored as the 1×1
   convolution it is;
3. **cumulative-mass rule**: per neuron/filter keep the fewest inputs (kernels for a conv) and bias
   whose scores reach ``α`` of ``S_j`` — ``α_fc`` for Linear, ``α_conv`` for convolution layers
   (:mod:`prunelab.core.cumulative`). Steps 2–3 are one step of the generic
   :class:`~prunelab.pruning.pruner.Pruner` (the one pruner path): the ``relief`` criterion, ``kernel``
   granularity, the ``cumulative_mass`` selector with per-layer α, and each layer's bias as its weight's
   companion, scored in the same row and pruned only with ``prune_bias``;
4. **dead units**: a neuron/filter whose mean activation (the next layer's mean |input| on its
   channel) is 0 loses all its weights, bias and BN affine parameters;
5. **residual block rule** (CIFAR ResNets): output channel ``c`` of a block's second conv is removed
   when ``‖mean_n |BN₂(y)_c|‖_F / ‖mean_n |shortcut_c|‖_F < (1 − α_conv) / α_conv``;
6. **backward pruning**: from the output back, a unit with no outgoing connection left loses its
   incoming weights, bias and BN parameters; a unit whose output is then provably zero loses its
   outgoing weights too;
7. optionally **rewind** the surviving weights to their initial values (the official LeNet setting),
   then **retrain** with the recipe's ``finetune`` section (Adam or SGD).

The scored layers are every Linear, Conv1d and Conv2d (any ``groups``) that ``prune.include`` /
``prune.exclude`` select; excluded layers are neither scored nor hooked, and a layer relief cannot
score (a Conv3d; transposed convolutions are never targets) is a one-line error naming the
``prune.exclude`` entry that leaves it out. The structural rules 4 and 6 need a plain chain
(:func:`analyze`); on other topologies the cumulative rule runs alone (logged).

Every round appends a ``rounds.csv`` row; at the end the driver writes ``relief_layers.csv`` (per-layer
remaining weights per round), ``relief_report.png`` and ``relief_report.md`` into the run directory.
"Remaining %" in the driver's own columns follows the paper: conv/FC weights and biases, BN excluded.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prunelab.core import masking
from prunelab.core.cumulative import check_alpha
from prunelab.core.targets import Target, find_targets
from prunelab.criteria.relief import relief_statistics
from prunelab.errors import ConfigError, UnsupportedModelError
from prunelab.methods.base import MethodContext, MethodResult, register_driver, register_method
from prunelab.pruning.pruner import Pruner
from prunelab.stats.activations import SCORED_LAYERS, LayerStats, collect, unsupported_reason

__all__ = [
    "Link",
    "ReliefOptions",
    "ReliefPruner",
    "ResidualBlock",
    "Structure",
    "analyze",
    "remaining_weights",
    "run_relief",
]

Layer = nn.Linear | nn.Conv1d | nn.Conv2d


@dataclass
class ReliefOptions:
    """``prune.options`` of the ``relief`` driver.

    Attributes:
        alpha_fc: mass fraction kept per neuron of a Linear layer, in (0, 1].
        alpha_conv: mass fraction kept per filter of a convolution (also the residual block rule's α).
        rounds: prune → [rewind] → retrain iterations.
        calibration_samples: training samples the statistics are accumulated over.
        calibration_batch_size: samples per calibration forward pass.
        variant: conv importance: ``paper`` (mean of norms), ``code`` (norm of mean) or ``code_l1`` (the
            official LeNet-5 code: L1 sum over output positions, bias ``|b|·#positions``).
        rule: cumulative-mass cut: ``paper`` (keep the top p₀) or ``code`` (the official pivot).
        rewind: reset surviving weights to their initial values before each retraining (LeNet setting).
        remove_dead: remove units whose mean activation on the calibration set is 0.
        backward: remove units left with no outgoing connections (and then their outgoing weights).
        block_rule: apply the residual block rule to CIFAR ResNet blocks.
        prune_bias: let the rule prune biases (their importance always counts in ``S_j``).
        stop_at_remaining: stop after the first round that leaves at most this percentage of the
            conv/FC weights and biases (``None``: always run ``rounds`` rounds). A budget rule, not part
            of the paper, which runs a fixed number of iterations.
    """

    alpha_fc: float = 0.95
    alpha_conv: float = 0.9
    rounds: int = 5
    calibration_samples: int = 1000
    calibration_batch_size: int = 250
    variant: Literal["paper", "code", "code_l1"] = "paper"
    rule: Literal["paper", "code"] = "paper"
    rewind: bool = False
    remove_dead: bool = True
    backward: bool = True
    block_rule: bool = True
    prune_bias: bool = True
    stop_at_remaining: float | None = None

    def __post_init__(self) -> None:
        for name in ("alpha_fc", "alpha_conv"):
            try:
                check_alpha(getattr(self, name), name)
            except ConfigError:
                raise ConfigError(
                    f"{name}: must be a fraction in (0, 1] (0.95 = keep 95 % of each unit's mass), "
                    f"got {getattr(self, name)!r}"
                ) from None
        if self.rounds < 1:
            raise ConfigError("rounds: must be >= 1")
        if self.stop_at_remaining is not None and not 0.0 < self.stop_at_remaining < 100.0:
            raise ConfigError("stop_at_remaining: must be a percentage in (0, 100), e.g. 2.5")
        if self.calibration_samples < 1 or self.calibration_batch_size < 1:
            raise ConfigError(
                "calibration_samples: calibration_samples and calibration_batch_size must be >= 1"
            )


@dataclass(frozen=True)
class Link:
    """A producer → consumer connection of a plain chain (no residual add in between).

    Attributes:
        producer: module name of the layer whose units are removed.
        consumer: module name of the next weighted layer (reads the producer's units as inputs).
        bn: the BatchNorm applied to the producer's output, if any.
        repeat: consumer inputs per producer unit (``h·w`` after a flatten, else 1).
    """

    producer: str
    consumer: str
    bn: str | None
    repeat: int


@dataclass(frozen=True)
class ResidualBlock:
    """A CIFAR ResNet BasicBlock as the block rule sees it: its second conv, BN and shortcut."""

    conv: str
    bn: str
    shortcut: str


@dataclass
class Structure:
    """The layers NN-relief scores and how they connect.

    Attributes:
        targets: module names of the scored Linear/Conv1d/Conv2d layers (any ``groups``), in model order.
        layers: the targets and the chain consumers their dead-unit statistics come from, by name.
        bns: the BatchNorm following each layer, by layer name.
        links: producer → consumer chain links (dead-unit and backward rules).
        blocks: residual blocks (block rule).
        note: why dead-unit/backward rules do not apply to part of the model ("" if they do).
        weights: the targeted layers' weights as :class:`~prunelab.core.targets.Target` objects, in the
            order of ``targets`` (what the cumulative-mass step prunes).
    """

    targets: list[str]
    layers: dict[str, Layer]
    bns: dict[str, nn.Module] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    blocks: list[ResidualBlock] = field(default_factory=list)
    note: str = ""
    weights: list[Target] = field(default_factory=list)


def _width_in(layer: Layer) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _width_out(layer: Layer) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _groups(layer: nn.Module) -> int:
    return 1 if isinstance(layer, nn.Linear) else int(getattr(layer, "groups", 1))


def _trace(model: nn.Module) -> Any:
    """The model's ``torch.fx`` graph (``None``: the model does not trace)."""
    try:
        return torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure just means "structure unknown"
        return None


def _has_merge(model: nn.Module, graph: Any = None) -> bool | None:
    """Whether the traced graph adds or concatenates tensors (``None``: the model does not trace)."""
    import operator

    graph = _trace(model) if graph is None else graph
    if graph is None:
        return None
    merges = {operator.add, operator.iadd, torch.add, torch.cat, torch.stack}
    for node in graph.nodes:
        if node.op == "call_function" and node.target in merges:
            return True
        if node.op == "call_method" and node.target in ("add", "add_", "cat"):
            return True
    return False


def _call_order(graph: Any, names: Sequence[str]) -> list[str] | None:
    """``names`` in the order the traced forward calls them (``None``: one is called twice or never)."""
    wanted = set(names)
    calls = [str(node.target) for node in graph.nodes if node.op == "call_module" and node.target in wanted]
    if len(calls) != len(set(calls)) or set(calls) != wanted:
        return None
    return calls


def analyze(
    model: nn.Module, include: Sequence[str] | str | None = None, exclude: Sequence[str] | str | None = None
) -> Structure:
    """Find the scored layers, their BatchNorms, chain links and residual blocks of ``model``.

    The scored layers are the Linear, Conv1d and Conv2d layers (convolutions of any ``groups``:
    ordinary, grouped, depthwise) that ``include``/``exclude`` select; an excluded layer is neither
    scored nor hooked. A plain network (no add/concat in its traced graph: LeNets, VGGs, ``small_cnn``,
    MobileNet-v1) is a chain in the order its forward calls the layers; a CIFAR ResNet links each block's
    first conv to its second and exposes the block to the block rule. Other topologies are scored and
    pruned by the cumulative rule only.

    Raises:
        UnsupportedModelError: a selected layer relief does not score (a Conv3d), named with the fix
            (``prune.exclude``, which leaves it out).
    """
    from prunelab.models.resnet import BasicBlock

    found = find_targets(model, include=include, exclude=exclude, layer_types=("conv", "linear"))
    for t in found:
        reason = unsupported_reason(t.module)
        if reason is not None:
            raise UnsupportedModelError(
                f"relief: {t.module_name} is {reason}; exclude it (prune.exclude: [{t.module_name}], or "
                f"exclude=[{t.module_name!r}] in Python)"
            )
    targets = [t.module_name for t in found]
    layers: dict[str, Layer] = {t.module_name: t.module for t in found}  # type: ignore[misc]
    # Every layer relief could score, selected or not: the chain runs through excluded layers too.
    scorable: dict[str, Layer] = {}
    bns: dict[str, nn.Module] = {}
    last: str | None = None
    for name, module in model.named_modules():
        if isinstance(module, SCORED_LAYERS):
            scorable[name] = module  # type: ignore[assignment]
            last = name
        elif (
            isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d)
            and last is not None
            and last not in bns
            and module.num_features == _width_out(scorable[last])
        ):
            bns[last] = module
    structure = Structure(
        targets=targets, layers=layers, bns={k: v for k, v in bns.items() if k in layers}, weights=found
    )
    bn_names = {id(m): n for n, m in model.named_modules()}
    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, BasicBlock)]
    if blocks:
        for name, _ in blocks:
            p = f"{name}." if name else ""
            layers.setdefault(f"{p}conv2", model.get_submodule(f"{p}conv2"))  # type: ignore[arg-type]
            structure.links.append(Link(f"{p}conv1", f"{p}conv2", f"{p}bn1", 1))
            structure.blocks.append(ResidualBlock(f"{p}conv2", f"{p}bn2", f"{p}shortcut"))
        structure.note = "residual stream: stem and block-output channels are handled by the block rule only"
    else:
        graph = _trace(model)
        merge = _has_merge(model, graph) if graph is not None else None
        order = _call_order(graph, list(scorable)) if graph is not None and merge is False else None
        # Weights relief neither scores nor sees through (a LayerNorm, a Conv3d): no safe chain rules.
        other = [
            n for n, m in model.named_modules()
            if n not in scorable and any(True for _ in m.parameters(recurse=False))
            and not isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and ".parametrizations." not in f".{n}."
        ]  # fmt: skip
        if merge is None or merge:
            structure.note = (
                "the model does not trace" if merge is None else "the model adds/concatenates tensors"
            ) + "; dead-unit and backward rules are not applied"
        elif order is None:
            structure.note = (
                "a layer runs more than once or not at all; dead-unit and backward rules are not applied"
            )
        elif other:
            structure.note = (
                f"{other[0]} ({type(model.get_submodule(other[0])).__name__}) has weights relief does not score; "
                "dead-unit and backward rules are not applied"
            )
        else:
            targeted = set(targets)
            for producer, consumer in itertools.pairwise(order):
                a, b = scorable[producer], scorable[consumer]
                width, fan_in = _width_out(a), _width_in(b)
                conv_to_conv = not isinstance(b, nn.Linear)
                if fan_in % width or (conv_to_conv and fan_in != width):
                    structure.note = f"{producer} -> {consumer} widths do not chain; no link there"
                    continue
                if producer not in targeted:
                    continue  # an excluded producer keeps its units
                layers.setdefault(consumer, b)  # its mean |input| tells which producer units are dead
                bn = bns.get(producer)
                structure.links.append(
                    Link(producer, consumer, None if bn is None else bn_names[id(bn)], fan_in // width)
                )
    return structure


def _unit_activity(stats: LayerStats, link: Link) -> Tensor:
    """Mean |input| of the consumer, summed per producer unit: 0 ⇔ the unit is dead."""
    mean = stats.mean_abs_input()
    if stats.kind == "linear":
        if mean.dim() > 1:  # a Linear over positions: the features are the last dimension
            mean = mean.reshape(-1, mean.shape[-1]).sum(dim=0)
        return mean.reshape(-1, link.repeat).sum(dim=1)
    if mean.dim() == 3:
        return mean.sum(dim=(1, 2))
    return mean.flatten(1).sum(dim=1)


def _kernel_alive(consumer: Layer) -> Tensor:
    """``(c_out, c_in/G)`` (Linear: ``(out, in)``): whether any weight of each kernel is still unmasked."""
    mask = masking.get_mask(consumer, "weight")
    return mask if mask.dim() == 2 else mask.flatten(2).any(dim=2)


def _outgoing_alive(consumer: Layer, link: Link) -> Tensor:
    """Per producer unit: whether any consumer weight reading it is still unmasked.

    Input channel ``ι`` of a convolution with ``G`` groups is read by the ``c_out/G`` filters of group
    ``⌊ι / (c_in/G)⌋``, through their kernel ``ι mod c_in/G``.
    """
    mask = masking.get_mask(consumer, "weight")
    if isinstance(consumer, nn.Linear):
        return mask.any(dim=0).reshape(-1, link.repeat).any(dim=1)
    groups = _groups(consumer)
    if groups == 1:
        return mask.any(dim=0).flatten(1).any(dim=1)
    alive = _kernel_alive(consumer)  # (c_out, c_in/G)
    return alive.reshape(groups, -1, alive.shape[1]).any(dim=1).reshape(-1)


def remaining_weights(structure: Structure) -> dict[str, tuple[int, int]]:
    """``{layer: (non-zero, total)}`` of the targeted layers' weights + biases (the paper's count)."""
    counts: dict[str, tuple[int, int]] = {}
    for name in structure.targets:
        layer = structure.layers[name]
        nonzero = int(torch.count_nonzero(layer.weight.detach()))
        total = layer.weight.numel()
        if layer.bias is not None:
            nonzero += int(torch.count_nonzero(layer.bias.detach()))
            total += layer.bias.numel()
        counts[name] = (nonzero, total)
    return counts


class ReliefPruner:
    """Applies NN-relief rounds to a model: masks on weights, biases and BN affine parameters.

    Attach the masks (:meth:`prepare`) before an optimizer is built; then each :meth:`step` with
    freshly collected statistics shrinks them. The cumulative-mass rule runs through :attr:`pruner`, a
    :class:`~prunelab.pruning.pruner.Pruner` over the targets' weights with their biases as companions;
    this class adds what is relief's own: the statistics, the structural rules and the BN masks.

    Args:
        model: the network (pruned in place).
        options: the driver options (α's, variant, rules), read at construction.
        include: glob(s) over module names to score (default: every Linear/Conv1d/Conv2d,
            ordinary, grouped or depthwise).
        exclude: glob(s) over module names to leave dense.

    Attributes:
        structure: the scored layers and how they connect (:func:`analyze`).
        pruner: the generic pruner of the cumulative-mass step.
    """

    def __init__(
        self,
        model: nn.Module,
        options: ReliefOptions | None = None,
        include: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
    ) -> None:
        self.model = model
        self.options = options or ReliefOptions()
        self.structure = analyze(model, include, exclude)
        o = self.options
        targets = self.structure.weights
        alphas = {t.fqn: o.alpha_fc if isinstance(t.module, nn.Linear) else o.alpha_conv for t in targets}
        # One row per neuron/filter: its inputs (kernels of a conv) and its bias. The biases are always
        # scored, as they count in S_j; prune_bias only decides whether the rule may mask them.
        self.pruner = Pruner(
            model,
            criterion="relief",
            granularity="kernel",
            scope="layer",
            min_keep=1,
            targets=targets,
            selector="cumulative_mass",
            selector_kwargs={"rule": o.rule, "alphas": alphas},
            companion="bias",
            prune_companion=o.prune_bias,
        )

    def prepare(self) -> ReliefPruner:
        """Attach masks to every target's weight and bias and to their BatchNorms (idempotent)."""
        self.pruner.prepare()
        for name in self.structure.targets:
            layer = self.structure.layers[name]
            # The structural rules mask biases even when the cumulative rule may not (prune_bias false).
            if layer.bias is not None:
                masking.add_mask(layer, "bias")
            bn = self.structure.bns.get(name)
            if bn is not None and getattr(bn, "weight", None) is not None:
                masking.add_mask(bn, "weight")
                masking.add_mask(bn, "bias")
        return self

    def collect(self, batches: Sequence[tuple[Any, Any]]) -> dict[str, LayerStats]:
        """Accumulate the statistics of one round over ``batches`` (eval mode, hooks removed after).

        Only the targeted layers are scored (and hooked as such); a chain consumer that is not a target
        contributes its mean |input| only, which the dead-unit rule reads. ``x`` of a batch may be a
        tensor, a tuple/list of positional inputs or a dict of keyword inputs.
        """
        outputs: dict[str, nn.Module] = {}
        if self.options.block_rule:
            modules = dict(self.model.named_modules())
            for block in self.structure.blocks:
                outputs[block.bn] = modules[block.bn]
                outputs[block.shortcut] = modules[block.shortcut]
        scored = {name: self.structure.layers[name] for name in self.structure.targets}
        consumers = {
            link.consumer: self.structure.layers[link.consumer]
            for link in self.structure.links
            if link.consumer not in scored
        }
        return collect(
            self.model,
            batches,
            scored,
            outputs,
            per_sample_norms=self.options.variant == "paper",
            inputs=consumers,
        )

    def _remove_units(self, name: str, units: Tensor) -> int:
        """Mask output units ``units`` (bool) of layer ``name``: weights, bias and BN affine; returns how many were alive."""
        if not bool(units.any()):
            return 0
        layer = self.structure.layers[name]
        alive_before = masking.get_mask(layer, "weight").flatten(1).any(dim=1)
        # Statistics may live on another device than the model's masks (CPU accumulators, GPU model).
        units = units.to(device=alive_before.device, dtype=torch.bool)
        keep_rows = ~units
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        masking.update_mask(layer, "weight", keep_rows.view(shape).expand_as(layer.weight))
        if layer.bias is not None:
            masking.update_mask(layer, "bias", keep_rows)
        bn = self.structure.bns.get(name)
        if bn is not None and getattr(bn, "weight", None) is not None:
            masking.update_mask(bn, "weight", keep_rows)
            masking.update_mask(bn, "bias", keep_rows)
        return int((units & alive_before).sum())

    def _unit_silent(self, name: str) -> Tensor:
        """Units whose output is provably zero: no weight, no bias, no BN shift left."""
        layer = self.structure.layers[name]
        silent = ~masking.get_mask(layer, "weight").flatten(1).any(dim=1)
        if layer.bias is not None:
            silent &= layer.bias.detach() == 0
        bn = self.structure.bns.get(name)
        if bn is not None and getattr(bn, "bias", None) is not None:
            # A BN shift β_j alone makes the unit output ReLU(β_j) ≠ 0.
            silent &= bn.bias.detach() == 0
        return silent

    @torch.no_grad()
    def step(self, stats: Mapping[str, LayerStats]) -> dict[str, int]:
        """One pruning round from ``stats`` (see the module docstring); returns counts of what each rule did."""
        o = self.options
        targets = set(self.structure.targets)
        numerators = relief_statistics(self.pruner.targets, stats, o.variant)
        # The level is α_fc; the selector's per-layer alphas give the conv layers α_conv.
        self.pruner.step(o.alpha_fc, stats={"relief": numerators})
        counts = {"dead_units": 0, "block_channels": 0, "backward_units": 0, "silenced_outputs": 0}
        if o.remove_dead:
            for link in self.structure.links:
                if link.producer in targets:
                    dead = _unit_activity(stats[link.consumer], link) == 0
                    counts["dead_units"] += self._remove_units(link.producer, dead)
        if o.block_rule:
            threshold = (1.0 - o.alpha_conv) / o.alpha_conv
            for block in self.structure.blocks:
                if block.conv not in targets:
                    continue
                main = stats[block.bn].mean_abs_output().flatten(1).norm(dim=1)
                residual = stats[block.shortcut].mean_abs_output().flatten(1).norm(dim=1)
                # main / residual < t, written without dividing by a residual that may be 0.
                weak = main < threshold * residual
                counts["block_channels"] += self._remove_units(block.conv, weak)
        if o.backward:
            for link in reversed(self.structure.links):
                if link.producer in targets:
                    orphan = ~_outgoing_alive(self.structure.layers[link.consumer], link)
                    counts["backward_units"] += self._remove_units(link.producer, orphan)
            for link in self.structure.links:
                if link.producer in targets and link.consumer in targets:
                    silent = self._unit_silent(link.producer)
                    if bool(silent.any()):
                        counts["silenced_outputs"] += self._silence_inputs(link, silent)
        return counts

    def _silence_inputs(self, link: Link, silent: Tensor) -> int:
        consumer = self.structure.layers[link.consumer]
        mask = masking.get_mask(consumer, "weight")
        if isinstance(consumer, nn.Linear):
            cols = silent.repeat_interleave(link.repeat)
            keep = ~cols.view(1, -1).expand_as(mask)
        elif _groups(consumer) == 1:
            keep = ~silent.view(1, -1, *([1] * (mask.dim() - 2))).expand_as(mask)
        else:
            # Input channel ι = γ·c_in/G + i is kernel i of the filters of group γ.
            groups = _groups(consumer)
            c_out, c_in_g = mask.shape[:2]
            per_kernel = silent.view(groups, 1, c_in_g).expand(groups, c_out // groups, c_in_g)
            keep = ~per_kernel.reshape(c_out, c_in_g, *([1] * (mask.dim() - 2))).expand_as(mask)
        before = int(mask.sum())
        masking.update_mask(consumer, "weight", keep)
        return before - int(masking.get_mask(consumer, "weight").sum())

    def remaining(self) -> tuple[int, int]:
        """``(non-zero, total)`` weights + biases of the targeted layers (the paper's convention)."""
        counts = remaining_weights(self.structure)
        return sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())


def _needs_initial_weights(options: ReliefOptions) -> bool:
    return bool(options.rewind)


# Relief keeps at least one input per unit by its own cumulative rule (not min_keep) and masks the plain
# weights, biases and BN parameters, so neither min_keep nor a reparametrization has a meaning for it.
@register_driver(
    "relief",
    options=ReliefOptions,
    uses_sparsity=False,
    reads={"include", "exclude"},
    needs_initial_weights=_needs_initial_weights,
    epochs=lambda options, finetune: options.rounds * finetune,  # every round retrains
)
def run_relief(ctx: MethodContext, options: ReliefOptions) -> MethodResult:
    """NN-relief: rounds of activity-based cumulative-mass pruning -> [rewind] -> retrain."""
    from prunelab import distributed as dist
    from prunelab._io import atomic_write_csv

    model = ctx.model
    pruner = ReliefPruner(model, options, include=ctx.include, exclude=ctx.exclude).prepare()
    if pruner.structure.note:
        ctx.log(f"relief: {pruner.structure.note}")
    batches = ctx.calibration(options.calibration_samples, options.calibration_batch_size)
    result = MethodResult(model)
    layer_rows: list[dict[str, Any]] = []
    for index in range(1, options.rounds + 1):
        stats = pruner.collect(batches)
        counts = pruner.step(stats)
        before = ctx.evaluate(model)
        result.accuracy_before_finetune = before
        if options.rewind:
            if ctx.initial_weights is None:
                raise ConfigError("prune.options.rewind: the runner kept no initial weights; update prunelab")
            masking.load_plain_state_dict(model, ctx.initial_weights)
        ctx.train(model, ctx.finetune, f"finetune{index}", seed_offset=index)
        after = ctx.evaluate(model) if (ctx.finetune.epochs > 0 or options.rewind) else before
        nonzero, total = pruner.remaining()
        for layer, (nz, tot) in remaining_weights(pruner.structure).items():
            layer_rows.append({"round": index, "layer": layer, "nonzero": nz, "total": tot})
        result.rounds.append(
            ctx.round_row(
                model,
                index,
                float("nan"),
                1.0 - nonzero / total,
                before,
                after,
                relief_remaining_percent=round(100.0 * nonzero / total, 4),
                relief_compression=round(total / max(nonzero, 1), 4),
                **counts,
            )
        )
        if options.stop_at_remaining is not None and 100.0 * nonzero / total <= options.stop_at_remaining:
            ctx.log(f"relief: {100.0 * nonzero / total:.3f} % remaining <= stop_at_remaining; stopping")
            break
    nonzero, total = pruner.remaining()
    result.summary["relief"] = {
        "remaining_percent_conv_fc_weights_biases": 100.0 * nonzero / total,
        "compression_conv_fc_weights_biases": total / max(nonzero, 1),
        "nonzero_conv_fc_weights_biases": nonzero,
        "total_conv_fc_weights_biases": total,
        "options": {k: getattr(options, k) for k in options.__dataclass_fields__},
        "convention": "conv/FC weights and biases, BN excluded (the paper's)",
    }
    if dist.is_main_process():
        from prunelab.methods.relief_report import write_report

        atomic_write_csv(ctx.out / "relief_layers.csv", layer_rows)
        write_report(ctx.out, result.rounds, layer_rows)
    return result


register_method(
    "relief",
    "NN-relief: per-neuron cumulative activity-mass pruning, iterated with retraining (Dekhovich et al. 2024).",
    "relief",
)
