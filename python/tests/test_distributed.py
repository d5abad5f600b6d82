"""Vocabulary-parallel KL: input and target sharded along the last dimension
across 2 gloo processes, against the unsharded loss and gradients."""
import itertools
import math
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


def _distill_rank_main(rank, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        group = dist.new_group([0, 1])
        generator = torch.Generator().manual_seed(8)
        s = torch.randn(2, 3, 301, generator=generator, dtype=torch.float64) * 3
        t = torch.randn(2, 3, 301, generator=generator, dtype=torch.float64) * 3
        t[0, 0, 10:20] = -math.inf        # suppressed tokens, on one shard
        t[0, 1, :152] = -math.inf         # one shard with no teacher mass at all
        s[1, 2, 200:] = -math.inf         # no student mass on the other shard: +inf in forward KL
        mask = torch.tensor([[True, True, False], [True, True, True]])
        no_rows = torch.zeros(2, 3, dtype=torch.bool)
        for reduction, reverse, m, temperature in itertools.product(REDUCTIONS, (False, True),
                                                                  (None, mask, no_rows), (0.5, 2.0)):
            for needs_teacher in (False, True):
                where = f"rank {rank} {reduction} reverse={reverse} mask={m is not None} T={temperature}"
                full_s, full_t = s.clone().requires_grad_(), t.clone().requires_grad_(needs_teacher)
                want = kldiv.torch.distill_kl(full_s, full_t, temperature, reduction, reverse, m, True)
                ss = _shard(s, rank).clone().requires_grad_()
                ts = _shard(t, rank).clone().requires_grad_(needs_teacher)
                got = kldiv.torch.distill_kl(ss, ts, temperature, reduction, reverse, m, True, process_group=group)
                torch.testing.assert_close(got.detach(), want.detach(), msg=where, equal_nan=True)
                finite = torch.isfinite(want) if reduction == "none" else None
                if reduction != "none" and not torch.isfinite(want):
                    continue  # (an infinite loss has no useful gradient to compare)
                upstream = torch.linspace(0.5, 1.5, want.numel(), dtype=torch.float64).view(want.shape)
                if finite is not None:
                    upstream = torch.where(finite, upstream, torch.zeros_like(upstream))
                want.backward(upstream)
                got.backward(upstream)
                torch.testing.assert_close(ss.grad, _shard(full_s.grad, rank), msg=where, equal_nan=True)
                if needs_teacher:
                    torch.testing.assert_close(ts.grad, _shard(full_t.grad, rank), msg=where, equal_nan=True)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not in this torch")
def test_sharded_distillation_equals_the_unsharded_one():
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_distill_rank_main, args=(os.path.join(folder, "rendezvous"),), nprocs=WORLD, join=True)
