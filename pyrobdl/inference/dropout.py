r"""MC dropout and MC DropConnect: a network trained by maximum likelihood (or MAP) with
random masks, predicting with the masks left on; each predictive sample is one mask, shared
by all inputs, i.e. one function :math:`f_s`. The training objective, the weight penalty and
the likelihood's latents are those of :mod:`pyrobdl.inference.point`.

A mask on the inputs of a Linear layer (or on the input channels of a convolution) is a
mask on the columns of its weight, and a DropConnect mask is one on single weights, so a
prediction draws :math:`S` masked weight sets and runs them through
:meth:`~pyrobdl.BayesianNetwork.outputs_from_params`: one batched pass per chunk (the Linear
chain fast path for ``nn.Sequential`` chains of Linear layers and elementwise activations,
``vmap`` over ``functional_call`` otherwise), every chunk of inputs seeing the same masks.
Dropout modules that do not sit right before a Linear/Conv layer mask activations instead;
those masks are drawn inside one ``vmap(..., randomness="different")`` pass per chunk, with
the random state replayed for every chunk of inputs.

The user's model is never modified: the fit trains a fresh copy (``posterior.model``, whose
network holds the trained weights).

References:
    Y. Gal and Z. Ghahramani, *Dropout as a Bayesian Approximation: Representing Model
    Uncertainty in Deep Learning* (ICML 2016);
    L. Wan, M. Zeiler, S. Zhang, Y. LeCun and R. Fergus, *Regularization of Neural Networks
    using DropConnect* (ICML 2013);
    A. Mobiny et al., *DropConnect is effective in modeling uncertainty of Bayesian deep
    networks* (Scientific Reports, 2021).
"""
from __future__ import annotations

import copy
import itertools
import numbers
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._fast import engine
from .._fast.batched import batched_call
from .._fast.chain import DROPOUT_TYPES
from .._util import check_positive_float, check_positive_int, eval_mode
from ..network import BayesianNetwork
from .base import Data, Posterior
from .optim import train
from .point import (
    WEIGHT_LAYERS,
    PointInference,
    WeightDecay,
    call_order,
    check_likelihood,
    constrainer,
    held_out_score,
    holdout,
    init_latents,
    latent_site_names,
    latent_lr_scale,
    param_name,
    saved_fit_info,
    select_layers,
    training_targets,
    weight_penalty,
)
from .registry import register_method

__all__ = ["MCDropout", "MCDropConnect", "DropoutPosterior", "DropConnectPosterior", "check_p", "check_layers"]

#: dropout modules found in a user's network are replaced by a shared-mask version; these are
#: the channel-wise ones
_CHANNEL_DROPOUT = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)

LayerSpec = Union[None, str, Sequence[str]]


def check_p(p, name: str = "p") -> float:
    """A dropping probability in ``[0, 1)``."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1) (the probability of dropping), got {p!r}")
    p = float(p)
    if not (0.0 <= p < 1.0):
        raise ValueError(
            f"{name} must lie in [0, 1) -- it is the probability of dropping a unit or weight, and {name}=1 "
            f"would drop everything -- got {p}; typical values are 0.01 to 0.2"
        )
    return p


def check_layers(layers, name: str = "layers") -> LayerSpec:
    """``None``, ``"hidden"``, ``"all"`` or a non-empty list of module names."""
    if layers is None or layers in ("hidden", "all"):
        return layers
    if isinstance(layers, str):
        raise ValueError(f"{name} must be 'hidden', 'all' or a list of module names, got {layers!r}")
    if isinstance(layers, (list, tuple)) and all(isinstance(n, str) for n in layers) and layers:
        return list(layers)
    raise TypeError(f"{name} must be 'hidden', 'all' or a non-empty list of module names, got {layers!r}")


# ============================================================================ dropout layers
class _MCDropoutLayer(nn.Module):
    r"""Inverted dropout with a training mode and a *sampling* mode.

    In training mode every example gets its own mask (ordinary dropout; whole channels when
    ``sample_dims="channels"``). In sampling mode (set by :class:`DropoutPosterior` at
    prediction, whatever ``training`` says) one mask is drawn per call and shared by the whole
    batch, so under ``vmap(..., randomness="different")`` each predictive sample is one mask;
    the mask covers the last dimension (``"features"``), dimension 1 (``"channels"``) or every
    non-batch element (``"elements"``). In eval mode without sampling it is the identity.
    """

    def __init__(self, p: float, sample_dims: str = "elements"):
        super().__init__()
        self.p = float(p)
        self.sample_dims = sample_dims
        self.sampling = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not (self.training or self.sampling):
            return x
        channels = self.sample_dims == "channels" and x.dim() > 2
        if self.sampling:
            if self.sample_dims == "features":
                shape = (1,) * (x.dim() - 1) + (x.shape[-1],)
            elif channels:
                shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
            else:
                shape = (1,) + tuple(x.shape[1:])
        else:
            shape = tuple(x.shape[:2]) + (1,) * (x.dim() - 2) if channels else tuple(x.shape)
        keep = 1.0 - self.p
        mask = torch.bernoulli(torch.full(shape, keep, dtype=x.dtype, device=x.device)).div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, sample_dims={self.sample_dims!r}"


class _InputDropout:
    """Forward pre-hook applying a :class:`_MCDropoutLayer` to a module's input."""

    def __init__(self, layer: _MCDropoutLayer):
        self.layer = layer

    def __call__(self, module, args):
        return (self.layer(args[0]),) + tuple(args[1:])


