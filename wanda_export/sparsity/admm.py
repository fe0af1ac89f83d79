"""Reconstruct the weights a mask keeps from the layer's input Hessian, by ADMM (the weight update
of Boža, "Fast and Effective Weight Update for Pruned Large Language Models", TMLR 2024).

With the mask fixed, the best kept weights solve a convex least-squares problem per output row:
minimise ||(W - W0) X^T||^2 = tr((W - W0) H (W - W0)^T), H = X^T X, subject to W being zero
where the mask prunes. Every row has its own set of kept inputs, so the exact solution is one
linear system per row; ADMM splits the problem into an unconstrained least-squares step that
all rows share (one matrix inverse per layer) and a projection onto the mask:

    X <- (W0 H + rho (Z - U)) (H + rho I)^-1,   Z <- mask(X + U),   U <- U + X - Z

and converges to that exact solution. SparseGPT reaches a similar goal greedily, compensating
each pruned column only on the columns to its right; the ADMM solution is the optimum for the
mask, whichever method chose it (Wanda, RIA, DSnoT, SparseGPT's own).

The inputs are first scaled to unit norm (H's diagonal becomes 1), so `rho` and the dampening
are relative to the typical input and the same constants serve every layer. Dampening (a ridge
of 1% of each input's own ||X_j||^2 on H; SparseGPT adds 1% of the mean) keeps the problem well posed where H is singular and pulls weights
of inputs the calibration never exercised towards their dense values. Pure tensor code: weight,
Hessian and mask in, reconstructed weight out.
"""

from __future__ import annotations

import torch

# The algebra needs float32 at least, whatever the model's dtype.
ADMM_DTYPE = torch.float32
# Penalty of the splitting and ridge on H, both relative to H's unit diagonal after scaling.
ADMM_RHO = 1.0
ADMM_DAMPENING = 0.01


def _unit_scale(xtx: torch.Tensor) -> torch.Tensor:
    """||X_j|| per input (1 for inputs that never fire, whose weights then only see the ridge)."""
    norms = xtx.diagonal().sqrt()
    return torch.where(norms > 0, norms, torch.ones_like(norms))


@torch.no_grad()
def admm_update(weight: torch.Tensor, xtx: torch.Tensor, pruned: torch.Tensor,
                iterations: int) -> torch.Tensor:
    """The [out, in] weight that is zero where `pruned` (True = pruned) and otherwise
    reconstructs the dense `weight`'s outputs on the calibration inputs (`xtx` = X^T X, [in, in])
    after `iterations` ADMM steps; dtype kept, pruned entries exactly +0.0."""
    in_features = weight.shape[1]
    if xtx.shape != (in_features, in_features):
        raise ValueError(f"Hessian shape {tuple(xtx.shape)} does not fit a weight of shape "
                         f"{tuple(weight.shape)}")
    if pruned.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(pruned.shape)} does not fit a weight of shape "
                         f"{tuple(weight.shape)}")
    device = weight.device
    hessian = xtx.detach().to(device, ADMM_DTYPE)
    scale = _unit_scale(hessian)
    hessian = hessian / scale.unsqueeze(0) / scale.unsqueeze(1)
    hessian.diagonal().add_(ADMM_DAMPENING)
    dense = weight.detach().to(ADMM_DTYPE) * scale
    keep = (~pruned.to(device)).to(ADMM_DTYPE)
    target = dense @ hessian
    hessian.diagonal().add_(ADMM_RHO)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
    kept = dense * keep
    dual = torch.zeros_like(dense)
    for _ in range(iterations):
        solution = (target + ADMM_RHO * (kept - dual)) @ inverse
        kept = (solution + dual) * keep
        dual += solution - kept
    return (kept / scale).to(weight.dtype).add_(0.0)
