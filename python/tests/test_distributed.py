"""Vocabulary-parallel KL: input and target sharded along the last dimension
across 2 gloo processes, against the unsharded loss and gradients."""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import kldiv.torch

WORLD = 2
REDUCTIONS = ["none", "mean", "sum", "batchmean"]


def _shard(tensor, rank):
    # Uneven shards, as with a vocabulary that does not divide by the ranks.
    cut = tensor.shape[-1] // 2 + 1
    return tensor[..., :cut] if rank == 0 else tensor[..., cut:]


def _rank_main(rank, init_file, dtype):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        group = dist.new_group([0, 1])
        generator = torch.Generator().manual_seed(7)
        x = torch.randn(6, 37, generator=generator, dtype=torch.float64).log_softmax(-1).to(dtype)
        t = torch.randn(6, 37, generator=generator, dtype=torch.float64).softmax(-1).to(dtype)
        for reduction in REDUCTIONS:
            for log_target in (False, True):
                target = t.log() if log_target else t
                for needs_target in (False, True):
                    full_x, full_t = x.clone().requires_grad_(), target.clone().requires_grad_(needs_target)
                    want = F.kl_div(full_x, full_t, reduction=reduction, log_target=log_target)
                    want.backward(torch.ones_like(want))
                    xs = _shard(x, rank).clone().requires_grad_()
                    ts = _shard(target, rank).clone().requires_grad_(needs_target)
                    got = kldiv.torch.kl_div(xs, ts, reduction=reduction, log_target=log_target, process_group=group)
                    got.backward(torch.ones_like(got))
                    where = f"rank {rank} {reduction} log_target={log_target} target grad={needs_target}"
                    expected = _shard(want.detach(), rank) if reduction == "none" else want.detach()
                    assert got.dtype == dtype and got.shape == expected.shape, where
                    torch.testing.assert_close(got.detach(), expected, msg=where)
                    torch.testing.assert_close(xs.grad, _shard(full_x.grad, rank), msg=where)
                    if needs_target:
                        torch.testing.assert_close(ts.grad, _shard(full_t.grad, rank), msg=where)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not in this torch")
@pytest.mark.filterwarnings("ignore:reduction. 'mean':UserWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_sharded_loss_and_gradients_equal_the_unsharded_ones(dtype):
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_rank_main, args=(os.path.join(folder, "rendezvous"), dtype), nprocs=WORLD, join=True)