def _dropout_view(net: nn.Module, plan: List[Dict[str, Any]]) -> nn.Module:
    """A copy of ``net`` that *shares* its parameters and buffers (training one trains the
    other), with the planned dropout layers: on the input of a module (``where="input"``, a
    pre-hook) or in place of an existing dropout module (``where="replace"``). Parameter and
    state-dict names are unchanged."""
    memo = {id(t): t for t in itertools.chain(net.parameters(), net.buffers())}
    view = copy.deepcopy(net, memo)
    for entry in plan:
        layer = _MCDropoutLayer(entry["p"], entry["sample_dims"])
        if entry["where"] == "replace":
            parent_name, _, leaf = entry["module"].rpartition(".")
            setattr(view.get_submodule(parent_name), leaf, layer)
        else:
            target = view.get_submodule(entry["module"])
            target.add_module("mc_dropout", layer)
            target.register_forward_pre_hook(_InputDropout(layer))
    return view


class _Sampling:
    """Context: the network's dropout layers draw one mask per call (per sample). Torch's fused
    attention fast path (``nn.TransformerEncoderLayer``, ``nn.MultiheadAttention`` in eval
    mode) skips the layers' dropout modules, so it is switched off inside."""

    def __init__(self, net: nn.Module):
        self.layers = [m for m in net.modules() if isinstance(m, _MCDropoutLayer)]
        self._fastpath = None

    def __enter__(self):
        for m in self.layers:
            m.sampling = True
        self._fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)

    def __exit__(self, *exc):
        for m in self.layers:
            m.sampling = False
        torch.backends.mha.set_fastpath_enabled(self._fastpath)


