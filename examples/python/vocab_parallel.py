#!/usr/bin/env python3
"""Vocabulary-parallel KL divergence with kldiv.torch over torch.distributed.

Each rank holds a slice of the vocabulary (the last dimension) of the student's
log-probabilities and the teacher's probabilities, as in a tensor-parallel
language model. kl_div(..., process_group=group) gives every rank the loss of
the whole tensors and each rank the gradient of its own slice.

    torchrun --nproc_per_node 2 examples/python/vocab_parallel.py                  # CPU, gloo
    torchrun --nproc_per_node 2 examples/python/vocab_parallel.py --backend nccl   # one GPU per rank
    python3 examples/python/vocab_parallel.py --processes 2 [--backend nccl]      # without torchrun

It checks the result against the loss of the unsharded tensors on rank 0.
"""
import argparse
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import kldiv.torch


def run(rank, world, args):
    dist.init_process_group(args.backend, rank=rank, world_size=world)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank))) if args.backend == "nccl" else "cpu"
    if device != "cpu":
        torch.cuda.set_device(device)

    # Every rank makes the same full tensors here, only to check the result;
    # a model would hold only its slice.
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(args.rows, args.vocab, generator=generator).log_softmax(-1).to(device)
    teacher = torch.randn(args.rows, args.vocab, generator=generator).softmax(-1).to(device)
    bounds = [args.vocab * r // world for r in range(world + 1)]
    mine = slice(bounds[rank], bounds[rank + 1])
    student_slice = student[:, mine].clone().requires_grad_()

    loss = kldiv.torch.kl_div(student_slice, teacher[:, mine], reduction="batchmean", process_group=dist.group.WORLD)
    loss.backward()

    whole = student.clone().requires_grad_()
    expected = F.kl_div(whole, teacher, reduction="batchmean")
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(student_slice.grad, whole.grad[:, mine])
    if rank == 0:
        print(f"{world} ranks, {args.rows}x{args.vocab}: loss {loss.item():.6f} (unsharded {expected.item():.6f}), "
              "gradients of every slice match")
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--processes", type=int, help="start this many ranks here (without torchrun)")
    args = parser.parse_args()
    if args.processes:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29517")
        mp.spawn(run, args=(args.processes, args), nprocs=args.processes, join=True)
    else:
        run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)


if __name__ == "__main__":
    main()
