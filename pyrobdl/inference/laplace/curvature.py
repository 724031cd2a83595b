"""The curvature of the Laplace approximation: the GGN as full, diagonal, K-FAC and low-rank
structures over a subset of the weights, computed in batched passes, and what the
posterior needs from them (solves, log-determinants, draws). See :mod:`pyrobdl.inference.laplace`."""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.distributions import biject_to
from torch.func import functional_call, jacrev, vmap

from ... import likelihoods as _lik
from ..._util import eval_mode
from ...network import BayesianNetwork
from ..base import Data
from ..point import (
    latent_site_names,
)


#: the curvature structures ``hessian=`` accepts
HESSIANS = ("full", "diag", "kron", "low-rank")
#: ``hessian="auto"`` uses the full GGN up to this many weights, K-FAC above
AUTO_FULL_MAX = 3000
#: the largest number of weights a dense ``P x P`` matrix is formed for (``hessian="full"``,
#: :attr:`LaplacePosterior.posterior_covariance`, the exact top eigenpairs of ``"low-rank"``)
DENSE_MAX = 8192
#: elements of one chunk of per-example Jacobians (rows x outputs x weights): 32 Mi values
_JAC_ELEMENTS = 1 << 25
#: the tuning of the marginal likelihood stops when no log prior precision (or log noise)
#: moved by more than this over 10 Adam steps
MARGLIK_TOL = 1e-4
#: power iterations of the randomised eigensolver of ``"low-rank"`` above :data:`DENSE_MAX`
_POWER_ITERS = 3

Subset = Union[str, type, nn.Module, Callable, list, tuple]