def _input_mask(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    r"""A mask ``z`` ``(S, inputs)`` on a layer's input features/channels as a mask on its
    weight, broadcastable to ``(S, *weight.shape)``: dropping input :math:`j` zeroes column
    :math:`j` of a Linear weight, or the kernel slices that read input channel :math:`j` of a
    convolution (grouped and transposed ones included)."""
    w = module.weight
    S = z.shape[0]
    if isinstance(module, nn.Linear):
        return z.unsqueeze(1)
    k = (1,) * (w.dim() - 2)
    if module.transposed:  # weight (in, out / groups, *kernel)
        return z.reshape((S, z.shape[1], 1) + k)
    g = module.groups
    per = z.shape[1] // g
    out = w.shape[0]
    m = z.reshape(S, g, 1, per).expand(S, g, out // g, per).reshape(S, out, per)
    return m.reshape((S, out, per) + k)


# ============================================================================ posteriors
class _MaskedPosterior(Posterior):
    """Shared parts of the dropout and DropConnect posteriors: a trained copy of the network,
    point estimates of the likelihood's latents, and prediction from per-sample masked
    weights."""

    def __init__(self, model: BayesianNetwork, net: nn.Module, latents: Dict[str, torch.Tensor], *, p: float, settings: Dict[str, Any]):
        super().__init__(model)
        self.net = net
        self._raw = {k: v.detach() for k, v in latents.items()}
        self.p = float(p)
        self.settings = dict(settings)
        self._constrain = constrainer(model)

    def to(self, device) -> "_MaskedPosterior":
        self.model.to(device)
        self.net.to(device)
        self._raw = {k: v.to(device) for k, v in self._raw.items()}
        return self

    @property
    def latents(self) -> Dict[str, torch.Tensor]:
        """Maximum-likelihood values of the likelihood's latents (e.g. ``{"sigma": σ}``)."""
        return {k: v.detach() for k, v in self._constrain(self._raw).items()}

    def _expanded_latents(self, S: int) -> Dict[str, torch.Tensor]:
        return {k: v.expand((S,) + v.shape) for k, v in self.latents.items()}

    def _masked_weights(self, S: int) -> Dict[str, torch.Tensor]:
        """``S`` masked values of every masked weight: name -> ``(S, *shape)``."""
        raise NotImplementedError

    def _mask_targets(self) -> List[str]:
        raise NotImplementedError

    def _weight_samples(self, num_samples: Optional[int]) -> Dict[str, torch.Tensor]:
        S = check_positive_int(self.default_num_samples if num_samples is None else num_samples, "num_samples")
        sites = latent_site_names(self.model)
        with torch.no_grad():
            masked = self._masked_weights(S)
            named = dict(self.net.named_parameters())
            out = {}
            for pname in self.model.bayesian_parameters:
                v = masked[pname] if pname in masked else named[pname].detach().expand((S,) + named[pname].shape)
                out[self.model.parameter_site(pname)] = v
            for short, v in self._expanded_latents(S).items():
                out[sites[short]] = v
        return out

    def sample_outputs(self, x, num_samples, *, chunk_size=None, max_memory=None):
        r"""Outputs ``(S, N, k)`` of ``S`` masked weight sets at ``x``, through
        :meth:`~pyrobdl.BayesianNetwork.outputs_from_params` (one set of masks per chunk
        of samples, shared by its chunks of inputs; the sampled weights count against
        ``max_memory``), and the likelihood's latents. Uses (and advances) torch's global
        random state: seed it for reproducible predictions."""
        S = self.default_num_samples if num_samples is None else num_samples
        named = dict(self.net.named_parameters())
        w_bytes = sum(named[n].numel() * named[n].element_size() for n in self._mask_targets())
        out = self.model.outputs_from_params(
            x, S, lambda s0, s1: self._masked_weights(s1 - s0), chunk_size=chunk_size,
            max_memory=max_memory, sample_bytes=w_bytes,
        )
        return out, self._expanded_latents(S)

    def _base_state(self) -> Dict[str, Any]:
        return {
            "p": self.p,
            "settings": self.settings,
            "latents": {k: v.cpu() for k, v in self._raw.items()},
            "fit_info": saved_fit_info(self.fit_info),
        }

    @classmethod
    def _restore(cls, model: BayesianNetwork, net: nn.Module, state: Dict[str, Any], **kwargs) -> "_MaskedPosterior":
        lat = {k: v.to(model.device) for k, v in state["latents"].items()}
        model.net.eval()
        post = cls(model, net.eval(), lat, p=state["p"], settings=state["settings"], **kwargs)
        post.fit_info = dict(state.get("fit_info", {}))
        return post


class DropoutPosterior(_MaskedPosterior):
    r"""An MC-dropout "posterior": a network trained with dropout, predicting with dropout
    left on (Gal & Ghahramani, 2016).

    Each predictive sample :math:`s` is one Bernoulli mask per dropout layer, shared by all
    inputs, so sample :math:`s` is one function. A dropout on the input of a Linear layer (or
    on the input channels of a convolution) is the same as zeroing columns of its weight (Gal
    & Ghahramani's reading of dropout as a distribution over weights):

    .. math::

        f_s(x) = f\big(x;\ W\,\mathrm{diag}(z_s)/(1-p)\big),\qquad
        z_{s,j}\sim\mathrm{Bernoulli}(1-p),

    so predictions draw the :math:`S` masked weight sets and push them through the network in
    batched passes (see the module docs), and :meth:`sample_latents` returns them. Dropout
    modules that do not sit right before a Linear/Conv layer of an ``nn.Sequential`` mask
    activations instead: then the masks are drawn inside one ``vmap(...,
    randomness="different")`` pass and :meth:`sample_latents` is unavailable.

    Attributes:
        net: the trained network with its dropout layers, a view of ``model.net`` that shares
            its parameters (``model.net`` itself stays a plain copy of the user's
            architecture). In ``eval()`` mode outside :meth:`predict` dropout is off (the
            deterministic weight-scaled net); in ``train()`` mode every example gets its own
            mask (the training path).
        plan: where dropout sits, ``[{"module", "p", "where", "sample_dims", "fold"}]``
            (``where="input"``: on the input of that Linear/Conv module; ``"replace"``: an
            ``nn.Dropout`` of the user's network; ``fold``: the layer whose weight columns the
            mask acts on, or ``None``).
        latents: maximum-likelihood likelihood latents (e.g. the noise σ).
        fit_info: ``losses`` (per step), ``seconds``, ``num_steps``.

    Example:
        Returned by :class:`MCDropout`:

        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, likelihoods, inference
        >>> x = torch.linspace(-1, 1, 20).unsqueeze(-1)
        >>> model = BayesianNetwork(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)),
        ...                         likelihood=likelihoods.Gaussian(scale=0.1))
        >>> posterior = inference.MCDropout(p=0.1, num_steps=20, progress=False).fit(model, x, x[:, 0] ** 2)
        >>> pred = posterior.predict(x, num_samples=10)     # 10 dropout masks
        >>> pred.mean.shape, pred.num_samples
        (torch.Size([20]), 10)
    """

    method = "mc-dropout"

    def __init__(self, model, net, latents, *, p: float, plan: List[Dict[str, Any]], settings: Dict[str, Any]):
        super().__init__(model, net, latents, p=p, settings=settings)
        self.plan = [dict(e) for e in plan]
        self._modules_by_name = dict(net.named_modules())

    @property
    def in_weight_space(self) -> bool:
        """Whether every dropout mask is a mask on weight columns (then :meth:`sample_latents`
        works)."""
        return all(e.get("fold") is not None for e in self.plan)

    def _mask_targets(self) -> List[str]:
        return list(dict.fromkeys(param_name(e["fold"], "weight") for e in self.plan))

    def _masked_weights(self, S: int) -> Dict[str, torch.Tensor]:
        modules = self._modules_by_name
        masks: Dict[str, torch.Tensor] = {}
        for e in self.plan:
            layer = modules[e["fold"]]
            w = layer.weight
            keep = 1.0 - e["p"]
            n_in = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
            z = torch.full((S, n_in), keep, dtype=w.dtype, device=w.device)
            m = _input_mask(layer, torch.bernoulli(z).div_(keep)) if e["p"] > 0 else None
            if m is not None:
                masks[e["fold"]] = m if e["fold"] not in masks else masks[e["fold"]] * m
        out = {}
        for name in dict.fromkeys(e["fold"] for e in self.plan):
            w = modules[name].weight.detach()
            out[param_name(name, "weight")] = w * masks[name] if name in masks else w.expand((S,) + w.shape)
        return out

    def sample_outputs(self, x, num_samples, *, chunk_size=None, max_memory=None):
        r"""Outputs ``(S, N, k)`` for ``S`` dropout masks (see :meth:`_MaskedPosterior.sample_outputs`);
        when some dropout module masks activations, ``S`` passes of the dropout network in
        sampling mode, vectorised with ``vmap(..., randomness="different")`` and chunked by
        the engine, every chunk of inputs replaying the same random state (the same masks)."""
        if self.in_weight_space:
            return super().sample_outputs(x, num_samples, chunk_size=chunk_size, max_memory=max_memory)
        S = self.default_num_samples if num_samples is None else num_samples
        chunk, rows = engine.plan(
            S, x.shape[0], row_bytes=self.model.row_bytes(x), chunk_size=chunk_size, max_memory=max_memory,
            device=x.device,
        )
        dummy = torch.empty(S, device=x.device)
        net = self.net

        def masked_pass(s0, s1, xr, dest):
            return batched_call(lambda _: net(xr), (0,), (dummy[s0:s1],), owner=net)

        with eval_mode(net), torch.inference_mode(), _Sampling(net):
            out = engine.run(masked_pass, S, x, chunk=chunk, rows=rows, replay_rng=True)
        return out, self._expanded_latents(S)

    def sample_latents(self, num_samples: Optional[int]) -> Dict[str, torch.Tensor]:
        r"""``num_samples`` weight-space draws by site name: the weights that a dropout mask
        acts on as :math:`W\,\mathrm{diag}(z_s)/(1-p)`, the other Bayesian parameters and the
        likelihood latents at their trained values (expanded, not copied).

        Raises:
            TypeError: when some dropout module masks activations that do not feed a
                Linear/Conv layer directly (no weight-space equivalent).
        """
        if not self.in_weight_space:
            bad = [e["module"] for e in self.plan if e.get("fold") is None]
            raise TypeError(
                f"this MC-dropout posterior has no weight-space samples: the dropout modules {bad} mask "
                "activations that do not feed a Linear/Conv layer directly. Use posterior.predict(x, "
                "num_samples=S), put each nn.Dropout right before a Linear/Conv layer of an nn.Sequential, "
                "or fit MCDropConnect (method='mc-dropconnect')"
            )
        return self._weight_samples(num_samples)

    def get_state(self) -> Dict[str, Any]:
        return dict(self._base_state(), plan=[dict(e) for e in self.plan])

    @classmethod
    def from_state(cls, model: BayesianNetwork, state: Dict[str, Any]) -> "DropoutPosterior":
        return cls._restore(model, _dropout_view(model.net, state["plan"]), state, plan=state["plan"])


class DropConnectPosterior(_MaskedPosterior):
    r"""An MC-DropConnect "posterior": a network trained with DropConnect, predicting with
    weight masks (Wan et al., 2013; Mobiny et al., 2021).

    Each predictive sample is one set of masked weights :math:`W_s = W\circ Z_s/(1-p)`,
    :math:`Z_s\sim\mathrm{Bernoulli}(1-p)` elementwise, for every masked layer; biases are not
    masked. The :math:`S` weight sets run through the network in batched passes (see the
    module docs), chunked so that weights plus activations stay under ``max_memory``.

    Attributes:
        net: the trained network, ``model.net`` (``eval()``: unmasked weights).
        masked: names of the masked weight parameters.
        latents: maximum-likelihood likelihood latents.

    Example:
        Returned by :class:`MCDropConnect`:

        >>> import torch, torch.nn as nn, pyrobdl
        >>> x = torch.randn(30, 2)
        >>> model = pyrobdl.BayesianNetwork(nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1)))
        >>> posterior = pyrobdl.fit(model, x, x.sum(1), method="mc-dropconnect", p=0.1, num_steps=20, progress=False)
        >>> posterior.sample_latents(10)["0.weight"].shape  # 10 masked copies of the first weight
        torch.Size([10, 8, 2])
        >>> posterior.predict(x, num_samples=10).mean.shape
        torch.Size([30])
    """

    method = "mc-dropconnect"

    def __init__(self, model, net, latents, *, p: float, masked: List[str], settings: Dict[str, Any]):
        super().__init__(model, net, latents, p=p, settings=settings)
        self.masked = list(masked)

    def _mask_targets(self) -> List[str]:
        return list(self.masked)

    def _masked_weights(self, S: int) -> Dict[str, torch.Tensor]:
        named = dict(self.net.named_parameters())
        keep = 1.0 - self.p
        out = {}
        for n in self.masked:
            w = named[n].detach()
            if self.p == 0.0:
                out[n] = w.expand((S,) + w.shape)
            else:
                mask = torch.bernoulli(torch.full((S,) + w.shape, keep, dtype=w.dtype, device=w.device))
                out[n] = (w * mask).div_(keep)
        return out

    def sample_latents(self, num_samples: Optional[int]) -> Dict[str, torch.Tensor]:
        r"""``num_samples`` masked-weight draws for every latent site: masked weights
        :math:`W\circ Z_s/(1-p)`, the other Bayesian parameters and the likelihood latents at
        their trained values (expanded, not copied).

        ``posterior.model.predict_from_samples(x, posterior.sample_latents(S))`` gives the same
        predictive distribution as :meth:`predict`."""
        return self._weight_samples(num_samples)

    def get_state(self) -> Dict[str, Any]:
        return dict(self._base_state(), masked=list(self.masked))

    @classmethod
    def from_state(cls, model: BayesianNetwork, state: Dict[str, Any]) -> "DropConnectPosterior":
        return cls._restore(model, model.net, state, masked=state["masked"])


# ============================================================================ methods
#: ``weight_decay="auto"``: dropout masks per held-out prediction
AUTO_NUM_SAMPLES = 100


class _DropoutInference(PointInference):
    """The training shared by MC dropout and MC DropConnect: a network with masks, the mean
    negative log-likelihood plus the weight penalty, Adam (:func:`pyrobdl.inference.optim.train`)."""

    family = "dropout"
    default_num_steps = 5000
    default_p = 0.1
    default_layers = "hidden"
    weight_decay_candidates = (0.0, "prior")
    #: ``lr_decay`` when it is not given (final / initial learning rate)
    default_lr_decay = 1.0

    def __init__(
        self,
        *,
        p: Optional[float],
        layers: LayerSpec,
        num_steps: Optional[int] = None,
        epochs: Optional[int] = None,
        batch_size: Optional[int] = None,
        lr: float = 1e-2,
        lr_decay: Optional[float] = None,
        weight_decay: WeightDecay = 0.0,
        progress: bool = True,
        seed: Optional[int] = None,
        callback=None,
    ):
        super().__init__(
            num_steps=num_steps, epochs=epochs, batch_size=batch_size, lr=lr,
            weight_decay=weight_decay, progress=progress, seed=seed, callback=callback,
        )
        self.p = None if p is None else check_p(p)
        self.layers = check_layers(layers)
        self.lr_decay = check_positive_float(self.default_lr_decay if lr_decay is None else lr_decay, "lr_decay")

    def settings(self) -> Dict[str, Any]:
        return dict(super().settings(), p=self.p, layers=self.layers, lr_decay=self.lr_decay)

    # hooks of the two methods
    def _prepare(self, model: BayesianNetwork, x0: torch.Tensor) -> Tuple[nn.Module, Any, Dict[str, float]]:
        """(the network to train -- sharing ``model.net``'s parameters --, method info, the keep
        probability of each masked weight for the penalty)."""
        raise NotImplementedError

    def _forward(self, model: BayesianNetwork, net: nn.Module, named, xb: torch.Tensor, info) -> torch.Tensor:
        raise NotImplementedError

    def _posterior(self, model: BayesianNetwork, net: nn.Module, raw, info) -> _MaskedPosterior:
        raise NotImplementedError

    def _fit(self, model: BayesianNetwork, data: Data) -> _MaskedPosterior:
        if self.weight_decay != "auto":
            return self._train(model, data, self.weight_decay)
        chosen, scores = self._choose_weight_decay(model, data)
        post = self._train(model, data, chosen)
        post.fit_info.update(weight_decay=chosen, weight_decay_scores=scores)
        return post

    def _choose_weight_decay(self, model: BayesianNetwork, data: Data) -> Tuple[WeightDecay, Optional[Dict[str, float]]]:
        """``weight_decay="auto"``: train one copy of ``model`` per candidate of
        :attr:`weight_decay_candidates` on a random ``1 - AUTO_VALIDATION_FRACTION`` of the
        rows and keep the candidate with the best mean log predictive density on the rest
        (ties go to the earlier candidate). With fewer than ``AUTO_MIN_DATA`` rows, or a
        DataLoader, the first candidate. Returns ``(chosen, {str(candidate): held-out LL})``."""
        candidates = self.weight_decay_candidates
        split = holdout(data)
        if split is None:
            return candidates[0], None
        x_fit, y_fit, x_val, y_val = split
        scores: Dict[str, float] = {}
        for cand in candidates:
            trial = model.fresh_copy()
            post = self._train(trial, Data(trial, x_fit, y_fit), cand, final=False)
            scores[str(cand)] = held_out_score(post, x_val, y_val, AUTO_NUM_SAMPLES)
        best = max(range(len(candidates)), key=lambda i: (scores[str(candidates[i])], -i))
        return candidates[best], scores

    def _train(self, model: BayesianNetwork, data: Data, weight_decay: WeightDecay, *, final: bool = True) -> _MaskedPosterior:
        """Train ``model.net`` (in place) with ``weight_decay``: the method's posterior (the
        callback sees the final training only, not the ``weight_decay="auto"`` trials)."""
        method = type(self).__name__
        batches = data.batches(model, self.batch_size)
        x0, y0 = next(batches)
        net, info, keep = self._prepare(model, x0[:2])
        raw = init_latents(model, method, training_targets(data, y0))
        constrain = constrainer(model)
        with torch.no_grad():
            check_likelihood(model, method, net.eval()(x0[:2]), y0[:2], constrain(raw))
        penalty = weight_penalty(model, weight_decay, data.num_data, keep)
        named = dict(net.named_parameters())
        log_prob = model.likelihood.log_prob
        c = latent_lr_scale(self.lr)  # the latents train at max(lr, LIKELIHOOD_LR)
        scaled = {k: (v.detach() / c).requires_grad_(True) for k, v in raw.items()}

        def loss_fn(step, xb, yb):
            lats = constrain({k: v * c for k, v in scaled.items()} if c != 1.0 else scaled)
            loss = -log_prob(self._forward(model, net, named, xb, info), yb, lats).mean()
            if penalty is not None:
                loss = loss + penalty(named)
            return loss, loss.detach()

        num_steps = data.num_steps(self.num_steps, self.epochs, self.batch_size)
        params = [t for t in net.parameters() if t.requires_grad] + list(scaled.values())
        net.train()
        try:
            losses, secs = train(
                loss_fn, itertools.chain([(x0, y0)], batches), params, num_steps=num_steps, lr=self.lr,
                lr_decay=self.lr_decay, progress=self.progress, desc=self.name, callback=self.callback if final else None,
                callback_every=data.steps_per_epoch(self.batch_size),
                posterior_fn=lambda: self._posterior(model, net, {k: v.detach() * c for k, v in scaled.items()}, info),
            )
        finally:
            net.eval()
            model.net.eval()  # shares parameters and buffers (BatchNorm statistics) with net
        post = self._posterior(model, net, {k: v.detach() * c for k, v in scaled.items()}, info)
        post.fit_info = {"losses": losses, "seconds": secs, "num_steps": num_steps}
        if len(losses) < num_steps:
            post.fit_info["stopped_at"] = len(losses)
        return post


@register_method
class MCDropout(_DropoutInference):
    r"""Monte Carlo dropout (Gal & Ghahramani, 2016): train the network by maximum likelihood
    with dropout and weight decay, keep dropout on at prediction; each predictive sample is
    one dropout mask, shared by all inputs (one function per sample).

    **Where dropout goes.** If the network already has ``nn.Dropout`` (or
    ``Dropout1d/2d/3d``) modules, those are used (with their own rates, or ``p`` when it is
    given). Otherwise (or with an explicit ``layers``) dropout is put on the *input* of every
    chosen Linear/Conv layer: on its input features (Linear) or input channels (Conv, i.e.
    spatial dropout). The default for such networks, ``layers="all"`` (Gal's UCI setup),
    chooses every Linear/Conv layer whose weight is a Bayesian parameter of the model, the
    first one included (its masks drop raw input features); ``"hidden"`` skips the first
    layer the forward pass calls; a list of module names picks layers by name. With a
    Bayesian head on a deterministic feature extractor only head layers are chosen. The copy
    keeps the user's parameter names.

    **Objective** (see :mod:`pyrobdl.inference.point`): mean negative log-likelihood under
    per-example dropout masks plus :math:`\sum_j\lambda_j\lVert\theta_j-\mu_j\rVert^2`. With
    ``weight_decay="prior"``
    :math:`\lambda_j = (1-p)/(2 s_j^2 N)` for the weights fed by a dropped input and
    :math:`1/(2 s_j^2 N)` for the other Bayesian parameters, where
    :math:`\mathcal N(\mu_j, s_j^2)` is the model's prior and :math:`N` the dataset size
    (Gal's KL condition). That decay is right when the prior fits the data's scale and
    erases the fit when it does not (raw, unstandardised inputs against unit-scale bias
    priors; :math:`D \gg N`): the optimum is then a near-constant network whose learned noise
    absorbs the data. Without the decay no measured fit went to that constant network, but
    UCI Boston scores 0.1 nats lower. So the default ``weight_decay="auto"`` lets the data choose: one copy of the network per
    candidate (:attr:`weight_decay_candidates`, 0 and ``"prior"``) trains on a random 80% of
    the rows, the candidate with the best held-out log predictive density wins (ties to 0)
    and the final fit uses it on all rows; ``fit_info["weight_decay"]`` and
    ``fit_info["weight_decay_scores"]`` say what was chosen and why. This costs three
    trainings. Below ``AUTO_MIN_DATA`` (50) rows, or with a DataLoader, ``"auto"`` uses 0.
    The measurements are on the docs page "How the defaults were chosen".

    Training starts from the network's weights (re-drawn first when ``seed`` is given, see
    :class:`~pyrobdl.inference.base.Inference`). The likelihood's latents (e.g. the σ of
    ``Gaussian()``) are fitted by maximum likelihood.

    The defaults (5000 full-batch steps, ``lr=1e-2``, ``p=0.015`` on the inputs of every
    layer) are those measured on the UCI benchmarks (see the docs page "How the defaults were
    chosen").

    Args:
        p: dropout probability in [0, 1) (default 0.015; existing dropout modules keep their
            own rate unless ``p`` is given).
        layers: ``None`` (default: the network's own dropout modules if it has any, else
            ``"all"``), ``"all"``, ``"hidden"`` or a list of Linear/Conv module names to put
            dropout before.
        num_steps: optimisation steps (default 5000; ignored when ``epochs`` is given).
        epochs: passes over the data instead of ``num_steps``.
        batch_size: minibatch size (default: full batch).
        lr: Adam learning rate (the likelihood's latents train at
            ``max(lr, optim.LIKELIHOOD_LR)``).
        lr_decay: final / initial learning rate of an exponential schedule (default 0.1, as
            for the VI methods: the last steps move less, so the fit does not end wherever a
            late full-batch Adam oscillation left it; UCI Energy splits 0-2 -0.85 against
            -1.04 without decay, Boston and Concrete unchanged; see the docs page "How the
            defaults were chosen").
        weight_decay: ``"auto"`` (default: 0 or ``"prior"``, chosen on held-out rows as
            above), ``"prior"`` (the prior-matched decay) or a float λ (penalty λ·Σθ²).
        progress: show a progress bar.
        callback: ``callback(progress)`` called after every epoch (every step with full-batch
            data) with a :class:`~pyrobdl.inference.optim.FitProgress` (``step``, ``epoch``,
            ``loss``, ``posterior`` so far); return ``True`` to stop (early stopping).
        seed: ``None`` or an integer in ``[0, 2**32)``: the seed rule of
            :class:`~pyrobdl.inference.base.Inference`.

    Example::

        posterior = inference.MCDropout(p=0.1, num_steps=3000).fit(model, x, y)
        pred = posterior.predict(x_test, num_samples=100)
        pred.epistemic_std, pred.aleatoric_std

    References:
        Y. Gal and Z. Ghahramani, *Dropout as a Bayesian Approximation* (ICML 2016).
    """

    name = "mc-dropout"
    aliases = ("mcdropout", "dropout")
    variance_head = True
    collapse_hint = "Lower weight_decay or raise p: the weight decay may have shrunk the weights the masks act on to zero."
    default_p = 0.015
    default_layers = "all"
    default_lr_decay = 0.1

    def __init__(self, *, p: Optional[float] = None, layers: LayerSpec = None, weight_decay: WeightDecay = "auto", **kwargs):
        super().__init__(p=p, layers=layers, weight_decay=weight_decay, **kwargs)

    def _prepare(self, model, x0):
        plan, keep = self._plan(model, model.net, x0)
        return _dropout_view(model.net, plan), plan, keep

    def _forward(self, model, net, named, xb, plan):
        return net(xb)

    def _posterior(self, model, net, raw, plan):
        p = self.p if self.p is not None else self.default_p
        return DropoutPosterior(model, net, raw, p=p, plan=plan, settings=self.settings())

    def _plan(self, model: BayesianNetwork, net: nn.Module, x0: torch.Tensor) -> Tuple[List[Dict[str, Any]], Dict[str, float]]:
        """(plan, keep probability per weight) for the network."""
        order = call_order(net, x0)
        modules = dict(net.named_modules())
        plan: List[Dict[str, Any]] = []
        for n, m in modules.items():
            if not isinstance(m, DROPOUT_TYPES):
                continue
            rate = self.p if self.p is not None else check_p(float(m.p), f"the rate of dropout module {n!r}")
            channel = isinstance(m, _CHANNEL_DROPOUT)
            # a dropout right before a Linear (Conv, for channel dropout) of an nn.Sequential masks its weight columns
            parent_name, _, leaf = n.rpartition(".")
            parent = net.get_submodule(parent_name)
            fold = None
            if type(parent) is nn.Sequential:
                names = list(parent._modules)
                i = names.index(leaf)
                nxt = parent[i + 1] if i + 1 < len(names) else None
                if (isinstance(nxt, nn.Linear) and not channel) or (
                    isinstance(nxt, nn.modules.conv._ConvNd) and channel
                ):
                    fold = param_name(parent_name, names[i + 1])
            dims = ("channels" if channel else "features") if fold is not None else ("channels" if channel else "elements")
            plan.append({"module": n, "p": rate, "where": "replace", "sample_dims": dims, "fold": fold})
        keep: Dict[str, float] = {}
        rates = {e["module"]: e["p"] for e in plan}
        pending: Optional[float] = None
        for n in order:  # the weight layer called right after a dropout module gets its keep factor
            if n in rates:
                pending = rates[n]
            elif pending is not None:
                keep[param_name(n, "weight")] = 1.0 - pending
                pending = None
        if plan and self.layers is None:
            return plan, keep
        chosen = select_layers(net, model, order, self.layers or self.default_layers)
        if not chosen and not plan:
            n_weight = sum(isinstance(m, WEIGHT_LAYERS) for m in modules.values())
            if n_weight == 0:
                why = "the network has no Linear/Conv layer"
            elif n_weight == 1:
                why = "the network's only Linear/Conv layer sees the raw input"
            else:
                why = "none of its hidden Linear/Conv layers has a Bayesian weight"
            raise ValueError(
                f"MCDropout found no layer to put dropout before: {why}. Add a hidden layer, pass "
                "layers='all' (drop the inputs of every layer) or a list of module names, or put nn.Dropout "
                "modules into the network yourself"
            )
        rate = self.p if self.p is not None else self.default_p
        for n in chosen:
            dims = "features" if isinstance(modules[n], nn.Linear) else "channels"
            plan.append({"module": n, "p": rate, "where": "input", "sample_dims": dims, "fold": n})
            keep[param_name(n, "weight")] = 1.0 - rate
        return plan, keep


@register_method
class MCDropConnect(_DropoutInference):
    r"""Monte Carlo DropConnect (Wan et al., 2013; Mobiny et al., 2021): like
    :class:`MCDropout`, but the Bernoulli mask falls on single *weights* of Linear/Conv
    layers instead of on activations, :math:`W_s = W\circ Z_s/(1-p)`,
    :math:`Z_{s,ij}\sim\mathrm{Bernoulli}(1-p)`.

    Training draws one weight mask per minibatch step; prediction draws one per predictive
    sample. By default (``layers="all"``) every Linear/Conv layer whose weight is a Bayesian
    parameter is masked, the first layer included (masking single weights, unlike dropping an
    input, never removes an input feature altogether); ``"hidden"`` skips the first layer; a
    list of module names picks layers. Biases are never masked. The objective and weight
    decay are as for :class:`MCDropout`, with :math:`\lambda_j = (1-p)/(2s_j^2N)` on masked
    weights. The defaults (5000 full-batch steps, ``lr=1e-2``, ``p=0.01``) are those measured
    on the UCI benchmarks.

    Args:
        p: probability of dropping a weight, in [0, 1) (default 0.01).
        layers: ``"all"`` (default), ``"hidden"`` or a list of module names.
        **kwargs: ``num_steps``, ``epochs``, ``batch_size``, ``lr``, ``lr_decay`` (default 1: a
            constant rate), ``weight_decay``, ``progress``, ``seed`` as :class:`MCDropout`.

    Example::

        posterior = pyrobdl.fit(model, x, y, method="mc-dropconnect", p=0.1)
        pred = posterior.predict(x_test, num_samples=100)
        draws = posterior.sample_latents(100)    # masked weights by site name

    References:
        L. Wan et al., *Regularization of Neural Networks using DropConnect* (ICML 2013);
        A. Mobiny et al., *DropConnect is effective in modeling uncertainty of Bayesian deep
        networks* (Sci. Rep. 2021).
    """

    name = "mc-dropconnect"
    aliases = ("mcdropconnect", "dropconnect")
    collapse_hint = "Lower weight_decay or raise p: the weight decay may have shrunk the masked weights to zero."
    default_p = 0.01
    default_layers = "all"

    def __init__(self, *, p: float = 0.01, layers: LayerSpec = "all", **kwargs):
        super().__init__(p=p, layers=layers, **kwargs)

    def _prepare(self, model, x0):
        chosen = select_layers(model.net, model, call_order(model.net, x0), self.layers)
        if not chosen:
            raise ValueError(
                "MCDropConnect found no weight to mask: the network has no Linear/Conv layer with a Bayesian "
                "weight" + (" other than its first" if self.layers == "hidden" else "")
                + "; use layers='all', name the layers, or make their weights Bayesian (bayesian=...)"
            )
        masked = [param_name(n, "weight") for n in chosen]
        return model.net, masked, {n: 1.0 - self.p for n in masked}

    def _forward(self, model, net, named, xb, masked):
        if self.p == 0.0:
            return net(xb)
        keep = 1.0 - self.p
        w = {n: named[n] * torch.bernoulli(torch.full_like(named[n], keep, requires_grad=False)).div_(keep) for n in masked}
        return model.apply(w, xb)

    def _posterior(self, model, net, raw, masked):
        return DropConnectPosterior(model, net, raw, p=self.p, masked=masked, settings=self.settings())
