"""Linear classification on frozen features (Table 2; A.2): ssl-transfer's logistic-regression sweep, in torch.

What linusericsson/ssl-transfer `linear.py` does (LinearTester / LogisticRegression), and what is kept here:
- wd grid `torch.logspace(-6, 5, 45)`, C = 1 / wd (the paper's text says "45 values between 1e-5 and 1e5"; the code
  is cited). Kept: `wd_min_exp`, `wd_max_exp`, `n_wd`.
- sklearn `LogisticRegression(solver='lbfgs', multi_class='multinomial', warm_start=True)`, other arguments default
  (max_iter 100, tol 1e-4, ConvergenceWarning silenced); one estimator warm-started through the grid from weak to
  strong (ascending wd), then refit on train+val at the chosen C and scored on test. Here: each fit runs to
  max |grad| <= tol (max_iter 1000 is a safety cap, not a regulariser), warm-started from strong to weak wd.
- Features are not standardised (only the ImageNet image normalisation before the backbone): `standardize=False`.
- Selection: the first wd, in ascending order, with the best validation score (`if score > best`), measured with the
  test metric (mean per-class accuracy for Pets, 11-point mAP for VOC07).
- VOC07: the same estimator refit per class on 0/1 labels ('difficult' -> 0), ranked by decision_function. With
  multi_class='multinomial', sklearn fits a binary problem as a 2-class softmax with both rows penalised, i.e. a
  sigmoid classifier with half the weight decay (wd / 2): `binary_as_softmax=True` reproduces that.

Objective, sklearn's divided by n (same minimiser; the scale on which sklearn >= 1.2 reads `tol`):
    J(W, b) = 1/n sum_i CE(softmax(x_i W + b), y_i) + wd / (2n) ||W||^2,  W: D x C, b: C (unpenalised);
    multilabel: the C classes' sigmoid BCEs summed, penalty s * wd / (2n) ||W||^2, s = 1/2 if binary_as_softmax.
The C binary problems are independent, so one L-BFGS run on their sum has the same minimiser as C separate runs.
Features are centred inside the solver: x W + b = (x - mu) W + (b + mu W) is an exact reparametrisation (b is not
penalised) that decouples b from W and cuts L-BFGS iterations. The default solver ("batched") also rotates them
onto the eigenvectors of x'x (orthogonal, so ||W|| and every minimiser are unchanged) where Boehning's bound on the
Hessian is diagonal: its inverse preconditions L-BFGS (2-3x fewer iterations), and blocks of wds share one GEMM.
float64 by default: in float32 the loss cannot resolve the line search below max |grad| ~1e-4 (fits stall above
tol) and its GEMMs here are only ~1.3x faster.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from transfer.metrics import METRICS, MULTILABEL_METRICS

Split = tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]
DTYPES = {"float32": torch.float32, "float64": torch.float64}
SOLVERS = ("batched", "path")
BLOCK_COLUMNS = 90  # solver "batched", block 0: wds per block x classes


@dataclass
class LinearProtocol:
    wd_min_exp: float = -6.0  # ssl-transfer: torch.logspace(-6, 5, 45), C = 1 / wd
    wd_max_exp: float = 5.0
    n_wd: int = 45
    # L-BFGS iterations per fit, a safety cap (ssl-transfer: sklearn's default 100, which truncates weak wds)
    max_iter: int = 1000
    # stop when max |grad J| <= tol, J the mean objective in the module doc (sklearn >= 1.2's tol, same scale)
    tol: float = 1e-5
    standardize: bool = False  # ssl-transfer feeds raw pooled features to sklearn
    metric: str = "top1"  # a key of transfer.metrics.METRICS; selects wd on val and scores test
    multilabel: bool = False  # VOC07: one binary logistic classifier per class, metric map11
    binary_as_softmax: bool = True  # multilabel: sklearn's 2-class multinomial = sigmoid at wd / 2
    # float32 stalls near max |grad| 1e-4 (its loss cannot resolve the line search) for ~1.3x speed
    dtype: str = "float64"
    threads: int = 1  # torch threads for the fit; 0: all cores this process may use (torch_threads)
    # "batched": the path in blocks of `block` wds, each block one preconditioned L-BFGS per wd in one tensor
    # program, warm-started from the previous block (benchmarks/bench_linear.py times it against sklearn);
    # "path": torch's LBFGS, one wd after another, each warm-started
    solver: str = "batched"
    # wds per block; 0: enough for ~90 GEMM columns (block x classes: 9 at 10 classes, 1 at 100), where one
    # wide GEMM beats several narrow ones and wider blocks only lose the warm start
    block: int = 0

    def __post_init__(self) -> None:
        METRICS[self.metric]  # ValueError naming the closest valid metric
        if self.multilabel != (self.metric in MULTILABEL_METRICS):
            raise ValueError(
                f"metric '{self.metric}' does not fit multilabel={self.multilabel}: multilabel problems are scored "
                f"with {', '.join(MULTILABEL_METRICS)}, single-label problems with the others"
            )
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver '{self.solver}'; valid: {', '.join(SOLVERS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype '{self.dtype}'; valid: {', '.join(DTYPES)}")
        if self.n_wd < 1 or self.max_iter < 1 or self.tol <= 0 or self.block < 0:
            raise ValueError(
                f"need n_wd >= 1, max_iter >= 1, tol > 0, block >= 0 "
                f"(got {self.n_wd}, {self.max_iter}, {self.tol}, {self.block})"
            )


def wd_grid(protocol: LinearProtocol) -> np.ndarray:
    """(n_wd,) weight decays, ascending (float64; ssl-transfer's float32 logspace differs by ~1e-7 relative)."""
    return np.logspace(protocol.wd_min_exp, protocol.wd_max_exp, protocol.n_wd)


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Sets torch's intra-op threads for the block (0: the cores this process may use) and restores them.
    torch's default can exceed the cores a container or SLURM allocation grants, and OpenMP threads that share a
    core with another busy process spin: on the 2-core dev machine, 2 threads ran a 2,000 x 512 sweep in 42 s
    beside one busy process versus 3 s with 1 thread (2.5x faster than 1 thread when the machine is idle).
    """
    n = n or len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- inputs


def _features(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """(N, D) float64 features, or a ValueError saying what is wrong with them."""
    t = torch.as_tensor(x).detach().cpu()
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(
            f"{name} features must be a non-empty (N, D) array, got shape {tuple(t.shape)}"
        )
    t = t.to(torch.float64)
    bad = ~torch.isfinite(t).all(1)
    if bad.any():
        raise ValueError(
            f"{name} features contain NaN or inf in {int(bad.sum())} rows, e.g. row {int(bad.nonzero()[0])}"
        )
    return t


def _labels(y: np.ndarray | torch.Tensor, n: int, name: str, multilabel: bool) -> np.ndarray:
    """(N,) int64 class ids, or (N, C) 0/1 int64 for multilabel; shapes checked against the features."""
    y = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    want = "(N, C) 0/1 targets" if multilabel else "(N,) integer class ids"
    if y.ndim != (2 if multilabel else 1) or len(y) != n:
        raise ValueError(f"{name} labels must be {want} for {n} feature rows, got shape {y.shape}")
    if multilabel and not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name} multilabel targets must be 0/1")
    if not multilabel and not (
        np.issubdtype(y.dtype, np.integer) or np.array_equal(y, np.round(y))
    ):
        raise ValueError(f"{name} labels must be integer class ids, got dtype {y.dtype}")
    return y.astype(np.int64)


def _check_split(split: Split, name: str, multilabel: bool) -> tuple[torch.Tensor, np.ndarray]:
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        raise ValueError(f"{name} must be a (features, labels) pair")
    x = _features(split[0], name)
    return x, _labels(split[1], len(x), name, multilabel)


def _check_splits(train: Split, val: Split, test: Split, multilabel: bool) -> dict:
    """{'train'|'val'|'test': (x (N,D) float64, y)}, with matching D (and C) across splits."""
    splits = {
        k: _check_split(s, k, multilabel)
        for k, s in (("train", train), ("val", val), ("test", test))
    }
    dims = {k: x.shape[1] for k, (x, _) in splits.items()}
    if len(set(dims.values())) > 1:
        raise ValueError(f"feature dimensions differ across splits: {dims}")
    if multilabel:
        classes = {k: y.shape[1] for k, (_, y) in splits.items()}
        if len(set(classes.values())) > 1:
            raise ValueError(f"number of classes differs across splits: {classes}")
    else:
        unseen = np.setdiff1d(splits["val"][1], splits["train"][1])
        if len(unseen):
            raise ValueError(f"val labels {unseen[:10].tolist()} never occur in train")
    return splits


# ---------------------------------------------------------------- the solver


@dataclass
class _Problem:
    """One logistic-regression fit: affine-mapped features and targets in the solver's dtype."""

    x: torch.Tensor  # (N, D) (x_raw - mu) / sd
    xt: torch.Tensor  # (D, N) contiguous copy of x.T for the gradient GEMM
    target: torch.Tensor  # (N,) class index, or (N, C) 0/1 float (multilabel)
    mu: torch.Tensor  # (D,)
    sd: torch.Tensor  # (D,) ones unless standardize
    classes: np.ndarray  # (C,) label of each output column (multiclass); arange(C) for multilabel
    penalty: float  # s in s * wd / (2n) ||W||^2

    @property
    def n(self) -> int:
        return self.x.shape[0]


def _problem(x_raw: torch.Tensor, y: np.ndarray, protocol: LinearProtocol) -> _Problem:
    """x_raw (N, D) float64, y (N,) or (N, C)."""
    dtype = DTYPES[protocol.dtype]
    mu = x_raw.mean(0)
    sd = x_raw.std(0, correction=0) if protocol.standardize else torch.ones_like(mu)
    sd = torch.where(
        sd > 0, sd, torch.ones_like(sd)
    )  # constant features: as sklearn's StandardScaler
    x = ((x_raw - mu) / sd).to(dtype)
    if protocol.multilabel:
        one_sided = np.flatnonzero(y.min(0) == y.max(0))
        if len(one_sided):
            raise ValueError(
                f"classes {one_sided.tolist()} are all positive or all negative in the fitting set"
            )
        classes, target = np.arange(y.shape[1]), torch.as_tensor(y, dtype=dtype)
        penalty = 0.5 if protocol.binary_as_softmax else 1.0
    else:
        classes, index = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"need at least 2 classes to fit, got {classes.tolist()}")
        target, penalty = torch.as_tensor(index, dtype=torch.int64), 1.0
    return _Problem(x, x.T.contiguous(), target, mu.to(dtype), sd.to(dtype), classes, penalty)