# ============================================================================ helpers
class _Layout:
    """The flat layout of the Laplace subset: parameter names, shapes, offsets; ``flatten``
    and ``unflatten`` (values may carry leading sample dims)."""

    def __init__(self, names: List[str], shapes: List[torch.Size]):
        self.names = list(names)
        self.shapes = [torch.Size(s) for s in shapes]
        self.sizes = [int(math.prod(s)) for s in self.shapes]
        self.offsets = [0]
        for s in self.sizes:
            self.offsets.append(self.offsets[-1] + s)
        self.P = self.offsets[-1]

    def slice(self, name: str) -> slice:
        i = self.names.index(name)
        return slice(self.offsets[i], self.offsets[i + 1])

    def flatten(self, params: Dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflatten(self, vec: torch.Tensor) -> Dict[str, torch.Tensor]:
        lead = tuple(vec.shape[:-1])
        parts = vec.split(self.sizes, -1)
        return {n: p.reshape(lead + tuple(s)) for n, p, s in zip(self.names, parts, self.shapes)}


def _noise_tunable(lik) -> bool:
    """Whether the likelihood is a Gaussian with a learned noise scale (then :math:`H = H_1/\\sigma^2`)."""
    return isinstance(lik, _lik.Gaussian) and lik.learned


def _lambda_sqrt(lik, out: torch.Tensor, y: torch.Tensor, lats: Dict[str, torch.Tensor]) -> torch.Tensor:
    r"""A factor :math:`L_n` with :math:`L_nL_n^\top = \Lambda_n`, the likelihood's curvature
    in output space, ``(n, k, k)``: closed forms for Gaussian, Categorical and Bernoulli;
    otherwise the Hessian of :math:`-\log p(y_n\mid f)` by ``torch.func`` projected onto the
    positive semi-definite cone (negative eigenvalues set to 0)."""
    n, k = out.shape
    eye = torch.eye(k, dtype=out.dtype, device=out.device)
    if isinstance(lik, _lik.Gaussian):
        scale = 1.0 if lik.learned else float(lik.scale)
        return (eye / scale).expand(n, k, k)
    if isinstance(lik, _lik.Categorical):
        p = torch.softmax(out, -1)
        sp = p.sqrt()
        return torch.diag_embed(sp) - p.unsqueeze(-1) * sp.unsqueeze(-2)  # (diag(p) - pp^T) = L L^T
    if isinstance(lik, _lik.Bernoulli) and k == 1:
        p = torch.sigmoid(out)
        return (p * (1 - p)).sqrt().unsqueeze(-1)

    def nll(o, yy):
        return -lik.log_prob(o.unsqueeze(0), yy.unsqueeze(0), lats)[0]

    hess = vmap(torch.func.hessian(nll))(out.detach(), y)
    hess = 0.5 * (hess + hess.transpose(-1, -2))
    lam, Q = torch.linalg.eigh(hess)
    return Q * lam.clamp_min(0).sqrt().unsqueeze(-2)


def _chunks(data: Data, model: BayesianNetwork, rows: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """One pass over the training data in chunks of at most ``rows`` rows (a DataLoader:
    its batches, each split to ``rows``)."""
    if data.loader is not None:
        for batch in data.loader:
            xb, yb = data._unpack(batch)
            xb, yb = model.check_data(xb.to(data.device), yb.to(data.device))
            for i in range(0, xb.shape[0], rows):
                yield xb[i : i + rows], yb[i : i + rows]
        return
    for i in range(0, data.num_data, rows):
        yield data.x[i : i + rows], data.y[i : i + rows]


def _out_width(model: BayesianNetwork, x: torch.Tensor) -> int:
    """The network's number of outputs per row (one probe row)."""
    with torch.no_grad(), eval_mode(model.net):
        return int(math.prod(model.net(x[:1]).shape[1:]))


def _row_chunks(x: torch.Tensor, rows: int) -> Iterator[torch.Tensor]:
    for i in range(0, x.shape[0], rows):
        yield x[i : i + rows]


def _unconstrained(model: BayesianNetwork, short: str, value: torch.Tensor) -> torch.Tensor:
    """The unconstrained value of the likelihood latent ``short`` (e.g. log sigma)."""
    site = model.latent_sites()[latent_site_names(model)[short]]
    return biject_to(site.support).inv(value)


class _Jacobians:
    r"""Per-example Jacobians :math:`\partial f(x_n)/\partial\theta` of the subset, ``(n, k, P)``,
    and the outputs, in one ``vmap(jacrev)`` pass per chunk of rows."""

    def __init__(self, model: BayesianNetwork, layout: _Layout):
        self.model, self.layout = model, layout
        net = model.net

        def f(theta, x1):
            out = functional_call(net, layout.unflatten(theta), (x1.unsqueeze(0),), strict=False).reshape(-1)
            return out, out

        self._jac = vmap(jacrev(f, has_aux=True), in_dims=(None, 0))

    def theta(self) -> torch.Tensor:
        params = dict(self.model.net.named_parameters())
        return self.layout.flatten({n: params[n].detach() for n in self.layout.names})

    def rows(self, k: int) -> int:
        return max(1, _JAC_ELEMENTS // max(1, k * self.layout.P))

    def __call__(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with eval_mode(self.model.net):
            J, out = self._jac(self.theta(), x)
        return J.detach(), out.detach()


# ============================================================================ curvature
class _Curvature:
    r"""A structured likelihood curvature :math:`sH` (``s = 1/\sigma^2`` for a tuned noise,
    else 1) plus a diagonal prior precision :math:`\delta` (per weight): the posterior
    precision, its log-determinant, draws from the Gaussian and :math:`J\Sigma J^\top`."""

    kind = ""

    def logdet(self, delta: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, num: int, delta: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def jsj(self, J: torch.Tensor, delta: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dense(self) -> torch.Tensor:
        """:math:`H` as a dense ``(P, P)`` matrix (unit noise scale)."""
        raise NotImplementedError

    def state(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.__dict__.items() if isinstance(v, torch.Tensor)}

    def to(self, device) -> "_Curvature":
        for k, v in list(self.__dict__.items()):
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.to(device))
        return self


class _Diag(_Curvature):
    kind = "diag"

    def __init__(self, h: torch.Tensor):
        self.h = h

    def _prec(self, delta, s):
        return s * self.h + delta

    def logdet(self, delta, s):
        return self._prec(delta, s).log().sum()

    def sample(self, num, delta, s):
        prec = self._prec(delta, s)
        return torch.randn((num,) + prec.shape, dtype=prec.dtype, device=prec.device) / prec.sqrt()

    def jsj(self, J, delta, s):
        W = J * self._prec(delta, s).rsqrt()  # J diag(prec)^-1/2: one batched matmul, not a 3-operand einsum
        return W @ W.mT

    def dense(self):
        return torch.diag(self.h)


class _Full(_Curvature):
    kind = "full"

    def __init__(self, H: torch.Tensor):
        self.H = H
        self._eig: Optional[torch.Tensor] = None

    def _chol(self, delta, s):
        return torch.linalg.cholesky(s * self.H + torch.diag(delta))

    def logdet(self, delta, s):
        if delta.numel() and bool((delta.detach() == delta.detach()[0]).all()):
            # one prior precision: log det(sH + d I) = sum log(s lambda_i + d), eigenvalues found once
            if self._eig is None or self._eig.device != self.H.device:
                self._eig = torch.linalg.eigvalsh(self.H).clamp_min(0)
            return (s * self._eig + delta[0]).log().sum()
        return 2.0 * self._chol(delta, s).diagonal().log().sum()

    def state(self):
        return {"H": self.H.detach().cpu()}

    def sample(self, num, delta, s):
        L = self._chol(delta, s)
        eps = torch.randn((L.shape[0], num), dtype=L.dtype, device=L.device)
        return torch.linalg.solve_triangular(L.mT, eps, upper=True).T  # cov L^-T L^-1 = (L L^T)^-1

    def jsj(self, J, delta, s):
        n, k, P = J.shape
        L = self._chol(delta, s)
        W = torch.linalg.solve_triangular(L, J.reshape(n * k, P).T, upper=False)  # (P, nk)
        W = W.T.reshape(n, k, P)
        return W @ W.mT

    def dense(self):
        return self.H


class _LowRank(_Curvature):
    r""":math:`H\approx U\operatorname{diag}(\lambda)U^\top + \operatorname{diag}(d)`; with
    :math:`D = s\,d + \delta` and :math:`V = D^{-1/2}U\operatorname{diag}(s\lambda)^{1/2}`
    the precision is :math:`D^{1/2}(I+VV^\top)D^{1/2}`."""

    kind = "low-rank"

    def __init__(self, U: torch.Tensor, lam: torch.Tensor, d: torch.Tensor):
        self.U, self.lam, self.d = U, lam, d

    def _parts(self, delta, s):
        D = s * self.d + delta
        V = self.U * (s * self.lam).sqrt() / D.sqrt().unsqueeze(-1)
        return D, V

    def logdet(self, delta, s):
        D, V = self._parts(delta, s)
        M = torch.eye(V.shape[1], dtype=V.dtype, device=V.device) + V.T @ V
        return D.log().sum() + torch.linalg.slogdet(M)[1]

    def sample(self, num, delta, s):
        D, V = self._parts(delta, s)
        m, R = torch.linalg.eigh(V.T @ V)  # V = Q diag(sqrt m) R^T
        keep = m > 1e-12 * m.max().clamp_min(1e-30)
        m, R = m[keep], R[:, keep]
        Q = V @ R / m.sqrt()
        eps = torch.randn((num, D.shape[0]), dtype=D.dtype, device=D.device)
        # B = I + Q diag(1/sqrt(1+m) - 1) Q^T satisfies B^2 = (I + V V^T)^-1
        eps = eps + ((eps @ Q) * ((1 + m).rsqrt() - 1)) @ Q.T
        return eps / D.sqrt()

    def jsj(self, J, delta, s):
        D, V = self._parts(delta, s)
        JD = J / D.sqrt()  # J D^-1/2
        JV = JD @ V  # (n, k, r)
        M = torch.eye(V.shape[1], dtype=V.dtype, device=V.device) + V.T @ V
        return JD @ JD.mT - JV @ torch.linalg.solve(M, JV.mT)

    def dense(self):
        return (self.U * self.lam) @ self.U.T + torch.diag(self.d)


class _Kron(_Curvature):
    r"""K-FAC blocks :math:`G_l\otimes A_l` (stored by their eigendecompositions) for the
    ``nn.Linear`` layers of the subset, a diagonal for the other weights. ``perm[l]`` maps a
    block's weights in the order of :math:`\mathrm{vec}([W\,|\,b])` (row-major) to flat
    positions of the subset.

    A layer's weight and bias are one block (:math:`A_l` is built from the inputs with a
    column of ones), so the weight-bias cross terms of the GGN are kept. laplace-torch 0.3
    factors the bias as a separate block and drops them: on a bias-free network the two agree
    to float precision, with biases the evidence differs by exactly those cross terms
    (``benchmarks/bench_laplace.py``, ``tests/inference/test_laplace_reference.py``)."""

    kind = "kron"

    def __init__(self, blocks: List[Dict[str, torch.Tensor]], diag_index: torch.Tensor, diag_h: torch.Tensor):
        self.blocks = blocks  # each: perm (out*(in+b),), qa, la, qg, lg
        self.diag_index, self.diag_h = diag_index, diag_h

    def _block_prec(self, b, delta, s):
        d = delta[b["perm"][0]]  # one prior precision per block
        return s * b["lg"].unsqueeze(-1) * b["la"].unsqueeze(0) + d

    def logdet(self, delta, s):
        total = (s * self.diag_h + delta[self.diag_index]).log().sum()
        for b in self.blocks:
            total = total + self._block_prec(b, delta, s).log().sum()
        return total

    def sample(self, num, delta, s):
        out = torch.empty((num, delta.shape[0]), dtype=delta.dtype, device=delta.device)
        if self.diag_index.numel():
            prec = s * self.diag_h + delta[self.diag_index]
            out[:, self.diag_index] = torch.randn((num,) + prec.shape, dtype=prec.dtype, device=prec.device) / prec.sqrt()
        for b in self.blocks:
            prec = self._block_prec(b, delta, s)
            eps = torch.randn((num,) + prec.shape, dtype=prec.dtype, device=prec.device) / prec.sqrt()
            w = b["qg"] @ eps @ b["qa"].T  # (Q_G kron Q_A) eps
            out[:, b["perm"]] = w.reshape(num, -1)
        return out

    def jsj(self, J, delta, s):
        n, k, _ = J.shape
        Jd = J[..., self.diag_index] * (s * self.diag_h + delta[self.diag_index]).rsqrt()
        total = Jd @ Jd.mT
        for b in self.blocks:
            prec = self._block_prec(b, delta, s)
            Jb = J[..., b["perm"]].reshape(n, k, *prec.shape)
            W = ((b["qg"].T @ Jb @ b["qa"]) * prec.rsqrt()).reshape(n, k, -1)  # eigenbasis, whitened
            total = total + W @ W.mT
        return total

    def dense(self):
        P = int(sum(b["perm"].numel() for b in self.blocks) + self.diag_index.numel())
        ref = self.diag_h if not self.blocks else self.blocks[0]["la"]
        H = torch.zeros((P, P), dtype=ref.dtype, device=ref.device)
        H[self.diag_index, self.diag_index] = self.diag_h
        for b in self.blocks:
            A = (b["qa"] * b["la"]) @ b["qa"].T
            G = (b["qg"] * b["lg"]) @ b["qg"].T
            idx = b["perm"]
            H[idx.unsqueeze(-1), idx.unsqueeze(0)] = torch.kron(G, A)
        return H

    def state(self):
        return {
            "blocks": [{k: v.detach().cpu() for k, v in b.items()} for b in self.blocks],
            "diag_index": self.diag_index.cpu(), "diag_h": self.diag_h.detach().cpu(),
        }

    def to(self, device):
        self.blocks = [{k: v.to(device) for k, v in b.items()} for b in self.blocks]
        self.diag_index, self.diag_h = self.diag_index.to(device), self.diag_h.to(device)
        return self


def _curvature_from_state(kind: str, st: Dict[str, Any], device) -> _Curvature:
    if kind == "diag":
        return _Diag(st["h"].to(device))
    if kind == "full":
        return _Full(st["H"].to(device))
    if kind == "low-rank":
        return _LowRank(st["U"].to(device), st["lam"].to(device), st["d"].to(device))
    if kind == "kron":
        return _Kron([{k: v.to(device) for k, v in b.items()} for b in st["blocks"]],
                     st["diag_index"].to(device), st["diag_h"].to(device))
    raise ValueError(f"unknown curvature structure {kind!r} in the saved state; expected one of {HESSIANS}")


