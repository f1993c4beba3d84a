import torch
import torch.nn.functional as F

from sparseseg.training.losses import deep_supervision_loss, masked_cross_entropy

IGNORE = 3


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 5, 6, 4, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (2, 5, 6, 4), generator=g)
    mask = torch.rand(2, 5, 6, 4, generator=g) < 0.3
    return logits, target, mask


def test_masked_ce_is_mean_over_annotated_voxels():
    logits, target, mask = _case()
    sparse = torch.where(mask, target, torch.full_like(target, IGNORE))
    got = masked_cross_entropy(logits, sparse, IGNORE)
    picked = logits.permute(0, 2, 3, 4, 1)[mask]
    want = F.cross_entropy(picked, target[mask])
    assert torch.allclose(got, want, atol=1e-6)


def test_labels_under_ignore_mask_change_neither_loss_nor_gradient():
    logits, target, mask = _case(1)
    a = torch.where(mask, target, torch.full_like(target, IGNORE))
    loss_a = masked_cross_entropy(logits, a, IGNORE)
    (grad_a,) = torch.autograd.grad(loss_a, logits)
    # Same annotated voxels; unannotated voxels now carry other (valid) labels.
    other = (target + 1) % 3
    b = torch.where(mask, target, other)
    loss_b = masked_cross_entropy(logits, torch.where(mask, b, torch.full_like(b, IGNORE)), IGNORE)
    (grad_b,) = torch.autograd.grad(loss_b, logits)
    assert torch.equal(loss_a, loss_b)
    assert torch.equal(grad_a, grad_b)
    # The gradient is zero exactly where nothing is annotated.
    assert torch.all(grad_a.permute(0, 2, 3, 4, 1)[~mask] == 0)
    # ... and changing an annotated label does change the loss (the test can fail).
    c = a.clone()
    c[mask] = (c[mask] + 1) % 3
    assert not torch.equal(masked_cross_entropy(logits, c, IGNORE), loss_a)


def test_no_annotated_voxel_gives_zero_loss_and_zero_gradient():
    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.randn(2, 3, 4, 4, 4, dtype=dtype, requires_grad=True)
        target = torch.full((2, 4, 4, 4), IGNORE)
        loss = masked_cross_entropy(logits, target, IGNORE)
        loss.backward()
        assert loss.item() == 0.0
        assert torch.isfinite(logits.grad).all() and torch.all(logits.grad == 0)


def test_deep_supervision_loss_adds_weighted_aux_term():
    logits, target, mask = _case(2)
    sparse = torch.where(mask, target, torch.full_like(target, IGNORE))
    aux = logits.detach() * 0.5
    loss, logs = deep_supervision_loss((logits, aux), sparse, IGNORE, aux_weight=0.25)
    want = masked_cross_entropy(logits, sparse, IGNORE) + 0.25 * masked_cross_entropy(
        aux, sparse, IGNORE
    )
    assert torch.allclose(loss, want)
    assert set(logs) == {"ce", "aux"}
    single, logs = deep_supervision_loss(logits, sparse, IGNORE)
    assert torch.allclose(single, masked_cross_entropy(logits, sparse, IGNORE))