def _loss_grad(p: _Problem, W: torch.Tensor, b: torch.Tensor, wd: float) -> tuple:
    """J(W, b) and its gradient; W (D, C), b (C,)."""
    z = p.x @ W + b  # (N, C) logits
    if p.target.ndim == 1:  # softmax cross-entropy
        lse = torch.logsumexp(z, 1)  # (N,)
        loss = (lse - z.gather(1, p.target[:, None]).squeeze(1)).mean()
        g = torch.softmax(z, 1)
        g[torch.arange(p.n), p.target] -= 1.0
    else:  # per-class sigmoid BCE, summed over classes
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(z, p.target, reduction="sum") / p.n
        )
        g = torch.sigmoid(z) - p.target
    g /= p.n  # (N, C) dJ/dz
    lam = p.penalty * wd / p.n
    loss = loss + 0.5 * lam * (W * W).sum()
    return loss, p.xt @ g + lam * W, g.sum(0)


def _lbfgs(
    p: _Problem, wd: float, W: torch.Tensor, b: torch.Tensor, protocol: LinearProtocol
) -> tuple:
    """Minimises J from (W, b); returns (W, b, iterations, max |grad J| at the end)."""
    W, b = W.clone(), b.clone()
    opt = torch.optim.LBFGS(
        [W, b],
        lr=1.0,
        max_iter=protocol.max_iter,
        max_eval=protocol.max_iter * 2,
        tolerance_grad=protocol.tol,
        tolerance_change=1e-9 if W.dtype == torch.float32 else 1e-14,
        history_size=10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        loss, W.grad, b.grad = _loss_grad(p, W, b, wd)
        return loss

    opt.step(closure)
    _, gW, gb = _loss_grad(p, W, b, wd)
    grad_max = max(gW.abs().max().item(), gb.abs().max().item())
    return W, b, int(opt.state[W]["n_iter"]) if opt.state[W] else 0, grad_max


def _to_raw(p: _Problem, W: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights acting on raw features: x_raw W_raw + b_raw = ((x_raw - mu) / sd) W + b."""
    W_raw = W / p.sd[:, None]
    return W_raw, b - p.mu @ W_raw


def _from_raw(
    p: _Problem, W_raw: torch.Tensor, b_raw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return W_raw * p.sd[:, None], b_raw + p.mu @ W_raw


def fit_logreg(
    x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, wd: float, protocol: LinearProtocol
) -> dict:
    """One fit at weight decay wd (C = 1 / wd) from zero: {'coef' (C, D), 'intercept' (C,), 'classes', 'n_iter',
    'grad_max'} on raw features, float64 numpy, in sklearn's layout (coef_ rows = classes)."""
    x = _features(x, "fit")
    with torch_threads(protocol.threads):
        p = _problem(x, _labels(y, len(x), "fit", protocol.multilabel), protocol)
        zeros = torch.zeros(x.shape[1], len(p.classes), dtype=p.x.dtype), torch.zeros(
            len(p.classes), dtype=p.x.dtype
        )
        W, b, n_iter, grad_max = _lbfgs(p, wd, *zeros, protocol)
        W_raw, b_raw = _to_raw(p, W, b)
    return {
        "coef": W_raw.T.double().numpy(),
        "intercept": b_raw.double().numpy(),
        "classes": p.classes,
        "n_iter": n_iter,
        "grad_max": grad_max,
    }


# ---------------------------------------------------------------- the protocol


def _score(
    p: _Problem, W_raw: torch.Tensor, b_raw: torch.Tensor, split: tuple, metric: str
) -> float:
    """The protocol's metric of the classifier on a split (x_raw float64 (N, D), y)."""
    scores = split[0].to(W_raw.dtype) @ W_raw + b_raw  # (N, C)
    if p.target.ndim == 1:
        return METRICS[metric](p.classes[scores.argmax(1).numpy()], split[1])
    return METRICS[metric](scores.double().numpy(), split[1])


def _sweep(p: _Problem, wds: np.ndarray, val: tuple, protocol: LinearProtocol) -> dict:
    """Fits every wd from strongest to weakest, each warm-started from the previous; scores each on val."""
    W = torch.zeros(p.x.shape[1], len(p.classes), dtype=p.x.dtype)
    b = torch.zeros(len(p.classes), dtype=p.x.dtype)
    out = {
        "val_scores": [0.0] * len(wds),
        "n_iter": [0] * len(wds),
        "grad_max": [0.0] * len(wds),
        "raw": {},
    }
    for i in reversed(range(len(wds))):
        W, b, out["n_iter"][i], out["grad_max"][i] = _lbfgs(p, float(wds[i]), W, b, protocol)
        out["raw"][i] = _to_raw(p, W, b)
        out["val_scores"][i] = _score(p, *out["raw"][i], val, protocol.metric)
    return out


def _batched_loss_grad(p: _Problem, theta: torch.Tensor, lam: torch.Tensor) -> tuple:
    """J_j and its gradient for P stacked problems: theta (P, (D + 1) C) = [vec W_j, b_j], lam (P,)."""
    P, (n, D), C = theta.shape[0], p.x.shape, len(p.classes)
    W = theta[:, : D * C].view(P, D, C)
    b = theta[:, D * C :]  # (P, C)
    z = (p.x @ W.permute(1, 0, 2).reshape(D, P * C)).view(n, P, C) + b  # (N, P, C)
    if p.target.ndim == 1:
        # softmax and logsumexp from one exp (torch's own kernels are slow on a last dim of C ~ 10)
        zmax = z.amax(2, keepdim=True)
        g = (z - zmax).exp_()
        total = g.sum(2, keepdim=True)
        lse = (total.log() + zmax).squeeze(2)  # (N, P)
        loss = (lse - z[torch.arange(n), :, p.target]).mean(0)  # (P,)
        g /= total
        g[torch.arange(n), :, p.target] -= 1.0
    else:
        t = p.target[:, None, :].expand_as(z)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z, t, reduction="none")
        loss = bce.sum((0, 2)) / n
        g = torch.sigmoid(z) - t
    g /= n  # (N, P, C)
    loss = loss + 0.5 * lam * (W * W).sum((1, 2))
    gW = (p.xt @ g.reshape(n, P * C)).view(D, P, C).permute(1, 0, 2) + lam[:, None, None] * W
    return loss, torch.cat([gW.reshape(P, D * C), g.sum(0)], 1)


def _batched_lbfgs(
    p: _Problem,
    wds: np.ndarray,
    protocol: LinearProtocol,
    start: torch.Tensor,
    history: int = 10,
) -> tuple[torch.Tensor, list[int], list[float]]:
    """Minimises J for every wd at once from `start` (P, (D + 1) C): one L-BFGS per problem (two-loop recursion,
    backtracking Armijo line search from a unit step), batched over the problems still running. Its initial
    inverse Hessian is the diagonal preconditioner (times the usual s'y / y'My scaling), so its first step is the
    Newton step of Boehning's bound. A problem stops when max |grad J| <= tol (torch LBFGS's tolerance_grad) or
    after max_iter iterations.
    Returns (theta (P, (D + 1) C) = [vec W, b] per wd, iterations per problem, final max |grad J| per problem).
    """
    P, D, C = len(wds), p.x.shape[1], len(p.classes)
    lam = torch.as_tensor(np.asarray(wds, dtype=np.float64), dtype=p.x.dtype) * p.penalty / p.n
    minv = _preconditioner(p, lam)
    out = start.to(p.x.dtype).clone()
    n_iter, grad_max = [0] * P, [0.0] * P
    rows = torch.arange(P)  # problem index of each running row
    theta = out.clone()
    f, g = _batched_loss_grad(p, theta, lam)
    S: list[torch.Tensor] = (
        []
    )  # s_i (R, n), y_i (R, n), rho_i (R,) of the running rows, newest last
    Y: list[torch.Tensor] = []
    RHO: list[torch.Tensor] = []
    it = 0
    while True:
        gmax = g.abs().amax(1)
        stop = (gmax <= protocol.tol) | (it >= protocol.max_iter)
        if bool(stop.any()):
            for j, gm in zip(rows[stop].tolist(), gmax[stop].tolist()):
                n_iter[j], grad_max[j] = it, gm
            out[rows[stop]] = theta[stop]
            keep = ~stop
            if not bool(keep.any()):
                return out, n_iter, grad_max
            rows, theta, f, g, lam, minv = (
                rows[keep],
                theta[keep],
                f[keep],
                g[keep],
                lam[keep],
                minv[keep],
            )
            S, Y, RHO = [s_[keep] for s_ in S], [y_[keep] for y_ in Y], [r_[keep] for r_ in RHO]
        # direction d = -H g by the two-loop recursion
        q = g.clone()
        alphas = []
        for s_, y_, rho in zip(reversed(S), reversed(Y), reversed(RHO)):
            a_ = rho * (s_ * q).sum(1)
            q -= a_[:, None] * y_
            alphas.append(a_)
        if S:
            sy, yy = (S[-1] * Y[-1]).sum(1), (Y[-1] * minv * Y[-1]).sum(1)
            gamma = torch.where(RHO[-1] > 0, sy / yy.clamp_min(1e-300), torch.ones_like(sy))
            q *= gamma[:, None] * minv
        else:  # first step: the Boehning bound's Newton step, a guaranteed descent
            q *= minv
        for s_, y_, rho, a_ in zip(S, Y, RHO, reversed(alphas)):
            q += (a_ - rho * (y_ * q).sum(1))[:, None] * s_
        d = -q
        gd = (g * d).sum(1)
        if bool((gd >= 0).any()):  # not a descent direction (numerical): restart those rows on -g
            bad = gd >= 0
            d[bad] = -g[bad] * minv[bad]
            gd = (g * d).sum(1)
            for r_ in RHO:
                r_[bad] = 0.0
        # backtracking Armijo, each row on its own step; only rows still searching are evaluated
        t = torch.ones_like(f)
        f_new, g_new = f.clone(), g.clone()
        pending = torch.arange(len(rows))
        for _ in range(40):
            th = theta[pending] + t[pending, None] * d[pending]
            fp, gp = _batched_loss_grad(p, th, lam[pending])
            f_new[pending], g_new[pending] = fp, gp
            ok = fp <= f[pending] + 1e-4 * t[pending] * gd[pending]
            pending = pending[~ok]
            if len(pending) == 0:
                break
            t[pending] *= 0.5
        s_ = t[:, None] * d
        y_ = g_new - g
        sy = (s_ * y_).sum(1)
        rho = torch.where(
            sy > 1e-12 * s_.norm(dim=1) * y_.norm(dim=1), 1.0 / sy.clamp_min(1e-300), 0.0
        )
        S, Y, RHO = [*S, s_][-history:], [*Y, y_][-history:], [*RHO, rho][-history:]
        theta, f, g = theta + s_, f_new, g_new
        it += 1


def _preconditioner(p: _Problem, lam: torch.Tensor) -> torch.Tensor:
    """(P, (D + 1) C) inverse of the diagonal of Boehning's bound on the Hessian, c x'x / n + lam I (b: c).
    In the eigenbasis of x'x (`_rotated`) the bound's data term is diagonal, so this is its exact inverse on W:
    it equalises the curvature across feature directions whose scales differ by orders of magnitude.
    """
    c = (
        0.5 if p.target.ndim == 1 else 0.25
    )  # max eigenvalue of diag(p) - pp' (softmax), p(1 - p) (sigmoid)
    D, C = p.x.shape[1], len(p.classes)
    second = (p.x * p.x).mean(0)  # (D,)
    hw = c * second[None, :, None] + lam[:, None, None]  # (P, D, 1)
    hw = hw.expand(-1, D, C).reshape(len(lam), D * C)
    hb = torch.full((len(lam), C), c, dtype=p.x.dtype)
    return 1.0 / torch.cat([hw, hb], 1)


def _rotated(p: _Problem) -> tuple[_Problem, torch.Tensor]:
    """The problem on features x V, V (D, D) the eigenvectors of x'x: W = V W' is an orthogonal change of
    variables, so ||W'|| = ||W|| and every fit's minimiser maps back exactly."""
    _, V = torch.linalg.eigh(p.xt @ p.x)
    z = p.x @ V
    return dataclasses.replace(p, x=z, xt=z.T.contiguous()), V


def _batched_sweep(p: _Problem, wds: np.ndarray, val: tuple, protocol: LinearProtocol) -> dict:
    """The path from the strongest wd to the weakest in blocks of `protocol.block` wds: each block is solved
    together (one batched L-BFGS, wide GEMMs) from the previous block's weakest solution (a warm start, as the
    path's); each fit is scored on val."""
    pr, V = _rotated(p)
    D, C = p.x.shape[1], len(p.classes)
    theta = torch.zeros(1, (D + 1) * C, dtype=p.x.dtype)
    out = {
        "val_scores": [0.0] * len(wds),
        "n_iter": [0] * len(wds),
        "grad_max": [0.0] * len(wds),
        "raw": {},
    }
    order, size = list(reversed(range(len(wds)))), protocol.block or max(1, BLOCK_COLUMNS // C)
    for block in (order[i : i + size] for i in range(0, len(order), size)):
        start = theta.expand(len(block), -1)
        thetas, n_iter, grad_max = _batched_lbfgs(pr, wds[block], protocol, start)
        for j, i in enumerate(block):
            W, b = V @ thetas[j, : D * C].view(D, C), thetas[j, D * C :]
            out["raw"][i] = _to_raw(p, W, b)
            out["val_scores"][i] = _score(p, *out["raw"][i], val, protocol.metric)
            out["n_iter"][i], out["grad_max"][i] = n_iter[j], grad_max[j]
        theta = thetas[-1:]
    return out


def _refit(p: _Problem, wd: float, raw: tuple, protocol: LinearProtocol) -> tuple:
    """The fit at wd on p from the raw weights `raw` (the sweep's solution): (W, b, iterations, max |grad J|)."""
    W, b = _from_raw(p, *raw)
    if protocol.solver == "path":
        return _lbfgs(p, wd, W, b, protocol)
    pr, V = _rotated(p)
    D, C = W.shape
    theta, n_iter, grad_max = _batched_lbfgs(
        pr, np.array([wd]), protocol, torch.cat([(V.T @ W).flatten(), b])[None]
    )
    return V @ theta[0, : D * C].view(D, C), theta[0, D * C :], n_iter[0], grad_max[0]


def linear_eval(train: Split, val: Split, test: Split, protocol: LinearProtocol) -> dict:
    """Selects wd on val among the grid (by the protocol's metric), refits on train+val at it, scores test.

    train/val/test: (features (N, D), labels (N,) class ids, or (N, C) 0/1 when multilabel).
    Returns {'test', 'best_wd', 'best_index', 'val_scores' (per wd, ascending), 'wds', 'n_iter' and 'grad_max'
    (max |grad J| at the end; per wd, then the refit's), 'fit_s'}.
    """
    start = time.perf_counter()
    splits = _check_splits(train, val, test, protocol.multilabel)
    wds = wd_grid(protocol)
    with torch_threads(protocol.threads):
        p = _problem(*splits["train"], protocol)
        sweep = (_batched_sweep if protocol.solver == "batched" else _sweep)(
            p, wds, splits["val"], protocol
        )
        best = int(
            np.argmax(sweep["val_scores"])
        )  # first maximum in ascending wd, as ssl-transfer's `>` loop
        x_tv = torch.cat([splits["train"][0], splits["val"][0]])
        p_tv = _problem(x_tv, np.concatenate([splits["train"][1], splits["val"][1]]), protocol)
        W, b, refit_iter, refit_grad = _refit(p_tv, float(wds[best]), sweep["raw"][best], protocol)
        test_score = _score(p_tv, *_to_raw(p_tv, W, b), splits["test"], protocol.metric)
    return {
        "test": float(test_score),
        "best_wd": float(wds[best]),
        "best_index": best,
        "val_scores": [float(s) for s in sweep["val_scores"]],
        "wds": wds.tolist(),
        "n_iter": sweep["n_iter"] + [refit_iter],
        "grad_max": sweep["grad_max"] + [refit_grad],
        "fit_s": time.perf_counter() - start,
    }


# ----------------------------------------------------------------------------- the transfer task


def run_linear(spec: dict, ctx) -> dict:
    """Table 2's protocol on one target: cached frozen features of each split, then the sweep."""
    from pretrain.backbones import load_backbone
    from transfer.data import load_split
    from transfer.features import cached_features, data_id

    backbone = load_backbone(ctx.backbone_path).to(ctx.device)
    tag = data_id(spec["data"], spec["image_size"])
    splits = {}
    for split in ("train", "val", "test"):
        images, labels = load_split(spec["data"], split, ctx.cache_dir / "biasworld", ctx.roots)
        cache = ctx.cache_dir / "features" / ctx.source_key[:16] / f"{tag}-{split}.pt"
        feats = cached_features(cache, backbone, images, spec["image_size"], spec["batch_size"])
        splits[split] = (feats, torch.as_tensor(labels))
        ctx.progress({"stage": f"features {split}", "n": len(images)})
    ctx.progress({"stage": "linear sweep"})
    out = linear_eval(
        splits["train"], splits["val"], splits["test"], LinearProtocol(**spec["protocol"])
    )
    return {"value": float(out["test"]), "metric": spec["protocol"]["metric"], **out}


def _register() -> None:
    from transfer.data import TARGETS
    from transfer.tasks import Task, register

    register(
        Task(
            name="linear",
            protocol=LinearProtocol,
            run=run_linear,
            targets=tuple(n for n, t in TARGETS.items() if t.linear),
            spec_defaults={
                "image_size": 224,  # evaluation resolution (A.2: Resize to 224 x 224)
                "batch_size": 256,  # feature extraction batch: execution only
            },
            description="frozen pooled features, L2 logistic regression swept over 45 strengths (Table 2)",
        )
    )


_register()
