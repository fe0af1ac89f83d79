"""SparseGPT (Frantar & Alistarh 2023): prune and reconstruct one layer from its input Hessian.

Unlike Wanda, SparseGPT updates the weights it keeps: removing weight w_ij is compensated on
the not-yet-pruned columns j' > j of the same row by the optimal brain surgeon update
-(w_ij / [H^-1]_jj) * [H^-1]_j,j', with H = X^T X the layer input's second moment. Columns are
processed left to right in blocks (lazy batch updates); the mask of each block is chosen when
the block starts ("adaptive mask selection"): the smallest w^2 / [H^-1]_jj^2 over the whole
block for unstructured sparsity, the (M - N) smallest of every M consecutive inputs for N:M.
Pure tensor code: weight and Hessian in, pruned and updated weight out.
"""

from __future__ import annotations

import torch

from wanda_export.sparsity.mask import nm_mask, unstructured_mask
from wanda_export.sparsity.pattern import Pattern

# The inverse-Hessian algebra needs float32 at least, whatever the model's dtype.
SPARSEGPT_DTYPE = torch.float32


def inverse_hessian_cholesky(xtx: torch.Tensor, dampening: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, and H's dead inputs fixed.

    The factor's row j holds exactly the [H^-1] entries the sequential OBS update of column j
    needs (with later columns already eliminated), which is why SparseGPT uses it instead of
    H^-1 itself. `xtx` is any positive multiple of X^T X: the dampening is relative, so the
    scale cancels. Inputs that never fire (zero diagonal) get a unit diagonal.
    """
    hessian = xtx.detach().to(SPARSEGPT_DTYPE).clone()
    diagonal = hessian.diagonal()
    diagonal[diagonal == 0] = 1.0
    diagonal.add_(dampening * diagonal.mean())
    try:
        lower = torch.linalg.cholesky(hessian)
        inverse = torch.cholesky_inverse(lower)
        return torch.linalg.cholesky(inverse, upper=True)
    except torch.linalg.LinAlgError as error:
        raise ValueError(
            f"the input Hessian is not positive definite even with dampening {dampening}; "
            "raise the dampening or calibrate on more tokens"
        ) from error


def _saliency(rows: torch.Tensor, inverse_diagonal: torch.Tensor) -> torch.Tensor:
    """OBS saliency w^2 / [H^-1]_jj^2 of inputs j ([inputs, out] layout): the loss increase of
    pruning each weight."""
    return rows.square() / inverse_diagonal.square().unsqueeze(1)


def _block_mask(block: torch.Tensor, inverse_diagonal: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Unstructured mask of one block of inputs: the ceil(sparsity * size) lowest saliencies
    over the whole block (SparseGPT's adaptive mask selection)."""
    return unstructured_mask(_saliency(block, inverse_diagonal), sparsity, "layer")


def _nm_group_mask(group: torch.Tensor, inverse_diagonal: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """N:M mask of M consecutive inputs ([M, out] layout): each output keeps its N most
    salient, with the same tie-breaking as Wanda's N:M masks."""
    saliency = _saliency(group, inverse_diagonal).T.contiguous()  # [out, M]
    return nm_mask(saliency, pattern.n, pattern.m).T


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    xtx: torch.Tensor,
    sparsity: float,
    pattern: Pattern,
    block_size: int,
    dampening: float,
) -> torch.Tensor:
    """Return the pruned and reconstructed copy of an [out, in] weight (dtype kept, zeros +0.0).

    `xtx` [in, in] is the accumulated X^T X of the layer's inputs. Unstructured: every block of
    `block_size` inputs loses ceil(sparsity * its size) weights. N:M: every M consecutive
    inputs of each output keep N (`sparsity` is then implied by the pattern).
    The work runs on the transposed weight, so the input processed at each step is one
    contiguous row and its update of the later inputs one rank-1 BLAS call.
    """
    in_features = weight.shape[1]
    if xtx.shape != (in_features, in_features):
        raise ValueError(f"Hessian shape {tuple(xtx.shape)} does not fit a weight of shape "
                         f"{tuple(weight.shape)}")
    if pattern.structured and block_size % pattern.m:
        raise ValueError(f"block size {block_size} must be a multiple of M={pattern.m}")
    work = weight.detach().to(SPARSEGPT_DTYPE).T.contiguous()  # [in, out]
    work[xtx.diagonal() == 0] = 0.0
    inverse = inverse_hessian_cholesky(xtx.to(work.device), dampening)
    for start in range(0, in_features, block_size):
        end = min(start + block_size, in_features)
        block = work[start:end]  # a view: updated in place
        inverse_block = inverse[start:end, start:end]
        inverse_diagonal = inverse_block.diagonal()
        if pattern.structured:
            mask = torch.zeros_like(block, dtype=torch.bool)
        else:
            mask = _block_mask(block, inverse_diagonal, sparsity)
        errors = torch.empty_like(block)
        for row in range(end - start):
            if pattern.structured and row % pattern.m == 0:
                group = slice(row, row + pattern.m)
                mask[group] = _nm_group_mask(block[group], inverse_diagonal[group], pattern)
            # OBS: error = w / [H^-1]_jj on pruned weights, spread over the later inputs
            error = torch.mul(block[row], mask[row], out=errors[row]).div_(inverse_block[row, row])
            block[row + 1 :].addr_(inverse_block[row, row + 1 :], error, alpha=-1)
            block[row].masked_fill_(mask[row], 0.0)
        work[end:].addmm_(inverse[start:end, end:].T, errors, alpha=-1)
    return work.T.to(weight.dtype).contiguous().add_(0.0)
