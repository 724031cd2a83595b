r"""The potential energy of HMC/NUTS: a :class:`~pyrobdl.BayesianNetwork`'s negative log
joint density as one function of a flat, unconstrained vector, on the shared
:class:`~pyrobdl.inference.flat.FlatLayout`, with its (optionally compiled) leapfrog step.
"""
from __future__ import annotations

import itertools
import types
import warnings
from typing import Callable, Dict, Mapping, Optional, Tuple

import pyro
import torch

from ..._util import eval_mode, warn_user
from ...network import BayesianNetwork
from ..flat import FlatLayout

__all__ = ["FlatPotential", "fresh_function", "pyro_potential_fn"]

_code_counter = itertools.count()


def fresh_function(fn: Callable) -> Callable:
    """A copy of ``fn`` with its own code object.

    ``torch.compile`` caches compiled graphs per code object and gives up after
    a few recompilations of one code object; every :class:`FlatPotential` owns
    fresh copies so that fitting many models in one process keeps compiling.
    """
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{next(_code_counter)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


class FlatPotential:
    r"""The negative log joint density of a :class:`~pyrobdl.BayesianNetwork` as a
    function of one flat, unconstrained vector :math:`z\in\mathbb R^D`.

    Sites are laid out by :class:`~pyrobdl.inference.flat.FlatLayout` (in
    :meth:`~pyrobdl.BayesianNetwork.latent_sites` order). Constrained sites (a learned
    noise scale :math:`\sigma>0`) are mapped with :func:`torch.distributions.biject_to`
    (``exp`` for :math:`\sigma`), and the log-Jacobian is added:

    .. math:: U(z) = -\Big[\log p(y\mid x,\theta) + \log p(\theta) + \sum_k \log|\det J_{T_k}(z_k)|\Big],\quad \theta = T(z).

    I.i.d. Gaussian weight priors are evaluated in closed form on the flat
    vector; other priors through their distributions.

    Args:
        model: the network.
        x, y: the (checked) training data.
        compile: compile the leapfrog step (value, gradient and momentum
            updates in one graph) with :func:`torch.compile`.

    Example::

        pot = FlatPotential(model, x, y)
        z = pot.sample_prior(4)               # (4, D) draws from the prior, unconstrained
        u, g = pot.value_and_grad(z[0])
        values = pot.unpack(z)                # site -> (4, *shape), constrained
    """

    def __init__(self, model: BayesianNetwork, x: torch.Tensor, y: torch.Tensor, *, compile: bool = False):
        self.model = model
        self.x, self.y = x, y
        self.layout = FlatLayout(model, device=x.device, dtype=model.dtype)
        self.device, self.dtype = self.layout.device, self.layout.dtype
        self.dim = self.layout.dim
        self.site_names = list(self.layout.names)
        self.compiled = False
        self._potential = fresh_function(self._make_potential())
        self._leapfrog_fns: Dict[bool, Callable] = {}
        self._want_compile = bool(compile)

    # ------------------------------------------------------------------ layout
    def unpack(self, z: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Flat unconstrained ``(..., D)`` -> site -> constrained ``(..., *shape)``."""
        values, _, _ = self.layout.unpack(z)
        return values

    def pack(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Site -> constrained values ``(..., *shape)`` -> flat unconstrained ``(..., D)``."""
        return self.layout.pack(values)

    # ------------------------------------------------------------------ densities
    def _make_potential(self):
        model, x, y, layout = self.model, self.x, self.y, self.layout

        def potential(z: torch.Tensor) -> torch.Tensor:
            return layout.negative_log_joint(model, z, x, y)

        return potential

    @property
    def function(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The bare potential ``z (..., D) -> U(z) (...)``, traceable by :func:`torch.compile`
        and :mod:`torch.func` (call it with Pyro's validation off)."""
        return self._potential

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`U(z)` for ``z`` of shape ``(..., D)`` (differentiable)."""
        with pyro.validation_enabled(False):
            return self._potential(z)

    def log_joint(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`-U(z)`: the log joint density in unconstrained space."""
        return -self(z)

    def value_and_grad(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(U(z), ∇U(z))`` for one point ``z`` of shape ``(D,)``."""
        with torch.enable_grad(), pyro.validation_enabled(False):
            zz = z.detach().requires_grad_(True)
            u = self._potential(zz)
            (g,) = torch.autograd.grad(u, zz)
        return u.detach(), g

    # ------------------------------------------------------------------ leapfrog
    def _make_leapfrog(self, dense: bool, use_compile: bool):
        potential = self._potential
        if use_compile:
            vg = torch.func.grad_and_value(potential)

            def value_grad(z):
                g, u = vg(z)
                return u, g
        else:

            def value_grad(z):
                with torch.enable_grad():
                    zz = z.detach().requires_grad_(True)
                    u = potential(zz)
                    (g,) = torch.autograd.grad(u, zz)
                return u.detach(), g

        def leapfrog(z, r, g, eps, inv_mass):
            r = r - (0.5 * eps) * g
            v = inv_mass @ r if dense else inv_mass * r
            z = z + eps * v
            u, g = value_grad(z)
            r = r - (0.5 * eps) * g
            v = inv_mass @ r if dense else inv_mass * r
            h = u + 0.5 * (r * v).sum()
            return z, r, g, v, u, h

        if not use_compile:
            return leapfrog
        return torch.compile(fresh_function(leapfrog), fullgraph=True, dynamic=False)

    def leapfrog_fn(self, dense: bool) -> Callable:
        """The (possibly compiled) leapfrog step
        ``(z, r, g, eps, inv_mass) -> (z', r', g', M^{-1}r', U(z'), H(z', r'))``.

        The first call with ``compile=True`` compiles it (seconds); if
        compilation fails, a warning is issued and the eager version is used.
        """
        if dense not in self._leapfrog_fns:
            fn = self._make_leapfrog(dense, False)
            if self._want_compile:
                cfn = self._make_leapfrog(dense, True)
                gen = torch.Generator().manual_seed(0)
                z = 0.1 * torch.randn(self.dim, generator=gen).to(self.device, self.dtype)
                r = torch.randn(self.dim, generator=gen).to(self.device, self.dtype)
                inv = torch.eye(self.dim, device=self.device, dtype=self.dtype) if dense else torch.ones_like(z)
                eps = torch.tensor(1e-3, device=self.device, dtype=self.dtype)
                try:
                    with pyro.validation_enabled(False), warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        u, g = self.value_and_grad(z)
                        want = fn(z, r, g, eps, inv)
                        got = cfn(z, r, g, eps, inv)
                    ok = all(
                        torch.allclose(a, b, rtol=1e-3, atol=1e-4 * (1 + float(b.abs().max())))
                        for a, b in zip(got, want)
                        if torch.isfinite(b).all()
                    )
                    if not ok:
                        raise RuntimeError("the compiled leapfrog step disagrees with the eager one")
                    fn = cfn
                    self.compiled = True
                except Exception as e:  # no C++ compiler, unsupported op, ...
                    warn_user(
                        f"torch.compile failed for the HMC potential ({type(e).__name__}: {str(e)[:200]}); "
                        "falling back to eager autograd (correct but slower). Pass compile=False to silence this."
                    )
                    self._want_compile = False
            self._leapfrog_fns[dense] = fn
        return self._leapfrog_fns[dense]

    def safe_leapfrog_fn(self, dense: bool) -> Callable:
        """:meth:`leapfrog_fn`, falling back to the eager step (with a warning) if the
        compiled one fails at run time, e.g. because it would need recompiling in
        a worker process where compilation is refused."""
        fn = self.leapfrog_fn(dense)
        if not self.compiled:
            return fn
        eager = self._make_leapfrog(dense, False)
        state = {"fn": fn}

        def call(*args):
            try:
                return state["fn"](*args)
            except Exception as e:
                if state["fn"] is eager:
                    raise
                warnings.warn(
                    f"the compiled leapfrog step failed ({type(e).__name__}: {str(e)[:200]}); continuing with "
                    "the eager one (same result, slower)",
                    RuntimeWarning,
                )
                state["fn"] = eager
                return eager(*args)

        return call

    # ------------------------------------------------------------------ initial points
    def sample_prior(self, num: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``num`` draws from the prior, as unconstrained ``(num, D)`` points."""
        sites = self.model.latent_sites(device=self.device, dtype=self.dtype)
        values = {name: sites[name].prior.sample((num,)) for name in self.site_names}
        return self.pack(values)

    def finite_prior_draws(self, num: int, *, tries: int = 100) -> torch.Tensor:
        """``num`` prior draws ``(num, D)`` at which the potential is finite (draws where
        it is not are redrawn, up to ``tries`` times)."""
        z = self.sample_prior(num)
        with torch.no_grad(), eval_mode(self.model.net):
            for _ in range(tries):
                bad = ~torch.isfinite(self(z))
                if not bool(bad.any()):
                    break
                z[bad] = self.sample_prior(int(bad.sum()))
        return z

    def find_map(self, z0: torch.Tensor, *, num_steps: int = 500, lr: float = 0.02) -> torch.Tensor:
        """Adam on :math:`U` from each row of ``z0`` (``(C, D)``), all rows in one batched pass.

        Returns the optimised points; rows whose potential became non-finite keep their start."""
        z = z0.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        with eval_mode(self.model.net):
            for _ in range(num_steps):
                u = self(z)
                opt.zero_grad(set_to_none=True)
                u.sum().backward()
                opt.step()
            with torch.no_grad():
                u = self(z)
        z = z.detach()
        bad = ~torch.isfinite(u)
        z[bad] = z0[bad]
        return z


class _PotentialFunction(torch.autograd.Function):
    """``U(z)`` with a gradient from :meth:`FlatPotential.value_and_grad`, so Pyro's
    generic code (``potential_grad``) can differentiate the flat potential."""

    @staticmethod
    def forward(ctx, z, pot):
        u, g = pot.value_and_grad(z)
        ctx.save_for_backward(g)
        return u

    @staticmethod
    def backward(ctx, grad_output):
        (g,) = ctx.saved_tensors
        return grad_output * g, None


def pyro_potential_fn(pot: FlatPotential) -> Callable[[Dict[str, torch.Tensor]], torch.Tensor]:
    """Pyro's ``potential_fn`` API: a dict ``{"z": flat}`` -> scalar potential."""

    def potential_fn(params):
        return _PotentialFunction.apply(params["z"], pot)

    return potential_fn
